// CPU kernels of the visited-bitmap ops (registration: ops/visited_ops.cc).
// Thin adapters over lib/visited_bitmap.h: check shapes, validate every value
// (bad input -> InvalidArgument naming it), reuse the bitmap buffer when
// TensorFlow allows it, run the TF-free core.

#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/huge_pages.h"
#include "lib/visited_bitmap.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"

// The TensorFlow version this library was compiled against, recorded so the
// Python loader can refuse a library built for another TensorFlow before
// loading it (it reads this string from the file). setup.py defines it.
#ifndef NANN_TF_VERSION
#define NANN_TF_VERSION "unknown"
#endif
extern "C" __attribute__((used, visibility("default"))) const char
    nann_ops_build_info[] = "NANN_BUILD_INFO{tf_version=" NANN_TF_VERSION ";}";

namespace nann {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TensorShapeUtils;
namespace errors = ::tensorflow::errors;

template <typename Tword>
using UnsignedWord = typename std::make_unsigned<Tword>::type;

// Allocates output `output_index` in `bitmap`'s buffer when TensorFlow can
// forward it (no other reader holds it), else as a copy; `*view` covers it.
template <typename Tword>
absl::Status OutputBitmap(OpKernelContext* ctx, int input_index,
                          int output_index,
                          BitmapView<UnsignedWord<Tword>>* view) {
  const Tensor& bitmap = ctx->input(input_index);
  Tensor* out = nullptr;
  int forwarded = -1;
  TF_RETURN_IF_ERROR(ctx->forward_input_or_allocate_output(
      {input_index}, output_index, bitmap.shape(), &out, &forwarded));
  if (forwarded < 0 && bitmap.NumElements() > 0) {
    std::memcpy(out->flat<Tword>().data(), bitmap.flat<Tword>().data(),
                bitmap.NumElements() * sizeof(Tword));
  }
  *view = BitmapView<UnsignedWord<Tword>>(
      reinterpret_cast<UnsignedWord<Tword>*>(out->flat<Tword>().data()),
      bitmap.dim_size(0), bitmap.dim_size(1));
  return absl::OkStatus();
}

absl::Status CheckBitmap(const Tensor& bitmap) {
  if (!TensorShapeUtils::IsMatrix(bitmap.shape())) {
    return errors::InvalidArgument(
        "bitmap must be a matrix [batch, words], got shape ",
        bitmap.shape().DebugString());
  }
  return absl::OkStatus();
}

absl::Status CheckVector(const char* name, const Tensor& t) {
  if (!TensorShapeUtils::IsVector(t.shape())) {
    return errors::InvalidArgument(name, " must be a vector, got shape ",
                                   t.shape().DebugString());
  }
  return absl::OkStatus();
}

absl::Status CheckPairShapes(const char* ids_name, const Tensor& ids,
                             const char* rows_name, const Tensor& rows) {
  TF_RETURN_IF_ERROR(CheckVector(ids_name, ids));
  TF_RETURN_IF_ERROR(CheckVector(rows_name, rows));
  if (ids.NumElements() != rows.NumElements()) {
    return errors::InvalidArgument(ids_name, " has ", ids.NumElements(),
                                   " elements but ", rows_name, " has ",
                                   rows.NumElements(),
                                   ": expected one row id per id");
  }
  return absl::OkStatus();
}

template <typename Tid, typename Trow, typename Tword>
class FilterUnvisitedOp : public OpKernel {
 public:
  explicit FilterUnvisitedOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& ids = ctx->input(0);
    const Tensor& row_ids = ctx->input(1);
    const Tensor& bitmap = ctx->input(2);
    OP_REQUIRES_OK(ctx, CheckPairShapes("ids", ids, "row_ids", row_ids));
    OP_REQUIRES_OK(ctx, CheckBitmap(bitmap));
    constexpr int kBits = 8 * sizeof(Tword);
    const int64_t n = ids.NumElements();
    const Tid* id_data = ids.flat<Tid>().data();
    const Trow* row_data = row_ids.flat<Trow>().data();
    const std::string error =
        ValidatePairs(id_data, row_data, n, bitmap.dim_size(0),
                      bitmap.dim_size(1) * kBits, kBits);
    OP_REQUIRES(ctx, error.empty(), errors::InvalidArgument(error));

    BitmapView<UnsignedWord<Tword>> view(nullptr, 0, 0);
    OP_REQUIRES_OK(ctx, OutputBitmap<Tword>(ctx, 2, 2, &view));
    std::vector<uint8_t> keep(n);
    const int64_t kept = MarkUnvisited(id_data, row_data, n, view, keep.data());

    Tensor* kept_ids = nullptr;
    Tensor* kept_rows = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({kept}), &kept_ids));
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_output(1, TensorShape({kept}), &kept_rows));
    Compact(id_data, keep.data(), n, kept_ids->flat<Tid>().data());
    Compact(row_data, keep.data(), n, kept_rows->flat<Trow>().data());
  }
};

// A level's CSR arrays (level 0 of a million-item graph: hundreds of MB, read
// at random) on huge pages.
void AdviseLevel(const Tensor& values, const Tensor& splits) {
  AdviseHugePages(values.tensor_data().data(), values.TotalBytes());
  AdviseHugePages(splits.tensor_data().data(), splits.TotalBytes());
}

// The inputs both neighbour-gathering ops start with (0..4): frontier ids and
// rows, a CSR level, the bitmap.
absl::Status CheckNeighborInputs(OpKernelContext* ctx) {
  TF_RETURN_IF_ERROR(CheckPairShapes("frontier_ids", ctx->input(0),
                                     "frontier_row_ids", ctx->input(1)));
  TF_RETURN_IF_ERROR(CheckVector("neighbor_values", ctx->input(2)));
  TF_RETURN_IF_ERROR(CheckVector("neighbor_row_splits", ctx->input(3)));
  return CheckBitmap(ctx->input(4));
}

// Outputs 0 and 1 of a neighbour-gathering op: the kept ids and their rows.
template <typename Tid, typename Trow>
absl::Status OutputKept(OpKernelContext* ctx, const std::vector<Tid>& ids,
                        const std::vector<Trow>& rows) {
  const int64_t kept = static_cast<int64_t>(ids.size());
  Tensor* out_ids = nullptr;
  Tensor* out_rows = nullptr;
  TF_RETURN_IF_ERROR(ctx->allocate_output(0, TensorShape({kept}), &out_ids));
  TF_RETURN_IF_ERROR(ctx->allocate_output(1, TensorShape({kept}), &out_rows));
  if (kept > 0) {
    std::memcpy(out_ids->flat<Tid>().data(), ids.data(), kept * sizeof(Tid));
    std::memcpy(out_rows->flat<Trow>().data(), rows.data(), kept * sizeof(Trow));
  }
  return absl::OkStatus();
}

template <typename Tfrontier, typename Tid, typename Trow, typename Tsplits,
          typename Tword>
class GatherUnvisitedNeighborsOp : public OpKernel {
 public:
  explicit GatherUnvisitedNeighborsOp(OpKernelConstruction* ctx)
      : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& frontier = ctx->input(0);
    const Tensor& frontier_rows = ctx->input(1);
    const Tensor& values = ctx->input(2);
    const Tensor& splits = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckNeighborInputs(ctx));
    AdviseLevel(values, splits);
    const int64_t num_frontier = frontier.NumElements();
    const Tfrontier* frontier_data = frontier.flat<Tfrontier>().data();
    const Trow* row_data = frontier_rows.flat<Trow>().data();
    const Tid* value_data = values.flat<Tid>().data();
    const Tsplits* split_data = splits.flat<Tsplits>().data();
    // Validation happens during the gather (see lib/visited_bitmap.h): the
    // output bitmap is private to this kernel until it succeeds.
    BitmapView<UnsignedWord<Tword>> view(nullptr, 0, 0);
    OP_REQUIRES_OK(ctx, OutputBitmap<Tword>(ctx, 4, 2, &view));
    std::vector<Tid> kept_ids;
    std::vector<Trow> kept_rows;
    const std::string error = GatherUnvisitedNeighbors(
        frontier_data, row_data, num_frontier, value_data, values.NumElements(),
        split_data, splits.NumElements(), view, &kept_ids, &kept_rows);
    OP_REQUIRES(ctx, error.empty(), errors::InvalidArgument(error));
    OP_REQUIRES_OK(ctx, OutputKept(ctx, kept_ids, kept_rows));
  }
};

absl::Status CheckScalar(const char* name, const Tensor& t) {
  if (!TensorShapeUtils::IsScalar(t.shape())) {
    return errors::InvalidArgument(name, " must be a scalar, got shape ",
                                   t.shape().DebugString());
  }
  return absl::OkStatus();
}

// The label inputs of NannGatherPassingNeighbors (5..10) as a LabelFilter,
// their shapes checked against each other and the bitmap's batch.
absl::Status MakeLabelFilter(OpKernelContext* ctx, int64_t rows,
                             LabelFilter* filter) {
  const Tensor& category = ctx->input(5);
  const Tensor& tags = ctx->input(6);
  const Tensor& state = ctx->input(7);
  const Tensor& has_include = ctx->input(8);
  const Tensor& held = ctx->input(9);
  const Tensor& tag_offset = ctx->input(10);
  TF_RETURN_IF_ERROR(CheckVector("item_category", category));
  TF_RETURN_IF_ERROR(CheckVector("has_include", has_include));
  TF_RETURN_IF_ERROR(CheckVector("held_keys", held));
  TF_RETURN_IF_ERROR(CheckScalar("tag_offset", tag_offset));
  if (!TensorShapeUtils::IsMatrix(tags.shape()) ||
      tags.dim_size(0) != category.NumElements()) {
    return errors::InvalidArgument(
        "item_tags must be a matrix [len(item_category), tags per item], got "
        "shape ", tags.shape().DebugString(), " beside item_category of ",
        category.NumElements(), " items");
  }
  if (!TensorShapeUtils::IsMatrix(state.shape()) || state.dim_size(0) != rows ||
      has_include.NumElements() != rows) {
    return errors::InvalidArgument(
        "label_state [batch, labels] and has_include [batch] must have the "
        "bitmap's batch size ", rows, ", got shapes ",
        state.shape().DebugString(), " and ",
        has_include.shape().DebugString());
  }
  const int64_t offset = tag_offset.scalar<int32_t>()();
  if (offset < 1 || offset >= state.dim_size(1)) {
    return errors::InvalidArgument("tag_offset = ", offset,
                                   ": expected 1 <= tag_offset < ",
                                   state.dim_size(1), " (label_state's width)");
  }
  const int64_t* keys = held.flat<int64_t>().data();
  for (int64_t i = 1; i < held.NumElements(); ++i) {
    if (keys[i - 1] > keys[i]) {
      return errors::InvalidArgument("held_keys must be sorted ascending: "
                                     "held_keys[", i - 1, "] = ", keys[i - 1],
                                     " > held_keys[", i, "] = ", keys[i]);
    }
  }
  filter->item_category = category.flat<int32_t>().data();
  filter->num_items = category.NumElements();
  filter->item_tags = tags.flat<int32_t>().data();
  filter->tag_width = tags.dim_size(1);
  filter->state = state.flat<uint8_t>().data();
  filter->state_width = state.dim_size(1);
  filter->tag_offset = offset;
  filter->has_include = has_include.flat<bool>().data();
  filter->held_keys = keys;
  filter->num_held = held.NumElements();
  filter->key_span = category.NumElements();
  return absl::OkStatus();
}

template <typename Tword>
class GatherPassingNeighborsOp : public OpKernel {
 public:
  explicit GatherPassingNeighborsOp(OpKernelConstruction* ctx)
      : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& frontier = ctx->input(0);
    const Tensor& frontier_rows = ctx->input(1);
    const Tensor& values = ctx->input(2);
    const Tensor& splits = ctx->input(3);
    const Tensor& bitmap = ctx->input(4);
    const Tensor& max_candidates = ctx->input(11);
    OP_REQUIRES_OK(ctx, CheckNeighborInputs(ctx));
    OP_REQUIRES_OK(ctx, CheckScalar("max_candidates", max_candidates));
    AdviseLevel(values, splits);
    LabelFilter filter;
    OP_REQUIRES_OK(ctx, MakeLabelFilter(ctx, bitmap.dim_size(0), &filter));
    BitmapView<UnsignedWord<Tword>> view(nullptr, 0, 0);
    OP_REQUIRES_OK(ctx, OutputBitmap<Tword>(ctx, 4, 2, &view));
    std::vector<int32_t> kept_ids;
    std::vector<int32_t> kept_rows;
    const std::string error = GatherPassingNeighbors(
        frontier.flat<int32_t>().data(), frontier_rows.flat<int32_t>().data(),
        frontier.NumElements(), values.flat<int32_t>().data(),
        values.NumElements(), splits.flat<int64_t>().data(),
        splits.NumElements(), filter, max_candidates.scalar<int32_t>()(), view,
        &kept_ids, &kept_rows);
    OP_REQUIRES(ctx, error.empty(), errors::InvalidArgument(error));
    OP_REQUIRES_OK(ctx, OutputKept(ctx, kept_ids, kept_rows));
  }
};

REGISTER_KERNEL_BUILDER(Name("NannGatherPassingNeighbors")
                            .Device(DEVICE_CPU)
                            .TypeConstraint<int32_t>("Tword"),
                        GatherPassingNeighborsOp<int32_t>);
REGISTER_KERNEL_BUILDER(Name("NannGatherPassingNeighbors")
                            .Device(DEVICE_CPU)
                            .TypeConstraint<int64_t>("Tword"),
                        GatherPassingNeighborsOp<int64_t>);

#define NANN_REGISTER_FILTER(Tid, Trow, Tword)                   \
  REGISTER_KERNEL_BUILDER(Name("NannFilterUnvisited")            \
                              .Device(DEVICE_CPU)                \
                              .TypeConstraint<Tid>("Tid")        \
                              .TypeConstraint<Trow>("Trow")      \
                              .TypeConstraint<Tword>("Tword"),   \
                          FilterUnvisitedOp<Tid, Trow, Tword>);

#define NANN_REGISTER_GATHER(Tfrontier, Tid, Trow, Tsplits, Tword)      \
  REGISTER_KERNEL_BUILDER(                                               \
      Name("NannGatherUnvisitedNeighbors")                               \
          .Device(DEVICE_CPU)                                            \
          .TypeConstraint<Tfrontier>("Tfrontier")                        \
          .TypeConstraint<Tid>("Tid")                                    \
          .TypeConstraint<Trow>("Trow")                                  \
          .TypeConstraint<Tsplits>("Tsplits")                            \
          .TypeConstraint<Tword>("Tword"),                               \
      GatherUnvisitedNeighborsOp<Tfrontier, Tid, Trow, Tsplits, Tword>);

#define NANN_FOR_WORDS(M, ...) \
  M(__VA_ARGS__, int32_t)      \
  M(__VA_ARGS__, int64_t)

NANN_FOR_WORDS(NANN_REGISTER_FILTER, int32_t, int32_t)
NANN_FOR_WORDS(NANN_REGISTER_FILTER, int32_t, int64_t)
NANN_FOR_WORDS(NANN_REGISTER_FILTER, int64_t, int32_t)
NANN_FOR_WORDS(NANN_REGISTER_FILTER, int64_t, int64_t)

NANN_FOR_WORDS(NANN_REGISTER_GATHER, int32_t, int32_t, int32_t, int32_t)
NANN_FOR_WORDS(NANN_REGISTER_GATHER, int32_t, int32_t, int32_t, int64_t)
NANN_FOR_WORDS(NANN_REGISTER_GATHER, int32_t, int32_t, int64_t, int32_t)
NANN_FOR_WORDS(NANN_REGISTER_GATHER, int32_t, int32_t, int64_t, int64_t)
NANN_FOR_WORDS(NANN_REGISTER_GATHER, int32_t, int64_t, int32_t, int32_t)
NANN_FOR_WORDS(NANN_REGISTER_GATHER, int32_t, int64_t, int32_t, int64_t)
NANN_FOR_WORDS(NANN_REGISTER_GATHER, int32_t, int64_t, int64_t, int32_t)
NANN_FOR_WORDS(NANN_REGISTER_GATHER, int32_t, int64_t, int64_t, int64_t)
NANN_FOR_WORDS(NANN_REGISTER_GATHER, int64_t, int32_t, int32_t, int32_t)
NANN_FOR_WORDS(NANN_REGISTER_GATHER, int64_t, int32_t, int32_t, int64_t)
NANN_FOR_WORDS(NANN_REGISTER_GATHER, int64_t, int32_t, int64_t, int32_t)
NANN_FOR_WORDS(NANN_REGISTER_GATHER, int64_t, int32_t, int64_t, int64_t)
NANN_FOR_WORDS(NANN_REGISTER_GATHER, int64_t, int64_t, int32_t, int32_t)
NANN_FOR_WORDS(NANN_REGISTER_GATHER, int64_t, int64_t, int32_t, int64_t)
NANN_FOR_WORDS(NANN_REGISTER_GATHER, int64_t, int64_t, int64_t, int32_t)
NANN_FOR_WORDS(NANN_REGISTER_GATHER, int64_t, int64_t, int64_t, int64_t)

#undef NANN_FOR_WORDS
#undef NANN_REGISTER_GATHER
#undef NANN_REGISTER_FILTER

}  // namespace
}  // namespace nann

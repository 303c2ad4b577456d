// CPU kernels of NannGatherRows, NannMergeResults and NannSparseAdam
// (registration: ops/rows_ops.cc).
//
// A gather of random rows from a table of gigabytes waits on memory for every
// row (a TLB miss and cache misses), and a plain copy loop keeps few of them in
// flight. This one requests the row kAhead positions ahead before copying the
// current one, and splits a large gather over the intra-op threads.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "kernels/huge_pages.h"
#include "tensorflow/core/framework/bfloat16.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"
#include "Eigen/Core"  // from @eigen_archive
#include "tensorflow/core/util/work_sharder.h"

namespace nann {
namespace {

using ::tensorflow::DataType;
using ::tensorflow::DataTypeString;
using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TensorShapeUtils;
using ::tensorflow::Var;
namespace errors = ::tensorflow::errors;

constexpr int64_t kAhead = 12;  // rows requested ahead of the copy
constexpr int64_t kCacheLine = 64;

inline void FetchRow(const char* row, int64_t bytes) {
  for (int64_t off = 0; off < bytes; off += kCacheLine) {
    __builtin_prefetch(row + off, 0, 3);
  }
}

// Copies rows idx[begin..end) of `src` (rows of `bytes`) to the same positions
// of `dst`, reading kAhead rows ahead.
template <typename Tindex>
void CopyRows(const char* src, const Tindex* idx, int64_t bytes, char* dst,
              int64_t begin, int64_t end) {
  for (int64_t i = begin; i < std::min(end, begin + kAhead); ++i) {
    FetchRow(src + idx[i] * bytes, bytes);
  }
  for (int64_t i = begin; i < end; ++i) {
    if (i + kAhead < end) FetchRow(src + idx[i + kAhead] * bytes, bytes);
    std::memcpy(dst + i * bytes, src + idx[i] * bytes, bytes);
  }
}

// InvalidArgument naming the first of idx[0..n) outside [0, num_rows).
template <typename Tindex>
absl::Status CheckRows(const Tindex* idx, int64_t n, int64_t num_rows) {
  for (int64_t i = 0; i < n; ++i) {
    if (idx[i] < 0 || idx[i] >= num_rows) {
      return errors::InvalidArgument("indices[", i, "] = ", idx[i], " is not in [0, ",
                                     num_rows, "): not a row of the table");
    }
  }
  return absl::OkStatus();
}

template <typename Tindex>
class GatherRowsOp : public OpKernel {
 public:
  explicit GatherRowsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dtype", &dtype_));
  }

  void Compute(OpKernelContext* ctx) override {
    ::tensorflow::core::RefCountPtr<Var> var;
    OP_REQUIRES_OK(ctx, LookupResource(ctx, HandleFromInput(ctx, 0), &var));
    ::tensorflow::tf_shared_lock lock(*var->mu());
    const Tensor& table = *var->tensor();
    OP_REQUIRES(ctx, table.dtype() == dtype_,
                errors::InvalidArgument("table holds ", DataTypeString(table.dtype()),
                                        ", expected dtype ", DataTypeString(dtype_)));
    OP_REQUIRES(ctx, TensorShapeUtils::IsMatrix(table.shape()),
                errors::InvalidArgument("table must be a matrix [N, D], got shape ",
                                        table.shape().DebugString()));
    const Tensor& indices = ctx->input(1);
    const int64_t num_rows = table.dim_size(0);
    const int64_t n = indices.NumElements();
    const Tindex* idx = indices.flat<Tindex>().data();
    OP_REQUIRES_OK(ctx, CheckRows(idx, n, num_rows));
    TensorShape shape = indices.shape();
    OP_REQUIRES_OK(ctx, shape.AddDimWithStatus(table.dim_size(1)));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &out));
    const int64_t bytes = static_cast<int64_t>(table.TotalBytes() /
                                               std::max<int64_t>(num_rows, 1));
    if (n == 0 || bytes == 0) return;
    const char* src = static_cast<const char*>(table.tensor_data().data());
    AdviseHugePages(src, static_cast<int64_t>(table.TotalBytes()));
    char* dst = const_cast<char*>(out->tensor_data().data());
    // A row costs a memory round trip (~1,000 cycles) more than its copy:
    // Shard splits a few thousand rows over the threads.
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(workers->num_threads, workers->workers, n, 1000 + bytes,
                        [&](int64_t begin, int64_t end) {
                          CopyRows(src, idx, bytes, dst, begin, end);
                        });
  }

 private:
  DataType dtype_;
};

// The order of nann_tf.search.beam.order_keys: a larger key is a better
// (score, id): the score's bits made monotone (-0.0 as +0.0), then the id
// reversed in the low 32 bits.
inline int64_t OrderKey(int32_t id, float score) {
  if (score == 0.0f) score = 0.0f;
  int32_t bits;
  std::memcpy(&bits, &score, sizeof(bits));
  const int32_t monotone = bits < 0 ? (bits ^ 0x7FFFFFFF) : bits;
  return static_cast<int64_t>(monotone) * (int64_t{1} << 32) +
         (int64_t{0xFFFFFFFF} - static_cast<int64_t>(id));
}

class MergeResultsOp : public OpKernel {
 public:
  explicit MergeResultsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& res_ids = ctx->input(0);
    const Tensor& res_scores = ctx->input(1);
    const Tensor& new_ids = ctx->input(2);
    const Tensor& new_rows = ctx->input(3);
    const Tensor& new_scores = ctx->input(4);
    const Tensor& width_t = ctx->input(5);
    OP_REQUIRES(ctx, TensorShapeUtils::IsMatrix(res_ids.shape()) &&
                         res_ids.shape() == res_scores.shape(),
                errors::InvalidArgument(
                    "result_ids and result_scores must be matrices [B, W] of one shape, "
                    "got ", res_ids.shape().DebugString(), " and ",
                    res_scores.shape().DebugString()));
    const int64_t n = new_ids.NumElements();
    OP_REQUIRES(ctx, TensorShapeUtils::IsVector(new_ids.shape()) &&
                         TensorShapeUtils::IsVector(new_rows.shape()) &&
                         TensorShapeUtils::IsVector(new_scores.shape()) &&
                         new_rows.NumElements() == n && new_scores.NumElements() == n,
                errors::InvalidArgument(
                    "new_ids, new_row_ids and new_scores must be vectors of one length, got ",
                    new_ids.shape().DebugString(), ", ", new_rows.shape().DebugString(),
                    " and ", new_scores.shape().DebugString()));
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(width_t.shape()),
                errors::InvalidArgument("width must be a scalar, got shape ",
                                        width_t.shape().DebugString()));
    const int64_t width = width_t.scalar<int32_t>()();
    OP_REQUIRES(ctx, width >= 0, errors::InvalidArgument("width = ", width, ": expected >= 0"));
    const int64_t batch = res_ids.dim_size(0);
    const int64_t old_width = res_ids.dim_size(1);
    const int32_t* rows = new_rows.flat<int32_t>().data();
    for (int64_t i = 0; i < n; ++i) {
      OP_REQUIRES(ctx, rows[i] >= 0 && rows[i] < batch && (i == 0 || rows[i] >= rows[i - 1]),
                  errors::InvalidArgument(
                      "new_row_ids[", i, "] = ", rows[i], ": expected row ids in [0, ", batch,
                      ") in ascending order"));
    }
    Tensor* out_ids = nullptr;
    Tensor* out_scores = nullptr;
    Tensor* entered = nullptr;
    const TensorShape shape({batch, width});
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &out_ids));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, shape, &out_scores));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, shape, &entered));
    const int32_t* r_ids = res_ids.flat<int32_t>().data();
    const float* r_scores = res_scores.flat<float>().data();
    const int32_t* n_ids = new_ids.flat<int32_t>().data();
    const float* n_scores = new_scores.flat<float>().data();
    int32_t* o_ids = out_ids->flat<int32_t>().data();
    float* o_scores = out_scores->flat<float>().data();
    bool* o_entered = entered->flat<bool>().data();
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    // Each row's new items fill max_count slots after its results (padding
    // (0, -inf) past its own), as in the stock merge's [B, W + max_count] layout.
    int64_t max_count = 0;
    for (int64_t i = 0, run = 0; i < n; ++i) {
      run = (i > 0 && rows[i] == rows[i - 1]) ? run + 1 : 1;
      max_count = std::max(max_count, run);
    }
    const int64_t pad_key = OrderKey(0, kNegInf);
    // (key, candidate): candidates 0..W-1 are the row's results, W.. its new items.
    std::vector<std::pair<int64_t, int64_t>> cand;
    int64_t next = 0;
    for (int64_t r = 0; r < batch; ++r) {
      const int64_t first = next;
      while (next < n && rows[next] == r) ++next;
      cand.clear();
      for (int64_t j = 0; j < old_width; ++j) {
        const int64_t at = r * old_width + j;
        cand.emplace_back(OrderKey(r_ids[at], r_scores[at]), j);
      }
      for (int64_t i = first; i < next; ++i) {
        const bool live = n_scores[i] > kNegInf;
        cand.emplace_back(OrderKey(live ? n_ids[i] : 0, n_scores[i]), old_width + i - first);
      }
      for (int64_t j = next - first; j < max_count; ++j) cand.emplace_back(pad_key, old_width + j);
      const int64_t keep = std::min<int64_t>(width, static_cast<int64_t>(cand.size()));
      std::partial_sort(cand.begin(), cand.begin() + keep, cand.end(),
                        [](const std::pair<int64_t, int64_t>& a,
                           const std::pair<int64_t, int64_t>& b) {
                          return a.first > b.first || (a.first == b.first && a.second < b.second);
                        });
      for (int64_t j = 0; j < width; ++j) {
        // Past the kept candidates and at padding slots: (0, -inf), not entered.
        int32_t id = 0;
        float score = kNegInf;
        bool new_item = false;
        const int64_t c = j < keep ? cand[j].second : old_width + max_count;
        if (c < old_width) {
          id = r_ids[r * old_width + c];
          score = r_scores[r * old_width + c];
        } else if (c - old_width < next - first) {
          const int64_t i = first + c - old_width;
          new_item = n_scores[i] > kNegInf;
          id = new_item ? n_ids[i] : 0;
          score = n_scores[i];
        }
        o_ids[r * width + j] = id;
        o_scores[r * width + j] = score;
        o_entered[r * width + j] = new_item;
      }
    }
  }
};

// Adam's update of one row, as Eigen array expressions (vectorized, in the
// stock ops' order of operations).
inline void AdamRow(const float* g, float* var, float* m, float* v, int64_t width,
                    float alpha, float b1, float b2, float eps, float decay) {
  using Row = Eigen::Map<Eigen::ArrayXf>;
  const Eigen::Map<const Eigen::ArrayXf> gr(g, width);
  Row mr(m, width), vr(v, width), varr(var, width);
  mr = b1 * mr + (1.0f - b1) * gr;
  vr = b2 * vr + (1.0f - b2) * gr.square();
  if (decay != 0.0f) {
    varr -= alpha * mr / (vr.sqrt() + eps) + decay * varr;
  } else {
    varr -= alpha * mr / (vr.sqrt() + eps);
  }
}

// The copy-on-read contract of TensorFlow's sparse writes (ResourceScatterUpdate,
// the sparse training ops): once a variable is in copy-on-read mode, a dense
// read copies it instead of sharing the buffer that sparse writes update in
// place. Switching a variable whose buffer a reader still shares gives the
// variable a copy first.
absl::Status CopyOnRead(OpKernelContext* ctx, Var* var) {
  if (var->copy_on_read_mode.load()) return absl::OkStatus();
  ::tensorflow::mutex_lock lock(*var->mu());
  if (var->copy_on_read_mode.load()) return absl::OkStatus();
  if (!var->tensor()->RefCountIsOne()) {
    Tensor copy;
    TF_RETURN_IF_ERROR(ctx->allocate_temp(var->tensor()->dtype(), var->tensor()->shape(),
                                          &copy));
    const auto bytes = var->tensor()->tensor_data();
    std::memcpy(const_cast<char*>(copy.tensor_data().data()), bytes.data(), bytes.size());
    *var->tensor() = copy;
  }
  var->copy_on_read_mode.store(true);
  return absl::OkStatus();
}

// NannSparseAdam: LazyAdam's update of the touched rows, in place, one pass.
template <typename Tindex>
class SparseAdamOp : public OpKernel {
 public:
  explicit SparseAdamOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const char* names[3] = {"var", "m", "v"};
    ::tensorflow::core::RefCountPtr<Var> vars[3];
    for (int i = 0; i < 3; ++i) {
      OP_REQUIRES_OK(ctx, LookupResource(ctx, HandleFromInput(ctx, i), &vars[i]));
    }
    OP_REQUIRES(ctx, vars[0].get() != vars[1].get() && vars[0].get() != vars[2].get() &&
                         vars[1].get() != vars[2].get(),
                errors::InvalidArgument("var, m and v must be three distinct variables"));
    const Tensor& indices = ctx->input(3);
    const Tensor& grad = ctx->input(4);
    float scalars[5];  // alpha, beta1, beta2, epsilon, decay
    const char* scalar_names[5] = {"alpha", "beta1", "beta2", "epsilon", "decay"};
    for (int i = 0; i < 5; ++i) {
      const Tensor& t = ctx->input(5 + i);
      OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(t.shape()),
                  errors::InvalidArgument(scalar_names[i], " must be a scalar, got shape ",
                                          t.shape().DebugString()));
      scalars[i] = t.scalar<float>()();
    }
    OP_REQUIRES(ctx, TensorShapeUtils::IsVector(indices.shape()) &&
                         TensorShapeUtils::IsMatrix(grad.shape()) &&
                         grad.dim_size(0) == indices.dim_size(0),
                errors::InvalidArgument("indices [n] and grad [n, D] expected, got shapes ",
                                        indices.shape().DebugString(), " and ",
                                        grad.shape().DebugString()));
    for (auto& var : vars) OP_REQUIRES_OK(ctx, CopyOnRead(ctx, var.get()));
    std::vector<::tensorflow::mutex*> mutexes = {vars[0]->mu(), vars[1]->mu(), vars[2]->mu()};
    std::sort(mutexes.begin(), mutexes.end());
    ::tensorflow::mutex_lock l0(*mutexes[0]), l1(*mutexes[1]), l2(*mutexes[2]);
    Tensor* tables[3];
    for (int i = 0; i < 3; ++i) {
      tables[i] = vars[i]->tensor();
      OP_REQUIRES(ctx, tables[i]->dtype() == ::tensorflow::DT_FLOAT &&
                           TensorShapeUtils::IsMatrix(tables[i]->shape()) &&
                           tables[i]->shape() == tables[0]->shape(),
                  errors::InvalidArgument(names[i], " must be a float32 matrix of var's "
                                          "shape ", tables[0]->shape().DebugString(), ", got ",
                                          DataTypeString(tables[i]->dtype()), " ",
                                          tables[i]->shape().DebugString()));
    }
    const int64_t num_rows = tables[0]->dim_size(0);
    const int64_t width = tables[0]->dim_size(1);
    OP_REQUIRES(ctx, grad.dim_size(1) == width,
                errors::InvalidArgument("grad has ", grad.dim_size(1),
                                        " columns, the table ", width));
    const int64_t n = indices.NumElements();
    const Tindex* idx = indices.flat<Tindex>().data();
    OP_REQUIRES_OK(ctx, CheckRows(idx, n, num_rows));
    if (n == 0 || width == 0) return;
    // The given rows in table order, repeats in the order given: runs of one row
    // (a key is the row in the high 32 bits, the position in the low 32 bits).
    OP_REQUIRES(ctx, num_rows <= (int64_t{1} << 31) && n <= (int64_t{1} << 32),
                errors::InvalidArgument("at most 2^31 rows and 2^32 indices, got ",
                                        num_rows, " and ", n));
    std::vector<uint64_t> order(n);
    for (int64_t i = 0; i < n; ++i) {
      order[i] = (static_cast<uint64_t>(idx[i]) << 32) | static_cast<uint64_t>(i);
    }
    std::sort(order.begin(), order.end());
    auto row_of = [&](int64_t k) { return static_cast<int64_t>(order[k] >> 32); };
    auto pos_of = [&](int64_t k) { return static_cast<int64_t>(order[k] & 0xFFFFFFFFu); };
    std::vector<int64_t> starts;
    starts.reserve(n + 1);
    for (int64_t i = 0; i < n; ++i) {
      if (i == 0 || row_of(i) != row_of(i - 1)) starts.push_back(i);
    }
    const int64_t distinct = static_cast<int64_t>(starts.size());
    starts.push_back(n);
    float* p[3];
    for (int i = 0; i < 3; ++i) p[i] = tables[i]->flat<float>().data();
    const float* g_all = grad.flat<float>().data();
    const float alpha = scalars[0], b1 = scalars[1], b2 = scalars[2], eps = scalars[3],
                decay = scalars[4];
    const int64_t bytes = width * static_cast<int64_t>(sizeof(float));
    auto fetch = [&](int64_t s) {  // the three rows of distinct row s, for writing
      const int64_t off = row_of(starts[s]) * width;
      for (int i = 0; i < 3; ++i) {
        const char* row = reinterpret_cast<const char*>(p[i] + off);
        for (int64_t b = 0; b < bytes; b += kCacheLine) __builtin_prefetch(row + b, 1, 3);
      }
    };
    auto update = [&](int64_t begin, int64_t end) {
      std::vector<float> g(width);
      for (int64_t s = begin; s < std::min(end, begin + kAhead); ++s) fetch(s);
      for (int64_t s = begin; s < end; ++s) {
        if (s + kAhead < end) fetch(s + kAhead);
        std::fill(g.begin(), g.end(), 0.0f);
        for (int64_t k = starts[s]; k < starts[s + 1]; ++k) {
          const float* src = g_all + pos_of(k) * width;
          for (int64_t j = 0; j < width; ++j) g[j] += src[j];
        }
        const int64_t off = row_of(starts[s]) * width;
        AdamRow(g.data(), p[0] + off, p[1] + off, p[2] + off, width, alpha, b1, b2, eps,
                decay);
      }
    };
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(workers->num_threads, workers->workers, distinct,
                        1000 + 40 * width, update);
  }
};

REGISTER_KERNEL_BUILDER(Name("NannMergeResults").Device(DEVICE_CPU), MergeResultsOp);

REGISTER_KERNEL_BUILDER(Name("NannGatherRows")
                            .Device(DEVICE_CPU)
                            .HostMemory("table")
                            .TypeConstraint<int32_t>("Tindices"),
                        GatherRowsOp<int32_t>);
REGISTER_KERNEL_BUILDER(Name("NannGatherRows")
                            .Device(DEVICE_CPU)
                            .HostMemory("table")
                            .TypeConstraint<int64_t>("Tindices"),
                        GatherRowsOp<int64_t>);
REGISTER_KERNEL_BUILDER(Name("NannSparseAdam")
                            .Device(DEVICE_CPU)
                            .HostMemory("var")
                            .HostMemory("m")
                            .HostMemory("v")
                            .TypeConstraint<int32_t>("Tindices"),
                        SparseAdamOp<int32_t>);
REGISTER_KERNEL_BUILDER(Name("NannSparseAdam")
                            .Device(DEVICE_CPU)
                            .HostMemory("var")
                            .HostMemory("m")
                            .HostMemory("v")
                            .TypeConstraint<int64_t>("Tindices"),
                        SparseAdamOp<int64_t>);

}  // namespace
}  // namespace nann

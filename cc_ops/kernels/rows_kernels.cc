// CPU kernel of NannGatherRows (registration: ops/rows_ops.cc).
//
// A gather of random rows from a table of gigabytes waits on memory for every
// row (a TLB miss and cache misses), and a plain copy loop keeps few of them in
// flight. This one requests the row kAhead positions ahead before copying the
// current one, and splits a large gather over the intra-op threads.

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/huge_pages.h"
#include "tensorflow/core/framework/bfloat16.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"
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
    for (int64_t i = 0; i < n; ++i) {
      OP_REQUIRES(ctx, idx[i] >= 0 && idx[i] < num_rows,
                  errors::InvalidArgument("indices[", i, "] = ", idx[i], " is not in [0, ",
                                          num_rows, "): not a row of the table"));
    }
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

}  // namespace
}  // namespace nann

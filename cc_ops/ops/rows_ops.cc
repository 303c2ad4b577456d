// Registration of NannGatherRows (kernel: kernels/rows_kernels.cc).

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace nann {
namespace {

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// rows: indices.shape + [D], D from the variable's shape when the handle
// carries it.
absl::Status GatherRowsShape(InferenceContext* c) {
  DimensionHandle width = c->UnknownDim();
  const auto* handle = c->input_handle_shapes_and_types(0);
  if (handle != nullptr && handle->size() == 1) {
    ShapeHandle table;
    TF_RETURN_IF_ERROR(c->WithRank((*handle)[0].shape, 2, &table));
    width = c->Dim(table, 1);
  }
  ShapeHandle rows;
  TF_RETURN_IF_ERROR(c->Concatenate(c->input(1), c->Vector(width), &rows));
  c->set_output(0, rows);
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("NannGatherRows")
    .Input("table: resource")
    .Input("indices: Tindices")
    .Output("rows: dtype")
    .Attr("dtype: {float, half, bfloat16}")
    .Attr("Tindices: {int32, int64}")
    .SetShapeFn(GatherRowsShape)
    .Doc(R"doc(
Rows of a large read-only table variable at random indices: the answers of
tf.gather(table, indices) (ResourceGather), bit for bit, with each row fetched
ahead of its copy (software prefetch) so that the reads of many rows overlap
instead of waiting on memory one after another, and a large gather split over
the intra-op threads. The variable is read in place under its lock, and its
mode is left as it is (ResourceGather switches a variable to copy-on-read, after
which every dense read of it copies the whole table).

table: a resource variable [N, D] of dtype `dtype`.
indices: any shape, each in [0, N).
rows: indices.shape + [D].
)doc");

}  // namespace nann

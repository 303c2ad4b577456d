// Registration of the row-wise table ops NannGatherRows, NannMergeResults and
// NannSparseAdam (kernels: kernels/rows_kernels.cc).

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

absl::Status MergeResultsShape(InferenceContext* c) {
  ShapeHandle res_ids, res_scores, results, ids, rows, scores, pairs, width;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &res_ids));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &res_scores));
  TF_RETURN_IF_ERROR(c->Merge(res_ids, res_scores, &results));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &ids));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &rows));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 1, &scores));
  TF_RETURN_IF_ERROR(c->Merge(ids, rows, &pairs));
  TF_RETURN_IF_ERROR(c->Merge(pairs, scores, &pairs));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(5), 0, &width));
  DimensionHandle out_width;
  TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(5, &out_width));
  ShapeHandle out = c->Matrix(c->Dim(results, 0), out_width);
  for (int i = 0; i < 3; ++i) c->set_output(i, out);
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("NannMergeResults")
    .Input("result_ids: int32")
    .Input("result_scores: float")
    .Input("new_ids: int32")
    .Input("new_row_ids: int32")
    .Input("new_scores: float")
    .Input("width: int32")
    .Output("ids: int32")
    .Output("scores: float")
    .Output("entered: bool")
    .SetShapeFn(MergeResultsShape)
    .Doc(R"doc(
A beam search's merge, fused: each query's top `width` of its results and its
newly scored items, by score descending then smaller id (ties in both keep the
earlier candidate: the results first, then the new items in their order). A
new item scoring -inf is padding (id 0) and never enters. The answers of
nann_tf.search.beam.merge_results in stock ops, bit for bit.

result_ids, result_scores: [B, W] each query's results, best first.
new_ids, new_row_ids, new_scores: [n] the new items, their query rows (each in
  [0, B), ascending) and scores.
width: the results kept per query (>= 0).
ids, scores: [B, width] the merged results, padded with (0, -inf).
entered: [B, width] whether the item there is a new one (scoring above -inf).
)doc");

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

REGISTER_OP("NannSparseAdam")
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("indices: Tindices")
    .Input("grad: float")
    .Input("alpha: float")
    .Input("beta1: float")
    .Input("beta2: float")
    .Input("epsilon: float")
    .Input("decay: float")
    .Attr("Tindices: {int32, int64}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle indices, grad, scalar;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &indices));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 2, &grad));
      DimensionHandle n;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(indices, 0), c->Dim(grad, 0), &n));
      for (int i = 5; i < 10; ++i) {
        TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &scalar));
      }
      return absl::OkStatus();
    })
    .Doc(R"doc(
Adam's update of the rows of a table a batch touched ("lazy" Adam), in place and
in one pass: the rows' gradients are summed per distinct row (in the order the
rows are given), then for each distinct row r with summed gradient g:

  m[r] = beta1 * m[r] + (1 - beta1) * g
  v[r] = beta2 * v[r] + (1 - beta2) * g * g
  var[r] -= alpha * m[r] / (sqrt(v[r]) + epsilon) + decay * var[r]

Rows not given are left exactly as they are. The answers of the stock-ops update
of nann_tf.train.optim.LazyAdam (gather, unique, segment sum, three scatters);
like those scatters it puts the three variables in copy-on-read mode.

var, m, v: three distinct float32 resource variables [N, D].
indices: [n] rows of the table, each in [0, N), repeats allowed.
grad: [n, D] the gradient of each given row.
alpha: the step: learning_rate * sqrt(1 - beta2^t) / (1 - beta1^t).
decay: learning_rate * weight_decay (decoupled weight decay of the touched rows;
  0 for none).
)doc");

}  // namespace nann

// Registration of the visited-bitmap ops (inputs, outputs, attrs, shape
// functions, documentation). Kernels: kernels/visited_kernels.cc.

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace nann {
namespace {

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// Kept ids: at most as many as the inputs; exactly zero when there are none.
void SetKeptOutputs(InferenceContext* c, DimensionHandle num_inputs) {
  DimensionHandle kept = c->UnknownDim();
  if (c->ValueKnown(num_inputs) && c->Value(num_inputs) == 0) kept = c->MakeDim(0);
  c->set_output(0, c->Vector(kept));
  c->set_output(1, c->Vector(kept));
}

absl::Status FilterUnvisitedShape(InferenceContext* c) {
  ShapeHandle ids, row_ids, pairs, bitmap;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &ids));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &row_ids));
  TF_RETURN_IF_ERROR(c->Merge(ids, row_ids, &pairs));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &bitmap));
  SetKeptOutputs(c, c->Dim(pairs, 0));
  c->set_output(2, bitmap);
  return absl::OkStatus();
}

absl::Status GatherUnvisitedNeighborsShape(InferenceContext* c) {
  ShapeHandle frontier, frontier_rows, pairs, values, splits, bitmap;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &frontier));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &frontier_rows));
  TF_RETURN_IF_ERROR(c->Merge(frontier, frontier_rows, &pairs));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &values));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &splits));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 2, &bitmap));
  if (c->ValueKnown(c->Dim(splits, 0)) && c->Value(c->Dim(splits, 0)) < 1) {
    return tensorflow::errors::InvalidArgument(
        "neighbor_row_splits must have at least one element (num_nodes + 1), "
        "got shape [0]");
  }
  DimensionHandle num_neighbors = c->UnknownDim();
  if (c->ValueKnown(c->Dim(values, 0)) && c->Value(c->Dim(values, 0)) == 0) {
    num_neighbors = c->MakeDim(0);
  } else if (c->ValueKnown(c->Dim(pairs, 0)) && c->Value(c->Dim(pairs, 0)) == 0) {
    num_neighbors = c->MakeDim(0);
  }
  SetKeptOutputs(c, num_neighbors);
  c->set_output(2, bitmap);
  return absl::OkStatus();
}

// Inputs 0..4 and the outputs as NannGatherUnvisitedNeighbors; then the labels.
absl::Status GatherPassingNeighborsShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(GatherUnvisitedNeighborsShape(c));
  constexpr int kLabelRanks[] = {1, 2, 2, 1, 1, 0, 0};  // inputs 5..11
  ShapeHandle unused;
  for (int i = 0; i < 7; ++i) {
    TF_RETURN_IF_ERROR(c->WithRank(c->input(5 + i), kLabelRanks[i], &unused));
  }
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("NannFilterUnvisited")
    .Input("ids: Tid")
    .Input("row_ids: Trow")
    .Input("bitmap: Tword")
    .Output("kept_ids: Tid")
    .Output("kept_row_ids: Trow")
    .Output("new_bitmap: Tword")
    .Attr("Tid: {int32, int64} = DT_INT64")
    .Attr("Trow: {int32, int64} = DT_INT64")
    .Attr("Tword: {int32, int64} = DT_INT64")
    .SetShapeFn(FilterUnvisitedShape)
    .Doc(R"doc(
Keeps the (query, item) pairs a query has not visited yet and marks them.

Walks the pairs (row_ids[i], ids[i]) in order. A pair is kept exactly when its
bit in `bitmap` is clear and it did not occur earlier in this batch; its bit is
then set. The kept pairs are therefore the first occurrences of the unvisited
pairs, in input order. Functional: the input bitmap is not modified (its buffer
is reused for `new_bitmap` when no one else holds it).

ids: [C] item ids, each in [0, W * word_bits).
row_ids: [C] the query row of each id, each in [0, B).
bitmap: [B, W] visited bits, word_bits = 32 (int32) or 64 (int64); bit
  `id % word_bits` of word `id / word_bits` in row `q` is set when query `q`
  has visited item `id`.
kept_ids: [K] the kept ids, K <= C, in input order.
kept_row_ids: [K] the query row of each kept id.
new_bitmap: [B, W] `bitmap` with the kept pairs' bits set.
)doc");

REGISTER_OP("NannGatherUnvisitedNeighbors")
    .Input("frontier_ids: Tfrontier")
    .Input("frontier_row_ids: Trow")
    .Input("neighbor_values: Tid")
    .Input("neighbor_row_splits: Tsplits")
    .Input("bitmap: Tword")
    .Output("kept_ids: Tid")
    .Output("kept_row_ids: Trow")
    .Output("new_bitmap: Tword")
    .Attr("Tfrontier: {int32, int64} = DT_INT64")
    .Attr("Tid: {int32, int64} = DT_INT64")
    .Attr("Trow: {int32, int64} = DT_INT64")
    .Attr("Tsplits: {int32, int64} = DT_INT64")
    .Attr("Tword: {int32, int64} = DT_INT64")
    .SetShapeFn(GatherUnvisitedNeighborsShape)
    .Doc(R"doc(
Expands frontier nodes to their neighbours on one graph level and keeps the
neighbours each query has not visited yet, marking them (fused gather + filter).

The neighbours of node v are neighbor_values[neighbor_row_splits[v] :
neighbor_row_splits[v + 1]] (a CSR level, as a RaggedTensor's values and
row_splits). The result equals NannFilterUnvisited applied to the neighbour
lists of frontier_ids[0], frontier_ids[1], ... concatenated in that order, each
neighbour carrying the row id of its frontier node.

frontier_ids: [F] frontier node ids, each in [0, len(neighbor_row_splits) - 1).
frontier_row_ids: [F] the query row of each frontier node, each in [0, B).
neighbor_values: [E] neighbour ids of all nodes, each in [0, W * word_bits).
neighbor_row_splits: [num_nodes + 1] CSR row splits; only the rows of frontier
  nodes are read (and checked).
bitmap: [B, W] visited bits (see NannFilterUnvisited).
kept_ids: [K] the kept neighbour ids (dtype of neighbor_values), in expansion
  order.
kept_row_ids: [K] the query row of each kept id.
new_bitmap: [B, W] `bitmap` with the kept pairs' bits set.
)doc");

REGISTER_OP("NannGatherPassingNeighbors")
    .Input("frontier_ids: int32")
    .Input("frontier_row_ids: int32")
    .Input("neighbor_values: int32")
    .Input("neighbor_row_splits: int64")
    .Input("bitmap: Tword")
    .Input("item_category: int32")
    .Input("item_tags: int32")
    .Input("label_state: uint8")
    .Input("has_include: bool")
    .Input("held_keys: int64")
    .Input("tag_offset: int32")
    .Input("max_candidates: int32")
    .Output("kept_ids: int32")
    .Output("kept_row_ids: int32")
    .Output("new_bitmap: Tword")
    .Attr("Tword: {int32, int64} = DT_INT64")
    .SetShapeFn(GatherPassingNeighborsShape)
    .Doc(R"doc(
A filtered walk's two-hop expansion, fused: the frontier's unvisited neighbours
that pass the label filter, and the passing unvisited neighbours of those that
fail (two hops through a failing item).

Every first-hop neighbour is marked visited (as NannGatherUnvisitedNeighbors);
a second-hop item is marked only when it passes. The output holds the rows in
ascending order, each row's passing first hops, then its second hops, each in
expansion order, at most max_candidates per row (< 0 for no limit).

An item passes query row r when it carries no exclude label, carries an
include label if has_include[r], and (r, id) is not held: label_state[r, c] for
its category c and label_state[r, tag_offset + t] for each of its tags t > 0
are OR-ed (bit 1 include, bit 2 exclude); held_keys holds sorted keys
r * len(item_category) + id.

frontier_ids, frontier_row_ids, neighbor_values, neighbor_row_splits, bitmap:
  as NannGatherUnvisitedNeighbors.
item_category: [N] each item's category (0 <= c < tag_offset).
item_tags: [N, T] each item's tags (0 = none).
label_state: [B, L] the queries' labels, L > tag_offset.
has_include: [B] whether the query has an include list.
held_keys: [H] sorted (row, item) keys never to pass.
tag_offset: the column of tag 0 in label_state.
max_candidates: at most this many items per row (< 0: all).
)doc");

}  // namespace nann

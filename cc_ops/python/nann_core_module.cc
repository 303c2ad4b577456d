// pybind11 module `nann_tf._nann_core`: the TF-free core (lib/) for NumPy
// callers such as offline tuners. Same semantics as the TensorFlow ops; long
// calls release the GIL; bad input raises ValueError (TypeError for dtypes)
// naming the offending value.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "lib/beam_replay.h"
#include "lib/visited_bitmap.h"

namespace py = pybind11;

namespace nann {
namespace {

using Int64Array =
    py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// Converts `obj` to a C-contiguous 1-D int64 array (a copy only if needed).
Int64Array ToInt64Vector(py::handle obj, const char* name) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw py::type_error(std::string(name) + " must be array-like");
  if (arr.ndim() != 1) {
    throw py::value_error(internal::Cat(name, " must be 1-D, got ", arr.ndim(),
                                        " dimensions"));
  }
  const char kind = arr.dtype().kind();
  if (arr.size() > 0 && kind != 'i' && kind != 'u') {
    throw py::type_error(internal::Cat(name, " must hold integers, got dtype ",
                                       std::string(py::str(arr.dtype()))));
  }
  Int64Array out = Int64Array::ensure(arr);
  if (!out) throw py::type_error(std::string(name) + " must be int64-convertible");
  return out;
}

// A 1-D int32 or int64 array kept in its own dtype (CSR levels can be large).
struct IntVector {
  py::array array;
  bool is_int64 = true;
  const void* data() const { return array.data(); }
  int64_t size() const { return static_cast<int64_t>(array.size()); }
};

IntVector ToIntVector(py::handle obj, const std::string& name) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw py::type_error(name + " must be array-like");
  if (arr.ndim() != 1) {
    throw py::value_error(internal::Cat(name, " must be 1-D, got ", arr.ndim(),
                                        " dimensions"));
  }
  const bool contiguous = (arr.flags() & py::array::c_style) != 0;
  if (contiguous && arr.dtype().is(py::dtype::of<int32_t>())) {
    return {arr, false};
  }
  if (contiguous && arr.dtype().is(py::dtype::of<int64_t>())) {
    return {arr, true};
  }
  return {ToInt64Vector(arr, name.c_str()), true};
}

// The bitmap to write to: `bitmap` itself (inplace) or a copy.
py::array BitmapOutput(py::handle obj, bool inplace, int* word_bits) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw py::type_error("bitmap must be a NumPy array");
  if (arr.ndim() != 2) {
    throw py::value_error(internal::Cat(
        "bitmap must be 2-D [batch, words], got ", arr.ndim(), " dimensions"));
  }
  const char kind = arr.dtype().kind();
  if ((kind != 'i' && kind != 'u') ||
      (arr.itemsize() != 4 && arr.itemsize() != 8)) {
    throw py::type_error(internal::Cat(
        "bitmap must hold 32- or 64-bit integer words, got dtype ",
        std::string(py::str(arr.dtype()))));
  }
  *word_bits = static_cast<int>(arr.itemsize()) * 8;
  if (inplace) {
    if (!(arr.flags() & py::array::c_style) || !arr.writeable()) {
      throw py::value_error(
          "inplace=True needs a writeable C-contiguous bitmap");
    }
    return arr;
  }
  py::array copy(arr.dtype(), std::vector<py::ssize_t>{arr.shape(0),
                                                       arr.shape(1)});
  py::module_::import("numpy").attr("copyto")(copy, arr);
  return copy;
}

template <typename Word>
BitmapView<Word> ViewOf(py::array& bitmap) {
  return BitmapView<Word>(static_cast<Word*>(bitmap.mutable_data()),
                          bitmap.shape(0), bitmap.shape(1));
}

py::array_t<int64_t> FromVector(const std::vector<int64_t>& v) {
  py::array_t<int64_t> out(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * 8);
  return out;
}

py::tuple FilterUnvisitedPy(py::handle ids_obj, py::handle rows_obj,
                            py::handle bitmap_obj, bool inplace) {
  Int64Array ids = ToInt64Vector(ids_obj, "ids");
  Int64Array rows = ToInt64Vector(rows_obj, "row_ids");
  if (ids.size() != rows.size()) {
    throw py::value_error(internal::Cat("ids has ", ids.size(),
                                        " elements but row_ids has ",
                                        rows.size(),
                                        ": expected one row id per id"));
  }
  int word_bits = 64;
  py::array bitmap = BitmapOutput(bitmap_obj, inplace, &word_bits);
  const int64_t n = ids.size();
  const int64_t* id_data = ids.data();
  const int64_t* row_data = rows.data();
  std::vector<int64_t> kept_ids, kept_rows;
  std::string error;
  {
    py::gil_scoped_release release;
    error = ValidatePairs(id_data, row_data, n, bitmap.shape(0),
                          bitmap.shape(1) * word_bits, word_bits);
    if (error.empty()) {
      std::vector<uint8_t> keep(n);
      const int64_t kept =
          word_bits == 64
              ? MarkUnvisited(id_data, row_data, n, ViewOf<uint64_t>(bitmap),
                              keep.data())
              : MarkUnvisited(id_data, row_data, n, ViewOf<uint32_t>(bitmap),
                              keep.data());
      kept_ids.resize(kept);
      kept_rows.resize(kept);
      Compact(id_data, keep.data(), n, kept_ids.data());
      Compact(row_data, keep.data(), n, kept_rows.data());
    }
  }
  if (!error.empty()) throw py::value_error(error);
  return py::make_tuple(FromVector(kept_ids), FromVector(kept_rows), bitmap);
}

py::tuple GatherUnvisitedNeighborsPy(py::handle frontier_obj,
                                     py::handle rows_obj,
                                     py::handle values_obj,
                                     py::handle splits_obj,
                                     py::handle bitmap_obj, bool inplace) {
  Int64Array frontier = ToInt64Vector(frontier_obj, "frontier_ids");
  Int64Array rows = ToInt64Vector(rows_obj, "frontier_row_ids");
  Int64Array values = ToInt64Vector(values_obj, "neighbor_values");
  Int64Array splits = ToInt64Vector(splits_obj, "neighbor_row_splits");
  if (frontier.size() != rows.size()) {
    throw py::value_error(internal::Cat(
        "frontier_ids has ", frontier.size(), " elements but frontier_row_ids "
        "has ", rows.size(), ": expected one row id per frontier node"));
  }
  int word_bits = 64;
  py::array bitmap = BitmapOutput(bitmap_obj, inplace, &word_bits);
  std::vector<int64_t> kept_ids, kept_rows;
  std::string error;
  {
    py::gil_scoped_release release;
    // Validate before touching the bitmap: with inplace=True it is the
    // caller's array, which a failed call must leave as it was.
    int64_t total = 0;
    error = ValidateNeighborGather(
        frontier.data(), rows.data(), frontier.size(), values.data(),
        values.size(), splits.data(), splits.size(), bitmap.shape(0),
        bitmap.shape(1) * word_bits, word_bits, &total);
    if (error.empty()) {
      kept_ids.reserve(total);
      kept_rows.reserve(total);
      error = word_bits == 64
                  ? GatherUnvisitedNeighbors(
                        frontier.data(), rows.data(), frontier.size(),
                        values.data(), values.size(), splits.data(),
                        splits.size(), ViewOf<uint64_t>(bitmap), &kept_ids,
                        &kept_rows)
                  : GatherUnvisitedNeighbors(
                        frontier.data(), rows.data(), frontier.size(),
                        values.data(), values.size(), splits.data(),
                        splits.size(), ViewOf<uint32_t>(bitmap), &kept_ids,
                        &kept_rows);
    }
  }
  if (!error.empty()) throw py::value_error(error);
  return py::make_tuple(FromVector(kept_ids), FromVector(kept_rows), bitmap);
}

py::array NewVisitedPy(int64_t batch_size, int64_t num_items, int word_bits) {
  if (word_bits != 32 && word_bits != 64) {
    throw py::value_error(
        internal::Cat("word_bits = ", word_bits, ": expected 32 or 64"));
  }
  if (batch_size < 0) {
    throw py::value_error(
        internal::Cat("batch_size = ", batch_size, ": expected >= 0"));
  }
  if (num_items < 0) {
    throw py::value_error(
        internal::Cat("num_items = ", num_items, ": expected >= 0"));
  }
  const int64_t words = NumWords(num_items, word_bits);
  // The same guard as nann_tf.search.visited.MAX_BITMAP_BYTES.
  constexpr int64_t kMaxBytes = int64_t{1} << 34;
  if (batch_size > 0 && words > kMaxBytes / (word_bits / 8) / batch_size) {
    throw py::value_error(internal::Cat(
        "a visited bitmap for batch_size = ", batch_size, ", num_items = ",
        num_items, " would exceed ", kMaxBytes, " bytes"));
  }
  py::dtype dtype = word_bits == 64 ? py::dtype::of<int64_t>()
                                    : py::dtype::of<int32_t>();
  return py::module_::import("numpy").attr("zeros")(
      py::make_tuple(batch_size, words), dtype);
}

// {level: value} -> vector indexed by level 0..count-1; keys >= count ignored.
std::vector<int64_t> LevelParams(const py::dict& params, const char* name,
                                 int count) {
  std::map<int64_t, int64_t> by_level;
  for (auto item : params) {
    const int64_t level = py::cast<int64_t>(item.first);
    if (level < 0) {
      throw py::value_error(internal::Cat(name, " has level ", level,
                                          ": levels are >= 0"));
    }
    by_level[level] = py::cast<int64_t>(item.second);
  }
  std::vector<int64_t> out(count);
  for (int l = 0; l < count; ++l) {
    auto it = by_level.find(l);
    if (it == by_level.end()) {
      throw py::value_error(internal::Cat(name, " has no entry for level ", l,
                                          " (expected levels 0..", count - 1,
                                          ")"));
    }
    out[l] = it->second;
  }
  return out;
}

py::tuple BeamSearchReplayPy(py::sequence levels_obj, py::handle start_obj,
                             py::handle scores_obj, py::dict ef_obj,
                             py::dict rounds_obj, int64_t k, int num_threads,
                             py::object seeds_obj) {
  py::array scores_any = py::array::ensure(scores_obj);
  if (!scores_any || scores_any.ndim() != 2) {
    throw py::value_error("scores must be a 2-D array [batch, num_items]");
  }
  if (scores_any.dtype().kind() != 'f') {
    throw py::type_error(internal::Cat(
        "scores must hold floats, got dtype ",
        std::string(py::str(scores_any.dtype()))));
  }
  auto scores =
      py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(
          scores_any);
  const int64_t batch = scores.shape(0);
  const int64_t num_items = scores.shape(1);
  Int64Array start = ToInt64Vector(start_obj, "start_nodes");
  Int64Array seeds;
  int64_t num_seeds = 0;
  if (!seeds_obj.is_none()) {
    py::array seeds_any = py::array::ensure(seeds_obj);
    if (!seeds_any || seeds_any.ndim() != 2 || seeds_any.shape(0) != batch) {
      throw py::value_error(internal::Cat(
          "seeds must be a 2-D array [batch, num_seeds] with batch = ", batch,
          " (the rows of scores)"));
    }
    const char kind = seeds_any.dtype().kind();
    if (seeds_any.size() > 0 && kind != 'i' && kind != 'u') {
      throw py::type_error(internal::Cat(
          "seeds must hold integers, got dtype ",
          std::string(py::str(seeds_any.dtype()))));
    }
    seeds = Int64Array::ensure(seeds_any);
    num_seeds = seeds_any.shape(1);
  }

  if (ef_obj.size() == 0) throw py::value_error("ef must not be empty");
  int64_t start_level = 0;
  for (auto item : ef_obj) {
    start_level = std::max(start_level, py::cast<int64_t>(item.first));
  }
  if (start_level > 64) {
    throw py::value_error(internal::Cat("ef has level ", start_level,
                                        ": expected a start level <= 64"));
  }
  BeamSearchParams params;
  params.start_level = static_cast<int>(start_level);
  params.ef = LevelParams(ef_obj, "ef", params.start_level + 1);
  params.rounds = LevelParams(rounds_obj, "T", params.start_level);
  params.k = k;

  std::vector<IntVector> keep_alive;
  std::vector<CsrLevel> levels;
  const py::ssize_t num_levels = py::len(levels_obj);
  for (py::ssize_t l = 0; l < num_levels && l < params.start_level; ++l) {
    py::sequence pair = py::reinterpret_borrow<py::sequence>(levels_obj[l]);
    if (py::len(pair) != 2) {
      throw py::value_error(internal::Cat(
          "levels[", l, "] must be a (values, row_splits) pair"));
    }
    IntVector values = ToIntVector(pair[0], internal::Cat("levels[", l, "] values"));
    IntVector splits =
        ToIntVector(pair[1], internal::Cat("levels[", l, "] row_splits"));
    CsrLevel level;
    level.values = values.data();
    level.values_are_int64 = values.is_int64;
    level.num_values = values.size();
    level.row_splits = splits.data();
    level.row_splits_are_int64 = splits.is_int64;
    level.num_row_splits = splits.size();
    levels.push_back(level);
    keep_alive.push_back(std::move(values));
    keep_alive.push_back(std::move(splits));
  }
  if (k < 1) throw py::value_error(internal::Cat("k = ", k, ": expected >= 1"));

  py::array_t<int64_t> out_ids({batch, k});
  py::array_t<float> out_scores({batch, k});
  py::array_t<int64_t> out_num_scored(batch);
  std::string error;
  {
    py::gil_scoped_release release;
    error = BeamSearchReplay(levels, start.data(), start.size(),
                             num_seeds > 0 ? seeds.data() : nullptr, num_seeds,
                             scores.data(),
                             batch, num_items, params, num_threads,
                             out_ids.mutable_data(), out_scores.mutable_data(),
                             out_num_scored.mutable_data());
  }
  if (!error.empty()) throw py::value_error(error);
  return py::make_tuple(out_ids, out_scores, out_num_scored);
}

}  // namespace
}  // namespace nann

PYBIND11_MODULE(_nann_core, m) {
  m.doc() =
      "TF-free core of nann-tf's visited bitmap and beam-search replay, for "
      "NumPy callers (get it with nann_tf.ops.numpy_core()).\n\n"
      "Bitmaps are int64 [batch, ceil(N/64)] (or int32 [batch, ceil(N/32)]) "
      "arrays, the same layout as nann_tf.search.visited.new_visited, so state "
      "and results match the TensorFlow ops exactly. Every function releases "
      "the GIL while it works on the arrays.";

  m.def("new_visited", &nann::NewVisitedPy, py::arg("batch_size"),
        py::arg("num_items"), py::arg("word_bits") = 64,
        R"doc(Returns an all-clear visited bitmap [batch_size, ceil(num_items / word_bits)].

Args:
  batch_size: number of queries (rows).
  num_items: corpus size N.
  word_bits: 64 (int64 words) or 32 (int32 words).
)doc");

  m.def("filter_unvisited", &nann::FilterUnvisitedPy, py::arg("ids"),
        py::arg("row_ids"), py::arg("bitmap"), py::arg("inplace") = false,
        R"doc(Keeps the (row, id) pairs not visited yet, in order, and marks them.

Same semantics as nann_tf.search.visited.filter_unvisited: a pair is kept when
its bit is clear and it did not occur earlier in this batch.

Args:
  ids: int array [C] of item ids in [0, bitmap.shape[1] * word_bits).
  row_ids: int array [C] of query rows in [0, bitmap.shape[0]).
  bitmap: int64/int32 array [B, W].
  inplace: update `bitmap` itself instead of a copy.

Returns:
  (kept_ids int64 [K], kept_row_ids int64 [K], new_bitmap [B, W]).

Raises:
  ValueError: an id or row id out of range, or mismatched lengths.
)doc");

  m.def("gather_unvisited_neighbors", &nann::GatherUnvisitedNeighborsPy,
        py::arg("frontier_ids"), py::arg("frontier_row_ids"),
        py::arg("neighbor_values"), py::arg("neighbor_row_splits"),
        py::arg("bitmap"), py::arg("inplace") = false,
        R"doc(Expands frontier nodes to their CSR neighbours and keeps the unvisited ones.

Equals filter_unvisited over the concatenated neighbour lists of the frontier
nodes (each neighbour carrying its frontier node's row id).

Returns:
  (kept_ids int64 [K], kept_row_ids int64 [K], new_bitmap [B, W]).

Raises:
  ValueError: a frontier id, row id, row_splits range or neighbour id out of range.
)doc");

  m.def("beam_search_replay", &nann::BeamSearchReplayPy, py::arg("levels"),
        py::arg("start_nodes"), py::arg("scores"), py::arg("ef"), py::arg("T"),
        py::arg("k"), py::arg("num_threads") = 1, py::arg("seeds") = py::none(),
        R"doc(Replays NANN beam retrieval on precomputed scores.

Score every start-level node and the query's seeds (each item once) and keep
the best ef[S] (S = max(ef)); for each level l = S-1..0 the frontier starts as
the whole result set (on level 0 plus the seeds, whatever their score), then
at most T[l]
rounds of: neighbours on level l -> drop items already scored (start nodes
count as scored) -> results = best ef[l] of results + new -> frontier = the new
items that entered; stop when the frontier is empty. Returns the best k of the
level-0 results. Order: higher score first, ties broken by the smaller id.
Items scoring -inf (or NaN) are counted as scored but never enter the results.
Same algorithm and rules as nann_tf.search.beam.beam_search (which pads with id
0 where this pads with -1).

Args:
  levels: sequence of (values, row_splits) CSR pairs, levels[l] for level l;
    row_splits has N + 1 elements; int32 or int64.
  start_nodes: int array of the start-level nodes.
  scores: float32 [B, N], the score of every item for every query.
  ef: {level: ef} for levels 0..S.
  T: {level: rounds} for levels 0..S-1 (entries for levels >= S are ignored).
  k: number of results per query.
  num_threads: worker threads over queries (<= 0: one per CPU).
  seeds: optional int array [B, E] of entry items per query (0 = none), e.g.
    the user's history.

Returns:
  (ids int64 [B, k], scores float32 [B, k], num_scored int64 [B]); rows with
  fewer than k results are padded with id -1 and score -inf.

Raises:
  ValueError: inconsistent levels, ids out of range, bad parameters.
)doc");
}

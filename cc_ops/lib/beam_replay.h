// Replay of NANN beam retrieval on precomputed scores, free of TensorFlow.
//
// Offline tools (e.g. a parameter tuner) know the score of every item for
// every query, scores[B, N], and want to know what the beam search would
// return for given parameters without running the model. This file implements
// exactly the algorithm of ARCHITECTURE.md ("Beam-retrieval"):
//
//   1. Score every node of the start level S (the `start_nodes` list; each
//      counts as visited) and the query's seed items (optional entry points,
//      e.g. the user's history; each item scored once), and keep the best
//      ef[S] as the results.
//   2. For each level l = S-1 .. 0: the frontier is the whole current result
//      set; run at most rounds[l] (T_l) rounds of
//        frontier -> neighbours of the frontier on level l
//                 -> drop items this query already scored (visited bitmap;
//                    an item is scored at most once per query)
//                 -> score the new items
//                 -> results = best ef[l] of (results U new)
//                 -> frontier = the new items that entered the results,
//      stopping early when the frontier is empty. On level 0 the first
//      frontier also holds the seeds, whatever their score (so an excluded
//      seed, scored -inf, still leads to its neighbours). With rounds[l] = 0 the
//      results pass to the next level unchanged (not truncated to ef[l]).
//   3. Return the best k of the level-0 results.
//
// Order ("best"): higher score first; equal scores are broken by the smaller
// item id. This is a strict total order on distinct ids, so every "best ef"
// selection is a unique set and the result does not depend on the order in
// which neighbours are visited. The TensorFlow beam search
// (nann_tf/search/beam.py) uses the same rule, so the two agree.
//
// Scores of -inf (and NaN, which counts as -inf) mark items that must never be
// returned (e.g. excluded items): such an item is scored and counted, but never
// enters the results, so it is never expanded either (as in the TF search).
//
// Outputs per query: ids[k] and scores[k] sorted best first, padded with
// id -1 / score -inf when fewer than k items were found (the TF search pads
// with id 0, its padding id), and the number of distinct items scored
// (start-level nodes included).

#ifndef NANN_CC_OPS_LIB_BEAM_REPLAY_H_
#define NANN_CC_OPS_LIB_BEAM_REPLAY_H_

#include <cstdint>
#include <string>
#include <vector>

namespace nann {

// One level of the graph in CSR form: the neighbours of node v are
// values[row_splits[v] : row_splits[v + 1]]. Every item is a row (empty rows
// for nodes not on the level). values and row_splits are int32 or int64.
struct CsrLevel {
  const void* values = nullptr;
  bool values_are_int64 = true;
  int64_t num_values = 0;
  const void* row_splits = nullptr;
  bool row_splits_are_int64 = true;
  int64_t num_row_splits = 0;  // num_nodes + 1

  int64_t Split(int64_t i) const {
    return row_splits_are_int64
               ? static_cast<const int64_t*>(row_splits)[i]
               : static_cast<int64_t>(static_cast<const int32_t*>(row_splits)[i]);
  }
  int64_t Value(int64_t j) const {
    return values_are_int64
               ? static_cast<const int64_t*>(values)[j]
               : static_cast<int64_t>(static_cast<const int32_t*>(values)[j]);
  }
};

struct BeamSearchParams {
  int start_level = 0;          // S
  std::vector<int64_t> ef;      // ef[l] for l = 0 .. S, each >= 1
  std::vector<int64_t> rounds;  // T[l] for l = 0 .. S-1, each >= 0
  int64_t k = 1;                // >= 1
};

// Checks that `level` is a CSR structure over `num_items` nodes whose values
// are item ids. `index` names the level in messages. O(num_values).
std::string ValidateCsrLevel(const CsrLevel& level, int index,
                             int64_t num_items);

// Checks the parameters against the number of CSR levels available.
std::string ValidateBeamSearchParams(const BeamSearchParams& params,
                                     int64_t num_levels);

// Runs the replay for queries 0..batch-1 with up to `num_threads` threads
// (<= 0: one per hardware thread). `seeds` is row-major [batch, num_seeds]
// (0 = no seed; num_seeds may be 0 and seeds null); `scores` is row-major
// [batch, num_items]; `levels[l]` is used for l < start_level. Writes
// out_ids[batch * k], out_scores[batch * k] and out_num_scored[batch].
// Validates everything first; returns an empty string on success or a message
// naming the bad input.
std::string BeamSearchReplay(const std::vector<CsrLevel>& levels,
                             const int64_t* start_nodes, int64_t num_start,
                             const int64_t* seeds, int64_t num_seeds,
                             const float* scores, int64_t batch,
                             int64_t num_items, const BeamSearchParams& params,
                             int num_threads, int64_t* out_ids,
                             float* out_scores, int64_t* out_num_scored);

}  // namespace nann

#endif  // NANN_CC_OPS_LIB_BEAM_REPLAY_H_

#include "lib/beam_replay.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <thread>
#include <unordered_set>
#include <vector>

#include "lib/visited_bitmap.h"

namespace nann {
namespace {

using internal::Cat;

struct Candidate {
  float score;
  int64_t id;
  bool fresh;  // entered the results in the current round
};

// The order of ARCHITECTURE.md: higher score first, ties -> smaller id first.
inline bool Before(const Candidate& a, const Candidate& b) {
  if (a.score != b.score) return a.score > b.score;
  return a.id < b.id;
}

void KeepBest(std::vector<Candidate>* results, int64_t ef) {
  if (static_cast<int64_t>(results->size()) <= ef) return;
  std::nth_element(results->begin(), results->begin() + ef, results->end(),
                   Before);
  results->resize(ef);
}

// Per-thread state: one visited bitmap and scratch buffers, reused per query.
class QueryReplayer {
 public:
  QueryReplayer(const std::vector<CsrLevel>& levels,
                const BeamSearchParams& params, int64_t num_items)
      : levels_(levels),
        params_(params),
        words_(static_cast<size_t>(NumWords(num_items, 64)), 0) {}

  void Run(const float* scores, const int64_t* start, int64_t num_start,
           const int64_t* seeds, int64_t num_seeds, int64_t* out_ids,
           float* out_scores, int64_t* out_num_scored) {
    std::fill(words_.begin(), words_.end(), uint64_t{0});
    BitmapView<uint64_t> visited(words_.data(), 1,
                                 static_cast<int64_t>(words_.size()));
    results_.clear();
    int64_t num_scored = 0;
    for (int64_t i = 0; i < num_start; ++i) {
      if (visited.TestAndSet(0, start[i])) {
        ++num_scored;
        Offer(scores[start[i]], start[i], false);
      }
    }
    scored_seeds_.clear();
    for (int64_t i = 0; i < num_seeds; ++i) {
      if (seeds[i] != 0 && visited.TestAndSet(0, seeds[i])) {
        ++num_scored;
        Offer(scores[seeds[i]], seeds[i], false);
        scored_seeds_.push_back(seeds[i]);
      }
    }
    const int s = params_.start_level;
    KeepBest(&results_, params_.ef[s]);
    // The width the TF search carries: the start level's, then the widest ef so far.
    int64_t width = std::min<int64_t>(params_.ef[s], num_start + num_seeds);

    for (int level = s - 1; level >= 0; --level) {
      const CsrLevel& graph = levels_[level];
      width = std::max<int64_t>(width, params_.ef[level]);
      if (level == 0 && !scored_seeds_.empty()) {
        // A seed that an upper level's cut dropped competes again (beam.py).
        in_results_.clear();
        for (const Candidate& c : results_) in_results_.insert(c.id);
        for (int64_t id : scored_seeds_) {
          if (in_results_.count(id) == 0) Offer(scores[id], id, false);
        }
        KeepBest(&results_, width);
      }
      frontier_.clear();
      for (const Candidate& c : results_) frontier_.push_back(c.id);
      if (level == 0) {  // the seeds join the first level-0 frontier
        for (int64_t i = 0; i < num_seeds; ++i) {
          if (seeds[i] != 0) frontier_.push_back(seeds[i]);
        }
      }
      for (int64_t round = 0; round < params_.rounds[level]; ++round) {
        if (frontier_.empty()) break;
        for (int64_t node : frontier_) {
          const int64_t end = graph.Split(node + 1);
          for (int64_t j = graph.Split(node); j < end; ++j) {
            const int64_t id = graph.Value(j);
            if (visited.TestAndSet(0, id)) {
              ++num_scored;
              Offer(scores[id], id, true);
            }
          }
        }
        KeepBest(&results_, params_.ef[level]);
        frontier_.clear();
        for (Candidate& c : results_) {
          if (c.fresh) {
            frontier_.push_back(c.id);
            c.fresh = false;
          }
        }
      }
    }

    std::sort(results_.begin(), results_.end(), Before);
    const int64_t k = params_.k;
    const int64_t found = std::min<int64_t>(k, results_.size());
    for (int64_t i = 0; i < found; ++i) {
      out_ids[i] = results_[i].id;
      out_scores[i] = results_[i].score;
    }
    for (int64_t i = found; i < k; ++i) {
      out_ids[i] = -1;
      out_scores[i] = -std::numeric_limits<float>::infinity();
    }
    *out_num_scored = num_scored;
  }

 private:
  // A scored item enters the candidates unless its score is -inf or NaN.
  void Offer(float score, int64_t id, bool fresh) {
    if (std::isnan(score) || score == -std::numeric_limits<float>::infinity()) {
      return;
    }
    results_.push_back({score, id, fresh});
  }

  const std::vector<CsrLevel>& levels_;
  const BeamSearchParams& params_;
  std::vector<uint64_t> words_;
  std::vector<Candidate> results_;
  std::vector<int64_t> frontier_;
  std::vector<int64_t> scored_seeds_;
  std::unordered_set<int64_t> in_results_;
};

}  // namespace

std::string ValidateCsrLevel(const CsrLevel& level, int index,
                             int64_t num_items) {
  if (level.num_row_splits != num_items + 1) {
    return Cat("levels[", index, "] row_splits has ", level.num_row_splits,
               " elements but the scores cover ", num_items,
               " items: expected num_items + 1 = ", num_items + 1,
               " (one CSR row per item, empty where a node is not on the "
               "level)");
  }
  if (level.Split(0) != 0) {
    return Cat("levels[", index, "] row_splits[0] = ", level.Split(0),
               ": expected 0");
  }
  for (int64_t i = 0; i < num_items; ++i) {
    if (level.Split(i + 1) < level.Split(i)) {
      return Cat("levels[", index, "] row_splits[", i + 1,
                 "] = ", level.Split(i + 1), " is smaller than row_splits[", i,
                 "] = ", level.Split(i), ": row_splits must be non-decreasing");
    }
  }
  if (level.Split(num_items) != level.num_values) {
    return Cat("levels[", index, "] row_splits[-1] = ", level.Split(num_items),
               " but values has ", level.num_values,
               " elements: expected them to be equal");
  }
  for (int64_t j = 0; j < level.num_values; ++j) {
    const int64_t id = level.Value(j);
    if (id < 0 || id >= num_items) {
      return Cat("levels[", index, "] values[", j, "] = ", id,
                 " is not an item: expected 0 <= id < ", num_items);
    }
  }
  return std::string();
}

std::string ValidateBeamSearchParams(const BeamSearchParams& params,
                                     int64_t num_levels) {
  const int s = params.start_level;
  if (s < 0) return Cat("start level = ", s, ": expected >= 0");
  if (static_cast<int64_t>(params.ef.size()) != s + 1) {
    return Cat("ef has ", params.ef.size(), " levels for start level ", s,
               ": expected one per level 0..", s);
  }
  if (static_cast<int64_t>(params.rounds.size()) != s) {
    return Cat("T has ", params.rounds.size(), " levels for start level ", s,
               ": expected one per level 0..", s - 1);
  }
  for (int l = 0; l <= s; ++l) {
    if (params.ef[l] < 1) {
      return Cat("ef[", l, "] = ", params.ef[l], ": expected >= 1");
    }
  }
  for (int l = 0; l < s; ++l) {
    if (params.rounds[l] < 0) {
      return Cat("T[", l, "] = ", params.rounds[l], ": expected >= 0");
    }
  }
  if (params.k < 1) return Cat("k = ", params.k, ": expected >= 1");
  if (num_levels < s) {
    return Cat("start level ", s, " needs the CSR levels 0..", s - 1, ", got ",
               num_levels, " level(s)");
  }
  return std::string();
}

std::string BeamSearchReplay(const std::vector<CsrLevel>& levels,
                             const int64_t* start_nodes, int64_t num_start,
                             const int64_t* seeds, int64_t num_seeds,
                             const float* scores, int64_t batch,
                             int64_t num_items, const BeamSearchParams& params,
                             int num_threads, int64_t* out_ids,
                             float* out_scores, int64_t* out_num_scored) {
  if (batch < 0) return Cat("batch = ", batch, ": expected >= 0");
  if (num_items < 1) return Cat("num_items = ", num_items, ": expected >= 1");
  std::string error =
      ValidateBeamSearchParams(params, static_cast<int64_t>(levels.size()));
  if (!error.empty()) return error;
  for (int l = 0; l < params.start_level; ++l) {
    error = ValidateCsrLevel(levels[l], l, num_items);
    if (!error.empty()) return error;
  }
  for (int64_t i = 0; i < num_start; ++i) {
    if (start_nodes[i] < 0 || start_nodes[i] >= num_items) {
      return Cat("start_nodes[", i, "] = ", start_nodes[i],
                 " is not an item: expected 0 <= id < ", num_items);
    }
  }
  if (num_seeds < 0) return Cat("num_seeds = ", num_seeds, ": expected >= 0");
  for (int64_t q = 0; q < batch; ++q) {
    for (int64_t j = 0; j < num_seeds; ++j) {
      const int64_t id = seeds[q * num_seeds + j];
      if (id < 0 || id >= num_items) {
        return Cat("seeds[", q, ", ", j, "] = ", id,
                   " is not an item: expected 0 <= id < ", num_items,
                   " (0 = no seed)");
      }
    }
  }

  if (num_threads <= 0) {
    num_threads = static_cast<int>(std::thread::hardware_concurrency());
  }
  num_threads = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(num_threads, batch)));

  std::atomic<int64_t> next_query{0};
  auto work = [&]() {
    QueryReplayer replayer(levels, params, num_items);
    for (;;) {
      const int64_t q = next_query.fetch_add(1);
      if (q >= batch) return;
      replayer.Run(scores + q * num_items, start_nodes, num_start,
                   seeds + q * num_seeds, num_seeds, out_ids + q * params.k, out_scores + q * params.k,
                   out_num_scored + q);
    }
  };
  if (num_threads == 1) {
    work();
  } else {
    std::vector<std::thread> threads;
    threads.reserve(num_threads);
    for (int t = 0; t < num_threads; ++t) threads.emplace_back(work);
    for (std::thread& t : threads) t.join();
  }
  return std::string();
}

}  // namespace nann

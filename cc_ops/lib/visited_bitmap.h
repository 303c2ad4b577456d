// Per-query "visited" bitmaps for the NANN beam search, free of TensorFlow.
//
// A batch of B queries over a corpus of N items keeps one row of W words per
// query, W = ceil(N / word_bits), word_bits 32 or 64. Bit `id % word_bits` of
// word `id / word_bits` in row `q` is set once query `q` has scored item `id`.
// The capacity of a row is W * word_bits >= N: ids are valid in [0, capacity).
//
// The step every beam-search round needs is `MarkUnvisited`: walk a batch of
// (query row, item id) pairs in order and keep a pair exactly when its bit is
// still clear, setting it. A pair repeated later in the same batch therefore
// finds its bit set and is dropped, so the kept pairs are the first occurrences
// of the not-yet-visited pairs, in input order.
//
// `GatherUnvisitedNeighbors` is the fused variant: it expands frontier nodes to
// their neighbours on one CSR level of the graph and filters them in the same
// pass, without materialising the neighbour list.
//
// Validation is separate from mutation: every `Validate*` function returns an
// empty string for valid input or a message naming the offending value, and the
// mutating functions assume validated input. Adapters (the TensorFlow kernel,
// the pybind11 module) call both.

#ifndef NANN_CC_OPS_LIB_VISITED_BITMAP_H_
#define NANN_CC_OPS_LIB_VISITED_BITMAP_H_

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace nann {

// Number of `word_bits`-bit words a row needs to hold `num_items` bits.
inline int64_t NumWords(int64_t num_items, int word_bits) {
  return (num_items + word_bits - 1) / word_bits;
}

namespace internal {

inline void AppendAll(std::ostringstream&) {}
template <typename T, typename... Rest>
void AppendAll(std::ostringstream& out, const T& first, const Rest&... rest) {
  out << first;
  AppendAll(out, rest...);
}

// Concatenates the arguments' stream representations (error paths only).
template <typename... Args>
std::string Cat(const Args&... args) {
  std::ostringstream out;
  AppendAll(out, args...);
  return out.str();
}

inline void Prefetch(const void* address) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(address);
#else
  (void)address;
#endif
}

// Widens any integer to int64 for printing (int8/uint8 would print as chars).
template <typename T>
int64_t AsInt64(T value) {
  return static_cast<int64_t>(value);
}

constexpr const char kEmptySplitsError[] =
    "neighbor_row_splits must have at least one element (row_splits of a CSR "
    "level with num_nodes rows has num_nodes + 1 elements), got 0";

// The checks of frontier entry i shared by ValidateNeighborGather and
// GatherUnvisitedNeighbors: a node of the level, a row of the bitmap, a valid
// CSR range. On success sets [*begin, *end) to the node's neighbour range.
template <typename Split>
std::string CheckFrontierEntry(int64_t i, int64_t node, int64_t row,
                               const Split* splits, int64_t num_nodes,
                               int64_t num_values, int64_t rows,
                               int64_t* begin, int64_t* end) {
  if (node < 0 || node >= num_nodes) {
    return Cat("frontier_ids[", i, "] = ", node,
               " is not a node of the CSR level: expected 0 <= id < ",
               num_nodes, " (len(neighbor_row_splits) - 1)");
  }
  if (row < 0 || row >= rows) {
    return Cat("frontier_row_ids[", i, "] = ", row,
               " is not a query row of the visited bitmap: expected 0 <= row < ",
               rows, " (the bitmap's batch size)");
  }
  *begin = AsInt64(splits[node]);
  *end = AsInt64(splits[node + 1]);
  if (*begin < 0 || *begin > *end || *end > num_values) {
    return Cat("neighbor_row_splits[", node, ":", node + 2, "] = [", *begin,
               ", ", *end, "] (the row of frontier_ids[", i,
               "]) is not a valid CSR range: expected 0 <= start <= limit <= ",
               num_values, " (len(neighbor_values))");
  }
  return std::string();
}

// The message for neighbour values[j] = id of `node` outside the bitmap.
inline std::string NeighborOutsideBitmap(int64_t j, int64_t id, int64_t node,
                                         int64_t capacity, int word_bits) {
  return Cat("neighbor_values[", j, "] = ", id, " (a neighbour of node ", node,
             ") is outside the visited bitmap: expected 0 <= id < ", capacity,
             " (", capacity / word_bits, " words of ", word_bits,
             " bits per query)");
}

}  // namespace internal

// A non-owning view of a [rows, words_per_row] bitmap of unsigned words.
template <typename Word>
class BitmapView {
  static_assert(std::is_same<Word, uint32_t>::value ||
                    std::is_same<Word, uint64_t>::value,
                "bitmap words are uint32_t or uint64_t");

 public:
  static constexpr int kBits = 8 * static_cast<int>(sizeof(Word));

  BitmapView(Word* words, int64_t rows, int64_t words_per_row)
      : words_(words), rows_(rows), words_per_row_(words_per_row) {}

  int64_t rows() const { return rows_; }
  int64_t words_per_row() const { return words_per_row_; }
  int64_t capacity() const { return words_per_row_ * kBits; }
  Word* data() const { return words_; }

  // Hints the CPU to fetch the word of (row, id); no effect on the bits.
  void Prefetch(int64_t row, int64_t id) const {
    internal::Prefetch(
        words_ + row * words_per_row_ + static_cast<int64_t>(
                                            static_cast<uint64_t>(id) / kBits));
  }

  bool Test(int64_t row, int64_t id) const {
    const uint64_t u = static_cast<uint64_t>(id);
    return (words_[row * words_per_row_ + static_cast<int64_t>(u / kBits)] >>
            (u % kBits)) &
           1u;
  }

  // Sets the bit of (row, id); returns true when it was clear (first visit).
  bool TestAndSet(int64_t row, int64_t id) {
    const uint64_t u = static_cast<uint64_t>(id);
    Word& word = words_[row * words_per_row_ + static_cast<int64_t>(u / kBits)];
    const Word mask = static_cast<Word>(Word{1} << (u % kBits));
    const bool fresh = (word & mask) == 0;
    word |= mask;
    return fresh;
  }

 private:
  Word* words_;
  int64_t rows_;
  int64_t words_per_row_;
};

// Checks a batch of (row, id) pairs against a bitmap of `rows` rows holding
// `capacity` bits each. `ids_name` / `rows_name` name the inputs in messages.
template <typename Id, typename Row>
std::string ValidatePairs(const Id* ids, const Row* row_ids, int64_t n,
                          int64_t rows, int64_t capacity, int word_bits,
                          const char* ids_name = "ids",
                          const char* rows_name = "row_ids") {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = internal::AsInt64(ids[i]);
    if (id < 0 || id >= capacity) {
      return internal::Cat(
          ids_name, "[", i, "] = ", id,
          " is outside the visited bitmap: expected 0 <= id < ", capacity,
          " (", capacity / word_bits, " words of ", word_bits,
          " bits per query)");
    }
    const int64_t row = internal::AsInt64(row_ids[i]);
    if (row < 0 || row >= rows) {
      return internal::Cat(rows_name, "[", i, "] = ", row,
                           " is not a query row of the visited bitmap: "
                           "expected 0 <= row < ",
                           rows, " (the bitmap's batch size)");
    }
  }
  return std::string();
}

// Marks the pairs in order; keep[i] = 1 exactly when pair i was not visited
// before (neither in the bitmap nor earlier in this batch). Returns the number
// of kept pairs. Input must have passed ValidatePairs.
template <typename Word, typename Id, typename Row>
int64_t MarkUnvisited(const Id* ids, const Row* row_ids, int64_t n,
                      BitmapView<Word> bitmap, uint8_t* keep) {
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool fresh = bitmap.TestAndSet(internal::AsInt64(row_ids[i]),
                                         internal::AsInt64(ids[i]));
    keep[i] = fresh ? 1 : 0;
    kept += fresh ? 1 : 0;
  }
  return kept;
}

// Copies the elements of `in` with keep[i] != 0 to `out`, in order.
template <typename T>
void Compact(const T* in, const uint8_t* keep, int64_t n, T* out) {
  int64_t j = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (keep[i]) out[j++] = in[i];
  }
}

// Checks the inputs of GatherUnvisitedNeighbors without touching a bitmap
// (GatherUnvisitedNeighbors checks the same as it goes; this is for callers
// that must not leave a bitmap half-updated). The CSR level has
// `num_nodes = num_splits - 1` rows; only the rows of the frontier nodes are
// inspected (the level can hold millions of rows). On success
// `*total_neighbors` is the number of neighbour entries the frontier expands
// to.
template <typename Node, typename Id, typename Row, typename Split>
std::string ValidateNeighborGather(const Node* frontier, const Row* frontier_rows,
                                   int64_t num_frontier, const Id* values,
                                   int64_t num_values, const Split* splits,
                                   int64_t num_splits, int64_t rows,
                                   int64_t capacity, int word_bits,
                                   int64_t* total_neighbors) {
  *total_neighbors = 0;
  if (num_splits < 1) return internal::kEmptySplitsError;
  const int64_t num_nodes = num_splits - 1;
  int64_t total = 0;
  for (int64_t i = 0; i < num_frontier; ++i) {
    const int64_t node = internal::AsInt64(frontier[i]);
    int64_t begin = 0, end = 0;
    std::string error = internal::CheckFrontierEntry(
        i, node, internal::AsInt64(frontier_rows[i]), splits, num_nodes,
        num_values, rows, &begin, &end);
    if (!error.empty()) return error;
    for (int64_t j = begin; j < end; ++j) {
      const int64_t id = internal::AsInt64(values[j]);
      if (id < 0 || id >= capacity) {
        return internal::NeighborOutsideBitmap(j, id, node, capacity, word_bits);
      }
    }
    total += end - begin;
  }
  *total_neighbors = total;
  return std::string();
}

// Expands each frontier node (in order) to its neighbours on the CSR level (in
// CSR order) and keeps the neighbours its query has not visited, marking them:
// the result equals MarkUnvisited over the concatenated neighbour lists.
//
// Validates as it goes (the same checks and messages as ValidateNeighborGather)
// and stops at the first bad value, returning its message with the bitmap
// partly updated: callers pass a bitmap no one else sees (TensorFlow's output
// buffer) or validate first. One pass matters: each frontier node costs a
// chain of dependent cache misses (its row splits, its neighbour list, one
// bitmap word per neighbour) on a level that can be hundreds of MB; a separate
// validation pass would pay them twice. The three are prefetched for the nodes
// 8, 4 and 2 places ahead (2-5x faster on a 1.3M-node level).
template <typename Word, typename Node, typename Id, typename Row,
          typename Split>
std::string GatherUnvisitedNeighbors(const Node* frontier,
                                     const Row* frontier_rows,
                                     int64_t num_frontier, const Id* values,
                                     int64_t num_values, const Split* splits,
                                     int64_t num_splits, BitmapView<Word> bitmap,
                                     std::vector<Id>* kept_ids,
                                     std::vector<Row>* kept_rows) {
  constexpr int64_t kSplitsAhead = 8, kValuesAhead = 4, kBitmapAhead = 2;
  kept_ids->clear();
  kept_rows->clear();
  if (num_splits < 1) return internal::kEmptySplitsError;
  const int64_t num_nodes = num_splits - 1;
  const int64_t rows = bitmap.rows();
  const int64_t capacity = bitmap.capacity();
  // The CSR range of frontier node i if it is valid so far, for prefetching.
  auto node_at = [&](int64_t i) -> int64_t {
    const int64_t node = internal::AsInt64(frontier[i]);
    return node >= 0 && node < num_nodes ? node : -1;
  };
  for (int64_t i = 0; i < num_frontier; ++i) {
    if (i + kSplitsAhead < num_frontier) {
      const int64_t ahead = node_at(i + kSplitsAhead);
      if (ahead >= 0) internal::Prefetch(splits + ahead);
    }
    if (i + kValuesAhead < num_frontier) {
      const int64_t ahead = node_at(i + kValuesAhead);
      if (ahead >= 0) {
        const int64_t begin = internal::AsInt64(splits[ahead]);
        if (begin >= 0 && begin < num_values) internal::Prefetch(values + begin);
      }
    }
    if (i + kBitmapAhead < num_frontier) {
      const int64_t ahead = node_at(i + kBitmapAhead);
      const int64_t ahead_row =
          internal::AsInt64(frontier_rows[i + kBitmapAhead]);
      if (ahead >= 0 && ahead_row >= 0 && ahead_row < rows) {
        const int64_t begin = internal::AsInt64(splits[ahead]);
        const int64_t end = internal::AsInt64(splits[ahead + 1]);
        if (begin >= 0 && begin <= end && end <= num_values) {
          for (int64_t j = begin; j < end; ++j) {
            const int64_t id = internal::AsInt64(values[j]);
            if (id >= 0 && id < capacity) bitmap.Prefetch(ahead_row, id);
          }
        }
      }
    }

    const int64_t node = internal::AsInt64(frontier[i]);
    const Row row = frontier_rows[i];
    const int64_t row64 = internal::AsInt64(row);
    int64_t begin = 0, end = 0;
    std::string error = internal::CheckFrontierEntry(
        i, node, row64, splits, num_nodes, num_values, rows, &begin, &end);
    if (!error.empty()) return error;
    for (int64_t j = begin; j < end; ++j) {
      const int64_t id = internal::AsInt64(values[j]);
      if (id < 0 || id >= capacity) {
        return internal::NeighborOutsideBitmap(j, id, node, capacity,
                                               BitmapView<Word>::kBits);
      }
      if (bitmap.TestAndSet(row64, id)) {
        kept_ids->push_back(values[j]);
        kept_rows->push_back(row);
      }
    }
  }
  return std::string();
}

// Which items a query may be given, by the items' labels (a filtered search's
// predicate; nann_tf.search.filters.LabelFilter builds the same one in stock
// ops). Labels live in one state row per query: column c < tag_offset is
// category c, column tag_offset + t is tag t (0 = none in both: their columns
// are never set); bit 1 of a column marks an include label, bit 2 an exclude
// label. Item `id` passes query `row` when it carries no exclude label and,
// if the query has an include list (has_include[row]), at least one include
// label; and when (row, id) is not one of the held pairs (sorted keys
// row * key_span + id).
struct LabelFilter {
  const int32_t* item_category = nullptr;  // [num_items]
  int64_t num_items = 0;
  const int32_t* item_tags = nullptr;  // [num_items, tag_width]
  int64_t tag_width = 0;
  const uint8_t* state = nullptr;  // [rows, state_width]
  int64_t state_width = 0;
  int64_t tag_offset = 0;
  const bool* has_include = nullptr;  // [rows]
  const int64_t* held_keys = nullptr;  // sorted
  int64_t num_held = 0;
  int64_t key_span = 0;

  // Sets *pass; returns a message naming a bad label or id, else "".
  std::string Passes(int64_t row, int64_t id, bool* pass) const {
    if (id < 0 || id >= num_items) {
      return internal::Cat("item id ", id, " has no labels: expected 0 <= id < ",
                           num_items, " (len(item_category))");
    }
    const int64_t category = item_category[id];
    if (category < 0 || category >= tag_offset) {
      return internal::Cat("item_category[", id, "] = ", category,
                           ": expected 0 <= category < ", tag_offset,
                           " (tag_offset)");
    }
    const uint8_t* labels = state + row * state_width;
    uint8_t bits = labels[category];
    const int32_t* tags = item_tags + id * tag_width;
    for (int64_t t = 0; t < tag_width; ++t) {
      const int64_t tag = tags[t];
      if (tag < 0 || tag_offset + tag >= state_width) {
        return internal::Cat("item_tags[", id, ", ", t, "] = ", tag,
                             ": expected 0 <= tag < ", state_width - tag_offset,
                             " (label_state's width - tag_offset)");
      }
      bits |= labels[tag_offset + tag];
    }
    *pass = (!has_include[row] || (bits & 1)) && !(bits & 2);
    if (*pass && num_held > 0) {
      const int64_t key = row * key_span + id;
      int64_t lo = 0, hi = num_held;
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (held_keys[mid] < key) lo = mid + 1; else hi = mid;
      }
      if (lo < num_held && held_keys[lo] == key) *pass = false;
    }
    return std::string();
  }
};

// The two-hop expansion of a filtered walk, fused: the frontier's unvisited
// neighbours (all marked visited, as GatherUnvisitedNeighbors) that pass
// `filter`, then, for each neighbour that fails (in that order), its own
// neighbours that pass and are unvisited (marked; the failing ones are left
// unmarked, to be expanded when a first hop reaches them). Output: per query
// row, ascending, that row's passing first-hop neighbours then its second-hop
// ones, each in expansion order, at most `max_candidates` per row (< 0: all).
// Equals nann_tf.search.beam._expand_passing in stock ops. Validates as it
// goes and stops at the first bad value (the bitmap is then partly updated);
// a visited second hop's labels are not read, so not checked.
template <typename Word>
std::string GatherPassingNeighbors(
    const int32_t* frontier, const int32_t* frontier_rows, int64_t num_frontier,
    const int32_t* values, int64_t num_values, const int64_t* splits,
    int64_t num_splits, const LabelFilter& filter, int64_t max_candidates,
    BitmapView<Word> bitmap, std::vector<int32_t>* kept_ids,
    std::vector<int32_t>* kept_rows) {
  std::vector<int32_t> first_ids, first_rows;
  std::string error = GatherUnvisitedNeighbors(
      frontier, frontier_rows, num_frontier, values, num_values, splits,
      num_splits, bitmap, &first_ids, &first_rows);
  if (!error.empty()) return error;
  const int64_t num_nodes = num_splits - 1;
  const int64_t rows = bitmap.rows();
  const int64_t capacity = bitmap.capacity();
  // Candidates in expansion order, tagged first hop (0) or second (1).
  std::vector<int32_t> ids, id_rows;
  std::vector<uint8_t> second;
  for (size_t i = 0; i < first_ids.size(); ++i) {
    const int64_t node = first_ids[i];
    const int64_t row = first_rows[i];
    bool pass = false;
    error = filter.Passes(row, node, &pass);
    if (!error.empty()) return error;
    if (pass) {
      ids.push_back(first_ids[i]);
      id_rows.push_back(first_rows[i]);
      second.push_back(0);
      continue;
    }
    if (node >= num_nodes) {
      return internal::Cat("neighbour ", node, " (a first hop, expanded as a ",
                           "second) is not a node of the CSR level: expected ",
                           "id < ", num_nodes, " (len(neighbor_row_splits) - 1)");
    }
    const int64_t begin = internal::AsInt64(splits[node]);
    const int64_t end = internal::AsInt64(splits[node + 1]);
    if (begin < 0 || begin > end || end > num_values) {
      return internal::Cat("neighbor_row_splits[", node, ":", node + 2, "] = [",
                           begin, ", ", end, "] is not a valid CSR range: ",
                           "expected 0 <= start <= limit <= ", num_values);
    }
    for (int64_t j = begin; j < end; ++j) {
      const int64_t id = internal::AsInt64(values[j]);
      if (id < 0 || id >= capacity) {
        return internal::NeighborOutsideBitmap(j, id, node, capacity,
                                               BitmapView<Word>::kBits);
      }
      // A visited second hop is skipped before its labels are read: the
      // bitmap row is small and cached, the label tables are read at random.
      if (bitmap.Test(row, id)) continue;
      bool hop_pass = false;
      error = filter.Passes(row, id, &hop_pass);
      if (!error.empty()) return error;
      if (hop_pass) {
        bitmap.TestAndSet(row, id);
        ids.push_back(values[j]);
        id_rows.push_back(first_rows[i]);
        second.push_back(1);
      }
    }
  }
  // Rows ascending; in a row, first hops before second hops (a stable sort).
  std::vector<int64_t> start(2 * rows + 1, 0);
  for (size_t i = 0; i < ids.size(); ++i) {
    ++start[2 * id_rows[i] + second[i] + 1];
  }
  for (int64_t b = 0; b < 2 * rows; ++b) start[b + 1] += start[b];
  std::vector<int32_t> sorted(ids.size()), sorted_rows(ids.size());
  std::vector<int64_t> next(start.begin(), start.end() - 1);
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t at = next[2 * id_rows[i] + second[i]]++;
    sorted[at] = ids[i];
    sorted_rows[at] = id_rows[i];
  }
  kept_ids->clear();
  kept_rows->clear();
  for (int64_t r = 0; r < rows; ++r) {
    int64_t limit = start[2 * r + 2];
    if (max_candidates >= 0) limit = std::min(limit, start[2 * r] + max_candidates);
    for (int64_t at = start[2 * r]; at < limit; ++at) {
      kept_ids->push_back(sorted[at]);
      kept_rows->push_back(sorted_rows[at]);
    }
  }
  return std::string();
}

}  // namespace nann

#endif  // NANN_CC_OPS_LIB_VISITED_BITMAP_H_

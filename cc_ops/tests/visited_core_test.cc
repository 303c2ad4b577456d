// Tests of the TF-free core (lib/) with plain asserts: builds with any C++17 compiler, no
// TensorFlow and no test framework (`bazel test //cc_ops:visited_core_test`, or compiled by
// tests/test_ops_build.py).

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "lib/beam_replay.h"
#include "lib/visited_bitmap.h"

namespace {

int failures = 0;

#define EXPECT(cond)                                                   \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::fprintf(stderr, "%s:%d: EXPECT(%s) failed\n", __FILE__,     \
                   __LINE__, #cond);                                   \
      ++failures;                                                      \
    }                                                                  \
  } while (0)

template <typename Word>
void TestMarkUnvisited() {
  constexpr int kBits = 8 * sizeof(Word);
  std::vector<Word> words(2 * 2, 0);  // 2 queries x 2 words
  nann::BitmapView<Word> bitmap(words.data(), 2, 2);
  EXPECT(bitmap.capacity() == 2 * kBits);
  const int64_t last = 2 * kBits - 1;
  const std::vector<int64_t> ids = {0, kBits - 1, kBits, last, 0, kBits, 0};
  const std::vector<int32_t> rows = {0, 0, 1, 1, 0, 1, 1};
  EXPECT(nann::ValidatePairs(ids.data(), rows.data(), 7, 2, bitmap.capacity(),
                             kBits)
             .empty());
  std::vector<uint8_t> keep(ids.size());
  EXPECT(nann::MarkUnvisited(ids.data(), rows.data(), 7, bitmap, keep.data()) ==
         5);
  EXPECT((keep == std::vector<uint8_t>{1, 1, 1, 1, 0, 0, 1}));
  EXPECT(words[0] == (Word{1} | (Word{1} << (kBits - 1))));
  EXPECT(words[1] == 0);
  EXPECT(words[2] == 1);                            // row 1: id 0
  EXPECT(words[3] == (Word{1} | (Word{1} << (kBits - 1))));  // kBits, last
  std::vector<int64_t> kept(5);
  nann::Compact(ids.data(), keep.data(), 7, kept.data());
  EXPECT((kept == std::vector<int64_t>{0, kBits - 1, kBits, last, 0}));
  // A second pass keeps nothing.
  EXPECT(nann::MarkUnvisited(ids.data(), rows.data(), 7, bitmap, keep.data()) ==
         0);
}

void TestValidation() {
  const std::vector<int64_t> ids = {3, 128};
  const std::vector<int64_t> rows = {0, 0};
  const std::string id_error =
      nann::ValidatePairs(ids.data(), rows.data(), 2, 1, 128, 64);
  EXPECT(id_error.find("ids[1] = 128") != std::string::npos);
  const std::vector<int64_t> bad_rows = {0, -2};
  const std::string row_error =
      nann::ValidatePairs(ids.data(), bad_rows.data(), 1 + 1, 1, 256, 64);
  EXPECT(row_error.find("row_ids[1] = -2") != std::string::npos);

  const std::vector<int64_t> frontier = {1};
  const std::vector<int64_t> frontier_rows = {0};
  const std::vector<int64_t> values = {5, 6, 7};
  const std::vector<int64_t> splits = {0, 2, 1};  // row 1 is [2, 1)
  int64_t total = -1;
  const std::string split_error = nann::ValidateNeighborGather(
      frontier.data(), frontier_rows.data(), 1, values.data(), 3, splits.data(),
      3, 1, 64, 64, &total);
  EXPECT(split_error.find("neighbor_row_splits[1:3] = [2, 1]") !=
         std::string::npos);
  // The gather itself reports the same errors.
  std::vector<uint64_t> words(1, 0);
  std::vector<int64_t> kept_ids, kept_rows;
  EXPECT(nann::GatherUnvisitedNeighbors(
             frontier.data(), frontier_rows.data(), 1, values.data(), 3,
             splits.data(), 3, nann::BitmapView<uint64_t>(words.data(), 1, 1),
             &kept_ids, &kept_rows) == split_error);
  const std::vector<int64_t> far = {2};
  EXPECT(nann::GatherUnvisitedNeighbors(
             far.data(), frontier_rows.data(), 1, values.data(), 3,
             splits.data(), 3, nann::BitmapView<uint64_t>(words.data(), 1, 1),
             &kept_ids, &kept_rows)
             .find("frontier_ids[0] = 2") != std::string::npos);
}

void TestGatherEqualsFilterOfExpansion() {
  const std::vector<int64_t> values = {1, 2, 2, 3, 1, 4};
  const std::vector<int64_t> splits = {0, 2, 4, 6};
  const std::vector<int64_t> frontier = {0, 1, 2, 0};
  const std::vector<int64_t> rows = {0, 0, 0, 1};
  std::vector<uint64_t> words(2, 0);
  nann::BitmapView<uint64_t> bitmap(words.data(), 2, 1);
  bitmap.TestAndSet(0, 3);  // visited before
  std::vector<int64_t> kept_ids, kept_rows;
  int64_t total = 0;
  EXPECT(nann::ValidateNeighborGather(frontier.data(), rows.data(), 4,
                                      values.data(), 6, splits.data(), 4, 2, 64,
                                      64, &total)
             .empty());
  EXPECT(total == 8);
  EXPECT(nann::GatherUnvisitedNeighbors(frontier.data(), rows.data(), 4,
                                        values.data(), 6, splits.data(), 4,
                                        bitmap, &kept_ids, &kept_rows)
             .empty());
  EXPECT((kept_ids == std::vector<int64_t>{1, 2, 4, 1, 2}));
  EXPECT((kept_rows == std::vector<int64_t>{0, 0, 0, 1, 1}));
}

// A filtered walk's two hops on a hand-made level: node 1 -> {2, 3}, 3 -> {5, 6, 2}.
// Row 0 includes category 1 (items 1, 2, 4, 5), row 1 excludes tag 1 (item 5 only).
void TestGatherPassingNeighbors() {
  const std::vector<int32_t> values = {2, 3, 4, 5, 6, 2};
  const std::vector<int64_t> splits = {0, 0, 2, 3, 6, 6, 6, 6};
  const std::vector<int32_t> category = {0, 1, 1, 2, 1, 1, 2};
  const std::vector<int32_t> tags = {0, 0, 0, 0, 0, 1, 0};
  // tag_offset 3 (categories 0..2), then tags 0..1.
  const std::vector<uint8_t> state = {0, 1, 0, 0, 0,  /* row 1: */ 0, 0, 0, 0, 2};
  const bool has_include[2] = {true, false};
  nann::LabelFilter filter;
  filter.item_category = category.data();
  filter.num_items = 7;
  filter.item_tags = tags.data();
  filter.tag_width = 1;
  filter.state = state.data();
  filter.state_width = 5;
  filter.tag_offset = 3;
  filter.has_include = has_include;
  filter.key_span = 7;
  const std::vector<int32_t> frontier = {1, 1};
  const std::vector<int32_t> rows = {0, 1};
  auto run = [&](const nann::LabelFilter& f, int64_t max_candidates,
                 std::vector<uint64_t>* words, std::vector<int32_t>* ids,
                 std::vector<int32_t>* out_rows) {
    words->assign(2, 0);
    nann::BitmapView<uint64_t> bitmap(words->data(), 2, 1);
    return nann::GatherPassingNeighbors(frontier.data(), rows.data(), 2,
                                        values.data(), 6, splits.data(), 8, f,
                                        max_candidates, bitmap, ids, out_rows);
  };
  std::vector<uint64_t> words;
  std::vector<int32_t> ids, out_rows;
  // Row 0: 2 passes, 3 fails and leads to 5 (passes) and 6 (fails: unmarked); 2 is
  // visited. Row 1: both first hops pass, no second hop.
  EXPECT(run(filter, -1, &words, &ids, &out_rows).empty());
  EXPECT((ids == std::vector<int32_t>{2, 5, 2, 3}));
  EXPECT((out_rows == std::vector<int32_t>{0, 0, 1, 1}));
  EXPECT(words[0] == ((1u << 2) | (1u << 3) | (1u << 5)));
  EXPECT(words[1] == ((1u << 2) | (1u << 3)));
  EXPECT(run(filter, 1, &words, &ids, &out_rows).empty());  // one per row
  EXPECT((ids == std::vector<int32_t>{2, 2}));
  // A held item never passes and is left unmarked.
  const int64_t held[1] = {0 * 7 + 5};
  nann::LabelFilter holding = filter;
  holding.held_keys = held;
  holding.num_held = 1;
  EXPECT(run(holding, -1, &words, &ids, &out_rows).empty());
  EXPECT((ids == std::vector<int32_t>{2, 2, 3}));
  EXPECT(words[0] == ((1u << 2) | (1u << 3)));
  // An item beyond the label tables is an error naming it, not a read past them.
  nann::LabelFilter short_labels = filter;
  short_labels.num_items = 6;
  const std::string error = run(short_labels, -1, &words, &ids, &out_rows);
  EXPECT(error.find("item id 6 has no labels") != std::string::npos);
}

void TestBeamReplay() {
  // A path 0 - 1 - 2 - 3 - 4 on level 0; start level 1 = {0}. Scores rise along the path
  // except a tie between 3 and 4 (smaller id wins).
  const std::vector<int32_t> values = {1, 0, 2, 1, 3, 2, 4, 3};
  const std::vector<int64_t> splits = {0, 1, 3, 5, 7, 8};
  nann::CsrLevel level;
  level.values = values.data();
  level.values_are_int64 = false;
  level.num_values = 8;
  level.row_splits = splits.data();
  level.num_row_splits = 6;
  const std::vector<float> scores = {0.f, 1.f, 2.f, 5.f, 5.f};
  const std::vector<int64_t> start = {0};
  nann::BeamSearchParams params;
  params.start_level = 1;
  params.ef = {2, 1};
  params.rounds = {2};
  params.k = 3;
  std::vector<int64_t> ids(3);
  std::vector<float> top(3);
  int64_t scored = 0;
  // Round 1: frontier {0} -> {1}; results {1, 0}. Round 2: frontier {1} -> {2};
  // results {2, 1}. T = 2 stops there: items 3 and 4 are never reached.
  std::string error =
      nann::BeamSearchReplay({level}, start.data(), 1, nullptr, 0, scores.data(), 1, 5,
                             params, 1, ids.data(), top.data(), &scored);
  EXPECT(error.empty());
  EXPECT((ids == std::vector<int64_t>{2, 1, -1}));
  EXPECT(scored == 3);
  params.rounds = {10};
  error = nann::BeamSearchReplay({level}, start.data(), 1, nullptr, 0, scores.data(), 1, 5,
                                 params, 1, ids.data(), top.data(), &scored);
  EXPECT(error.empty());
  EXPECT((ids == std::vector<int64_t>{3, 4, -1}));  // tie 5 = 5: smaller id first
  EXPECT(scored == 5);
  // -inf / NaN: scored and counted, never in the results (nor expanded).
  const std::vector<float> masked = {0.f, -std::numeric_limits<float>::infinity(),
                                     2.f, 5.f, 5.f};
  error = nann::BeamSearchReplay({level}, start.data(), 1, nullptr, 0, masked.data(), 1, 5,
                                 params, 1, ids.data(), top.data(), &scored);
  EXPECT(error.empty());
  EXPECT((ids == std::vector<int64_t>{0, -1, -1}));  // 1 blocks the path
  EXPECT(scored == 2);
  const std::vector<float> nan_start = {std::numeric_limits<float>::quiet_NaN(),
                                        1.f, 2.f, 5.f, 5.f};
  error = nann::BeamSearchReplay({level}, start.data(), 1, nullptr, 0, nan_start.data(), 1,
                                 5, params, 1, ids.data(), top.data(), &scored);
  EXPECT(error.empty());
  EXPECT((ids == std::vector<int64_t>{-1, -1, -1}));
  EXPECT(scored == 1);
  params.ef = {2, 0};
  error = nann::BeamSearchReplay({level}, start.data(), 1, nullptr, 0, scores.data(), 1, 5,
                                 params, 1, ids.data(), top.data(), &scored);
  EXPECT(error.find("ef[1] = 0") != std::string::npos);
  params.ef = {2, 1};
  params.rounds = {1};
  // A seed is scored with the start level and joins the first level-0
  // frontier: seed 2 (score 2) leads to 3 in one round, which the start node
  // alone cannot reach (0 -> 1 only).
  const std::vector<int64_t> seeds = {2, 0};
  error = nann::BeamSearchReplay({level}, start.data(), 1, seeds.data(), 2,
                                 scores.data(), 1, 5, params, 1, ids.data(),
                                 top.data(), &scored);
  EXPECT(error.empty());
  EXPECT((ids == std::vector<int64_t>{3, 2, -1}));
  EXPECT(scored == 4);  // 0 and 2 at the start; 1 and 3 in the round
  // An excluded seed (-inf) never enters the results but is still expanded.
  const std::vector<float> seed_masked = {
      0.f, 1.f, -std::numeric_limits<float>::infinity(), 5.f, 5.f};
  error = nann::BeamSearchReplay({level}, start.data(), 1, seeds.data(), 2,
                                 seed_masked.data(), 1, 5, params, 1,
                                 ids.data(), top.data(), &scored);
  EXPECT(error.empty());
  EXPECT((ids == std::vector<int64_t>{3, 1, -1}));
  const std::vector<int64_t> bad_seeds = {5, 0};
  error = nann::BeamSearchReplay({level}, start.data(), 1, bad_seeds.data(), 2,
                                 scores.data(), 1, 5, params, 1, ids.data(),
                                 top.data(), &scored);
  EXPECT(error.find("seeds[0, 0] = 5") != std::string::npos);
}

}  // namespace

int main() {
  TestMarkUnvisited<uint32_t>();
  TestMarkUnvisited<uint64_t>();
  TestValidation();
  TestGatherEqualsFilterOfExpansion();
  TestGatherPassingNeighbors();
  TestBeamReplay();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return EXIT_FAILURE;
  }
  std::printf("visited_core_test: all checks passed\n");
  return EXIT_SUCCESS;
}

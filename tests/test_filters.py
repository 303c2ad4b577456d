"""Filtered retrieval: label filters, the exact path's candidates, per-category caps."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from nann_tf.index.hnsw import build_hnsw, graph_tensors
from nann_tf.search.beam import beam_search
from nann_tf.search.brute_force import brute_force
from nann_tf.search.filters import LabelTable, LabelTensors, cap_per_category
from nann_tf.evaluation.metrics import coverage

from test_beam import l2_scores, oracle_topk, table_scorer

N = 3000


@pytest.fixture(scope="module")
def labels():
    """3000 items in 30 categories (raw ids 100, 110, ... 390) and 0-3 tags each (raw 7..14)."""
    rng = np.random.default_rng(0)
    cat = np.r_[0, rng.integers(1, 31, N)].astype(np.int32)
    raw_cat = np.r_[0, 100 + 10 * np.arange(30)]
    tags = [()] + [tuple(rng.choice(np.arange(7, 15), rng.integers(0, 4), replace=False))
                   for _ in range(N)]
    table = LabelTable.build(cat, raw_cat, tags)
    return table, LabelTensors(table), cat, raw_cat, tags


def passes_np(item, inc_c, exc_c, inc_t, exc_t, cat, raw_cat, tags):
    """The filter's definition, in Python, on raw ids."""
    c = raw_cat[cat[item]]
    t = set(tags[item])
    inc_c, exc_c = [x for x in inc_c if x], [x for x in exc_c if x]
    inc_t, exc_t = [x for x in inc_t if x], [x for x in exc_t if x]
    if inc_c or inc_t:
        if not (c in inc_c or t & set(inc_t)):
            return False
    return not (c in exc_c or t & set(exc_t))


# Rows: no filter; include two categories; include a tag but exclude a category; exclude a tag
# only; include an unknown category only (nothing passes); include unknown + known.
INC_C = [[0, 0], [110, 250], [0, 0], [0, 0], [999, 0], [999, 120]]
EXC_C = [[0], [0], [110], [0], [0], [0]]
INC_T = [[0], [0], [9], [0], [0], [0]]
EXC_T = [[0], [0], [0], [8], [0], [0]]


def _request(lt):
    c = lambda x: tf.constant(np.asarray(x, np.int64))  # noqa: E731
    return lt.request(c(INC_C), c(EXC_C), c(INC_T), c(EXC_T))


def test_the_filter_is_its_definition_on_mixed_rows(labels):
    table, lt, cat, raw_cat, tags = labels
    req = _request(lt)
    rows = np.repeat(np.arange(6), N).astype(np.int32)
    ids = np.tile(np.arange(1, N + 1), 6).astype(np.int32)
    got = lt.item_filter(req)(tf.constant(rows), tf.constant(ids)).numpy()
    want = np.array([passes_np(i, INC_C[r], EXC_C[r], INC_T[r], EXC_T[r], cat, raw_cat, tags)
                     for r, i in zip(rows, ids)])
    np.testing.assert_array_equal(got, want)
    per_row = got.reshape(6, N).sum(axis=1)
    assert per_row[0] == N and 0 < per_row[1] < N and per_row[4] == 0
    assert per_row[5] == (cat == 3).sum()  # raw 120 is dense category 3
    # The counts: an upper bound from the posting lists, N without an include list.
    counts = lt.include_count(req).numpy()
    assert counts[0] == N and counts[3] == N and counts[4] == 0
    assert counts[1] == per_row[1]  # one category per item: exact
    assert counts[2] >= per_row[2]


def test_include_candidates_are_the_posting_lists(labels):
    table, lt, cat, raw_cat, tags = labels
    req = _request(lt)
    mask = tf.constant([False, True, True, False, True, True])
    ids, rows = (x.numpy() for x in lt.include_candidates(req, mask))
    assert (np.diff(rows) >= 0).all()
    for r in range(6):
        got = sorted(ids[rows == r].tolist())
        want = []
        if mask.numpy()[r]:
            for c in INC_C[r]:
                want += [i for i in range(1, N + 1) if c and raw_cat[cat[i]] == c]
            for t in INC_T[r]:
                want += [i for i in range(1, N + 1) if t and t in tags[i]]
        assert got == sorted(want), r


def test_cap_per_category_keeps_the_best_of_each_and_backfills():
    ids = tf.constant([[5, 6, 7, 8, 9, 10], [1, 2, 3, 0, 0, 0]], tf.int32)
    scores = tf.constant([[6., 5, 4, 3, 2, 1], [3., 2, 1, -np.inf, -np.inf, -np.inf]])
    cats = tf.constant([[1, 1, 2, 1, 2, 3], [4, 4, 4, 0, 0, 0]], tf.int32)
    got_ids, got_scores = cap_per_category(ids, scores, cats, tf.constant([1, 0]), 4)
    assert got_ids.numpy().tolist() == [[5, 7, 10, 0], [1, 2, 3, 0]]
    assert got_scores.numpy()[0].tolist()[:3] == [6., 4., 1.]
    got_ids, _ = cap_per_category(ids, scores, cats, tf.constant([2, 1]), 4)
    assert got_ids.numpy().tolist() == [[5, 6, 7, 9], [1, 0, 0, 0]]


def test_filtered_beam_search_returns_only_passing_items_and_finds_them(labels):
    """The walk goes through items that fail (the graph stays connected) and returns the top k
    of the passing items it scored; with ef covering the corpus that is the exact answer."""
    table, lt, cat, raw_cat, tags = labels
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(N + 1, 8)).astype(np.float32)
    queries = rng.normal(size=(6, 8)).astype(np.float32)
    graph = build_hnsw(emb, M=16, ef_construction=40, num_threads=1)
    table_s = l2_scores(emb, queries)
    f = lt.item_filter(_request(lt))
    ids, scores, _ = beam_search(graph_tensors(graph), table_scorer(table_s), 6,
                                 ef={lv: N for lv in range(graph.max_level + 1)},
                                 T={lv: 100 for lv in range(graph.max_level)}, k=30,
                                 item_filter=f)
    masked = table_s.copy()
    for r in range(6):
        for i in range(1, N + 1):
            if not passes_np(i, INC_C[r], EXC_C[r], INC_T[r], EXC_T[r], cat, raw_cat, tags):
                masked[r, i] = -np.inf
    np.testing.assert_array_equal(ids.numpy(), oracle_topk(masked, 30))
    assert (ids.numpy()[4] == 0).all() and np.isneginf(scores.numpy()[4]).all()
    bf, _, _ = brute_force(table_scorer(table_s), 6, N, 30, item_filter=f)
    np.testing.assert_array_equal(bf.numpy(), oracle_topk(masked, 30))
    # At the default beams the walk still returns only passing items.
    ids, _, _ = beam_search(graph_tensors(graph), table_scorer(table_s), 6, k=30,
                            item_filter=f)
    for r in range(6):
        for i in ids.numpy()[r]:
            assert i == 0 or passes_np(i, INC_C[r], EXC_C[r], INC_T[r], EXC_T[r], cat,
                                       raw_cat, tags)
    assert coverage(ids.numpy(), bf.numpy(), 30) > 0.9

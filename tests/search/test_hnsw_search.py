"""HNSW-retrieval, the SL2G baseline (nann_tf/search/hnsw_search.py)."""

from __future__ import annotations

import hnswlib
import numpy as np
import pytest
import tensorflow as tf

from nann_tf.index.hnsw import build_hnsw, graph_from_hnswlib, graph_tensors
from nann_tf.search.brute_force import brute_force
from nann_tf.search.hnsw_search import hnsw_search
from nann_tf.evaluation.metrics import coverage

from conftest import bitmap_available

NEG_INF = -np.inf


IMPLS = ["tf", pytest.param("bitmap", marks=pytest.mark.skipif(
    not bitmap_available(), reason="visited bitmap op library not built"))]


def table_scorer(table):
    t = tf.constant(table)
    return lambda rows, ids: tf.gather_nd(t, tf.stack([rows, ids], axis=1))


def mlp_table(emb, queries, seed=0):
    rng = np.random.default_rng(seed)
    d = emb.shape[1]
    w1 = rng.normal(size=(3 * d, 32)).astype(np.float32) / np.sqrt(3 * d)
    w2 = rng.normal(size=32).astype(np.float32) / np.sqrt(32)
    out = np.stack([np.tanh(np.concatenate([emb, np.broadcast_to(q, emb.shape), emb * q], 1)
                            @ w1) @ w2 for q in queries]).astype(np.float32)
    out[:, 0] = NEG_INF
    return out


def l2_table(emb, queries):
    s = -((emb[None] - queries[:, None]) ** 2).sum(-1).astype(np.float32)
    s[:, 0] = NEG_INF
    return s


def reference_hnsw(graph, s, ef0, k):
    """Sequential HNSW search for one query (score row ``s``), written plainly: greedy upper
    levels sharing one visited set, then SEARCH-LAYER on level 0 with its own visited set.
    Returns the top k and the number of distinct items scored."""
    def key(v):
        return (s[v], -v)

    cur = graph.entry_point
    visited, scored = {cur}, {cur}
    for lvl in range(graph.max_level, 0, -1):
        while True:
            new = [v for v in dict.fromkeys(graph.neighbors(cur, lvl).tolist())
                   if v not in visited]
            visited.update(new)
            scored.update(new)
            if not new:
                break
            best = max(new, key=key)
            if key(best) > key(cur) and s[best] > NEG_INF:
                cur = best
            else:
                break
    results, expanded, visited0 = [cur], set(), {cur}
    while True:
        pending = [v for v in results if v not in expanded]
        if not pending:
            break
        c = max(pending, key=key)
        expanded.add(c)
        new = [v for v in dict.fromkeys(graph.neighbors(c, 0).tolist()) if v not in visited0]
        visited0.update(new)
        scored.update(new)
        results = sorted(results + [v for v in new if s[v] > NEG_INF], key=key,
                         reverse=True)[:ef0]
    out = [v for v in results if s[v] > NEG_INF][:k]
    return out + [0] * (k - len(out)), len(scored)


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(601, 8)).astype(np.float32)
    queries = rng.normal(size=(8, 8)).astype(np.float32)
    graph = build_hnsw(emb, M=8, ef_construction=40, num_threads=1)
    return emb, queries, graph


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("ef0,k", [(1, 1), (20, 10), (64, 64)])
def test_batched_search_equals_sequential_reference(small, impl, ef0, k):
    emb, queries, graph = small
    table = mlp_table(emb, queries)
    ids, scores, num_scored = hnsw_search(graph_tensors(graph), table_scorer(table),
                                          len(queries), ef0=ef0, k=k, visited_impl=impl)
    for u in range(len(queries)):
        ref_ids, ref_scored = reference_hnsw(graph, table[u], ef0, k)
        assert ids.numpy()[u].tolist() == ref_ids
        assert num_scored.numpy()[u] == ref_scored
    np.testing.assert_array_equal(scores.numpy(),
                                  np.take_along_axis(table, ids.numpy(), axis=1))


def test_matches_hnswlib_own_search_with_l2_score():
    """With score = -squared l2 distance this is hnswlib's own search: the same answers, in the
    same order (integer coordinates make the float32 distances exact)."""
    rng = np.random.default_rng(3)
    n, d = 2000, 6
    data = rng.integers(0, 1000, size=(n, d)).astype(np.float32)
    index = hnswlib.Index(space="l2", dim=d)
    index.init_index(max_elements=n, M=8, ef_construction=40, random_seed=1)
    index.add_items(data, np.arange(1, n + 1), num_threads=1)
    graph = graph_from_hnswlib(index)
    emb = np.concatenate([np.zeros((1, d), np.float32), data])
    queries = rng.integers(0, 1000, size=(40, d)).astype(np.float32)
    scorer = table_scorer(l2_table(emb, queries))
    for ef, k in ((30, 10), (1, 1)):
        index.set_ef(ef)
        expected, _ = index.knn_query(queries, k=k, num_threads=1)
        ids, _, _ = hnsw_search(graph_tensors(graph), scorer, 40, ef0=ef, k=k)
        np.testing.assert_array_equal(ids.numpy(), expected)


def test_exhaustive_when_ef_covers_the_corpus(small):
    emb, queries, graph = small
    n = graph.num_items
    table = mlp_table(emb, queries, seed=1)
    gt = graph_tensors(graph)
    ids, _, num_scored = tf.function(
        lambda: hnsw_search(gt, table_scorer(table), len(queries), ef0=n, k=30))()
    bf_ids, _, _ = brute_force(table_scorer(table), len(queries), n, 30)
    np.testing.assert_array_equal(ids.numpy(), bf_ids.numpy())
    np.testing.assert_array_equal(num_scored.numpy(), n)


def test_coverage_with_large_ef_in_tf_function():
    """20k items, ef0 = 200, k = 50. Measured: l2 0.999, random MLP 0.913 (scoring 14% / 9.5%
    of the corpus)."""
    rng = np.random.default_rng(0)
    n, d, b, k = 20000, 16, 32, 50
    emb = rng.normal(size=(n + 1, d)).astype(np.float32)
    queries = rng.normal(size=(b, d)).astype(np.float32)
    gt = graph_tensors(build_hnsw(emb, num_threads=1))

    @tf.function(input_signature=[tf.TensorSpec([b, n + 1], tf.float32)])
    def search(table):
        return hnsw_search(gt, lambda r, i: tf.gather_nd(table, tf.stack([r, i], 1)), b,
                           ef0=200, k=k)

    for table, threshold in ((l2_table(emb, queries), 0.97),
                             (mlp_table(emb, queries), 0.80)):
        ids, _, num_scored = search(tf.constant(table))
        bf_ids, _, _ = brute_force(table_scorer(table), b, n, k)
        cov = coverage(ids.numpy(), bf_ids.numpy(), k)
        assert cov >= threshold, f"coverage@{k} {cov:.4f} < {threshold}"
        assert num_scored.numpy().mean() < 0.3 * n


def test_exclude_ids_and_padding(small):
    emb, queries, graph = small
    table = l2_table(emb, queries)
    bf_ids, _, _ = brute_force(table_scorer(table), len(queries), graph.num_items, 10)
    exclude = bf_ids.numpy()[:, :5].astype(np.int32)
    exclude[:, 0] = graph.entry_point  # the entry point itself may be excluded
    ids, scores, _ = hnsw_search(graph_tensors(graph), table_scorer(table), len(queries),
                                 ef0=15, k=20, exclude_ids=exclude)
    ids, scores = ids.numpy(), scores.numpy()
    for u in range(len(queries)):
        assert not np.isin(ids[u], exclude[u]).any()
    assert (ids[:, 15:] == 0).all() and np.isneginf(scores[:, 15:]).all()
    assert (ids[:, :15] > 0).all()


def test_dynamic_batch_in_tf_function(small):
    emb, queries, graph = small
    gt = graph_tensors(graph)
    e_t = tf.constant(emb)

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def search(q):
        def scorer(rows, ids):
            diff = tf.gather(e_t, ids) - tf.gather(q, rows)
            return -tf.reduce_sum(diff * diff, axis=1)
        return hnsw_search(gt, scorer, tf.shape(q)[0], ef0=32, k=16)

    full = search(tf.constant(queries))
    part = search(tf.constant(queries[2:5]))
    np.testing.assert_array_equal(full[0].numpy()[2:5], part[0].numpy())
    np.testing.assert_array_equal(full[2].numpy()[2:5], part[2].numpy())


def test_max_iterations_bounds_level0_expansions(small):
    emb, queries, graph = small
    table = mlp_table(emb, queries, seed=2)
    gt = graph_tensors(graph)
    b = len(queries)
    runs = {it: hnsw_search(gt, table_scorer(table), b, ef0=64, k=10, max_iterations=it)
            for it in (0, 1, None)}
    ids0, _, greedy = runs[0]  # no expansion: just the node the greedy descent ends on
    assert (ids0.numpy()[:, 0] > 0).all() and (ids0.numpy()[:, 1:] == 0).all()
    one, full = runs[1][2].numpy(), runs[None][2].numpy()
    assert (one - greedy.numpy() <= 2 * 8).all()  # one expansion: at most 2 * M neighbours
    assert (one <= full).all() and (one < full).all()

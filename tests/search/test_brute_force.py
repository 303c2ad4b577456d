"""Brute force, the exact reference (nann_tf/search/brute_force.py), against a NumPy oracle."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from nann_tf.search.brute_force import brute_force


def oracle(table, k, exclude=None):
    """Top-k of ids 1..N by (score desc, id asc); NaN/-inf/excluded never returned."""
    b, n1 = table.shape
    ids = np.arange(1, n1)
    out_ids = np.zeros((b, k), np.int64)
    out_scores = np.full((b, k), -np.inf, np.float32)
    for u in range(b):
        s = np.where(np.isnan(table[u, 1:]), -np.inf, table[u, 1:])
        if exclude is not None:
            s[np.isin(ids, exclude[u])] = -np.inf
        order = np.lexsort((ids, -s))
        order = order[np.isfinite(s[order])][:k]
        out_ids[u, :len(order)] = ids[order]
        out_scores[u, :len(order)] = s[order]
    return out_ids, out_scores


def scorer_for(table):
    t = tf.constant(table)
    return lambda rows, ids: tf.gather_nd(t, tf.stack([rows, ids], axis=1))


@pytest.mark.parametrize("b,n,k,chunk", [
    (1, 10, 3, 4), (3, 100, 10, 100), (4, 257, 20, 64), (2, 50, 80, 16), (5, 1000, 1, 333),
])
def test_matches_numpy_oracle(b, n, k, chunk):
    rng = np.random.default_rng(n + k)
    table = rng.normal(size=(b, n + 1)).astype(np.float32)
    ids, scores, num_scored = brute_force(scorer_for(table), b, n, k, chunk_size=chunk)
    want_ids, want_scores = oracle(table, k)
    np.testing.assert_array_equal(ids.numpy(), want_ids)
    np.testing.assert_array_equal(scores.numpy(), want_scores)
    np.testing.assert_array_equal(num_scored.numpy(), n)


def test_ties_nan_and_exclusion():
    rng = np.random.default_rng(0)
    table = np.round(rng.normal(size=(3, 201)), 1).astype(np.float32)  # many exact ties
    table[:, 5::7] = np.nan
    exclude = np.array([[3, 0, 0], [0, 0, 0], [10, 11, 12]], np.int32)
    ids, scores, _ = brute_force(scorer_for(table), 3, 200, 40, chunk_size=32,
                                 exclude_ids=exclude)
    want_ids, want_scores = oracle(table, 40, exclude=exclude)
    np.testing.assert_array_equal(ids.numpy(), want_ids)
    np.testing.assert_array_equal(scores.numpy(), want_scores)


def test_scorer_called_once_per_chunk_with_all_queries():
    calls = []
    table = np.random.default_rng(1).normal(size=(2, 101)).astype(np.float32)
    inner = scorer_for(table)

    def scorer(rows, ids):
        calls.append((rows.numpy(), ids.numpy()))
        return inner(rows, ids)

    brute_force(scorer, 2, 100, 5, chunk_size=30)
    assert [c[1].size for c in calls] == [60, 60, 60, 20]
    assert sorted(np.concatenate([c[1][c[0] == 1] for c in calls]).tolist()) == \
        list(range(1, 101))


def test_in_tf_function_with_dynamic_batch_and_k():
    emb = tf.constant(np.random.default_rng(2).normal(size=(301, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32),
                                  tf.TensorSpec([], tf.int32)])
    def search(q, k):
        def scorer(rows, ids):
            return tf.reduce_sum(tf.gather(emb, ids) * tf.gather(q, rows), axis=1)
        return brute_force(scorer, tf.shape(q)[0], 300, k, chunk_size=128)

    q = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
    table = q @ emb.numpy().T
    ids, scores, _ = search(tf.constant(q), tf.constant(7))
    want_ids, _ = oracle(table, 7)
    np.testing.assert_array_equal(ids.numpy(), want_ids)
    assert search(tf.constant(q[:1]), tf.constant(2))[0].shape == (1, 2)


def test_bad_arguments():
    scorer = lambda rows, ids: tf.zeros(tf.shape(ids))  # noqa: E731
    with pytest.raises(ValueError, match="num_items"):
        brute_force(scorer, 1, 0, 5)
    with pytest.raises(ValueError, match="chunk_size"):
        brute_force(scorer, 1, 10, 5, chunk_size=0)
    with pytest.raises(ValueError, match="k must be"):
        brute_force(scorer, 1, 10, 0)

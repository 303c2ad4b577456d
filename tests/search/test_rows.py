"""Pairs by row: the sort that ordered rows skip, the [B, W] layout, and the merge built on it."""

import numpy as np
import tensorflow as tf

from nann_tf.search.beam import merge_results
from nann_tf.search.rows import row_runs, row_slots, sort_by_row


def test_row_runs_and_slots_lay_out_rows_with_gaps_and_empty_input():
    starts, counts = row_runs(tf.constant([0, 0, 2, 2, 2], tf.int32), 4)
    assert starts.numpy().tolist() == [0, 2, 2, 5] and counts.numpy().tolist() == [2, 0, 3, 0]
    assert row_slots(starts, counts, 4, 5).numpy().tolist() == [
        [0, 1, 5, 5], [5, 5, 5, 5], [2, 3, 4, 5], [5, 5, 5, 5]]
    starts, counts = row_runs(tf.zeros([0], tf.int32), 2)
    assert starts.numpy().tolist() == [0, 0] and counts.numpy().tolist() == [0, 0]
    assert row_slots(starts, counts, 0, 0).shape == (2, 0)


def test_sort_by_row_is_stable_and_skipped_for_ordered_rows():
    asc, rows, vals, order = sort_by_row(tf.constant([2, 0, 2, 1, 0]),
                                         tf.constant([10, 11, 12, 13, 14]))
    assert not bool(asc)
    assert rows.numpy().tolist() == [0, 0, 1, 2, 2]
    assert vals.numpy().tolist() == [11, 14, 13, 10, 12]  # ties keep their order
    assert order.numpy().tolist() == [1, 4, 3, 0, 2]
    asc, rows, vals, order = sort_by_row(tf.constant([0, 0, 1, 3]), tf.constant([5, 6, 7, 8]))
    assert bool(asc) and order.numpy().tolist() == [0, 1, 2, 3]
    assert vals.numpy().tolist() == [5, 6, 7, 8]


def test_merge_drops_new_items_scoring_minus_inf_wherever_they_are():
    """Three rows: new items, some -inf (first, middle, last of a run), a row with none; the
    merge is the top 3 of old + new by (score desc, id asc), -inf items never entering."""
    ninf = float("-inf")
    res_ids = tf.constant([[4, 0, 0], [9, 8, 0], [0, 0, 0]], tf.int32)
    res_scores = tf.constant([[0.5, ninf, ninf], [0.9, 0.1, ninf], [ninf] * 3])
    n_rows = tf.constant([0, 0, 0, 2, 2, 2], tf.int32)
    n_ids = tf.constant([7, 3, 5, 11, 12, 13], tf.int32)
    n_scores = tf.constant([ninf, 0.7, 0.5, 0.2, ninf, ninf])
    ids, scores, entered, _ = merge_results(res_ids, res_scores, n_ids, n_rows, n_scores, 3, 3)
    assert ids.numpy().tolist() == [[3, 4, 5], [9, 8, 0], [11, 0, 0]]
    np.testing.assert_array_equal(scores.numpy(), np.float32([[0.7, 0.5, 0.5], [0.9, 0.1, ninf],
                                                              [0.2, ninf, ninf]]))
    assert entered.numpy().tolist() == [[True, False, True], [False] * 3,
                                         [True, False, False]]


def _random_merge_case(rng, b, w, n):
    """Results [b, w] (sorted, padded with (0, -inf) in some rows) and n new items by row, with
    score ties across ids, -0.0 beside +0.0 and new items scoring -inf."""
    pool = np.array([0.5, 0.25, 0.0, -0.0, -1.0, 2.0], np.float32)
    res_ids = rng.choice(np.arange(1, 10_000), size=(b, w), replace=False).astype(np.int32)
    res_scores = rng.choice(pool, size=(b, w)).astype(np.float32)
    res_scores[rng.random((b, w)) < 0.2] = -np.inf
    from nann_tf.search.beam import top_by_key

    res_ids = np.where(res_scores > -np.inf, res_ids, 0)
    res_ids, res_scores = (x.numpy() for x in top_by_key(res_ids, res_scores, w))
    rows = np.sort(rng.integers(0, b, n)).astype(np.int32)
    ids = rng.choice(np.arange(10_000, 20_000), size=n, replace=False).astype(np.int32)
    scores = rng.choice(np.r_[pool, -np.inf], size=n).astype(np.float32)
    return res_ids, res_scores, ids, rows, scores


def test_fused_merge_is_the_stock_merge_bit_for_bit():
    """NannMergeResults (a walk round's merge as one op) against the stock ops, on rows that
    differ: ties on score (smaller id first), -0.0 and +0.0, new items at -inf anywhere in a
    run, rows with no new items, widths below, at and above the results' width, B = 1."""
    rng = np.random.default_rng(7)
    cases = [(1, 8, 30, 8), (4, 16, 50, 10), (4, 16, 50, 16), (3, 6, 0, 6), (5, 12, 40, 20),
             (2, 4, 3, 1)]
    entered = 0
    for b, w, n, width in cases * 5:
        res_ids, res_scores, ids, rows, scores = _random_merge_case(rng, b, w, n)
        stock = merge_results(res_ids, res_scores, ids, rows, scores, b, width)
        fused = merge_results(res_ids, res_scores, ids, rows, scores, b, width, fused=True)
        for s, f in zip(stock[:3], fused[:3]):
            assert s.shape == f.shape
            np.testing.assert_array_equal(np.asarray(s).view(np.int32) if s.dtype == tf.float32
                                          else s, np.asarray(f).view(np.int32)
                                          if f.dtype == tf.float32 else f)
        entered += int(fused[2].numpy().sum())
    assert entered > 50  # new items did enter: the cases test the merge, not only padding


def test_fused_merge_pads_a_short_row_and_refuses_unsorted_rows():
    from nann_tf import ops

    ids, scores, entered = ops.merge_results(
        np.array([[4, 0]], np.int32), np.array([[1.0, -np.inf]], np.float32),
        np.array([9, 3], np.int32), np.zeros(2, np.int32), np.array([1.0, -np.inf], np.float32),
        np.int32(5))
    assert ids.numpy().tolist() == [[4, 9, 0, 0, 0]]
    assert scores.numpy()[0, :2].tolist() == [1.0, 1.0] and np.isneginf(scores.numpy()[0, 2:]).all()
    assert entered.numpy().tolist() == [[False, True, False, False, False]]
    import pytest

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"new_row_ids\[2\] = 0"):
        ops.merge_results(np.zeros([2, 3], np.int32), np.zeros([2, 3], np.float32),
                          np.array([1, 2, 3], np.int32), np.array([0, 1, 0], np.int32),
                          np.zeros(3, np.float32), np.int32(3))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"new_row_ids\[1\] = 2"):
        ops.merge_results(np.zeros([2, 3], np.int32), np.zeros([2, 3], np.float32),
                          np.array([1, 2], np.int32), np.array([0, 2], np.int32),
                          np.zeros(2, np.float32), np.int32(3))

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

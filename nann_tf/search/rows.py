"""Pairs ``(row_ids, values)`` of a batch's searches, by row: a stable sort that rows given in
order skip, and the ``[B, W]`` layout of rows' runs (gathers: a scatter was 5x the time)."""

from __future__ import annotations

import tensorflow as tf

__all__ = ["row_runs", "row_slots", "sort_by_row"]


def row_runs(rows_sorted, batch_size):
    """``(starts, counts)`` int32 ``[B]``: where each row's run of pairs begins in
    ``rows_sorted`` (int32 in ``[0, B)``, ascending) and how many it holds. (Three ops: the
    walk runs this every round, where each op's dispatch counts.)"""
    counts = tf.math.unsorted_segment_sum(tf.ones_like(rows_sorted), rows_sorted, batch_size)
    return tf.cumsum(counts, exclusive=True), counts


def row_slots(starts, counts, width, n):
    """int32 ``[B, width]``: the position of row ``r``'s ``c``-th pair (:func:`row_runs`), or
    ``n`` (where the caller appends its padding) past the row's run."""
    col = tf.range(width)[None, :]
    return tf.where(col < counts[:, None], starts[:, None] + col, n)


def sort_by_row(row_ids, *values):
    """``(ascending, rows, *values, order)``: ``row_ids`` (int ``[n]``) and the ``values``
    (each ``[n, ...]``) stably sorted by row, and the sort's order. Rows given ascending (every
    round of a walk, any batch of one) skip the sort (``ascending`` True, ``order`` the
    identity)."""
    ascending = tf.reduce_all(row_ids[1:] >= row_ids[:-1])

    def by_sort():
        order = tf.argsort(row_ids, stable=True)
        return (tf.gather(row_ids, order), *[tf.gather(v, order) for v in values], order)

    return (ascending, *tf.cond(
        ascending, lambda: (row_ids, *values, tf.range(tf.size(row_ids))),
        by_sort))

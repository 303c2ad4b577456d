"""The search's scorer for a trained model, with XLA auto-padding to a fixed shape grid.

The search scores flat ``(row_ids, item_ids)`` pairs whose number changes every round. The score
network works on ``[B, C, d]`` (one row of candidates per query: attention then runs as batched
matrix products, with no per-candidate copy of the user's history). So the pairs are laid out
row by row into ``[B, W]`` (``W`` = the largest row), scored, and read back in their order.

With a :class:`ShapeGrid`, ``W`` is padded up to the next grid size and the score network runs
under ``tf.function(jit_compile=True)``: XLA compiles once per (B, grid size) and every other
round reuses a compiled program (paper section 4.2). Padded slots hold the padding item 0 and are
never read back, so they cannot reach any result.
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from nann_tf.search.rows import row_runs, row_slots, sort_by_row

__all__ = ["ShapeGrid", "ModelScorer"]


class ShapeGrid:
    """Sorted candidate widths: ``pad(w)`` is the smallest grid size >= w.

    Args:
      sizes: explicit sizes (sorted, unique, > 0), or None to build a geometric grid.
      max_size: the largest width a round can need (bigger widths are an error at run time).
      min_size / ratio: the geometric grid ``min_size * ratio^i`` (rounded up to a multiple of
        8) up to ``max_size``.
    """

    def __init__(self, sizes: Sequence[int] | None = None, *, max_size: int = 0,
                 min_size: int = 16, ratio: float = 1.25):
        if sizes is None:
            if max_size < 1 or min_size < 1 or ratio <= 1.0:
                raise ValueError(f"ShapeGrid: need max_size >= 1, min_size >= 1, ratio > 1; got "
                                 f"{max_size}, {min_size}, {ratio}")
            out, s = [], float(min_size)
            while True:
                v = int(math.ceil(s / 8.0) * 8)
                if v >= max_size:
                    out.append(int(max_size))
                    break
                if not out or v > out[-1]:
                    out.append(v)
                s *= ratio
            sizes = out
        sizes = [int(x) for x in sizes]
        if not sizes or sorted(set(sizes)) != sizes or sizes[0] < 1:
            raise ValueError(f"ShapeGrid sizes must be sorted, unique and > 0, got {sizes}")
        self.sizes = sizes

    @property
    def max_size(self) -> int:
        return self.sizes[-1]

    def pad(self, width):
        """The grid size for ``width`` (int32 scalar tensor); > max_size fails at run time."""
        grid = tf.constant(self.sizes, tf.int32)
        width = tf.cast(width, tf.int32)
        tf.debugging.assert_less_equal(width, grid[-1], message=(
            "a search round has more candidates per query than the XLA shape grid allows; "
            "lower ef or export with a larger grid"))
        idx = tf.searchsorted(grid, tf.reshape(width, [1]), side="left")[0]
        return tf.gather(grid, tf.minimum(idx, len(self.sizes) - 1))

    def pad_np(self, width: int) -> int:
        i = int(np.searchsorted(np.asarray(self.sizes), width, side="left"))
        if i >= len(self.sizes):
            raise ValueError(f"width {width} > the grid's largest size {self.max_size}")
        return self.sizes[i]

    def to_list(self) -> list[int]:
        return list(self.sizes)

    @classmethod
    def for_search(cls, graph, start_level: int, max_ef: int, max_len: int,
                   ratio: float = 1.25, entries: int = 0) -> "ShapeGrid":
        """The grid a beam search over ``graph`` needs: up to the widest round, the start level
        plus one history of seeds and ``entries`` entry points, or ``max_ef`` x the largest
        degree (capped at the corpus). A filtered walk's wider rounds are cut to it
        (``beam_search``'s ``max_candidates``).

        The width of every request's first call, the start level and one history of seeds
        (the largest call of an unfiltered walk at millions of items), is a grid size, and with
        ``entries`` so are the widths of a filtered walk's first call (the start level, one
        history and ``entries`` or ``entries // 2`` entry points: a broad and a narrow filter,
        :data:`~nann_tf.export.module.BROAD_FILTER_SHARE`): on the geometric grid alone they
        would be padded by up to ``ratio``."""
        max_deg = max(int(np.diff(s).max()) if len(s) > 1 else 0 for _, s in graph.levels)
        first = len(graph.start_nodes(start_level)) + int(max_len)
        cap = min(max(first + int(entries), int(max_ef) * max(max_deg, 1)),
                  graph.num_items + 1)
        sizes = cls(max_size=max(16, cap), ratio=ratio).sizes
        firsts = (first, first + int(entries), first + int(entries) // 2) if entries else (first,)
        return cls(sorted(set(sizes) | {w for w in firsts if w <= cap}))


class ModelScorer:
    """``scorer(row_ids, item_ids) -> scores`` for :func:`nann_tf.search.beam.beam_search`.

    Args:
      model: a :class:`~nann_tf.model.nann.NANNModel` (only ``score`` is called).
      item_table: e_v for ids 0..N, a tensor or variable (float32 or float16). Gathered on the
        device that runs the traversal; the score network gets ``[B, W, d]`` float32.
      grid: pad widths up to this grid and run the score network with XLA (None: no padding, no
        XLA).
      gather_device: where to gather candidate embeddings (the CPU, beside the index).
      side_table: the item-side tensors of ids 0..N (:func:`~nann_tf.model.nann.item_side_table`,
        same dtype as ``item_table``), gathered beside e_v so that each scored candidate costs
        only the pair block; None: computed per candidate from e_v (the same scores, to float
        rounding).
      gather: ``gather(table, ids)`` -> the tables' rows (default ``tf.gather``), e.g.
        :func:`nann_tf.ops.gather_rows` for variable tables.
    """

    def __init__(self, model, item_table, grid: ShapeGrid | None = None,
                 gather_device: str | None = "/CPU:0", side_table=None, gather=None):
        self.model = model
        self.gather = tf.gather if gather is None else gather
        self.item_table = item_table
        self.side_table = side_table
        self.grid = grid
        self.gather_device = gather_device
        self._score = tf.function(self._score_dense, jit_compile=True,
                                  reduce_retracing=True) if grid is not None else \
            self._score_dense

    def _score_dense(self, user_state, e, side=None):
        from nann_tf.model.nann import split_item_side

        e = tf.cast(e, tf.float32)
        if side is None:
            return self.model.score(user_state, e)
        return self.model.score_items(
            user_state, split_item_side(self.model, e, tf.cast(side, tf.float32)))

    def _device(self):
        return (tf.device(self.gather_device) if self.gather_device
                else contextlib.nullcontext())

    def bind(self, user_state, batch_size):
        """A scorer closure for one batch of queries with this ``user_state``."""

        def scorer(row_ids, item_ids):
            return self.score_pairs(user_state, batch_size, row_ids, item_ids)

        return scorer

    def score_first_items(self, user_state, batch_size, width):
        """Scores items ``1..width`` for every query, float32 ``[B, width]``: one scorer call of
        that width (used to compile a grid size ahead of the search; ``width <= N``)."""
        return self.score_item_range(user_state, batch_size, 1, width + 1)

    def score_item_range(self, user_state, batch_size, first, stop):
        """Scores items ``first..stop-1`` for every query, float32 ``[B, stop - first]`` (the
        exact search's chunks; with a grid the width is padded as in the search)."""
        with self._device():
            b = tf.cast(batch_size, tf.int32)
            ids = tf.range(first, stop, dtype=tf.int32)
            rows = tf.repeat(tf.range(b), tf.size(ids))
            flat = tf.tile(ids, [b])
        return tf.reshape(self.score_pairs(user_state, b, rows, flat), [b, -1])

    def score_pairs(self, user_state, batch_size, row_ids, item_ids):
        """Scores of ``item_ids[i]`` for query ``row_ids[i]``, float32 ``[n]``."""
        with self._device():
            row_ids = tf.cast(row_ids, tf.int32)
            item_ids = tf.cast(item_ids, tf.int32)
            n = tf.size(row_ids)
            b = tf.cast(batch_size, tf.int32)
            ascending, rows_sorted, ids_sorted, order = sort_by_row(row_ids, item_ids)
            starts, counts = row_runs(rows_sorted, b)
            width = tf.maximum(tf.reduce_max(tf.concat([counts, [1]], 0)), 1)
            if self.grid is not None:
                width = self.grid.pad(width)
            # Row r of the layout is its run of pairs, then padding (id 0, appended at position
            # n): gathers, not a scatter (5x the time here).
            dense_ids = tf.gather(tf.concat([ids_sorted, [0]], 0),
                                  row_slots(starts, counts, width, n))
            e = self.gather(self.item_table, dense_ids)
            side = None if self.side_table is None else self.gather(self.side_table, dense_ids)
        scores = self._score(user_state, e) if side is None else \
            self._score(user_state, e, side)
        with self._device():
            # Pair i (in row order) sits at column i - starts[row] of its row.
            flat = rows_sorted * width + tf.range(n) - tf.gather(starts, rows_sorted)
            s_sorted = tf.gather(tf.reshape(scores, [-1]), flat)
            return tf.cond(ascending, lambda: s_sorted,
                           lambda: tf.scatter_nd(order[:, None], s_sorted, tf.shape(row_ids)))

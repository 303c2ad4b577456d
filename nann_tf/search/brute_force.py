"""Brute force: the exact top-k over the whole corpus, the reference for every quality metric.

Scores the items ``1..N`` in chunks of ``chunk_size`` items (each chunk for all B queries in one
scorer call) inside a ``tf.while_loop``, keeping a running top ``k``. Same conventions as
:mod:`nann_tf.search.beam` (ordering score desc / id asc, padding, exclusion, NaN as -inf).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from nann_tf.search.beam import Scorer, SearchContext, resize_results, top_by_key

__all__ = ["DEFAULT_CHUNK_SIZE", "brute_force"]

DEFAULT_CHUNK_SIZE = 16384
_NEG_INF = float("-inf")


def brute_force(scorer: Scorer, batch_size: Any, num_items: int, k: Any = 200,
                chunk_size: int = DEFAULT_CHUNK_SIZE, exclude_ids: Any = None,
                traversal_device: str | None = "/CPU:0"):
    """Exact top ``k`` of items ``1..num_items`` for each of ``batch_size`` queries.

    Args:
      scorer: ``scorer(row_ids int32 [n], item_ids int32 [n]) -> float32 [n]``; it is called
        with ``n = batch_size * chunk`` per chunk.
      batch_size: B (Python int or int32 scalar tensor).
      num_items: N (Python int).
      k: results per query (``k > N`` pads with id 0 / score -inf).
      chunk_size: items per chunk.
      exclude_ids: optional int ``[B, E]`` items never to return (0 = none).
      traversal_device: device for the top-k bookkeeping (``None``: no placement).

    Returns:
      ``(ids int32 [B, k], scores float32 [B, k], num_scored int32 [B])`` (``num_scored`` is N).
    """
    num_items, chunk_size = int(num_items), int(chunk_size)
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    if isinstance(k, int) and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    ctx = SearchContext(scorer, batch_size, num_items, exclude_ids, "tf", traversal_device)
    b = ctx.batch_size
    chunk = min(chunk_size, num_items)
    num_chunks = -(-num_items // chunk)
    with ctx.device():
        res_ids, res_scores = resize_results(tf.zeros([b, 0], tf.int32),
                                             tf.zeros([b, 0], tf.float32), k)

    def cond(i, res_ids, res_scores):
        return i < num_chunks

    def body(i, res_ids, res_scores):
        with ctx.device():
            first = 1 + i * chunk
            ids = tf.range(first, tf.minimum(first + chunk, num_items + 1), dtype=tf.int32)
            n = tf.size(ids)
            rows = tf.repeat(tf.range(b), n)
            flat_ids = tf.tile(ids, [b])
        scores = ctx.score(rows, flat_ids)
        with ctx.device():
            cand_ids = tf.concat([res_ids, tf.reshape(flat_ids, [b, -1])], axis=1)
            cand_scores = tf.concat([res_scores, tf.reshape(scores, [b, -1])], axis=1)
            res_ids, res_scores = top_by_key(cand_ids, cand_scores, k)
        return i + 1, res_ids, res_scores

    _, res_ids, res_scores = tf.while_loop(
        cond, body, (tf.constant(0), res_ids, res_scores),
        shape_invariants=(tf.TensorShape([]), res_ids.shape, res_scores.shape))
    with ctx.device():
        res_ids = tf.where(res_scores > _NEG_INF, res_ids, 0)
        num_scored = tf.fill([b], tf.constant(num_items, tf.int32))
    return res_ids, res_scores, num_scored

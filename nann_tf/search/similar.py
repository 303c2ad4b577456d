"""Items-to-item ("similar items"): the nearest items to one or more seed items.

Two modes, both walking the same HNSW levels with the same beam search
(:func:`nann_tf.search.beam.beam_search`, visited set included), with the seeds as entry points:

- ``embedding``: distance in the item network's space ``e_v``. A row's query is the centroid
  ``c`` of its seeds' embeddings and an item's score is ``-||e_v - c||^2``. This is the L2
  metric the HNSW graph was built with (``hnswlib`` space ``l2``): a search is only as good as
  the agreement between its metric and the graph's, and on the graph's own metric the beam
  search finds the exact neighbours at a small cost (``bench/results/similar-*.json``). Cosine
  would discard ``||e_v||``, which the model uses (it grows with popularity), and would need a
  second graph. For several seeds ``-||e_v - c||^2`` equals the mean of ``-||e_v - s||^2`` over
  the seeds up to a per-row constant: the items closest to all seeds together.
- ``model``: the NANN model's own score with the seeds as the user's history ("people who
  engaged with these also engage with"): the retrieval search, unchanged, on that history.

In both, the seeds are excluded from the results unless a row asks for them, padding (0) and
unknown ids are masked, and a row without any known seed gets no results (ids 0, scores
``-inf``), like any query whose items all score ``-inf``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping

import tensorflow as tf

from nann_tf.search.beam import beam_search
from nann_tf.search.params import DEFAULT_SIMILAR

__all__ = ["EMBEDDING", "MODEL", "MODES", "DEFAULT_SIMILAR", "DistanceScorer", "seed_centroid",
           "seed_exclusions", "seeds_as_history", "similar_by_embedding", "embedding_scorer"]

EMBEDDING = "embedding"
MODEL = "model"
MODES = (EMBEDDING, MODEL)

_NEG_INF = float("-inf")


def seed_centroid(item_table, seeds):
    """The centroid of each row's seed embeddings.

    Args:
      item_table: e_v for ids 0..N (float32 or float16, tensor or variable).
      seeds: int ``[B, Q]`` dense ids, 0 = none.

    Returns:
      ``(centroid float32 [B, d], has_seed bool [B])``; a row without seeds has centroid 0.
    """
    seeds = tf.cast(seeds, tf.int32)
    mask = tf.cast(seeds > 0, tf.float32)
    e = tf.cast(tf.gather(item_table, seeds), tf.float32) * mask[:, :, None]
    count = tf.reduce_sum(mask, axis=1)
    centroid = tf.reduce_sum(e, axis=1) / tf.maximum(count, 1.0)[:, None]
    return centroid, count > 0


class DistanceScorer:
    """``scorer(row_ids, item_ids)`` = ``-||e_v[item] - c[row]||^2`` for
    :func:`~nann_tf.search.beam.beam_search`; rows without a seed score ``-inf`` everywhere.

    Args:
      item_table: e_v for ids 0..N.
      centroid: float32 ``[B, d]`` (:func:`seed_centroid`).
      has_seed: bool ``[B]``.
      device: where the gathers and the distances run (beside the table: a distance costs
        less than moving ``e_v`` to an accelerator); None: no placement.
    """

    def __init__(self, item_table, centroid, has_seed, device: str | None = "/CPU:0"):
        self.item_table = item_table
        self.centroid = centroid
        self.has_seed = has_seed
        self.device = device

    def __call__(self, row_ids, item_ids):
        with tf.device(self.device) if self.device else contextlib.nullcontext():
            e = tf.cast(tf.gather(self.item_table, tf.cast(item_ids, tf.int32)), tf.float32)
            row_ids = tf.cast(row_ids, tf.int32)
            d = e - tf.gather(self.centroid, row_ids)
            score = tf.subtract(0.0, tf.reduce_sum(d * d, axis=1))  # 0, not -0, for the seed
            return tf.where(tf.gather(self.has_seed, row_ids), score, _NEG_INF)


def seed_exclusions(seeds, exclude_ids=None, include_seeds=None):
    """The ids a similar-items search must not return: the caller's ``exclude_ids`` and, in rows
    where ``include_seeds`` is false (all rows when it is None), the seeds themselves.

    Args:
      seeds: int ``[B, Q]`` dense ids (0 = none).
      exclude_ids: optional int ``[B, E]`` dense ids (0 = none).
      include_seeds: optional bool ``[B]``.

    Returns:
      int32 ``[B, Q + E]``.
    """
    seeds = tf.cast(seeds, tf.int32)
    if include_seeds is not None:
        seeds = tf.where(tf.cast(include_seeds, tf.bool)[:, None], 0, seeds)
    if exclude_ids is None:
        return seeds
    return tf.concat([seeds, tf.cast(exclude_ids, tf.int32)], axis=1)


def seeds_as_history(seeds, max_len: int):
    """Seeds ``[B, Q]`` (0 = none, in time order, the most recent last) as a right-aligned
    history ``[B, max_len]``: the non-zero seeds in their order, left-padded with 0. A row with
    more than ``max_len`` seeds keeps its last ``max_len`` (callers refuse ``Q > max_len``)."""
    seeds = tf.cast(seeds, tf.int32)
    real = seeds > 0
    count = tf.reduce_sum(tf.cast(real, tf.int32), axis=1, keepdims=True)
    rank = tf.cumsum(tf.cast(real, tf.int32), axis=1)  # 1-based among the real seeds
    col = max_len - count + rank - 1
    keep = tf.logical_and(real, col >= 0)
    rows = tf.broadcast_to(tf.range(tf.shape(seeds)[0])[:, None], tf.shape(seeds))
    index = tf.stack([tf.boolean_mask(rows, keep), tf.boolean_mask(col, keep)], axis=1)
    return tf.scatter_nd(index, tf.boolean_mask(seeds, keep),
                         tf.stack([tf.shape(seeds)[0], max_len]))


def similar_by_embedding(graph, item_table, seeds, batch_size: Any, ef: Mapping, T: Mapping,
                         k: Any, *, exclude_ids=None, include_seeds=None, visited_impl: str = "tf",
                         traversal_device: str | None = "/CPU:0"):
    """Embedding-mode similar items: beam search under :class:`DistanceScorer` with the seeds
    as entry points.

    Args:
      graph: :class:`~nann_tf.index.hnsw.GraphTensors`.
      item_table: e_v for ids 0..N (the index's embeddings).
      seeds: int ``[B, Q]`` dense ids, 0 = none.
      batch_size / ef / T / k / visited_impl / traversal_device: as
        :func:`~nann_tf.search.beam.beam_search`.
      exclude_ids / include_seeds: as :func:`seed_exclusions`.

    Returns:
      ``(ids int32 [B, k], scores float32 [B, k], num_scored int32 [B])``.
    """
    scorer, exclude = embedding_scorer(item_table, seeds, exclude_ids, include_seeds,
                                       traversal_device)
    return beam_search(graph, scorer, batch_size, ef, T, k, visited_impl=visited_impl,
                       exclude_ids=exclude, traversal_device=traversal_device, seed_ids=seeds)


def embedding_scorer(item_table, seeds, exclude_ids=None, include_seeds=None,
                     traversal_device: str | None = "/CPU:0"):
    """The embedding mode's ``(scorer, exclude_ids)``: :class:`DistanceScorer` to the seeds'
    centroid, and the exclusions with the seeds added unless ``include_seeds``."""
    with tf.device(traversal_device) if traversal_device else contextlib.nullcontext():
        centroid, has_seed = seed_centroid(item_table, seeds)
        scorer = DistanceScorer(item_table, centroid, has_seed, traversal_device)
        exclude = seed_exclusions(seeds, exclude_ids, include_seeds)
    return scorer, exclude

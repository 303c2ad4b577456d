"""Exact (brute-force) retrieval with the trained model and the most-popular baseline.

``brute_force_topk`` scores every item 1..N for every query user, in chunks of users and items,
and keeps a running top-k: the reference every approximate search is measured against.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from nann_tf.model.nann import NANNModel

__all__ = ["BruteForceScorer", "brute_force_topk", "most_popular_topk", "all_item_embeddings"]


def all_item_embeddings(model: NANNModel, batch_size: int = 65536) -> np.ndarray:
    """e_v for dense ids 0..N (row 0 is the padding id's embedding and is never retrieved)."""
    n = model.num_items + 1
    fn = tf.function(model.item_embedding,
                     input_signature=[tf.TensorSpec([None], tf.int32)], reduce_retracing=True)
    out = [fn(tf.range(i, min(i + batch_size, n), dtype=tf.int32)).numpy()
           for i in range(0, n, batch_size)]
    return np.concatenate(out, axis=0).astype(np.float32)


class BruteForceScorer:
    """Scores whole-corpus chunks for a batch of users with one compiled function.

    Args:
      model: the trained model.
      item_table: e_v for ids 0..N (from :func:`all_item_embeddings`).
      pair_budget: users x items x history length scored per call (bounds memory).
    """

    def __init__(self, model: NANNModel, item_table: np.ndarray, pair_budget: int = 2 ** 24):
        self.model = model
        self.items = tf.constant(item_table)
        self.pair_budget = pair_budget

        @tf.function(reduce_retracing=True)
        def chunk_scores(hist, start, stop):
            state = model.encode_user(hist)
            e = self.items[start:stop]
            b = tf.shape(hist)[0]
            e = tf.broadcast_to(e[None], tf.concat([[b], tf.shape(e)], 0))
            return model.score(state, e)

        self._chunk_scores = chunk_scores

    def topk(self, hist: np.ndarray, k: int, user_batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k dense ids (1..N) and scores for each row of ``hist`` [U, L].

        Ties are broken by the smaller id. Returns ``(ids int64 [U, k], scores float32 [U, k])``.
        """
        n = self.model.num_items
        k = min(k, n)
        hist = np.asarray(hist, np.int32)
        L = max(hist.shape[1], 1)
        item_chunk = max(256, self.pair_budget // (user_batch * L))
        ids_out = np.zeros((len(hist), k), np.int64)
        sc_out = np.zeros((len(hist), k), np.float32)
        for u0 in range(0, len(hist), user_batch):
            h = tf.constant(hist[u0:u0 + user_batch])
            best_s = np.full((len(h), 0), -np.inf, np.float32)
            best_i = np.zeros((len(h), 0), np.int64)
            for i0 in range(1, n + 1, item_chunk):
                i1 = min(i0 + item_chunk, n + 1)
                s = self._chunk_scores(h, tf.constant(i0), tf.constant(i1)).numpy()
                cand_s = np.concatenate([best_s, s], axis=1)
                cand_i = np.concatenate(
                    [best_i, np.broadcast_to(np.arange(i0, i1, dtype=np.int64), s.shape)], axis=1)
                # Sort by (-score, id): lexsort's last key is the primary one.
                order = np.lexsort((cand_i, -cand_s), axis=1)[:, :k]
                best_s = np.take_along_axis(cand_s, order, axis=1)
                best_i = np.take_along_axis(cand_i, order, axis=1)
            ids_out[u0:u0 + len(h)] = best_i
            sc_out[u0:u0 + len(h)] = best_s
        return ids_out, sc_out


def brute_force_topk(model: NANNModel, hist: np.ndarray, k: int,
                     item_table: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over the whole corpus for each history row (see :class:`BruteForceScorer`)."""
    if item_table is None:
        item_table = all_item_embeddings(model)
    return BruteForceScorer(model, item_table).topk(hist, k)


def most_popular_topk(item_freq: np.ndarray, k: int) -> np.ndarray:
    """The k most frequent dense ids (ties: smaller id first)."""
    freq = np.asarray(item_freq)[1:]
    order = np.lexsort((np.arange(len(freq)), -freq))
    return (order[:k] + 1).astype(np.int64)

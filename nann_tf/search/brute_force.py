"""Exact search: the top-k over the whole corpus, the reference for every quality metric.

One family, two drivers over the same scoring and the same top-k merge:

- :func:`brute_force` (in-graph, served as the export's ``brute_force`` signature): scores the
  items ``1..N`` in chunks of ``chunk_size`` items (each chunk for all B queries in one scorer
  call) inside a ``tf.while_loop``, keeping a running top ``k`` with the search's own merge
  (:func:`~nann_tf.search.beam.top_by_key`). Same conventions as :mod:`nann_tf.search.beam`
  (ordering score desc / id asc, padding, exclusion, NaN as -inf).
- :class:`ExactScorer` (eager, offline evaluation and tuning): runs :func:`brute_force` with the
  model's :class:`~nann_tf.model.scorer.ModelScorer` for batches of users, and
  :meth:`ExactScorer.full_scores` returns every item's score (the matrix the tuner replays on);
  :func:`topk_of_scores` takes the exact top-k of such a matrix with the same tie rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from nann_tf.progress import Progress
from nann_tf.search.beam import Scorer, SearchContext, resize_results, top_by_key

__all__ = ["DEFAULT_CHUNK_SIZE", "ExactScorer", "brute_force", "topk_of_scores", "without_items"]

DEFAULT_CHUNK_SIZE = 16384
MIN_BUDGET_LEN = 20  # ExactScorer: the shortest history length its pair budget assumes
_NEG_INF = float("-inf")


def brute_force(scorer: Scorer, batch_size: Any, num_items: int, k: Any = 200,
                chunk_size: int = DEFAULT_CHUNK_SIZE, exclude_ids: Any = None,
                traversal_device: str | None = "/CPU:0", item_filter=None):
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
      item_filter: optional ``item_filter(row_ids, item_ids) -> bool [n]``: only items that
        pass are returned (the exact filtered top k, the filtered search's reference).

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
            if item_filter is not None:
                scores = tf.where(item_filter(rows, flat_ids), scores, _NEG_INF)
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


def topk_of_scores(scores: np.ndarray, k: int) -> np.ndarray:
    """Row-wise top ``k`` column ids of a score matrix ``[U, N + 1]`` (score desc, ties by the
    smaller id, as every search here), int64 ``[U, min(k, N + 1)]``."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    s = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -s), axis=1)
    return np.take_along_axis(part, order, axis=1).astype(np.int64)


def without_items(scorer, mask, device: str | None = None):
    """``scorer`` with the items where ``mask`` (bool ``[N + 1]``) is True scored ``-inf``,
    like a request's excluded items: walked past, never returned (``update-index``'s retired
    items). The mask is gathered on ``device``."""
    def live(rows, ids):
        scores = scorer(rows, ids)
        with tf.device(device):
            gone = tf.reshape(tf.gather(mask, tf.reshape(ids, [-1])), tf.shape(scores))
            return tf.where(gone, tf.constant(float("-inf"), scores.dtype), scores)
    return live


class ExactScorer:
    """Exact search for batches of user histories with a trained model, eagerly, in chunks.

    Args:
      model: the trained :class:`~nann_tf.model.nann.NANNModel`.
      item_table: e_v for ids 0..N (:func:`~nann_tf.model.nann.all_item_embeddings` or the
        index's embeddings), or a ``tf.Variable`` holding them (assign new values and search
        again without retracing: validation during training does).
      pair_budget: users x items x history length scored per model call (bounds memory).
      user_batch: users per call.
      side_table: the items' precomputed item-side tensors
        (:func:`~nann_tf.model.nann.item_side_table`; a ``tf.Variable`` beside a variable
        ``item_table``). Default: computed here from an array ``item_table``; none (computed per
        pair) beside a variable one.
      retired: bool ``[N + 1]`` (array or variable): items scored ``-inf`` by :meth:`topk`
        (``nann-tf update-index``'s retired items, never served).
    """

    def __init__(self, model, item_table: np.ndarray, pair_budget: int = 2 ** 24,
                 user_batch: int = 128, side_table=None, retired=None):
        from nann_tf.model.nann import item_side_table
        from nann_tf.model.scorer import ModelScorer

        self.model = model
        self.num_items = int(item_table.shape[0]) - 1
        self.pair_budget = int(pair_budget)
        self.user_batch = int(user_batch)
        if not isinstance(item_table, tf.Variable):
            if side_table is None:
                side_table = item_side_table(model, item_table)
            item_table = tf.constant(item_table)
        if side_table is not None and not isinstance(side_table, tf.Variable):
            side_table = tf.constant(side_table)
        self._scorer = ModelScorer(model, item_table, grid=None, gather_device=None,
                                   side_table=side_table)
        self._spec = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([], tf.int32)]
        self._topk_fns: dict[int, Any] = {}
        self._retired = retired if retired is None or isinstance(retired, tf.Variable) else \
            tf.constant(np.asarray(retired, bool))

        @tf.function(input_signature=self._spec + [tf.TensorSpec([], tf.int32)])
        def range_fn(hist, first, stop):
            b = tf.shape(hist)[0]
            return self._scorer.score_item_range(model.encode_user(hist), b, first, stop)

        self._range_fn = range_fn

    def _chunk(self, hist: np.ndarray) -> int:
        """Items per chunk: the pair budget over users x history length, the length counted as
        at least ``MIN_BUDGET_LEN`` (the score network's activations per candidate do not shrink
        with the history: a 3-item history would otherwise get chunks of 44k items, 5.6M
        candidates per call and ~15 GB)."""
        length = max(hist.shape[1], MIN_BUDGET_LEN)
        return max(256, self.pair_budget // (self.user_batch * length))

    def _topk_fn(self, chunk: int):
        if chunk not in self._topk_fns:
            @tf.function(input_signature=self._spec)
            def topk_fn(hist, k):
                b = tf.shape(hist)[0]
                scorer = self._scorer.bind(self.model.encode_user(hist), b)
                if self._retired is not None:
                    scorer = without_items(scorer, self._retired)
                return brute_force(scorer, b, self.num_items, k, chunk_size=chunk,
                                   traversal_device=None)[:2]

            self._topk_fns[chunk] = topk_fn
        return self._topk_fns[chunk]

    def topk(self, hist: np.ndarray, k: int,
             progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k dense ids (1..N) and scores for each row of ``hist`` [U, L].

        Returns ``(ids int64 [U, k'], scores float32 [U, k'])`` with ``k' = min(k, N)``;
        ``progress=False`` shows no progress (validation during training).
        """
        k = min(int(k), self.num_items)
        hist = np.asarray(hist, np.int32)
        ids = np.zeros((len(hist), k), np.int64)
        scores = np.zeros((len(hist), k), np.float32)
        fn = self._topk_fn(self._chunk(hist))
        with Progress(len(hist), "brute force", "users", enabled=progress) as bar:
            for u0 in range(0, len(hist), self.user_batch):
                h = tf.constant(hist[u0:u0 + self.user_batch])
                i, s = fn(h, tf.constant(k))
                ids[u0:u0 + len(h)] = i.numpy()
                scores[u0:u0 + len(h)] = s.numpy()
                bar.update(len(h))
        return ids, scores

    def full_scores(self, hist: np.ndarray, progress=None) -> np.ndarray:
        """``s_u(e_v)`` of every item for every user: float32 ``[U, N + 1]`` (column 0 = -inf).

        Args:
          hist: user histories [U, L].
          progress: optional ``callable(done_users, total_users)`` (default: a
            :class:`~nann_tf.progress.Progress` reporter).
        """
        hist = np.asarray(hist, np.int32)
        n1 = self.num_items + 1
        chunk = self._chunk(hist)
        out = np.empty((len(hist), n1), np.float32)
        with Progress(len(hist), "brute force: all scores", "users",
                      enabled=progress is None) as bar:
            for u0 in range(0, len(hist), self.user_batch):
                h = tf.constant(hist[u0:u0 + self.user_batch])
                for i0 in range(1, n1, chunk):
                    i1 = min(i0 + chunk, n1)
                    out[u0:u0 + len(h), i0:i1] = self._range_fn(h, tf.constant(i0),
                                                                tf.constant(i1))
                if progress:
                    progress(min(u0 + self.user_batch, len(hist)), len(hist))
                bar.set(min(u0 + self.user_batch, len(hist)))
        out[:, 0] = -np.inf
        return out

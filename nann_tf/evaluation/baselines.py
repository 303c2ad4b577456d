"""What a user would run instead of NANN, on the same users: two-tower retrieval through an
inner-product ANN index (hnswlib), a result list with the user's history filtered out, beside the
exact searches of :mod:`nann_tf.evaluation.evaluate` and the most-popular list
(:func:`nann_tf.data.dataset.popularity_topk`)."""

from __future__ import annotations

import numpy as np

__all__ = ["two_tower_ann_topk", "without_history"]


def two_tower_ann_topk(model, hist: np.ndarray, k: int, *, ef: int | None = None,
                       M: int = 32, ef_construction: int = 200, seed: int = 100) -> np.ndarray:
    """Top-k dense item ids of a ``two_tower`` model by hnswlib inner-product search (``ip``
    space over the item embeddings ``e_v``; the user tower's ``e_u`` as the query), the usual
    way a two-tower model is served.

    Args:
      model: a trained :class:`~nann_tf.model.nann.NANNModel` with ``variant = "two_tower"``.
      hist: dense user histories ``[U, L]``.
      k: results per user.
      ef: hnswlib's query beam (default ``max(2k, 100)``).
      M / ef_construction / seed: the graph's build parameters.

    Returns:
      int64 ``[U, k']`` dense ids (1..N), best first, ``k' = min(k, N)``.

    Raises:
      ValueError: the model is not a two-tower model.
    """
    import hnswlib
    import tensorflow as tf

    from nann_tf.model.nann import all_item_embeddings

    if model.variant != "two_tower":
        raise ValueError(f"two_tower_ann_topk needs a two_tower model, got {model.variant!r}")
    table = all_item_embeddings(model)[1:]  # row i is dense id i + 1
    n, d = table.shape
    k = int(min(k, n))
    index = hnswlib.Index(space="ip", dim=d)
    index.init_index(max_elements=n, M=M, ef_construction=ef_construction, random_seed=seed)
    index.add_items(table, np.arange(1, n + 1))
    index.set_ef(max(int(ef or max(2 * k, 100)), k))
    e_u = model.encode_user(tf.constant(np.asarray(hist, np.int32)))["e_u"].numpy()
    labels, _ = index.knn_query(e_u, k=k)
    return labels.astype(np.int64)


def without_history(ids: np.ndarray, hist: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` ids of each row of ``ids`` that are not in that user's history (the
    post-filter a two-tower deployment applies on logs where nobody takes an item twice).

    Args:
      ids: int [U, >= k + L] dense ids, best first (0 = padding).
      hist: int [U, L] dense histories (0 = padding).
      k: ids to keep per row.

    Returns:
      int64 [U, k] (0-padded where a row runs out).
    """
    ids, hist = np.asarray(ids), np.asarray(hist)
    out = np.zeros((len(ids), k), np.int64)
    for u in range(len(ids)):
        seen = set(hist[u][hist[u] > 0].tolist())
        row = [i for i in ids[u].tolist() if i > 0 and i not in seen][:k]
        out[u, :len(row)] = row
    return out

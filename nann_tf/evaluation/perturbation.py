"""Paper Fig. 6: how much the score moves under a small random perturbation of ``e_v``."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

__all__ = ["PERTURBATION_FIELDS", "histogram_rows", "perturbation_deltas"]

PERTURBATION_FIELDS = ["series", "model", "fgsm_eps", "radius", "top_m", "bin_lo", "bin_hi",
                       "count"]


def perturbation_deltas(model, item_table: np.ndarray, hist: np.ndarray, top_ids: np.ndarray,
                        radius: float, seed: int = 0, batch_size: int = 64) -> np.ndarray:
    """``|s_u(e_v) - s_u(e_v + delta)|`` for every user u and item v of ``top_ids[u]`` (Fig. 6).

    ``delta`` is drawn independently for every (u, v): a uniformly random direction scaled to
    the l2 norm ``radius``.

    Args:
      model: the trained model.
      item_table: its e_v for ids 0..N.
      hist: user histories [U, L].
      top_ids: [U, M] items per user (e.g. the brute-force top M); ids <= 0 are skipped.
      radius: ``||delta||_2``.
      seed: random seed of the directions.

    Returns:
      float32 [number of (u, v) pairs].
    """
    import tensorflow as tf

    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(0, len(hist), batch_size):
        h = np.asarray(hist[i:i + batch_size], np.int32)
        ids = np.asarray(top_ids[i:i + batch_size])
        e = item_table[np.maximum(ids, 0)].astype(np.float32)
        g = rng.standard_normal(e.shape).astype(np.float32)
        g *= radius / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-12)
        state = model.encode_user(tf.constant(h))
        s0 = model.score(state, tf.constant(e)).numpy()
        s1 = model.score(state, tf.constant(e + g)).numpy()
        out.append(np.abs(s0 - s1)[ids > 0])
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def histogram_rows(deltas: Mapping[str, np.ndarray], base: Mapping[str, Mapping[str, Any]],
                   bins: int = 40) -> list[dict]:
    """Histogram rows (:data:`PERTURBATION_FIELDS`) of several series on shared bins.

    The bins span 0 .. the largest 99.5th percentile over the series; larger values count in
    the last bin.
    """
    hi = max([float(np.quantile(v, 0.995)) for v in deltas.values() if len(v)] + [1e-12])
    edges = np.linspace(0.0, hi, bins + 1)
    rows = []
    for series, values in deltas.items():
        counts, _ = np.histogram(np.minimum(values, hi), bins=edges)
        for lo, up, c in zip(edges[:-1], edges[1:], counts):
            rows.append(dict(base[series], series=series, bin_lo=float(lo), bin_hi=float(up),
                             count=int(c)))
    return rows

"""The noise distribution NCE draws its negatives from: unigram^alpha over the items."""

from __future__ import annotations

import numpy as np

__all__ = ["NoiseDistribution"]


class NoiseDistribution:
    """Unigram^alpha noise over dense ids 1..N.

    Counts get add-one smoothing so that items never seen in training (they can still be
    retrieved) are drawn as negatives too and their ``log q`` is finite.
    """

    def __init__(self, freq: np.ndarray, alpha: float):
        w = (np.asarray(freq, np.float64)[1:] + 1.0) ** alpha
        p = w / w.sum()
        self.probs = np.concatenate([[0.0], p])  # index = dense id
        self.log_q = np.log(np.maximum(self.probs, 1e-30)).astype(np.float32)
        self._cdf = np.cumsum(p)
        self._cdf[-1] = 1.0

    def sample(self, rng: np.random.Generator, shape) -> np.ndarray:
        u = rng.random(shape)
        return (np.searchsorted(self._cdf, u, side="right") + 1).astype(np.int32)

"""The noise distribution NCE draws its negatives from: unigram^alpha over the items."""

from __future__ import annotations

import numpy as np

__all__ = ["NoiseDistribution", "alias_table"]


def alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table of a distribution, built with vectorised rounds.

    Draw ``i`` uniformly from ``0..n-1`` and ``u`` from U[0, 1); the sample is ``i`` if
    ``u < prob[i]``, else ``alias[i]``. Each round finalises every under-full column at once
    (cumulative sums assign them to over-full columns), so a few rounds of numpy build the table
    of millions of items, however skewed.

    Args:
      p: float [n] probabilities (sum 1).

    Returns:
      ``(prob float64 [n], alias int64 [n])``.
    """
    n = len(p)
    q = np.asarray(p, np.float64) * n
    prob = np.ones(n, np.float64)
    alias = np.arange(n, dtype=np.int64)
    small = np.flatnonzero(q < 1.0)
    large = np.flatnonzero(q >= 1.0)
    while len(small) and len(large):
        # Small j's deficit 1 - q[j] occupies [cum_d[j-1], cum_d[j]) of the smalls' deficits laid
        # end to end; it is aliased to the large whose excess range holds the start of it. That
        # large gives up the deficits assigned to it (at most its excess plus one deficit < 1, so
        # it keeps q > 0) and becomes small if below 1.
        d = 1.0 - q[small]
        start_d = np.concatenate([[0.0], np.cumsum(d)[:-1]])
        cum_e = np.cumsum(q[large] - 1.0)
        owner = np.searchsorted(cum_e, start_d, side="right")
        ok = owner < len(large)  # rounding: a start past the total excess waits
        s, lg = small[ok], large[owner[ok]]
        prob[s] = q[s]
        alias[s] = lg
        np.subtract.at(q, lg, d[ok])
        if not ok.any():
            break
        touched = np.unique(lg)
        became_small = touched[q[touched] < 1.0]
        small = np.concatenate([small[~ok], became_small])
        large = large[q[large] >= 1.0]
    return prob, alias  # leftovers (rounding) keep prob 1


class NoiseDistribution:
    """Unigram^alpha noise over dense ids 1..N.

    Counts get add-one smoothing so that items never seen in training (they can still be
    retrieved) are drawn as negatives too and their ``log q`` is finite. ``alias_prob`` /
    ``alias`` (over ids 1..N stored at 0..N-1) let the tf.data pipeline sample in-graph.
    """

    def __init__(self, freq: np.ndarray, alpha: float):
        w = (np.asarray(freq, np.float64)[1:] + 1.0) ** alpha
        p = w / w.sum()
        self.probs = np.concatenate([[0.0], p])  # index = dense id
        self.log_q = np.log(np.maximum(self.probs, 1e-30)).astype(np.float32)
        self._cdf = np.cumsum(p)
        self._cdf[-1] = 1.0
        self._p = p
        self._alias = None

    @property
    def num_items(self) -> int:
        return len(self._p)

    def alias_table(self) -> tuple[np.ndarray, np.ndarray]:
        """``(prob, alias)`` of :func:`alias_table` over ids 1..N (position i = id i + 1)."""
        if self._alias is None:
            self._alias = alias_table(self._p)
        return self._alias

    def sample(self, rng: np.random.Generator, shape) -> np.ndarray:
        u = rng.random(shape)
        return (np.searchsorted(self._cdf, u, side="right") + 1).astype(np.int32)

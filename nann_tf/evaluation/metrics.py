"""Retrieval quality metrics of the NANN paper (section 5.1.2), in NumPy.

For a user u with ground truth G_u, brute-force top-M B_u and retrieved top-M R_u:

- ``recall(P, G)@M = |P ∩ G| / |G|``;
- ``recall-all@M = recall(B_u, G_u)`` (the model's capacity);
- ``recall-retrieval@M = recall(R_u, G_u)``;
- ``recall-delta@M = (recall-all@M - recall-retrieval@M) / recall-all@M`` (recall lost to the
  index);
- ``coverage@M = |R_u ∩ B_u| / |B_u|`` (agreement of retrieval with brute force).

recall-all, recall-retrieval and coverage are averaged over users. recall-delta is computed from
the averaged recalls: per user it is 0/0 whenever recall-all(u) = 0, which with one ground-truth
item per user is most users.

Every mean over users comes with a 95% interval from a seeded bootstrap over the users
(:class:`Bootstrap`): ``summarize(..., bootstrap=b)`` adds ``<metric>_ci95: [lo, hi]`` beside
each metric, and :func:`paired_difference` gives the difference of two result sets on the same
users with the interval of the paired bootstrap (both resampled with the same users).

Result lists are int ``[U, >= M]`` arrays sorted best first (the search outputs); id 0 is
padding and is never counted. Ground truth is either an int array ``[U]`` (one item per user,
0 = none) or a sequence of ``U`` collections of item ids. Users without ground truth are left out
of the recall averages (but not of coverage).
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = [
    "Bootstrap",
    "METRICS",
    "coverage",
    "paired_difference",
    "per_user_coverage",
    "per_user_metrics",
    "per_user_recall",
    "format_summary",
    "recall",
    "recall_delta",
    "scored_fraction",
    "summarize",
    "summarize_per_user",
]

# The per-M metrics, in table order. recall_delta is derived from the two recalls.
METRICS = ("recall_all", "recall_retrieval", "recall_delta", "coverage")


def _top(ids: Any, m: int, name: str) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be an int array [users, M], got {a.dtype} {a.shape}")
    if m < 1 or a.shape[1] < m:
        raise ValueError(f"{name} has {a.shape[1]} columns, M = {m} needs 1 <= M <= that")
    return a[:, :m].astype(np.int64)


def per_user_recall(retrieved_ids: Any, ground_truth: Any, m: int) -> np.ndarray:
    """``|top-M ∩ G| / |G|`` per user, float ``[U]`` (NaN where the user has no ground truth)."""
    return _per_user_recall(_top(retrieved_ids, m, "retrieved_ids"), ground_truth)


def _per_user_recall(top: np.ndarray, ground_truth: Any) -> np.ndarray:
    users = top.shape[0]
    if isinstance(ground_truth, np.ndarray) and ground_truth.ndim == 1 and \
            np.issubdtype(ground_truth.dtype, np.integer):
        if ground_truth.shape[0] != users:
            raise ValueError(f"ground_truth has {ground_truth.shape[0]} users, the results "
                             f"{users}")
        g = ground_truth.astype(np.int64)
        hit = ((top == g[:, None]) & (top > 0)).any(axis=1).astype(np.float64)
        return np.where(g > 0, hit, np.nan)
    if not isinstance(ground_truth, Sequence) or isinstance(ground_truth, (str, bytes)):
        raise ValueError("ground_truth must be an int array [users] or a sequence of "
                         "collections of item ids")
    if len(ground_truth) != users:
        raise ValueError(f"ground_truth has {len(ground_truth)} users, the results {users}")
    out = np.full(users, np.nan)
    for u, g in enumerate(ground_truth):
        gs = {int(x) for x in (g if isinstance(g, Iterable) else [g])} - {0}
        if gs:
            out[u] = len(gs.intersection(top[u].tolist())) / len(gs)
    return out


def recall(retrieved_ids: Any, ground_truth: Any, m: int) -> float:
    """Mean over users (with ground truth) of ``|top-M ∩ G| / |G|``; NaN if no user has any."""
    per_user = per_user_recall(retrieved_ids, ground_truth, m)
    return float(np.nanmean(per_user)) if np.isfinite(per_user).any() else float("nan")


def recall_delta(recall_all: float, recall_retrieval: float) -> float:
    """``(recall_all - recall_retrieval) / recall_all`` (NaN when recall_all is 0)."""
    return (recall_all - recall_retrieval) / recall_all if recall_all > 0 else float("nan")


def coverage(retrieved_ids: Any, brute_force_ids: Any, m: int) -> float:
    """Mean over users of ``|R ∩ B| / |B|`` for the top-M lists (padding excluded from both)."""
    return float(np.mean(per_user_coverage(retrieved_ids, brute_force_ids, m)))


def per_user_coverage(retrieved_ids: Any, brute_force_ids: Any, m: int) -> np.ndarray:
    """``|R ∩ B| / |B|`` per user for the top-M lists, float ``[U]`` (1 where B is empty)."""
    r = _top(retrieved_ids, m, "retrieved_ids")
    b = _top(brute_force_ids, m, "brute_force_ids")
    if r.shape[0] != b.shape[0]:
        raise ValueError(f"retrieved_ids has {r.shape[0]} users, brute_force_ids {b.shape[0]}")
    both = np.sort(np.concatenate([r, b], axis=1), axis=1)
    # Ids are unique within a list, so an id in both lists appears exactly twice, adjacently.
    common = ((both[:, 1:] == both[:, :-1]) & (both[:, 1:] > 0)).sum(axis=1)
    size = (b > 0).sum(axis=1)
    return np.where(size > 0, common / np.maximum(size, 1), 1.0)


def scored_fraction(num_scored: Any, num_items: int) -> float:
    """Mean fraction of the corpus scored per query."""
    return float(np.mean(np.asarray(num_scored, np.float64)) / num_items)


class Bootstrap:
    """A seeded percentile bootstrap over the users of one evaluation.

    Resample ``i`` draws ``users`` users with replacement; a statistic's interval is the
    ``level`` central range of its values over the ``resamples`` resamples. Every statistic
    computed with the same ``Bootstrap`` uses the same resamples, so two result sets on the
    same users are compared *paired* (:func:`paired_difference`). The resamples depend only on
    ``(users, resamples, seed)``: the same call gives the same interval on every machine.

    Args:
      users: the number of users U (>= 1).
      resamples: the number of resamples (>= 100).
      seed: the seed.
      level: the interval's coverage (0 < level < 1; default 0.95).
    """

    CHUNK = 100  # resamples drawn (and multiplied) at a time: memory is CHUNK x U

    def __init__(self, users: int, resamples: int = 1000, seed: int = 0, level: float = 0.95):
        if int(users) < 1:
            raise ValueError(f"bootstrap: users must be >= 1, got {users}")
        if int(resamples) < 100:
            raise ValueError(f"bootstrap: resamples must be >= 100, got {resamples}")
        if not 0.0 < float(level) < 1.0:
            raise ValueError(f"bootstrap: level must be in (0, 1), got {level}")
        self.users, self.resamples, self.seed = int(users), int(resamples), int(seed)
        self.level = float(level)
        n = -(-self.resamples // self.CHUNK)
        self._seeds = np.random.SeedSequence(self.seed).spawn(n)
        # Cached when small (up to ~64 MB); larger user sets redraw each chunk per call.
        self._cache = [] if self.resamples * self.users <= 8_000_000 else None

    def _weights(self):
        """Yields ``[r, U]`` float64 counts: how often each user is drawn in each resample."""
        if self._cache:
            yield from self._cache
            return
        u = self.users
        for i, ss in enumerate(self._seeds):
            r = min(self.CHUNK, self.resamples - i * self.CHUNK)
            draws = np.random.default_rng(ss).integers(0, u, size=(r, u))
            flat = (draws + (np.arange(r) * u)[:, None]).ravel()
            w = np.bincount(flat, minlength=r * u).reshape(r, u).astype(np.float64)
            if self._cache is not None:
                self._cache.append(w)
            yield w

    def means(self, values: Any) -> np.ndarray:
        """The resampled means of per-user values ``[U]`` or ``[U, K]``: ``[R]`` or ``[R, K]``.

        NaN values (users without ground truth) are left out of each mean, as in
        :func:`recall`; a resample with no finite value gives NaN.
        """
        x = np.asarray(values, np.float64)
        if x.shape[:1] != (self.users,) or x.ndim not in (1, 2):
            raise ValueError(f"bootstrap over {self.users} users: values must be [{self.users}] "
                             f"or [{self.users}, K], got shape {x.shape}")
        one = x.ndim == 1
        x = x.reshape(self.users, -1)
        valid = np.isfinite(x)
        filled, counted = np.where(valid, x, 0.0), valid.astype(np.float64)
        num, den = [], []
        for w in self._weights():
            num.append(w @ filled)
            den.append(w @ counted)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.concatenate(num) / np.concatenate(den)
        return out[:, 0] if one else out

    def interval(self, samples: Any) -> list[float]:
        """``[lo, hi]``: the central ``level`` range of resampled statistics ``[R]``."""
        s = np.asarray(samples, np.float64)
        s = s[np.isfinite(s)]
        if s.size == 0:
            return [float("nan"), float("nan")]
        tail = 50.0 * (1.0 - self.level)
        lo, hi = np.percentile(s, [tail, 100.0 - tail])
        return [float(lo), float(hi)]


def per_user_metrics(retrieved_ids: Any, brute_force_ids: Any, ground_truth: Any = None,
                     m: int | Sequence[int] = 200) -> dict[str, np.ndarray]:
    """The per-user values behind :func:`summarize`: ``{"recall_all@M": [U], ...}``.

    Per M: ``recall_all@M`` and ``recall_retrieval@M`` (with ground truth; NaN for users
    without) and ``coverage@M``. recall-delta has no per-user form (see the module docstring);
    :func:`summarize_per_user` derives it from the two recalls.
    """
    out: dict[str, np.ndarray] = {}
    for mm in _ms(m):
        if ground_truth is not None:
            out[f"recall_all@{mm}"] = per_user_recall(brute_force_ids, ground_truth, mm)
            out[f"recall_retrieval@{mm}"] = per_user_recall(retrieved_ids, ground_truth, mm)
        out[f"coverage@{mm}"] = per_user_coverage(retrieved_ids, brute_force_ids, mm)
    return out


def _ms(m: int | Sequence[int]) -> list[int]:
    return [int(m)] if isinstance(m, (int, np.integer)) else [int(x) for x in m]


def _metric_ms(per_user: dict) -> list[int]:
    return list(dict.fromkeys(int(k.rsplit("@", 1)[1]) for k in per_user))


def _stats(per_user: dict[str, np.ndarray], bootstrap: Bootstrap | None):
    """``({metric: mean}, {metric: resampled means [R]} or None)``, recall_delta included."""
    keys = list(per_user)
    mat = np.stack([np.asarray(per_user[k], np.float64) for k in keys], axis=1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: NaN, said below
        point = dict(zip(keys, np.nanmean(mat, axis=0).tolist()))
    res = None
    if bootstrap is not None:
        res = dict(zip(keys, bootstrap.means(mat).T))
    for mm in _metric_ms(per_user):
        ra, rr = f"recall_all@{mm}", f"recall_retrieval@{mm}"
        if ra in point and rr in point:
            point[f"recall_delta@{mm}"] = recall_delta(point[ra], point[rr])
            if res is not None:
                with np.errstate(invalid="ignore", divide="ignore"):
                    a, r = res[ra], res[rr]
                    res[f"recall_delta@{mm}"] = np.where(a > 0, (a - r) / a, np.nan)
    return point, res


def _ordered(ms: list[int], have) -> list[str]:
    """The paper's metrics in table order, then any other ``<name>@M`` figures (e.g.
    ``recall_all_next10@50``) in the order they came."""
    known = [f"{name}@{mm}" for mm in ms for name in METRICS if f"{name}@{mm}" in have]
    return known + [k for k in have if k not in known and "@" in k]


def summarize_per_user(per_user: dict[str, np.ndarray],
                       bootstrap: Bootstrap | None = None) -> dict[str, Any]:
    """Means over users of :func:`per_user_metrics`, recall-delta, and with ``bootstrap`` the
    95% interval of each as ``<metric>_ci95: [lo, hi]``."""
    point, res = _stats(per_user, bootstrap)
    out: dict[str, Any] = {}
    for key in _ordered(_metric_ms(per_user), point):
        out[key] = float(point[key])
        if res is not None:
            out[f"{key}_ci95"] = bootstrap.interval(res[key])
    return out


def paired_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray],
                      bootstrap: Bootstrap) -> dict[str, Any]:
    """``a - b`` for every metric both have (per-user values of two result sets on the SAME
    users, e.g. two models or two search settings), each with the paired bootstrap's interval:
    both sides are resampled with the same users, so the interval reflects only how the two
    differ user by user. ``{"coverage@200": d, "coverage@200_ci95": [lo, hi], ...}``."""
    common = [k for k in a if k in b]
    for k in common:
        if np.asarray(a[k]).shape != np.asarray(b[k]).shape:
            raise ValueError(f"paired difference: {k} has {np.asarray(a[k]).shape[0]} users on "
                             f"one side and {np.asarray(b[k]).shape[0]} on the other; a paired "
                             f"comparison needs the same users")
    pa, ra = _stats({k: a[k] for k in common}, bootstrap)
    pb, rb = _stats({k: b[k] for k in common}, bootstrap)
    out: dict[str, Any] = {}
    for key in _ordered(_metric_ms({k: None for k in common}), pa):
        out[key] = float(pa[key] - pb[key])
        out[f"{key}_ci95"] = bootstrap.interval(ra[key] - rb[key])
    return out


def summarize(retrieved_ids: Any, brute_force_ids: Any, ground_truth: Any = None,
              num_scored: Any = None, num_items: int | None = None,
              m: int | Sequence[int] = 200, bootstrap: Bootstrap | None = None) -> dict[str, Any]:
    """All metrics in one dict, e.g. ``{"recall_all@200": ..., "coverage@200": ...}``.

    Args:
      retrieved_ids: int ``[U, >= M]`` retrieval results (best first, 0 = padding).
      brute_force_ids: int ``[U, >= M]`` brute-force results.
      ground_truth: optional int ``[U]`` or sequence of collections (recall metrics need it).
      num_scored: optional ``[U]`` items scored per query (``scored_fraction`` needs it and
        ``num_items``).
      num_items: corpus size N.
      m: one M or several.
      bootstrap: optional :class:`Bootstrap` over these U users: adds ``<metric>_ci95``.

    Returns:
      ``users`` plus, per M, ``coverage@M`` and (with ground truth) ``recall_all@M``,
      ``recall_retrieval@M``, ``recall_delta@M`` (each with ``_ci95`` given ``bootstrap``); and
      ``scored_fraction``.
    """
    out: dict[str, Any] = {"users": int(np.asarray(retrieved_ids).shape[0])}
    out.update(summarize_per_user(per_user_metrics(retrieved_ids, brute_force_ids,
                                                   ground_truth, m), bootstrap))
    if num_scored is not None:
        if not num_items:
            raise ValueError("num_items is needed with num_scored")
        out["scored_fraction"] = scored_fraction(num_scored, num_items)
    return out


def format_summary(rows: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one line per method (``{method: summarize(...)}``)."""
    keys = list(dict.fromkeys(k for r in rows.values() for k in r))
    name_w = max([len("method")] + [len(n) for n in rows])
    widths = [max(len(k), 8) for k in keys]
    lines = ["  ".join(["method".ljust(name_w)] + [k.rjust(w) for k, w in zip(keys, widths)])]
    for name, r in rows.items():
        cells = [_cell(r.get(k)).rjust(w) for k, w in zip(keys, widths)]
        lines.append("  ".join([name.ljust(name_w)] + cells))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.4f}"

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

Result lists are int ``[U, >= M]`` arrays sorted best first (the search outputs); id 0 is
padding and is never counted. Ground truth is either an int array ``[U]`` (one item per user,
0 = none) or a sequence of ``U`` collections of item ids. Users without ground truth are left out
of the recall averages (but not of coverage).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

__all__ = [
    "coverage",
    "format_summary",
    "recall",
    "recall_delta",
    "scored_fraction",
    "summarize",
]


def _top(ids: Any, m: int, name: str) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be an int array [users, M], got {a.dtype} {a.shape}")
    if m < 1 or a.shape[1] < m:
        raise ValueError(f"{name} has {a.shape[1]} columns, M = {m} needs 1 <= M <= that")
    return a[:, :m].astype(np.int64)


def _per_user_recall(top: np.ndarray, ground_truth: Any) -> np.ndarray:
    """recall per user (NaN where the user has no ground truth)."""
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
    per_user = _per_user_recall(_top(retrieved_ids, m, "retrieved_ids"), ground_truth)
    return float(np.nanmean(per_user)) if np.isfinite(per_user).any() else float("nan")


def recall_delta(recall_all: float, recall_retrieval: float) -> float:
    """``(recall_all - recall_retrieval) / recall_all`` (NaN when recall_all is 0)."""
    return (recall_all - recall_retrieval) / recall_all if recall_all > 0 else float("nan")


def coverage(retrieved_ids: Any, brute_force_ids: Any, m: int) -> float:
    """Mean over users of ``|R ∩ B| / |B|`` for the top-M lists (padding excluded from both)."""
    r = _top(retrieved_ids, m, "retrieved_ids")
    b = _top(brute_force_ids, m, "brute_force_ids")
    if r.shape[0] != b.shape[0]:
        raise ValueError(f"retrieved_ids has {r.shape[0]} users, brute_force_ids {b.shape[0]}")
    both = np.sort(np.concatenate([r, b], axis=1), axis=1)
    # Ids are unique within a list, so an id in both lists appears exactly twice, adjacently.
    common = ((both[:, 1:] == both[:, :-1]) & (both[:, 1:] > 0)).sum(axis=1)
    size = (b > 0).sum(axis=1)
    return float(np.mean(np.where(size > 0, common / np.maximum(size, 1), 1.0)))


def scored_fraction(num_scored: Any, num_items: int) -> float:
    """Mean fraction of the corpus scored per query."""
    return float(np.mean(np.asarray(num_scored, np.float64)) / num_items)


def summarize(retrieved_ids: Any, brute_force_ids: Any, ground_truth: Any = None,
              num_scored: Any = None, num_items: int | None = None,
              m: int | Sequence[int] = 200) -> dict[str, float]:
    """All metrics in one dict, e.g. ``{"recall_all@200": ..., "coverage@200": ...}``.

    Args:
      retrieved_ids: int ``[U, >= M]`` retrieval results (best first, 0 = padding).
      brute_force_ids: int ``[U, >= M]`` brute-force results.
      ground_truth: optional int ``[U]`` or sequence of collections (recall metrics need it).
      num_scored: optional ``[U]`` items scored per query (``scored_fraction`` needs it and
        ``num_items``).
      num_items: corpus size N.
      m: one M or several.

    Returns:
      ``users`` plus, per M, ``coverage@M`` and (with ground truth) ``recall_all@M``,
      ``recall_retrieval@M``, ``recall_delta@M``; and ``scored_fraction``.
    """
    ms = [m] if isinstance(m, (int, np.integer)) else list(m)
    out: dict[str, float] = {"users": int(np.asarray(retrieved_ids).shape[0])}
    for mm in ms:
        if ground_truth is not None:
            ra = recall(brute_force_ids, ground_truth, mm)
            rr = recall(retrieved_ids, ground_truth, mm)
            out[f"recall_all@{mm}"] = ra
            out[f"recall_retrieval@{mm}"] = rr
            out[f"recall_delta@{mm}"] = recall_delta(ra, rr)
        out[f"coverage@{mm}"] = coverage(retrieved_ids, brute_force_ids, mm)
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

"""Synthetic behaviour logs in the UserBehavior format, with planted structure.

The generator plants what the NANN model is meant to exploit and a two-tower model is not:

- Items belong to latent *clusters* (several per category); each item also has a scalar
  *level* in [0, 1]. Popularity is skewed twice: clusters have Zipf popularity as interests,
  and items have a Zipf popularity rank inside their cluster.
- Every user has 2-4 *interests*; an interest is a cluster (drawn by cluster popularity; two
  interests may share a cluster with different levels) plus a preferred level.
- Behaviours come in runs: the next behaviour stays in the current interest with probability
  ``stay_prob`` (sequential locality: the most recent behaviours of the same interest tell most
  about the next one, which is what target attention picks out).
- Within an interest the item is drawn with probability proportional to
  ``popularity * bump(item level - preferred level)``, a Gaussian bump. The preference is
  non-monotonic in the level (it peaks in the middle of a range), so a single inner product of a
  user vector and an item vector cannot represent it for users with several interests.
- A small fraction of behaviours are noise: a random item drawn by popularity alone.

Raw ids are random large integers (not dense), timestamps increase within each user, and the
rows are shuffled so that a reader must sort them.

Everything is vectorised NumPy: 10M rows take a few seconds to generate and to write.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import numpy as np

from nann_tf.fsutil import atomic_path

__all__ = [
    "BEHAVIOR_TYPES",
    "FILE_COLUMNS",
    "SynthParams",
    "generate_log",
    "generate_log_chunks",
    "write_synthetic_log",
    "write_userbehavior_csv",
]

#: Behaviour type names; the ``behavior_type`` column holds indices into this tuple.
BEHAVIOR_TYPES = ("pv", "buy", "cart", "fav")
_BEHAVIOR_PROBS = (0.89, 0.02, 0.055, 0.035)

#: The columns written to the CSV, in file order (the UserBehavior layout).
FILE_COLUMNS = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")

# 2017-11-25 00:00:00 UTC, the start of the real UserBehavior log.
_T0 = 1511539200


@dataclasses.dataclass(frozen=True)
class SynthParams:
    """Knobs of the planted structure (the defaults are what the configs use).

    Attributes:
      clusters_per_category: latent clusters per category.
      item_zipf: exponent of the global Zipf item popularity.
      cluster_zipf: exponent of the Zipf popularity of clusters as user interests.
      min_interests / max_interests: interests per user (uniform in this range).
      stay_prob: probability that a behaviour stays in the previous behaviour's interest.
      level_width: standard deviation of the Gaussian level bump.
      noise_frac: fraction of behaviours that are a random item drawn by popularity alone.
      short_user_frac: fraction of users with fewer than 10 behaviours.
      mean_gap_s: mean time between two behaviours of a user, seconds.
    """

    clusters_per_category: int = 4
    item_zipf: float = 1.0
    cluster_zipf: float = 0.7
    min_interests: int = 2
    max_interests: int = 4
    stay_prob: float = 0.85
    level_width: float = 0.08
    noise_frac: float = 0.05
    short_user_frac: float = 0.05
    mean_gap_s: float = 600.0


def _unique_random_ids(rng: np.random.Generator, n: int, high: int) -> np.ndarray:
    """``n`` distinct random int64 ids in ``[1, high)``, in random order.

    One random id in each of ``n`` equal slices of the range: distinct by construction, O(n).
    """
    width = max(1, (high - 1) // n)
    ids = 1 + np.arange(n, dtype=np.int64) * width + rng.integers(0, width, size=n)
    return rng.permutation(ids)


def _sequence_lengths(rng: np.random.Generator, num_users: int, mean_len: int,
                      short_frac: float) -> np.ndarray:
    """Per-user lengths: a gamma spread around ``mean_len`` (>= 10), some users shorter."""
    if mean_len < 10:
        lengths = np.maximum(1, np.rint(rng.gamma(4.0, mean_len / 4.0, size=num_users)))
        return lengths.astype(np.int64)
    lengths = np.rint(rng.gamma(4.0, mean_len / 4.0, size=num_users)).astype(np.int64)
    lengths = np.clip(lengths, 10, 10 * mean_len)
    short = rng.random(num_users) < short_frac
    lengths[short] = rng.integers(2, 10, size=int(short.sum()))
    return lengths


def _zipf_rank_sampler(size: np.ndarray, exponent: float):
    """A sampler of ranks in ``[0, size[g])`` with P(r) ~ (r+1)^-exponent for groups ``g``.

    The inverse CDF of the continuous power law, so a draw costs O(1) (no search).
    """
    top = size.astype(np.float64) + 1.0
    if abs(exponent - 1.0) < 1e-9:
        log_top = np.log(top)

        def inverse(u, g):
            return np.exp(u * log_top[g])
    else:
        e = 1.0 - exponent
        span = top ** e - 1.0

        def inverse(u, g):
            return (1.0 + u * span[g]) ** (1.0 / e)

    def sample(rng: np.random.Generator, g: np.ndarray) -> np.ndarray:
        r = inverse(rng.random(len(g)), g).astype(np.int64) - 1
        return np.clip(r, 0, size[g] - 1)

    return sample


def generate_log(num_users: int, num_items: int, num_categories: int = 50,
                 events_per_user: int = 40, seed: int = 0,
                 params: SynthParams | None = None) -> dict[str, np.ndarray]:
    """Generates a synthetic behaviour log with planted structure.

    Args:
      num_users: number of users.
      num_items: number of items in the catalogue (not all need to occur).
      num_categories: number of item categories.
      events_per_user: mean number of behaviours per user.
      seed: random seed; the same arguments and seed give the same log.
      params: structure knobs (see :class:`SynthParams`).

    Returns:
      Row-aligned columns, rows in shuffled order. The file columns (:data:`FILE_COLUMNS`):
      ``user_id``, ``item_id``, ``category_id``, ``timestamp`` (int64) and ``behavior_type``
      (uint8 index into :data:`BEHAVIOR_TYPES`). The latent truth, not written to files:
      ``latent_cluster`` (int32 cluster of the interest the row was drawn from, -1 for noise),
      ``latent_item_level`` (float32 level of the item) and ``latent_pref_level`` (float32
      preferred level of that interest, NaN for noise).

    Raises:
      ValueError: a count is not positive.
    """
    p = params or SynthParams()
    _check_counts(num_users, num_items, num_categories, events_per_user, p)
    rng = np.random.default_rng(seed)
    world = _World(rng, int(num_users), int(num_items), int(num_categories), p)
    rows = _behaviours(rng, world, 0, int(num_users), int(events_per_user), p)
    order = rng.permutation(len(rows["user"]))
    return world.columns(rows, order)


def _check_counts(num_users, num_items, num_categories, events_per_user, p: SynthParams) -> None:
    for name, v in [("num_users", num_users), ("num_items", num_items),
                    ("num_categories", num_categories), ("events_per_user", events_per_user)]:
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not 1 <= p.min_interests <= p.max_interests:
        raise ValueError(f"need 1 <= min_interests <= max_interests, got {p}")


class _World:
    """The catalogue (items: cluster, category, level, popularity) and the raw ids, drawn from
    ``rng`` first (the draws of :func:`generate_log` before its users)."""

    def __init__(self, rng: np.random.Generator, n_users: int, n_items: int,
                 num_categories: int, p: SynthParams):
        n_clusters = max(1, min(num_categories * p.clusters_per_category, n_items))
        item_cluster = np.empty(n_items, dtype=np.int64)
        first = rng.permutation(n_items)
        item_cluster[first[:n_clusters]] = np.arange(n_clusters)  # no empty cluster
        item_cluster[first[n_clusters:]] = rng.integers(0, n_clusters, size=n_items - n_clusters)
        del first
        self.n_clusters = n_clusters
        self.item_cluster = item_cluster
        self.cluster_category = rng.permutation(n_clusters) % num_categories
        self.item_level = rng.random(n_items)

        self.raw_item = _unique_random_ids(rng, n_items, 20 * n_items + 10**7)
        self.raw_category = _unique_random_ids(rng, num_categories, 10**7)
        self.raw_user = _unique_random_ids(rng, n_users, 20 * n_users + 10**7)

        # Items grouped by cluster; the position inside a group (random) is the item's
        # popularity rank in its cluster. Item popularity = cluster popularity x Zipf rank in
        # the cluster.
        self.by_cluster = np.argsort(item_cluster, kind="stable")
        self.cl_size = np.bincount(item_cluster, minlength=n_clusters)
        self.cl_start = np.concatenate([[0], np.cumsum(self.cl_size)[:-1]])
        self.rank_in = _zipf_rank_sampler(self.cl_size, p.item_zipf)
        self.level_at = self.item_level[self.by_cluster]  # level by position

    def cluster_weights(self, rng: np.random.Generator, p: SynthParams) -> np.ndarray:
        """Zipf popularity of the clusters as interests (a random order of the clusters)."""
        return 1.0 / (1.0 + rng.permutation(self.n_clusters)) ** p.cluster_zipf

    def columns(self, rows: dict[str, np.ndarray], order: np.ndarray) -> dict[str, np.ndarray]:
        """The output columns of :func:`generate_log` for ``rows`` (of :func:`_behaviours`)
        in row order ``order``."""
        item = rows["item"][order]
        return {
            "user_id": self.raw_user[rows["user"][order]],
            "item_id": self.raw_item[item],
            "category_id": self.raw_category[self.cluster_category[self.item_cluster[item]]],
            "behavior_type": rows["behavior"][order],
            "timestamp": rows["timestamp"][order],
            "latent_cluster": rows["cluster"][order],
            "latent_item_level": self.item_level[item].astype(np.float32),
            "latent_pref_level": rows["pref"][order],
        }


def _behaviours(rng: np.random.Generator, w: _World, user0: int, n_users: int,
                events_per_user: int, p: SynthParams, cluster_w: np.ndarray | None = None,
                lengths: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The behaviours of users ``user0 .. user0 + n_users - 1``, by user and time.

    ``cluster_w`` and ``lengths`` (None: drawn here, in :func:`generate_log`'s order) let a
    chunked writer draw them once for all users. Returns ``user`` (index into the raw user
    ids), ``item`` (item index), ``timestamp``, ``behavior``, ``cluster``, ``pref``.
    """
    n_clusters, cl_start, rank_in, level_at = w.n_clusters, w.cl_start, w.rank_in, w.level_at
    # --- users: interests (cluster + preferred level) and weights ---------------------------
    n_int = rng.integers(p.min_interests, p.max_interests + 1, size=n_users)
    max_int = p.max_interests
    if cluster_w is None:
        cluster_w = w.cluster_weights(rng, p)
    cluster_cdf = np.cumsum(cluster_w)
    u_cluster = np.minimum(np.searchsorted(cluster_cdf, rng.random((n_users, max_int))
                                           * cluster_cdf[-1], side="right"), n_clusters - 1)
    u_pref = rng.uniform(0.05, 0.95, size=(n_users, max_int))
    u_w = rng.exponential(1.0, size=(n_users, max_int))
    u_w[np.arange(max_int)[None, :] >= n_int[:, None]] = 0.0
    u_wcdf = np.cumsum(u_w, axis=1)
    u_wcdf /= u_wcdf[:, -1:]

    # --- behaviour sequences ----------------------------------------------------------------
    if lengths is None:
        lengths = _sequence_lengths(rng, n_users, int(events_per_user), p.short_user_frac)
    n_rows = int(lengths.sum())
    row_user = np.repeat(np.arange(n_users), lengths)
    user_first = np.concatenate([[0], np.cumsum(lengths)[:-1]])

    # Interest runs: a new run starts at each user's first row and with prob 1-stay_prob.
    new_run = rng.random(n_rows) >= p.stay_prob
    new_run[user_first] = True
    run_rows = np.flatnonzero(new_run)
    run_user = row_user[run_rows]
    run_interest = (rng.random(len(run_rows))[:, None] > u_wcdf[run_user]).sum(axis=1)
    run_interest = np.minimum(run_interest, n_int[run_user] - 1)
    row_interest = run_interest[np.cumsum(new_run) - 1]
    row_cluster = u_cluster[row_user, row_interest]
    row_pref = u_pref[row_user, row_interest]

    # Items of an interest: popularity within the cluster times the level bump, by rejection
    # (propose by popularity, accept with prob bump in (0, 1]).
    noise = rng.random(n_rows) < p.noise_frac
    pos = np.empty(n_rows, dtype=np.int64)  # position in by_cluster
    todo = np.flatnonzero(~noise)
    inv_w2 = -0.5 / p.level_width**2
    for _ in range(200):
        c = row_cluster[todo]
        cand = cl_start[c] + rank_in(rng, c)
        pos[todo] = cand
        bump = np.exp(inv_w2 * (level_at[cand] - row_pref[todo]) ** 2)
        todo = todo[rng.random(len(todo)) >= bump]
        if len(todo) == 0:
            break
    # (Rows still rejected after 200 rounds keep their last proposal: a few rows whose small
    # cluster has no item near the preferred level.)

    # Noise: a popular item of a popular cluster, whatever the user's interests.
    n_noise = int(noise.sum())
    noise_cluster = np.searchsorted(cluster_cdf, rng.random(n_noise) * cluster_cdf[-1],
                                    side="right")
    noise_cluster = np.minimum(noise_cluster, n_clusters - 1)
    pos[noise] = cl_start[noise_cluster] + rank_in(rng, noise_cluster)
    item = w.by_cluster[pos]
    row_cluster = np.where(noise, -1, row_cluster).astype(np.int32)
    row_pref = np.where(noise, np.nan, row_pref).astype(np.float32)

    # Timestamps: strictly increasing within a user (gaps >= 1 s).
    gaps = 1 + rng.exponential(p.mean_gap_s, size=n_rows).astype(np.int64)
    csum = np.cumsum(gaps)
    span = csum - (csum - gaps)[user_first][row_user]
    start = _T0 + rng.integers(0, 9 * 86400, size=n_users)
    timestamp = start[row_user] + span

    behavior = np.searchsorted(np.cumsum(_BEHAVIOR_PROBS), rng.random(n_rows) * 0.999999,
                               side="right").astype(np.uint8)
    return {"user": user0 + row_user, "item": item, "timestamp": timestamp,
            "behavior": behavior, "cluster": row_cluster, "pref": row_pref}


def generate_log_chunks(num_users: int, num_items: int, num_categories: int = 50,
                        events_per_user: int = 40, seed: int = 0,
                        params: SynthParams | None = None, chunk_rows: int = 4_000_000
                        ) -> tuple[int, Iterator[dict[str, np.ndarray]]]:
    """The log of :func:`generate_log`'s model in blocks of users, for logs too large to hold.

    The catalogue, the raw ids, the cluster popularity and every user's sequence length are
    drawn once; each block of about ``chunk_rows`` rows (whole users) is then drawn from its own
    generator (seeded by ``(seed, block)``) and shuffled within itself. Memory is bounded by
    the block, not the log. Same structure and parameters as :func:`generate_log`, but not the
    same rows (the random streams differ); the same arguments give the same log.

    Returns:
      ``(total rows, iterator of column dicts)`` with the columns of :func:`generate_log`.

    Raises:
      ValueError: a count is not positive.
    """
    p = params or SynthParams()
    _check_counts(num_users, num_items, num_categories, events_per_user, p)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    rng = np.random.default_rng(seed)
    n_users = int(num_users)
    world = _World(rng, n_users, int(num_items), int(num_categories), p)
    cluster_w = world.cluster_weights(rng, p)
    lengths = _sequence_lengths(rng, n_users, int(events_per_user), p.short_user_frac)
    ends = np.cumsum(lengths)
    # Block boundaries: whole users, about chunk_rows rows each.
    cuts = np.searchsorted(ends, np.arange(chunk_rows, int(ends[-1]), chunk_rows), side="left")
    bounds = np.unique(np.concatenate([[0], cuts + 1, [n_users]]).clip(0, n_users))

    def blocks() -> Iterator[dict[str, np.ndarray]]:
        for b, (u0, u1) in enumerate(zip(bounds[:-1], bounds[1:])):
            brng = np.random.default_rng([int(seed), b])
            rows = _behaviours(brng, world, int(u0), int(u1 - u0), int(events_per_user), p,
                               cluster_w=cluster_w, lengths=lengths[u0:u1])
            yield world.columns(rows, brng.permutation(len(rows["user"])))

    return int(ends[-1]), blocks()


def write_synthetic_log(path: str | os.PathLike, num_users: int, num_items: int,
                        num_categories: int = 50, events_per_user: int = 40, seed: int = 0,
                        params: SynthParams | None = None, chunk_rows: int = 4_000_000,
                        progress: bool = True) -> int:
    """Generates a log block by block (:func:`generate_log_chunks`) and writes it as
    UserBehavior CSV (atomically), with progress; memory is bounded by one block.

    Returns:
      The number of rows written.

    Raises:
      ValueError: a count is not positive.
    """
    from nann_tf.progress import Progress

    total, blocks = generate_log_chunks(num_users, num_items, num_categories, events_per_user,
                                        seed, params, chunk_rows)
    with atomic_path(path, suffix=".tmp") as tmp, open(tmp, "wb") as f, \
            Progress(total, "synth: generating + writing", "rows", enabled=progress) as bar:
        for cols in blocks:
            n = len(cols["user_id"])
            cols = {c: cols[c].astype(np.int64 if c != "behavior_type" else np.intp, copy=False)
                    for c in FILE_COLUMNS}
            for lo in range(0, n, 1 << 20):
                hi = min(n, lo + (1 << 20))
                f.write(_format_rows(cols, lo, hi))
                bar.update(hi - lo)
    return total


def _format_rows(columns: dict[str, np.ndarray], lo: int, hi: int) -> bytes:
    """The CSV text of rows ``lo:hi``.

    One byte slot per possible character: a ``[slots, rows]`` byte matrix (slot-major, so each
    slot is written contiguously) and a mask of the slots in use; the masked bytes in row order
    are the text. Division by a scalar is vectorised by NumPy, so the digits are cheap.
    """
    n = hi - lo
    types = [t.encode() for t in BEHAVIOR_TYPES]
    widths = []
    for name in FILE_COLUMNS:
        if name == "behavior_type":
            widths.append(max(len(t) for t in types))
        else:
            top = int(columns[name][lo:hi].max()) if n else 0
            widths.append(len(str(top)))
    text = np.empty((sum(widths) + len(widths), n), dtype=np.uint8)
    used = np.empty(text.shape, dtype=bool)
    row = 0
    for k, (name, width) in enumerate(zip(FILE_COLUMNS, widths)):
        values = columns[name][lo:hi]
        block, mask = text[row:row + width], used[row:row + width]
        if name == "behavior_type":
            table = np.array([list(t.ljust(width, b"\0")) for t in types], dtype=np.uint8)
            block[:] = table[values].T
            np.not_equal(block, 0, out=mask)
        else:
            q = values
            for j in range(width - 1, -1, -1):
                nq = q // 10
                np.subtract(q, nq * 10, out=block[j], casting="unsafe")
                q = nq
            block += 48
            ndig = np.maximum(np.searchsorted(10 ** np.arange(width, dtype=np.int64), values,
                                              side="right"), 1)
            np.greater_equal(np.arange(width)[:, None], width - ndig[None, :], out=mask)
        row += width
        text[row] = ord("\n") if k == len(FILE_COLUMNS) - 1 else ord(",")
        used[row] = True
        row += 1
    return np.ascontiguousarray(text.T)[np.ascontiguousarray(used.T)].tobytes()


def write_userbehavior_csv(columns: dict[str, np.ndarray], path: str | os.PathLike,
                           chunk_rows: int = 1 << 20) -> int:
    """Writes a log as UserBehavior CSV (no header), atomically (temp file, then rename).

    Args:
      columns: at least the :data:`FILE_COLUMNS` of :func:`generate_log` (non-negative int64
        ids and timestamps, ``behavior_type`` as indices into :data:`BEHAVIOR_TYPES`).
      path: destination file; its directory must exist.
      chunk_rows: rows formatted per block (bounds the memory used).

    Returns:
      The number of rows written.

    Raises:
      ValueError: a column is missing, has another length than the others, or holds a
        negative id or timestamp.
    """
    missing = [c for c in FILE_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"columns missing: {', '.join(missing)}")
    n = len(columns["user_id"])
    for c in FILE_COLUMNS:
        col = np.asarray(columns[c])
        if len(col) != n:
            raise ValueError(f"column {c} has {len(col)} rows, user_id has {n}")
        if c == "behavior_type":
            if n and (col.min() < 0 or col.max() >= len(BEHAVIOR_TYPES)):
                raise ValueError(f"behavior_type must index {BEHAVIOR_TYPES}")
        elif n and col.min() < 0:
            raise ValueError(f"column {c} holds negative values; the writer takes ids >= 0")
    cols = {c: np.asarray(columns[c]).astype(np.int64 if c != "behavior_type" else np.intp,
                                              copy=False) for c in FILE_COLUMNS}
    from nann_tf.progress import Progress

    with atomic_path(path, suffix=".tmp") as tmp, open(tmp, "wb") as f, \
            Progress(n, "synth: writing", "rows") as bar:
        for lo in range(0, n, chunk_rows):
            f.write(_format_rows(cols, lo, min(n, lo + chunk_rows)))
            bar.update(min(n, lo + chunk_rows) - lo)
    return n

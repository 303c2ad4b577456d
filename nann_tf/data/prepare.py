"""Behaviour log -> dataset directory (see :mod:`nann_tf.data.dataset` for the layout).

Steps, all vectorised: filter ratings, drop users with fewer than ``min_len`` behaviours, sort
each user's behaviours by timestamp (a stable sort: ties keep file order), pick validation and
test users at random and hold them out of training, number the items of all kept users
1..N (ascending raw id) and their categories 1..C, count item frequencies over the training
sequences, and cut the held-out users at their ceil(len/2)-th behaviour. String ids (the
``table`` format) are numbered the same way, in ascending string order; string user ids get
dense codes 0.. (see :mod:`nann_tf.data.dataset`).

The directory is built next to its destination (``<DIR>.tmp-<pid>``) and renamed into place at
the end, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from nann_tf.errors import arg
from nann_tf.fsutil import replace_dir
from nann_tf.progress import Progress

from nann_tf.data.dataset import DATASET_FORMAT, DATASET_VERSION, DataError, gather_histories
from nann_tf.data.readers import BehaviorLog, read_log
from nann_tf.data.table import NO_CATEGORY_NAME

__all__ = [
    "PreparedDataset",
    "build_dataset",
    "write_dataset",
    "prepare_dataset",
    "held_out_sizes",
    "MIN_MIN_LEN",
]

log = logging.getLogger(__name__)

_BUILD_STEPS = 6  # progress steps of build_dataset

#: Smallest allowed ``min_len``: a held-out user of length 3 has one behaviour of history.
MIN_MIN_LEN = 3


@dataclasses.dataclass
class PreparedDataset:
    """The arrays of a dataset directory, in memory: file name -> array name -> array."""

    meta: dict[str, Any]
    arrays: dict[str, dict[str, np.ndarray]]


def held_out_sizes(num_users: int, val_users: int, test_users: int,
                   explicit: tuple[bool, bool] = (False, False)) -> tuple[int, int]:
    """Validation and test sizes.

    A size the user asked for explicitly (``explicit``) is honoured exactly; a default (the
    config's) is scaled down to at most 10% of the users. Explicit sizes that would hold out
    more than half of the users leave too few to train on: an error naming the flags.

    Raises:
      DataError: explicit held-out sizes above half of ``num_users``.
    """
    cap = num_users // 10
    n_val = val_users if explicit[0] else min(val_users, cap)
    n_test = test_users if explicit[1] else min(test_users, cap)
    if any(explicit) and 2 * (n_val + n_test) > num_users:
        asked = " and ".join(f"{flag} {n}" for flag, n, e in
                             ((arg("val_users"), n_val, explicit[0]),
                              (arg("test_users"), n_test, explicit[1])) if e)
        raise DataError(f"{asked}: {n_val} validation + {n_test} test users would hold out "
                        f"more than half of the {num_users} users kept, leaving "
                        f"{num_users - n_val - n_test} to train on; ask for at most "
                        f"{num_users // 2} in all (the config's defaults scale to 10% each)")
    return n_val, n_test


def _argsort_ties_in_order(key: np.ndarray) -> np.ndarray:
    """``argsort(key, kind="stable")``, faster: NumPy's (SIMD) unstable argsort, then each run
    of equal keys put back in row order."""
    order = np.argsort(key)
    ks = key[order]
    tie = ks[1:] == ks[:-1]
    if tie.any():
        in_run = np.zeros(len(key), dtype=bool)
        in_run[1:] |= tie
        in_run[:-1] |= tie
        at = np.flatnonzero(in_run)
        new_run = np.ones(len(at), dtype=bool)
        new_run[1:] = ks[at[1:]] != ks[at[:-1]]
        run = np.cumsum(new_run) - 1
        rows = order[at]
        order[at] = rows[np.argsort(run * np.int64(len(key)) + rows)]  # unique keys
    return order


def _dense_ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(uniq, inverse)`` as ``np.unique(values, return_inverse=True)`` (``inverse`` an
    integer array, int32 where the ranks fit).

    Integer ids go through a presence table when their span is at most a few times their count
    (raw item and user ids of real logs; O(N), no sort), else through a hash table (Arrow's
    dictionary encoding) and a sort of the distinct values only; other values take one
    unstable sort."""
    if values.dtype.kind in "iu" and len(values):
        lo, hi = int(values.min()), int(values.max())
        span = hi - lo + 1
        if span <= min(4 * len(values) + (1 << 20), 1 << 28):
            shifted = values - values.dtype.type(lo) if lo else values
            present = np.zeros(span, dtype=bool)
            present[shifted] = True
            rank = np.cumsum(present, dtype=np.int32)
            rank -= 1
            return (np.flatnonzero(present) + lo).astype(values.dtype, copy=False), rank[shifted]
        import pyarrow as pa
        import pyarrow.compute as pc

        enc = pc.dictionary_encode(pa.array(values))
        distinct = enc.dictionary.to_numpy()
        order = np.argsort(distinct)
        rank = np.empty(len(distinct), dtype=np.int32 if len(distinct) < 2**31 else np.int64)
        rank[order] = np.arange(len(distinct))
        return distinct[order], rank[enc.indices.to_numpy(zero_copy_only=False)]
    order = np.argsort(values)
    sv = values[order]
    new = np.ones(len(sv), dtype=bool)
    new[1:] = sv[1:] != sv[:-1]
    inverse = np.empty(len(sv), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return sv[new], inverse


def sort_by_user_time(user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row order by (user, timestamp as a number); ties keep file order."""
    if len(user) == 0:
        return np.zeros(0, dtype=np.int64)
    if ts.dtype.kind != "i":  # float timestamps: their ranks sort the same way
        ts = _dense_ranks(ts)[1]
    tmin, tmax = int(ts.min()), int(ts.max())
    umin, umax = int(user.min()), int(user.max())
    span = tmax - tmin + 1
    if (umax - umin + 1) * span >= 2**63:  # raw ids too spread out: make them dense first
        user = _dense_ranks(user)[1]
        umin, umax = 0, int(user.max())
        if (umax + 1) * span >= 2**63:
            return np.lexsort((ts, user))
    return _argsort_ties_in_order((user - umin) * np.int64(span) + (ts - tmin))


def _keys_of(keys, codes: np.ndarray) -> np.ndarray:
    """The string ids (numpy unicode) of ``codes``, indices into ``keys`` (a pyarrow string
    array of :class:`~nann_tf.data.readers.BehaviorLog`)."""
    import pyarrow as pa

    out = keys.take(pa.array(np.asarray(codes, np.int64))).to_numpy(zero_copy_only=False)
    return out.astype(str) if len(out) else np.zeros(0, "<U1")


def _join_item_table(raw_items: np.ndarray, tab_item: np.ndarray, tab_cat: np.ndarray,
                     names: dict[int, str]) -> tuple[np.ndarray, dict[int, str]]:
    """Raw category of each raw item from an item table; items not in it get "(none)"."""
    order = np.argsort(tab_item, kind="stable")  # duplicates: the first row wins
    tab_item, tab_cat = tab_item[order], tab_cat[order]
    pos = np.searchsorted(tab_item, raw_items)
    found = pos < len(tab_item)
    found[found] = tab_item[pos[found]] == raw_items[found]
    if found.all():
        return tab_cat[pos], names
    none_id = next((k for k, v in names.items() if v == NO_CATEGORY_NAME), None)
    if none_id is None:
        none_id = max(names, default=0) + 1
        names[none_id] = NO_CATEGORY_NAME
    log.warning("%d items of the log are not in the item file; they get category %r",
                int((~found).sum()), NO_CATEGORY_NAME)
    out = np.full(len(raw_items), none_id, dtype=np.int64)
    out[found] = tab_cat[pos[found]]
    return out, names


# Long on purpose: the dataset's steps in their order (rating filter, held-out users, their
# histories, training samples, frequencies) over per-user arrays every step shares.
def build_dataset(data: BehaviorLog, *, max_len: int = 50, min_len: int = 10,
                  val_users: int = 10000, test_users: int = 10000, seed: int = 0,
                  min_rating: float | None = None,
                  explicit_held_out: tuple[bool, bool] = (False, False),
                  train_min_len: int | None = None) -> PreparedDataset:
    """Builds the dataset arrays from a log.

    Args:
      data: the log (any input format).
      max_len: L, history length of samples and held-out users.
      min_len: users with fewer behaviours (after the rating filter) are never held out.
      train_min_len: users with at least this many behaviours (and fewer than ``min_len``)
        are training users too (their samples, items and frequencies count); None: the same
        as ``min_len`` (such users are dropped). The held-out users are the same either way.
      val_users / test_users: held-out users (see :func:`held_out_sizes`).
      seed: seed of the held-out user choice.
      explicit_held_out: whether ``val_users`` / ``test_users`` were asked for explicitly
        (honoured exactly) rather than config defaults (scaled to at most 10% each).
      min_rating: keep only rows with rating >= this (needs a rating column).

    Returns:
      The arrays and the ``meta.json`` content (``input`` is ``data.source``).

    Raises:
      DataError: bad parameters, no rating column for ``min_rating``, or no users left.
    """
    if max_len < 1:
        raise DataError(f"max_len must be >= 1, got {max_len}")
    if min_len < MIN_MIN_LEN:
        raise DataError(f"min_len must be >= {MIN_MIN_LEN} (a held-out user needs history "
                        f"before its ceil(len/2)-th behaviour), got {min_len}")
    train_min_len = min_len if train_min_len is None else int(train_min_len)
    if train_min_len < 2:
        raise DataError(f"train_min_len must be >= 2 (a training user needs a behaviour before "
                        f"its first target), got {train_min_len}")
    if val_users < 0 or test_users < 0:
        raise DataError(f"val_users and test_users must be >= 0, got {val_users}, {test_users}")
    t0 = time.perf_counter()
    bar = Progress(_BUILD_STEPS, "prepare: building the dataset", "steps")
    user, item, ts, cat = data.user, data.item, data.timestamp, data.category
    if min_rating is not None:
        if data.rating is None:
            raise DataError(f"{data.source}: min_rating given but the input has no rating column")
        keep = data.rating >= min_rating
        user, item, ts = user[keep], item[keep], ts[keep]
        cat = cat[keep] if cat is not None else None
        log.info("min_rating %g: kept %d of %d rows", min_rating, int(keep.sum()), len(keep))

    order = sort_by_user_time(user, ts)
    bar.update()
    user = user[order]
    if len(user) == 0:
        raise DataError(f"{data.source}: no rows left after the rating filter")
    starts = np.flatnonzero(np.concatenate([[True], user[1:] != user[:-1]]))
    counts = np.diff(np.append(starts, len(user)))
    kept_user = counts >= min(min_len, train_min_len)
    n_kept = int(kept_user.sum())
    n_long = int((counts >= min_len).sum())
    if n_long == 0:
        raise DataError(f"{data.source}: no users left after filtering: all {len(starts)} "
                        f"users have fewer than min_len={min_len} behaviours")
    log.info("%d of %d users have >= %d behaviours", n_long, len(starts), min_len)
    if n_kept > n_long:
        log.info("%d users with %d..%d behaviours are training users only (train_min_len)",
                 n_kept - n_long, train_min_len, min_len - 1)
    rows = order[np.repeat(kept_user, counts)]
    del order
    item = item[rows]
    cat = cat[rows] if cat is not None else None
    del rows
    bar.update()
    raw_users, counts = user[starts[kept_user]], counts[kept_user]
    del user
    user_keys = None
    if data.user_keys is not None:  # string user ids: dense codes 0.. in ascending id order
        user_keys = _keys_of(data.user_keys, raw_users)
        raw_users = np.arange(n_kept, dtype=np.int64)
    splits = np.zeros(n_kept + 1, dtype=np.int64)
    np.cumsum(counts, out=splits[1:])

    # Item vocabulary over all kept users (so held-out targets are valid ids), ascending raw id.
    raw_items, inverse = _dense_ranks(item)
    dense = (inverse + 1).astype(np.int32)
    n_items = len(raw_items)
    # String item ids: the codes are ranks in ascending string order, so dense ids are too.
    item_keys = None if data.item_keys is None else _keys_of(data.item_keys, raw_items)
    bar.update()
    if cat is not None:
        # The category of the item's first behaviour (in user, time order).
        first = np.full(n_items, len(item), dtype=np.int64)
        np.minimum.at(first, inverse, np.arange(len(item)))
        item_cat_raw = cat[first]
        n_diff = int(np.count_nonzero(cat != item_cat_raw[inverse]))
        if n_diff:
            log.warning("%d rows give an item a category other than its first one; "
                        "each item keeps its first category", n_diff)
    elif data.item_category is not None:
        item_cat_raw, names = _join_item_table(raw_items, *data.item_category,
                                               dict(data.category_names or {}))
        data = dataclasses.replace(data, category_names=names)
    else:
        item_cat_raw = np.zeros(n_items, dtype=np.int64)  # one category: raw id 0
    del inverse
    raw_cats, cat_dense = _dense_ranks(item_cat_raw)
    bar.update()

    n_val, n_test = held_out_sizes(n_long, val_users, test_users, explicit_held_out)
    if (n_val, n_test) != (val_users, test_users):
        log.info("held-out users scaled down to at most 10%% of %d users: val %d (asked %d), "
                 "test %d (asked %d)", n_long, n_val, val_users, n_test, test_users)
    # Held-out users are drawn among the users with >= min_len behaviours only, by the same
    # permutation whatever train_min_len adds to training.
    long_users = np.flatnonzero(counts >= min_len)
    perm = long_users[np.random.default_rng(seed).permutation(n_long)]
    role = np.zeros(n_kept, dtype=np.int8)  # 0 train, 1 val, 2 test
    role[perm[:n_val]] = 1
    role[perm[n_val:n_val + n_test]] = 2
    train_u = np.flatnonzero(role == 0)
    if len(train_u) == 0:
        raise DataError(f"{data.source}: no users left for training ({n_kept} users, "
                        f"{n_val} val, {n_test} test)")

    row_role = np.repeat(role, counts)
    train_items = dense[row_role == 0]
    train_splits = np.zeros(len(train_u) + 1, dtype=np.int64)
    np.cumsum(counts[train_u], out=train_splits[1:])
    freq = np.bincount(train_items, minlength=n_items + 1).astype(np.int64)
    bar.update()

    def held_out(r: int) -> dict[str, np.ndarray]:
        us = np.flatnonzero(role == r)
        start, length = splits[us], counts[us]
        t = (length + 1) // 2 - 1  # index of the ceil(len/2)-th behaviour
        # The behaviours after the target (the user's later behaviours, in time order), for
        # the evaluation that scores more than one item per user (``--next-n``).
        later_len = length - t - 1
        later_splits = np.zeros(len(us) + 1, dtype=np.int64)
        np.cumsum(later_len, out=later_splits[1:])
        later_idx = np.repeat(start + t + 1 - later_splits[:-1], later_len) + \
            np.arange(int(later_splits[-1]), dtype=np.int64)
        return {"hist": gather_histories(dense, start + t, start, max_len),
                "hist_len": np.minimum(t, max_len).astype(np.int32),
                "target": dense[start + t],
                "user": raw_users[us].astype(np.int64),
                "later": dense[later_idx].astype(np.int32),
                "later_splits": later_splits}

    arrays = {
        "items": {
            "raw_item_id": np.concatenate([[0], raw_items]).astype(np.int64),
            "category": np.concatenate([[0], cat_dense + 1]).astype(np.int32),
            "freq": freq,
            "raw_category_id": np.concatenate([[0], raw_cats]).astype(np.int64),
        },
        "train": {"items": train_items, "splits": train_splits,
                  "user": raw_users[train_u].astype(np.int64)},
        "val": held_out(1),
        "test": held_out(2),
    }
    bar.update()
    bar.close()
    meta: dict[str, Any] = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "num_items": n_items,
        "num_categories": len(raw_cats),
        "max_len": max_len,
        "num_train_users": len(train_u),
        "num_train_samples": int(len(train_items) - len(train_u)),
        "num_val_users": n_val,
        "num_test_users": n_test,
        "input": data.source,
        "input_format": data.input_format,
        "rows": int(data.rows),
        "rows_kept": int(len(item)),
        "min_len": min_len,
        **({"train_min_len": train_min_len} if train_min_len < min_len else {}),
        "split_seed": seed,
        "min_rating": min_rating,
    }
    if data.item_source:
        meta["item_file"] = data.item_source
    if item_keys is not None:  # see nann_tf.data.dataset: string ids
        arrays["items"]["raw_item_id"] = np.arange(n_items + 1, dtype=np.int64)
        arrays["items"]["raw_item_key"] = np.concatenate([np.array([""]), item_keys])
        meta["item_id_type"] = "string"
    if user_keys is not None:
        for name in ("train", "val", "test"):
            arrays[name]["user_key"] = user_keys[arrays[name]["user"]]
        meta["user_id_type"] = "string"
    if data.category_names:
        meta["category_names"] = {str(int(c)): data.category_names.get(int(c), "")
                                  for c in raw_cats}
    log.info("built dataset: %d items, %d categories, %d train users (%d samples), %d val, "
             "%d test users in %.2fs", n_items, len(raw_cats), len(train_u),
             meta["num_train_samples"], n_val, n_test, time.perf_counter() - t0)
    return PreparedDataset(meta=meta, arrays=arrays)


def _is_nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


def _check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    if _is_nonempty_dir(out) and not overwrite:
        raise DataError(f"{out}: output directory exists and is not empty "
                        f"(pass {arg('overwrite')} to replace it)")
    if not out.parent.is_dir():
        raise DataError(f"{out.parent}: parent directory of the output does not exist")


def write_dataset(ds: PreparedDataset, output_dir: str | Path, overwrite: bool = False) -> Path:
    """Writes a dataset directory atomically.

    The files go to ``<DIR>.tmp-<pid>`` first; that directory is then renamed to ``DIR``. With
    ``overwrite``, an existing ``DIR`` is moved aside, the new one renamed in, and the old one
    deleted (if the rename fails, the old one is put back).

    Args:
      ds: what :func:`build_dataset` returned.
      output_dir: the destination directory.
      overwrite: replace an existing non-empty directory.

    Returns:
      The destination path.

    Raises:
      DataError: the destination exists (without ``overwrite``) or is not a directory.
    """
    out = Path(output_dir)
    _check_destination(out, overwrite)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        for name, arrays in ds.arrays.items():
            np.savez(tmp / f"{name}.npz", **arrays)
        (tmp / "meta.json").write_text(json.dumps(ds.meta, indent=2) + "\n")
        _check_destination(out, overwrite)
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def prepare_dataset(input_path: str | Path, output_dir: str | Path,
                    input_format: str = "userbehavior", *, item_file: str | Path | None = None,
                    max_len: int = 50, min_len: int = 10, val_users: int = 10000,
                    test_users: int = 10000, seed: int = 0, min_rating: float | None = None,
                    overwrite: bool = False, table=None,
                    explicit_held_out: tuple[bool, bool] = (False, False),
                    train_min_len: int | None = None) -> dict[str, Any]:
    """Reads a behaviour log and writes a dataset directory (``nann-tf prepare``).

    Args:
      input_path: the log file (a directory for ``movielens``: its ``*.inter``/``*.item``).
      output_dir: the dataset directory to write.
      input_format: ``userbehavior``, ``movielens``, ``csv`` or ``table``.
      item_file: the MovieLens ``.item`` file, or the table format's item table (categories).
      table: the ``table`` format's :class:`~nann_tf.data.table.TableSpec` (column mapping).
      max_len / min_len / val_users / test_users / seed / min_rating / train_min_len: see
        :func:`build_dataset`.
      overwrite: replace an existing non-empty output directory.

    Returns:
      The ``meta.json`` content written.

    Raises:
      DataError: bad input (naming the file, line and column), bad parameters, or an existing
        output directory without ``overwrite``.
    """
    t0 = time.perf_counter()
    _check_destination(Path(output_dir), overwrite)  # fail before the work
    data = read_log(input_format, input_path, item_file, table)
    ds = build_dataset(data, max_len=max_len, min_len=min_len, val_users=val_users,
                       test_users=test_users, seed=seed, min_rating=min_rating,
                       explicit_held_out=explicit_held_out, train_min_len=train_min_len)
    t1 = time.perf_counter()
    write_dataset(ds, output_dir, overwrite=overwrite)
    dt = time.perf_counter() - t0
    log.info("wrote %s in %.2fs; total %.2fs for %d rows (%.0f rows/s)", output_dir,
             time.perf_counter() - t1, dt, data.rows, data.rows / max(dt, 1e-9))
    return ds.meta

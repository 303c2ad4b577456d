"""The prepared dataset directory (written by ``nann-tf prepare``) and its loader.

Layout of a dataset directory (format ``nann-tf-dataset``, version 1):

- ``meta.json``: ``format``, ``version``, ``num_items`` (N real items, dense ids 1..N),
  ``num_categories`` (C, dense 1..C), ``max_len`` (L), ``num_train_users``,
  ``num_train_samples``, ``num_val_users``, ``num_test_users``, ``input``, ``input_format``,
  ``rows`` (rows read), ``rows_kept`` (rows in kept users' sequences), plus informational keys
  (``min_len``, ``split_seed``, ``min_rating``, ``category_names`` where the input has names).
- ``items.npz``: ``raw_item_id`` int64 [N+1] (index = dense id, 0 = padding), ``category``
  int32 [N+1] (dense category of each dense item, 0 at index 0), ``freq`` int64 [N+1]
  (occurrences in train users' sequences), ``raw_category_id`` int64 [C+1].
- ``train.npz``: ``items`` int32 [T] (train users' sequences, each sorted by time,
  concatenated), ``splits`` int64 [U+1] (CSR row splits), ``user`` int64 [U] raw user ids.
  Every position ``j >= 1`` of a sequence is a sample: target ``items[j]``, history the
  previous (up to) L items of the same user.
- ``val.npz`` / ``test.npz``: ``hist`` int32 [U, L] (the behaviours before the ground truth,
  the most recent L, right-aligned, left-padded with 0), ``hist_len`` int32 [U], ``target``
  int32 [U] (the ceil(len/2)-th behaviour), ``user`` int64 [U]; and, in datasets written
  since the ``--next-n`` evaluation exists, ``later`` int32 [sum] with ``later_splits`` int64
  [U+1]: each user's behaviours after the target, in time order (CSR). A dataset without them
  loads as before; only the evaluation of later behaviours needs them.

String ids (a ``table`` log whose item or user column is not all integers): ``meta.json`` says
``"item_id_type": "string"`` and/or ``"user_id_type": "string"`` (absent or ``"int"``: integer
ids, the layout above exactly).

- String item ids: ``items.npz`` also holds ``raw_item_key`` (numpy unicode [N+1]; index =
  dense id, ``""`` at index 0), dense ids numbered in ascending string (code point) order;
  ``raw_item_id`` is then ``0..N`` (the dense id itself), kept so that readers of the integer
  layout still find it.
- String user ids: the int64 ``user`` arrays of ``train.npz``/``val.npz``/``test.npz`` hold
  dense user codes, 0-based, numbered in ascending string order over the users kept; each file
  also holds ``user_key`` (numpy unicode, beside ``user``): the user's id.
- An id is at most :data:`MAX_ID_BYTES` UTF-8 bytes, never empty, and holds no control
  character (the exported model's vocabulary is a text file, one id per line).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from nann_tf.errors import UserError

__all__ = [
    "DataError",
    "DATASET_FORMAT",
    "DATASET_VERSION",
    "MAX_ID_BYTES",
    "ID_TYPES",
    "HeldOut",
    "Dataset",
    "as_dataset",
    "gather_histories",
    "popularity_topk",
]

DATASET_FORMAT = "nann-tf-dataset"
DATASET_VERSION = 1

#: The longest string id (user or item), in UTF-8 bytes; ``prepare`` refuses longer ones.
MAX_ID_BYTES = 256
#: ``meta.json``'s ``item_id_type`` / ``user_id_type`` (absent = ``"int"``).
ID_TYPES = ("int", "string")

_META_INT_KEYS = ("num_items", "num_categories", "max_len", "num_train_users",
                  "num_train_samples", "num_val_users", "num_test_users", "rows", "rows_kept")


class DataError(UserError, ValueError):
    """Bad input data or a bad dataset directory; the message names the file and the place."""


@dataclasses.dataclass
class HeldOut:
    """Validation or test users: one ground-truth item per user and the history before it.

    Attributes:
      hist: int32 [U, L] dense item ids, right-aligned (most recent last), 0 = padding.
      hist_len: int32 [U] number of real items in ``hist``.
      target: int32 [U] dense id of the ground-truth item.
      user: int64 [U] raw user ids (string user ids: dense user codes).
      user_key: str [U] the users' string ids (string user ids only, else None).
    """

    hist: np.ndarray
    hist_len: np.ndarray
    target: np.ndarray
    user: np.ndarray
    later: np.ndarray | None = None
    later_splits: np.ndarray | None = None
    user_key: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.target)

    @property
    def has_later(self) -> bool:
        """Whether the users' later behaviours were stored (datasets prepared by older versions
        hold only the target)."""
        return self.later is not None

    def next_targets(self, n: int, users: int = 0) -> list[np.ndarray]:
        """Ground truth of the next ``n`` behaviours from the split point: per user, the target
        followed by up to ``n - 1`` later behaviours (distinct ids, in time order).

        Args:
          n: how many behaviours (>= 1; 1 is the paper's single target).
          users: keep the first ``users`` (0: all).

        Raises:
          DataError: ``n > 1`` on a dataset without later behaviours.
        """
        if n < 1:
            raise DataError(f"next-n must be >= 1, got {n}")
        m = len(self) if not users else min(users, len(self))
        if n > 1 and not self.has_later:
            raise DataError("this dataset stores no later behaviours of its held-out users "
                            "(prepared by an older version): prepare it again to evaluate "
                            f"the next {n} behaviours")
        out = []
        for u in range(m):
            row = [int(self.target[u])]
            if n > 1:
                a, b = self.later_splits[u], self.later_splits[u + 1]
                row.extend(int(x) for x in self.later[a:min(b, a + n - 1)])
            out.append(np.array(list(dict.fromkeys(row)), dtype=np.int64))
        return out


def gather_histories(items: np.ndarray, pos: np.ndarray, start: np.ndarray,
                     max_len: int) -> np.ndarray:
    """Histories of training samples, right-aligned like the held-out ``hist``.

    Args:
      items: int32 [T] concatenated sequences (``Dataset.train_items``).
      pos: int [S] flat index of each sample's target in ``items``.
      start: int [S] flat index of the first item of that sample's user.
      max_len: L, history length.

    Returns:
      int32 [S, L]: row ``s`` holds ``items[max(start, pos - L):pos]`` in its last columns,
      zeros before.
    """
    pos = np.asarray(pos, dtype=np.int64)
    start = np.asarray(start, dtype=np.int64)
    idx = pos[:, None] + np.arange(-max_len, 0, dtype=np.int64)[None, :]
    valid = idx >= start[:, None]
    out = np.asarray(items)[np.where(valid, idx, 0)]
    out[~valid] = 0
    return out.astype(np.int32, copy=False)


def _load_npz(path: Path, spec: dict[str, tuple[type, int]]) -> dict[str, np.ndarray]:
    """Loads the arrays of ``spec`` (name -> (dtype, ndim)) from ``path``, checking both."""
    if not path.is_file():
        raise DataError(f"{path}: missing (not a complete nann-tf dataset directory)")
    try:
        with np.load(path, allow_pickle=False) as z:
            present = set(z.files)
            out = {}
            for name, (dtype, ndim) in spec.items():
                if name not in present:
                    raise DataError(f"{path}: array {name!r} missing (has {sorted(present)})")
                arr = z[name]
                if arr.dtype != np.dtype(dtype) or arr.ndim != ndim:
                    raise DataError(f"{path}: array {name!r} must be {np.dtype(dtype).name} "
                                    f"with {ndim} dimension(s), got {arr.dtype.name} "
                                    f"{arr.shape}")
                out[name] = arr
            return out
    except DataError:
        raise
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError ...
        raise DataError(f"{path}: not a readable .npz file: {e}") from e


def _check(cond: bool, path: Path, name: str, what: str) -> None:
    if not cond:
        raise DataError(f"{path}: array {name!r}: {what}")


def _id_type(meta: dict, key: str, meta_path: Path) -> str:
    value = meta.get(key, "int")
    if value not in ID_TYPES:
        raise DataError(f"{meta_path}: {key!r} must be one of {', '.join(ID_TYPES)}, got "
                        f"{value!r}")
    return value


def _load_keys(path: Path, name: str, length: int) -> np.ndarray:
    """A string-id array (numpy unicode, 1-D, ``length`` long, no empty id except where the
    caller allows it) of ``path``."""
    if not path.is_file():
        raise DataError(f"{path}: missing (not a complete nann-tf dataset directory)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if name not in z.files:
                raise DataError(f"{path}: array {name!r} missing (meta.json says the ids are "
                                f"strings; has {sorted(z.files)})")
            arr = z[name]
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile.BadZipFile, ValueError (object array) ...
        raise DataError(f"{path}: array {name!r} is not readable: {e}") from e
    _check(arr.dtype.kind == "U" and arr.ndim == 1, path, name,
           f"must be a 1-D unicode (str) array, got {arr.dtype} {arr.shape}")
    _check(arr.shape == (length,), path, name, f"shape {arr.shape}, expected ({length},)")
    return arr


@dataclasses.dataclass
class Dataset:
    """A loaded dataset directory (see the module docstring for the files).

    Attributes:
      path: the directory.
      meta: the parsed ``meta.json``.
      num_items / num_categories / max_len: N, C and L.
      raw_item_id / item_category / item_freq / raw_category_id: the arrays of ``items.npz``.
      train_items / train_splits / train_users: the arrays of ``train.npz``.
      val / test: the held-out users.
      raw_item_key: str [N+1] the string item ids (``""`` at 0) of a dataset with string item
        ids, else None.
      train_user_key: str [U] the train users' string ids, or None.
    """

    path: Path
    meta: dict[str, Any]
    num_items: int
    num_categories: int
    max_len: int
    raw_item_id: np.ndarray
    item_category: np.ndarray
    item_freq: np.ndarray
    raw_category_id: np.ndarray
    train_items: np.ndarray
    train_splits: np.ndarray
    train_users: np.ndarray
    val: HeldOut
    test: HeldOut
    raw_item_key: np.ndarray | None = None
    train_user_key: np.ndarray | None = None

    @property
    def item_id_type(self) -> str:
        """``"string"`` or ``"int"``: the type of the raw item ids."""
        return "int" if self.raw_item_key is None else "string"

    def raw_items(self, dense) -> np.ndarray:
        """Raw item ids of dense ids (0 = padding -> 0, or ``""`` for string ids): int64, or
        str for string item ids."""
        dense = np.asarray(dense)
        if self.raw_item_key is not None:
            return np.where(dense > 0, self.raw_item_key[dense], "")
        return np.where(dense > 0, self.raw_item_id[dense], 0).astype(np.int64)

    @property
    def num_train_users(self) -> int:
        return len(self.train_users)

    @property
    def num_train_samples(self) -> int:
        return int(len(self.train_items) - len(self.train_users))

    # Long on purpose: one check per file and array, in file order, each message naming the file and
    # the array it read.
    @classmethod
    def load(cls, path: str | Path) -> "Dataset":
        """Loads and validates a dataset directory.

        Args:
          path: the directory written by ``nann-tf prepare``.

        Returns:
          The dataset.

        Raises:
          DataError: a file or array is missing, has the wrong dtype or shape, or holds an id
            out of range; the message names the file and the array.
        """
        path = Path(path)
        if not path.is_dir():
            raise DataError(f"{path}: not a directory (expected a dataset written by "
                            f"'nann-tf prepare')")
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{meta_path}: missing (not a nann-tf dataset directory)")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{meta_path}: not valid JSON: {e}") from e
        if not isinstance(meta, dict) or meta.get("format") != DATASET_FORMAT:
            raise DataError(f"{meta_path}: 'format' must be {DATASET_FORMAT!r}")
        if meta.get("version") != DATASET_VERSION:
            raise DataError(f"{meta_path}: unsupported version {meta.get('version')!r} "
                            f"(this reader knows version {DATASET_VERSION})")
        for key in _META_INT_KEYS:
            v = meta.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise DataError(f"{meta_path}: {key!r} must be an integer >= 0, got {v!r}")
        n, c, L = meta["num_items"], meta["num_categories"], meta["max_len"]
        if n < 1 or c < 1 or L < 1:
            raise DataError(f"{meta_path}: num_items, num_categories and max_len must be >= 1")

        p = path / "items.npz"
        it = _load_npz(p, {"raw_item_id": (np.int64, 1), "category": (np.int32, 1),
                           "freq": (np.int64, 1), "raw_category_id": (np.int64, 1)})
        for name in ("raw_item_id", "category", "freq"):
            _check(it[name].shape == (n + 1,), p, name,
                   f"shape {it[name].shape}, expected ({n + 1},) (num_items + 1)")
        _check(it["raw_category_id"].shape == (c + 1,), p, "raw_category_id",
               f"shape {it['raw_category_id'].shape}, expected ({c + 1},)")
        cat = it["category"]
        _check(cat[0] == 0 and (n == 0 or (cat[1:].min() >= 1 and cat[1:].max() <= c)), p,
               "category", f"must be 0 at index 0 and in 1..{c} elsewhere")
        _check(it["raw_item_id"][0] == 0, p, "raw_item_id", "index 0 (padding) must be 0")
        _check(it["freq"][0] == 0 and it["freq"].min() >= 0, p, "freq",
               "must be >= 0, and 0 at index 0")
        raw_key = None
        if _id_type(meta, "item_id_type", meta_path) == "string":
            raw_key = _load_keys(p, "raw_item_key", n + 1)
            _check(raw_key[0] == "", p, "raw_item_key", "index 0 (padding) must be ''")
            _check(bool(np.all(raw_key[2:] > raw_key[1:-1])) and raw_key[1] != "", p,
                   "raw_item_key", "ids must be non-empty, distinct and in ascending order "
                   "(dense id = rank)")
            _check(bool(np.array_equal(it["raw_item_id"], np.arange(n + 1))), p, "raw_item_id",
                   "must be 0..num_items (the dense ids) when the item ids are strings")
        string_users = _id_type(meta, "user_id_type", meta_path) == "string"

        def user_keys(path: Path, m: int) -> np.ndarray | None:
            if not string_users:
                return None
            keys = _load_keys(path, "user_key", m)
            _check(m == 0 or bool(np.all(keys != "")), path, "user_key", "empty user id")
            return keys

        p = path / "train.npz"
        tr = _load_npz(p, {"items": (np.int32, 1), "splits": (np.int64, 1),
                           "user": (np.int64, 1)})
        u = meta["num_train_users"]
        _check(tr["user"].shape == (u,), p, "user",
               f"shape {tr['user'].shape}, expected ({u},) (num_train_users)")
        sp = tr["splits"]
        _check(sp.shape == (u + 1,) and sp[0] == 0 and sp[-1] == len(tr["items"])
               and bool(np.all(np.diff(sp) >= 1)), p, "splits",
               f"must be {u + 1} increasing row splits from 0 to len(items)")
        ti = tr["items"]
        _check(len(ti) == 0 or (ti.min() >= 1 and ti.max() <= n), p, "items",
               f"dense item ids must be in 1..{n}")
        _check(len(ti) - u == meta["num_train_samples"], p, "items",
               f"{len(ti) - u} samples, meta.json says {meta['num_train_samples']}")
        train_key = user_keys(p, u)

        held = {}
        for split in ("val", "test"):
            p = path / f"{split}.npz"
            h = _load_npz(p, {"hist": (np.int32, 2), "hist_len": (np.int32, 1),
                              "target": (np.int32, 1), "user": (np.int64, 1)})
            m = meta[f"num_{split}_users"]
            _check(h["hist"].shape == (m, L), p, "hist",
                   f"shape {h['hist'].shape}, expected ({m}, {L})")
            for name in ("hist_len", "target", "user"):
                _check(h[name].shape == (m,), p, name, f"shape {h[name].shape}, expected ({m},)")
            if m:
                _check(h["target"].min() >= 1 and h["target"].max() <= n, p, "target",
                       f"dense item ids must be in 1..{n}")
                hl = h["hist_len"]
                _check(hl.min() >= 0 and hl.max() <= L, p, "hist_len", f"must be in 0..{L}")
                hist = h["hist"]
                real = np.arange(L)[None, :] >= (L - hl)[:, None]
                _check(bool(np.all(hist[~real] == 0)) and
                       bool(np.all((hist[real] >= 1) & (hist[real] <= n))), p, "hist",
                       f"must be right-aligned: hist_len ids in 1..{n} last, zeros before")
            later = later_splits = None
            with np.load(p, allow_pickle=False) as z:
                has_later = "later" in z.files and "later_splits" in z.files
            if has_later:
                lz = _load_npz(p, {"later": (np.int32, 1), "later_splits": (np.int64, 1)})
                later, later_splits = lz["later"], lz["later_splits"]
                _check(later_splits.shape == (m + 1,) and later_splits[0] == 0
                       and later_splits[-1] == len(later)
                       and bool(np.all(np.diff(later_splits) >= 0)), p, "later_splits",
                       f"must be {m + 1} non-decreasing row splits from 0 to len(later)")
                _check(len(later) == 0 or (later.min() >= 1 and later.max() <= n), p, "later",
                       f"dense item ids must be in 1..{n}")
            held[split] = HeldOut(h["hist"], h["hist_len"], h["target"], h["user"], later,
                                  later_splits, user_key=user_keys(p, m))

        return cls(path=path, meta=meta, num_items=n, num_categories=c, max_len=L,
                   raw_item_id=it["raw_item_id"], item_category=it["category"],
                   item_freq=it["freq"], raw_category_id=it["raw_category_id"],
                   train_items=ti, train_splits=sp, train_users=tr["user"],
                   val=held["val"], test=held["test"], raw_item_key=raw_key,
                   train_user_key=train_key)

    def train_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Every training sample as a (target position, user start) pair.

        Returns:
          ``(pos, start)``, both int64 [S]: ``train_items[pos[s]]`` is the target of sample
          ``s`` and ``start[s]`` the flat index of its user's first item; the history is
          ``gather_histories(train_items, pos, start, max_len)``. Samples are in sequence
          order (user by user, then by time).
        """
        lengths = np.diff(self.train_splits)
        start = np.repeat(self.train_splits[:-1], lengths)
        pos = np.arange(len(self.train_items), dtype=np.int64)
        keep = pos != start
        return pos[keep], start[keep]


def as_dataset(dataset_or_dir) -> Dataset:
    """``dataset_or_dir`` as a :class:`Dataset`: itself, or a directory read with
    :meth:`Dataset.load` (what every stage taking a dataset directory also accepts)."""
    if isinstance(dataset_or_dir, Dataset):
        return dataset_or_dir
    if not isinstance(dataset_or_dir, (str, os.PathLike)):
        raise DataError(f"expected a dataset directory or a Dataset, got "
                        f"{type(dataset_or_dir).__name__}")
    return Dataset.load(dataset_or_dir)


def popularity_topk(ds: Dataset, k: int) -> np.ndarray:
    """The ``k`` most frequent items in training (the most-popular baseline).

    Args:
      ds: the dataset.
      k: how many (capped at ``num_items``).

    Returns:
      int32 [min(k, N)] dense item ids, most frequent first; ties go to the smaller id.
    """
    k = max(0, min(int(k), ds.num_items))
    order = np.argsort(-ds.item_freq[1:], kind="stable")[:k]
    return (order + 1).astype(np.int32)

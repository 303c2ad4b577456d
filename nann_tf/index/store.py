"""The item index directory written by ``nann-tf build-index``.

Layout (format ``nann-tf-index``, version 1):

- ``index.json``: format, version, ``num_items``, ``dim``, the model directory and its config,
  build parameters and timings;
- ``embeddings.npy``: float32 ``[N + 1, d]``, e_v of every dense id (row 0: the padding id);
- ``items.npz``: ``raw_item_id`` int64 ``[N + 1]`` and ``category`` int32 ``[N + 1]`` (the
  dataset's vocabulary, so an export needs nothing else); for a dataset with string item ids
  also its ``raw_item_key`` (str ``[N + 1]``, ``""`` at 0; see :mod:`nann_tf.data.dataset`);
- ``graph/``: the HNSW levels (:meth:`nann_tf.index.hnsw.HnswGraph.save`);
- ``hnswlib.bin``: the hnswlib index the levels were read from (``Index.save_index``), so that
  ``nann-tf update-index`` can insert items into the same graph (absent in indexes written
  before it);
- in ``items.npz`` also ``retired`` (bool ``[N + 1]``) once ``update-index`` retired items:
  they stay in the graph and the vocabulary (valid history items and seeds) and are never
  returned.

The directory is written next to its destination and renamed into place, so a failed build
leaves any earlier index untouched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from nann_tf.fsutil import replace_dir
from nann_tf.index.hnsw import HnswGraph, HnswIndexError, load as load_graph

__all__ = ["ItemIndex", "save_index", "load_index", "as_index", "INDEX_FORMAT"]

INDEX_FORMAT = "nann-tf-index"
HNSWLIB_FILE = "hnswlib.bin"


@dataclasses.dataclass
class ItemIndex:
    graph: HnswGraph
    embeddings: np.ndarray
    raw_item_id: np.ndarray
    category: np.ndarray
    meta: dict
    raw_item_key: np.ndarray | None = None  # string item ids (dense id -> id), else None
    raw_category_id: np.ndarray | None = None  # raw id of each dense category (filters)
    retired: np.ndarray | None = None  # bool [N + 1]: never returned (update-index)
    hnswlib_file: Path | None = None  # the hnswlib index of the graph (update-index)
    freq: np.ndarray | None = None  # int64 [N + 1]: training occurrences (update-index's
    #                                 popular cold start; 0 for launched items)
    source: Path | None = None  # the directory it was read from (not saved)

    @property
    def name(self) -> str:
        """How messages name it: its directory, or "the index given" for one built in memory."""
        return str(self.source) if self.source is not None else "(the index given)"

    @property
    def num_items(self) -> int:
        return self.graph.num_items

    @property
    def item_id_type(self) -> str:
        return "int" if self.raw_item_key is None else "string"

    def raw_ids(self, dense) -> np.ndarray:
        """Raw item ids of dense ids, padding (0) kept as 0 (int64) or ``""`` (str)."""
        dense = np.asarray(dense)
        if self.raw_item_key is not None:
            return np.where(dense > 0, self.raw_item_key[dense], "")
        return np.where(dense > 0, self.raw_item_id[dense], 0).astype(np.int64)


def _check(cond: bool, where: Path, what: str) -> None:
    if not cond:
        raise HnswIndexError(f"{where}: {what}")


def validate_index(idx: ItemIndex, source: Path) -> None:
    n = idx.graph.num_items
    _check(idx.embeddings.ndim == 2 and idx.embeddings.shape[0] == n + 1,
           source / "embeddings.npy", f"expected shape [{n + 1}, d], got "
           f"{list(idx.embeddings.shape)}")
    _check(idx.embeddings.dtype == np.float32, source / "embeddings.npy",
           f"expected float32, got {idx.embeddings.dtype}")
    _check(bool(np.isfinite(idx.embeddings).all()), source / "embeddings.npy",
           "holds NaN or infinite values")
    _check(idx.raw_item_id.shape == (n + 1,), source / "items.npz",
           f"raw_item_id: expected shape [{n + 1}], got {list(idx.raw_item_id.shape)}")
    _check(idx.category.shape == (n + 1,), source / "items.npz",
           f"category: expected shape [{n + 1}], got {list(idx.category.shape)}")
    _check(len(np.unique(idx.raw_item_id[1:])) == n, source / "items.npz",
           "raw_item_id: raw ids are not unique")
    if idx.raw_item_key is not None:
        key = idx.raw_item_key
        _check(key.dtype.kind == "U" and key.shape == (n + 1,), source / "items.npz",
               f"raw_item_key: expected str [{n + 1}], got {key.dtype} {list(key.shape)}")
        _check(key[0] == "" and bool(np.all(key[1:] != "")) and len(np.unique(key[1:])) == n,
               source / "items.npz", "raw_item_key: expected '' at 0 and distinct non-empty "
               "ids")
    if idx.raw_category_id is not None:
        _check(idx.raw_category_id.ndim == 1 and
               len(idx.raw_category_id) >= int(idx.category.max()) + 1, source / "items.npz",
               f"raw_category_id: expected [C+1] with C >= {int(idx.category.max())}, got "
               f"{list(np.shape(idx.raw_category_id))}")
    if idx.retired is not None:
        _check(idx.retired.dtype == bool and idx.retired.shape == (n + 1,) and
               not idx.retired[0], source / "items.npz",
               f"retired: expected bool [{n + 1}] with False at 0")
    if idx.freq is not None:
        _check(idx.freq.shape == (n + 1,) and idx.freq.min() >= 0, source / "items.npz",
               f"freq: expected [{n + 1}] counts >= 0")
    idx.graph.validate(str(source / "graph"))


def save_index(idx: ItemIndex, directory: str | os.PathLike) -> Path:
    """Validates and writes ``idx`` to ``directory`` atomically (replacing an old index)."""
    target = Path(directory)
    validate_index(idx, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        np.save(tmp / "embeddings.npy", idx.embeddings)
        keys = {} if idx.raw_item_key is None else {"raw_item_key": idx.raw_item_key}
        if idx.raw_category_id is not None:
            keys["raw_category_id"] = np.asarray(idx.raw_category_id, np.int64)
        if idx.retired is not None and idx.retired.any():
            keys["retired"] = idx.retired
        if idx.freq is not None:
            keys["freq"] = np.asarray(idx.freq, np.int64)
        if idx.hnswlib_file is not None:
            shutil.copyfile(idx.hnswlib_file, tmp / HNSWLIB_FILE)
        np.savez(tmp / "items.npz", raw_item_id=idx.raw_item_id, category=idx.category, **keys)
        idx.graph.save(tmp / "graph")
        meta = dict(idx.meta, format=INDEX_FORMAT, version=1, num_items=idx.num_items,
                    dim=int(idx.embeddings.shape[1]))
        (tmp / "index.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_index(directory: str | os.PathLike) -> ItemIndex:
    """Reads and validates an index directory.

    Raises:
      HnswIndexError: a file is missing, unreadable or inconsistent (the message names it).
    """
    d = Path(directory)
    meta_path = d / "index.json"
    _check(meta_path.is_file(), meta_path, "missing (not an index directory; run "
           "`nann-tf build-index`)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HnswIndexError(f"{meta_path}: not valid JSON: {e}") from e
    _check(meta.get("format") == INDEX_FORMAT, meta_path,
           f"format is {meta.get('format')!r}, expected {INDEX_FORMAT!r}")
    try:
        emb = np.load(d / "embeddings.npy", allow_pickle=False)
        with np.load(d / "items.npz", allow_pickle=False) as z:
            raw, cat = z["raw_item_id"], z["category"]
            key = z["raw_item_key"] if "raw_item_key" in z.files else None
            raw_cat = z["raw_category_id"] if "raw_category_id" in z.files else None
            retired = z["retired"] if "retired" in z.files else None
            freq = z["freq"] if "freq" in z.files else None
    except FileNotFoundError as e:
        raise HnswIndexError(f"{e.filename}: missing") from e
    except (ValueError, OSError, KeyError) as e:
        raise HnswIndexError(f"{d}: unreadable index array: {e}") from e
    idx = ItemIndex(load_graph(d / "graph"), emb, raw.astype(np.int64), cat.astype(np.int32),
                    meta, raw_item_key=key, raw_category_id=raw_cat, retired=retired, freq=freq,
                    hnswlib_file=(d / HNSWLIB_FILE) if (d / HNSWLIB_FILE).is_file() else None,
                    source=d)
    validate_index(idx, d)
    return idx


def as_index(index_or_dir) -> ItemIndex:
    """``index_or_dir`` as an :class:`ItemIndex`: itself, or a directory read with
    :func:`load_index` (what every stage taking an index directory also accepts)."""
    if isinstance(index_or_dir, ItemIndex):
        return index_or_dir
    if not isinstance(index_or_dir, (str, os.PathLike)):
        raise HnswIndexError(f"expected an index directory or an ItemIndex, got "
                             f"{type(index_or_dir).__name__}")
    return load_index(index_or_dir)

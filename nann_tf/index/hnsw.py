"""The HNSW graph over item embeddings: built with hnswlib, read out of it, saved as npz.

Items are identified by DENSE ids ``1..N`` (row 0 of the embedding table is padding and is
never indexed). :func:`build_hnsw` builds an hnswlib ``l2`` index whose labels are those dense
ids and reads its whole level structure back (:func:`graph_from_hnswlib`): hnswlib's pickled
state holds the raw buffers (``element_levels``, ``data_level0`` with the level-0 link lists,
``link_lists`` with the upper levels), indexed by hnswlib's *internal* ids, which are mapped back
to labels here.

The result, :class:`HnswGraph`, stores one CSR adjacency per level ``l = 0..max_level``
(``values`` int32, ``row_splits`` int64 of size ``N + 2``) over ALL dense ids ``0..N``: the row
of a node that is not on level ``l`` is empty, and row 0 is always empty. :func:`to_ragged` and
:func:`graph_tensors` turn it into the TensorFlow form that :mod:`nann_tf.search` walks.

Start level: Beam-retrieval scores every node of a start level ``S`` (default 2: with M = 32 a
node reaches level ``l`` with probability ``M**-l``, so level 2 holds about ``N / 1000`` nodes).
A graph with fewer levels starts at its top level instead (:meth:`HnswGraph.resolve_start_level`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from nann_tf.errors import UserError
from nann_tf.fsutil import replace_dir

__all__ = [
    "DEFAULT_START_LEVEL",
    "GraphTensors",
    "HnswGraph",
    "HnswIndexError",
    "build_hnsw",
    "graph_from_hnswlib",
    "graph_tensors",
    "load",
    "make_graph_tensors",
    "to_ragged",
]

DEFAULT_START_LEVEL = 2
FORMAT_NAME = "nann-tf-hnsw"
FORMAT_VERSION = 1
ARRAYS_FILE = "graph.npz"
_ADD_CHUNK = 50_000  # items per hnswlib add_items call (a progress step)
META_FILE = "meta.json"


class HnswIndexError(UserError, ValueError):
    """An HNSW graph (in memory, in hnswlib, or on disk) is malformed or inconsistent."""


@dataclasses.dataclass
class HnswGraph:
    """The level structure of an HNSW index over dense item ids ``1..num_items``.

    Attributes:
      levels: for ``l = 0..max_level``, ``(values int32 [nnz], row_splits int64 [N + 2])``: the
        neighbours of dense id ``i`` on level ``l`` are ``values[row_splits[i]:row_splits[i+1]]``
        (hnswlib's link order). Empty row where ``i`` is not on level ``l``; row 0 empty.
      entry_point: dense id of hnswlib's entry point (a node on ``max_level``).
      max_level: the top level.
      node_level: int32 ``[N + 1]``, the top level of each node (-1 for the padding id 0).
      num_items: N.
      M / ef_construction / seed: hnswlib build parameters (recorded, not used by the search).
    """

    levels: list[tuple[np.ndarray, np.ndarray]]
    entry_point: int
    max_level: int
    node_level: np.ndarray
    num_items: int
    M: int = 32
    ef_construction: int = 40
    seed: int = 100

    def start_nodes(self, level: int) -> np.ndarray:
        """Sorted dense ids of the nodes present on ``level`` (int32)."""
        if not 0 <= level <= self.max_level:
            raise ValueError(f"level {level} is outside 0..{self.max_level}")
        return np.flatnonzero(self.node_level >= level).astype(np.int32)

    def resolve_start_level(self, requested: int = DEFAULT_START_LEVEL) -> int:
        """The start level to use: ``requested``, or the top level if the graph is lower."""
        if requested < 0:
            raise ValueError(f"start level must be >= 0, got {requested}")
        return min(int(requested), self.max_level)

    def neighbors(self, node: int, level: int) -> np.ndarray:
        """The neighbours of dense id ``node`` on ``level`` (empty if it is not on it)."""
        values, splits = self.levels[level]
        return values[splits[node]:splits[node + 1]]

    def validate(self, source: str = "<in-memory graph>") -> None:
        """Checks the structural invariants (see :func:`_validate_arrays`).

        Raises:
          HnswIndexError: naming ``source``, the array and the offending value.
        """
        _validate_arrays(self.levels, self.node_level, self.num_items, self.max_level,
                         self.entry_point, source)

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes ``graph.npz`` + ``meta.json`` into ``directory``, atomically.

        The directory belongs to the graph: it is written as a temporary sibling and renamed into
        place, replacing an earlier saved graph as a whole. A non-empty directory that does not
        hold a saved graph is refused rather than overwritten.

        Raises:
          HnswIndexError: the graph is malformed (nothing is written).
          FileExistsError: ``directory`` holds something other than a saved graph.
        """
        self.validate("graph to save")
        target = Path(directory)
        if target.exists():
            if not target.is_dir():
                raise FileExistsError(f"{target}: exists and is not a directory")
            if any(target.iterdir()) and not (target / META_FILE).is_file():
                raise FileExistsError(
                    f"{target}: a non-empty directory without {META_FILE}; refusing to replace "
                    "it (save the graph into its own directory)")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()  # unlike mkdtemp (0700), honours the umask
        try:
            arrays = {"node_level": self.node_level.astype(np.int32)}
            for lvl, (values, splits) in enumerate(self.levels):
                arrays[f"level{lvl}_values"] = values.astype(np.int32)
                arrays[f"level{lvl}_row_splits"] = splits.astype(np.int64)
            with open(tmp / ARRAYS_FILE, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            meta = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "num_items": int(self.num_items),
                "max_level": int(self.max_level),
                "entry_point": int(self.entry_point),
                "M": int(self.M),
                "ef_construction": int(self.ef_construction),
                "seed": int(self.seed),
                "arrays_sha256": file_sha256(tmp / ARRAYS_FILE),
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "HnswGraph":
        """Reads a graph written by :meth:`save`, verifying checksum and structure.

        Raises:
          HnswIndexError: a file is missing, corrupt, or inconsistent (the message names it).
        """
        return load(directory)


def load(directory: str | os.PathLike) -> HnswGraph:
    """Reads a graph written by :meth:`HnswGraph.save` (see there)."""
    d = Path(directory)
    meta_path, arrays_path = d / META_FILE, d / ARRAYS_FILE
    for p in (meta_path, arrays_path):
        if not p.is_file():
            raise HnswIndexError(f"{p}: missing (not a saved HNSW graph directory)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HnswIndexError(f"{meta_path}: not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise HnswIndexError(f"{meta_path}: not an {FORMAT_NAME} meta file")
    if meta.get("version") != FORMAT_VERSION:
        raise HnswIndexError(f"{meta_path}: format version {meta.get('version')!r}, this code "
                             f"reads version {FORMAT_VERSION}")
    for key in ("num_items", "max_level", "entry_point", "M", "ef_construction", "seed"):
        if not isinstance(meta.get(key), int) or isinstance(meta.get(key), bool):
            raise HnswIndexError(f"{meta_path}: {key!r} must be an integer, got "
                                 f"{meta.get(key)!r}")
    digest = file_sha256(arrays_path)
    if digest != meta.get("arrays_sha256"):
        raise HnswIndexError(f"{arrays_path}: checksum mismatch (sha256 {digest}, {META_FILE} "
                             f"records {meta.get('arrays_sha256')!r}): the file is corrupt or "
                             "was changed after saving")
    n, max_level = meta["num_items"], meta["max_level"]
    try:
        with np.load(arrays_path, allow_pickle=False) as z:
            names = set(z.files)
            expected = {"node_level"} | {f"level{lvl}_{a}" for lvl in range(max_level + 1)
                                         for a in ("values", "row_splits")}
            if names != expected:
                raise HnswIndexError(f"{arrays_path}: arrays {sorted(names)}, expected "
                                     f"{sorted(expected)} for max_level {max_level}")
            node_level = z["node_level"]
            levels = [(z[f"level{lvl}_values"], z[f"level{lvl}_row_splits"])
                      for lvl in range(max_level + 1)]
    except HnswIndexError:
        raise
    except Exception as e:  # zipfile / npy header errors: the file is not a readable npz
        raise HnswIndexError(f"{arrays_path}: not a readable npz file: {e}") from e
    for name, arr, dtype in [("node_level", node_level, np.int32)] + [
            (f"level{lvl}_{a}", arr, dt) for lvl, (v, s) in enumerate(levels)
            for a, arr, dt in (("values", v, np.int32), ("row_splits", s, np.int64))]:
        if arr.dtype != dtype or arr.ndim != 1:
            raise HnswIndexError(f"{arrays_path}: array {name} is {arr.dtype} with shape "
                                 f"{arr.shape}, expected 1-D {np.dtype(dtype)}")
    graph = HnswGraph(levels=levels, entry_point=meta["entry_point"], max_level=max_level,
                      node_level=node_level, num_items=n, M=meta["M"],
                      ef_construction=meta["ef_construction"], seed=meta["seed"])
    graph.validate(str(arrays_path))
    return graph


def build_hnsw(embeddings: np.ndarray, labels: np.ndarray | None = None, M: int = 32,
               ef_construction: int = 40, num_threads: int = 0, seed: int = 100,
               hnswlib_file: str | os.PathLike | None = None) -> HnswGraph:
    """Builds an hnswlib ``l2`` index over item embeddings and reads its levels out.

    Args:
      embeddings: float32 ``[N + 1, d]`` indexed by dense id (row 0 = padding, not indexed), or
        ``[N, d]`` together with ``labels``.
      labels: optional int ``[N]``, the dense id of each row of ``embeddings``: a permutation of
        ``1..N``.
      M: links per node on the upper levels (``2 * M`` on level 0): more links give better
        recall and a larger, slower-to-walk graph.
      ef_construction: beam width of the build: larger is slower and gives a better graph.
      num_threads: threads for ``add_items`` (0: all cores). With more than one thread the
        insertion order, and so the graph, is not reproducible.
      seed: hnswlib's random seed (the level of each node).
      hnswlib_file: also save the hnswlib index there (``Index.save_index``: what
        :func:`add_to_hnsw` inserts into later).

    Returns:
      The :class:`HnswGraph`.

    Raises:
      ValueError: bad shapes, non-finite embeddings, labels that are not a permutation of 1..N.
    """
    import hnswlib

    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[1] < 1:
        raise ValueError(f"embeddings must be a 2-D array [rows, d], got shape {emb.shape}")
    if not np.issubdtype(emb.dtype, np.floating):
        raise ValueError(f"embeddings must be floating point, got {emb.dtype}")
    if labels is None:
        if emb.shape[0] < 2:
            raise ValueError(f"embeddings [N + 1, d] need N >= 1 items after the padding row 0, "
                             f"got shape {emb.shape}")
        data = emb[1:]
        lab = np.arange(1, emb.shape[0], dtype=np.int64)
    else:
        lab = np.asarray(labels)
        if lab.shape != (emb.shape[0],) or not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"labels must be an integer array [{emb.shape[0]}] (one per "
                             f"embedding row), got {lab.dtype} {lab.shape}")
        if emb.shape[0] < 1 or not np.array_equal(np.sort(lab), np.arange(1, emb.shape[0] + 1)):
            raise ValueError("labels must be a permutation of the dense ids 1..N "
                             f"(N = {emb.shape[0]})")
        data, lab = emb, lab.astype(np.int64)
    data = np.ascontiguousarray(data, dtype=np.float32)
    if not np.isfinite(data).all():
        bad = int(lab[np.flatnonzero(~np.isfinite(data).all(axis=1))[0]])
        raise ValueError(f"embeddings: item {bad} has a non-finite value")
    for name, v in (("M", M), ("ef_construction", ef_construction)):
        if int(v) < 2:
            raise ValueError(f"{name} must be >= 2, got {v}")
    n, dim = data.shape
    index = hnswlib.Index(space="l2", dim=dim)
    index.init_index(max_elements=n, M=int(M), ef_construction=int(ef_construction),
                     random_seed=int(seed))
    from nann_tf.progress import Progress

    threads = int(num_threads) if num_threads > 0 else -1
    # In chunks, for progress: the same insertions in the same order (hnswlib inserts a batch
    # with a parallel loop over it; one thread gives the same graph as one call).
    with Progress(n, "build-index: HNSW insertion", "items") as bar:
        for lo in range(0, n, _ADD_CHUNK):
            hi = min(n, lo + _ADD_CHUNK)
            index.add_items(data[lo:hi], lab[lo:hi], num_threads=threads)
            bar.update(hi - lo)
    if hnswlib_file is not None:
        index.save_index(os.fspath(hnswlib_file))
    state = index.__getstate__()[0]
    del index  # the state is a copy: free hnswlib's own buffers before reading it out
    graph = _graph_from_state(state)
    graph.M, graph.ef_construction, graph.seed = int(M), int(ef_construction), int(seed)
    return graph


def add_to_hnsw(hnswlib_file: str | os.PathLike, embeddings: np.ndarray, first_id: int,
                dim: int, output_file: str | os.PathLike, num_threads: int = 0) -> HnswGraph:
    """Inserts items into a saved hnswlib index (``build_hnsw(hnswlib_file=...)``) and reads
    the grown graph out: rows of ``embeddings`` [a, d] get the dense ids ``first_id`` ..
    ``first_id + a - 1`` (the next ones). The grown hnswlib index is saved to ``output_file``;
    the input file is not changed. hnswlib links each new item as it would have been linked in
    a build (same M and ef_construction), and existing items gain links to it."""
    import hnswlib

    data = np.ascontiguousarray(embeddings, dtype=np.float32)
    if data.ndim != 2 or data.shape[1] != dim:
        raise ValueError(f"embeddings must be [a, {dim}], got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("embeddings: a new item has a non-finite value")
    index = hnswlib.Index(space="l2", dim=int(dim))
    index.load_index(os.fspath(hnswlib_file))
    n = index.get_current_count()
    if first_id != n + 1:
        raise HnswIndexError(f"{hnswlib_file}: holds {n} items, so the next id is {n + 1}, not "
                             f"{first_id}")
    index.resize_index(n + len(data))
    if len(data):
        index.add_items(data, np.arange(first_id, first_id + len(data), dtype=np.int64),
                        num_threads=int(num_threads) if num_threads > 0 else -1)
    index.save_index(os.fspath(output_file))
    return graph_from_hnswlib(index)


def graph_from_hnswlib(index: Any) -> HnswGraph:
    """Reads the level structure out of an hnswlib ``l2``/``ip`` index with labels ``1..N``.

    Uses the buffers of ``index.__getstate__()`` (hnswlib >= 0.6 pickle state):

    - ``data_level0``: ``cur_element_count`` records of ``size_data_per_element`` bytes; at
      ``offset_level0`` a uint32 header (low 16 bits: link count) and ``max_M0`` uint32 internal
      ids, then the vector, then at ``label_offset`` the uint64 label.
    - ``link_lists``: for each internal id with level > 0 (in internal-id order), ``level``
      blocks of ``size_links_per_element`` bytes (levels 1..level), each a uint32 header and
      ``max_M`` uint32 internal ids.

    Raises:
      HnswIndexError: the state is not what this reader understands, or labels are not 1..N.
    """
    return _graph_from_state(index.__getstate__()[0])


def _graph_from_state(state: dict) -> HnswGraph:
    """:func:`graph_from_hnswlib` on the index's pickle state."""
    src = "hnswlib index state"
    if not state.get("index_inited"):
        raise HnswIndexError(f"{src}: the index is not initialised")
    if state.get("ser_version") != 1:
        raise HnswIndexError(f"{src}: serialization version {state.get('ser_version')!r} "
                             "(this reader understands 1)")
    if state.get("has_deletions"):
        raise HnswIndexError(f"{src}: the index has deleted elements (not supported)")
    n = int(state["cur_element_count"])
    if n < 1:
        raise HnswIndexError(f"{src}: the index is empty")
    rec = int(state["size_data_per_element"])
    off0, label_off = int(state["offset_level0"]), int(state["label_offset"])
    max_m0, max_m = int(state["max_M0"]), int(state["max_M"])
    links_rec = int(state["size_links_per_element"])
    if links_rec != 4 + 4 * max_m or off0 + 4 + 4 * max_m0 > rec or label_off + 8 > rec:
        raise HnswIndexError(f"{src}: unexpected record layout (size_data_per_element={rec}, "
                             f"offset_level0={off0}, label_offset={label_off}, "
                             f"size_links_per_element={links_rec}, max_M={max_m}, "
                             f"max_M0={max_m0})")
    raw0 = np.asarray(state["data_level0"]).view(np.uint8)
    if raw0.size != n * rec:
        raise HnswIndexError(f"{src}: data_level0 has {raw0.size} bytes, expected {n} x {rec}")
    raw0 = raw0.reshape(n, rec)
    labels = np.ascontiguousarray(raw0[:, label_off:label_off + 8]).view("<u8")[:, 0]
    if not np.array_equal(np.sort(labels), np.arange(1, n + 1, dtype=np.uint64)):
        raise HnswIndexError(f"{src}: labels must be exactly the dense ids 1..{n}")
    dense = labels.astype(np.int32)  # internal id -> dense id
    elem_levels = np.asarray(state["element_levels"])[:n].astype(np.int64)
    max_level = int(state["max_level"])
    if elem_levels.min() < 0 or elem_levels.max() != max_level:
        raise HnswIndexError(f"{src}: element levels span {elem_levels.min()}.."
                             f"{elem_levels.max()}, max_level is {max_level}")

    levels = []
    hdr0 = np.ascontiguousarray(raw0[:, off0:off0 + 2]).view("<u2")[:, 0].astype(np.int64)
    links0 = np.ascontiguousarray(raw0[:, off0 + 4:off0 + 4 + 4 * max_m0]).view("<u4")
    levels.append(_level_csr(0, hdr0, links0, np.arange(n), dense, n, max_m0, src))
    raw_up = np.asarray(state["link_lists"]).view(np.uint8)
    total_blocks = int(elem_levels.sum())
    if raw_up.size != total_blocks * links_rec:
        raise HnswIndexError(f"{src}: link_lists has {raw_up.size} bytes, expected "
                             f"{total_blocks} x {links_rec}")
    blocks = raw_up.reshape(total_blocks, links_rec)
    first_block = np.concatenate([[0], np.cumsum(elem_levels)[:-1]])
    for lvl in range(1, max_level + 1):
        internal = np.flatnonzero(elem_levels >= lvl)
        b = blocks[first_block[internal] + (lvl - 1)]
        counts = np.ascontiguousarray(b[:, 0:2]).view("<u2")[:, 0].astype(np.int64)
        links = np.ascontiguousarray(b[:, 4:4 + 4 * max_m]).view("<u4")
        levels.append(_level_csr(lvl, counts, links, internal, dense, n, max_m, src))
    node_level = np.full(n + 1, -1, np.int32)
    node_level[dense] = elem_levels.astype(np.int32)
    graph = HnswGraph(levels=levels, entry_point=int(dense[int(state["enterpoint_node"])]),
                      max_level=max_level, node_level=node_level, num_items=n,
                      M=int(state["M"]), ef_construction=int(state["ef_construction"]),
                      seed=int(state.get("seed", 100)))
    graph.validate(src)
    return graph


def _level_csr(level: int, counts: np.ndarray, links: np.ndarray, internal: np.ndarray,
                    dense: np.ndarray, n: int, cap: int, src: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """CSR over dense ids 0..n from per-node (count, padded link row) of internal ids."""
    if counts.size and counts.max() > cap:
        raise HnswIndexError(f"{src}: a level-{level} link count {counts.max()} exceeds {cap}")
    order = np.argsort(dense[internal], kind="stable")  # rows in dense-id order
    counts, links = counts[order], links[order]
    valid = np.arange(cap)[None, :] < counts[:, None]
    ids = links[valid]  # row-major, so each node keeps hnswlib's link order
    if ids.size and int(ids.max()) >= n:
        raise HnswIndexError(f"{src}: level-{level} link to internal id {int(ids.max())} >= {n}")
    row_len = np.zeros(n + 1, np.int64)
    row_len[dense[internal[order]]] = counts
    splits = np.concatenate([[0], np.cumsum(row_len)]).astype(np.int64)
    return dense[ids].astype(np.int32), splits


def _validate_arrays(levels: Sequence[tuple[np.ndarray, np.ndarray]], node_level: np.ndarray,
                     n: int, max_level: int, entry_point: int, src: str) -> None:
    """The invariants every graph satisfies (raises HnswIndexError naming src and the array).

    - ``node_level`` is int ``[N + 1]``, -1 at id 0, values in ``0..max_level``, max = max_level;
    - one ``(values, row_splits)`` pair per level; ``row_splits`` sized ``N + 2``, starting at 0,
      non-decreasing, ending at ``len(values)``;
    - every neighbour id is in ``1..N``; a node's row is empty on levels above its own and a
      neighbour on level ``l`` is itself on level ``l`` (so level ``l + 1`` nodes are on ``l``);
    - on level 0 every item has neighbours when N > 1;
    - the entry point is a node of the top level (so the top level is not empty).
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise HnswIndexError(f"{src}: num_items must be >= 1, got {n!r}")
    nl = np.asarray(node_level)
    if nl.shape != (n + 1,) or not np.issubdtype(nl.dtype, np.integer):
        raise HnswIndexError(f"{src}: node_level must be int [{n + 1}], got {nl.dtype} "
                             f"{nl.shape}")
    if nl[0] != -1:
        raise HnswIndexError(f"{src}: node_level[0] (padding id) must be -1, got {nl[0]}")
    items = nl[1:]
    if items.min() < 0 or items.max() != max_level:
        raise HnswIndexError(f"{src}: node_level values span {items.min()}..{items.max()}, "
                             f"expected 0..{max_level} (max_level)")
    if len(levels) != max_level + 1:
        raise HnswIndexError(f"{src}: {len(levels)} levels, expected max_level + 1 = "
                             f"{max_level + 1}")
    if not 1 <= entry_point <= n or nl[entry_point] != max_level:
        raise HnswIndexError(f"{src}: entry_point {entry_point} is not a node of the top level "
                             f"{max_level}")
    for lvl, (values, splits) in enumerate(levels):
        v, s = np.asarray(values), np.asarray(splits)
        name = f"level{lvl}"
        if s.ndim != 1 or s.shape[0] != n + 2 or not np.issubdtype(s.dtype, np.integer):
            raise HnswIndexError(f"{src}: {name}_row_splits must be int [{n + 2}], got "
                                 f"{s.dtype} {s.shape}")
        if v.ndim != 1 or not np.issubdtype(v.dtype, np.integer):
            raise HnswIndexError(f"{src}: {name}_values must be a 1-D int array, got "
                                 f"{v.dtype} {v.shape}")
        lengths = np.diff(s)
        if s[0] != 0 or (lengths < 0).any() or s[-1] != v.shape[0]:
            raise HnswIndexError(f"{src}: {name}_row_splits must start at 0, not decrease and "
                                 f"end at len(values) = {v.shape[0]} (starts {s[0]}, ends "
                                 f"{s[-1]}, min step {lengths.min()})")
        if v.size and (v.min() < 1 or v.max() > n):
            bad = int(v[(v < 1) | (v > n)][0])
            raise HnswIndexError(f"{src}: {name}_values holds neighbour id {bad}, outside "
                                 f"1..{n}")
        if lengths[0] != 0:
            raise HnswIndexError(f"{src}: {name}: row 0 (padding id) must be empty")
        absent = (lengths > 0) & (nl < lvl)
        if absent.any():
            raise HnswIndexError(f"{src}: {name}: node {int(np.flatnonzero(absent)[0])} has "
                                 f"neighbours but its node_level is below {lvl}")
        if v.size and (nl[v] < lvl).any():
            bad = int(v[nl[v] < lvl][0])
            raise HnswIndexError(f"{src}: {name}_values links to node {bad}, which is not on "
                                 f"level {lvl}")
        if lvl == 0 and n > 1 and (lengths[1:] == 0).any():
            bad = int(np.flatnonzero(lengths[1:] == 0)[0]) + 1
            raise HnswIndexError(f"{src}: level0: item {bad} has no neighbours (level 0 must "
                                 "cover every item)")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# TensorFlow form (TensorFlow is imported only here).

class GraphTensors(NamedTuple):
    """The graph as the search functions read it.

    Attributes:
      levels: one ``tf.RaggedTensor`` int32 ``[N + 1, None]`` per level ``0..max_level``.
      start_nodes: int32 ``[n_S]``, sorted dense ids of the nodes on ``start_level``.
      start_level: the Beam-retrieval start level S (Python int).
      entry_point: int32 scalar, hnswlib's entry point (for HNSW-retrieval).
      num_items: N (Python int).
    """

    levels: tuple
    start_nodes: Any
    start_level: int
    entry_point: Any
    num_items: int

    @property
    def max_level(self) -> int:
        """The top level (number of levels - 1)."""
        return len(self.levels) - 1


def to_ragged(levels: Sequence[tuple[Any, Any]], validate: bool = False) -> list:
    """``[(values, row_splits), ...]`` -> one int32 ``tf.RaggedTensor`` per level.

    Accepts NumPy arrays or tensors (e.g. variables of an exported module read in a
    ``tf.function``); ``validate`` adds TensorFlow's row-splits checks.
    """
    import tensorflow as tf

    return [tf.RaggedTensor.from_row_splits(tf.cast(v, tf.int32), tf.cast(s, tf.int64),
                                            validate=validate) for v, s in levels]


def make_graph_tensors(levels: Sequence[tuple[Any, Any]], start_nodes: Any, start_level: int,
                       entry_point: Any, num_items: int) -> GraphTensors:
    """Assembles :class:`GraphTensors` from arrays or tensors (e.g. an export's variables)."""
    import tensorflow as tf

    if not 0 <= start_level < len(levels):
        raise ValueError(f"start_level {start_level} is outside 0..{len(levels) - 1}")
    return GraphTensors(levels=tuple(to_ragged(levels)),
                        start_nodes=tf.cast(start_nodes, tf.int32),
                        start_level=int(start_level),
                        entry_point=tf.cast(entry_point, tf.int32),
                        num_items=int(num_items))


def graph_tensors(graph: HnswGraph, start_level: int = DEFAULT_START_LEVEL) -> GraphTensors:
    """The :class:`GraphTensors` of ``graph``; the start level is resolved by
    :meth:`HnswGraph.resolve_start_level` (the top level if the graph has fewer levels)."""
    s = graph.resolve_start_level(start_level)
    return make_graph_tensors(graph.levels, graph.start_nodes(s), s, graph.entry_point,
                              graph.num_items)

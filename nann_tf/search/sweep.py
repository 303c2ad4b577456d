"""Retrieval evaluation of a trained model and its index on held-out users, and parameter sweeps.

:class:`Retriever` runs the three searches of :mod:`nann_tf.search` with the model's own score
for a matrix of user histories, in batches, and times them:

- :meth:`Retriever.beam`: Beam-retrieval (paper Alg. 1/2) with per-level ``ef`` and ``T``;
- :meth:`Retriever.hnsw`: HNSW-retrieval (the SL2G baseline) with beam ``ef0`` on level 0;
- :meth:`Retriever.brute_force`: the exact top-k (every item scored), the reference.

The beam and HNSW searches are traced once into ``tf.function`` s whose search parameters are
tensors, so a sweep over ``ef``/``T``/``ef0`` never retraces.

The sweeps behind ``nann-tf evaluate --sweep`` (paper Figs. 3, 4, 6, 7a) are built from these:
:func:`beam_settings` / :func:`hnsw_settings` list the parameter points, :func:`run_curve` turns
each point into one row of metrics (:data:`CURVE_FIELDS`), :func:`perturbation_deltas` measures
``|s_u(e_v) - s_u(e_v + delta)|`` for the top items of each user (Fig. 6). Rows are written to and
read back from CSV with :func:`write_csv` / :func:`read_csv`.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "CURVE_FIELDS",
    "IndexMismatchError",
    "PERTURBATION_FIELDS",
    "Retriever",
    "RunResult",
    "SearchParams",
    "beam_settings",
    "check_index_matches",
    "format_level_values",
    "histogram_rows",
    "hnsw_settings",
    "metric_fields",
    "parse_level_values",
    "perturbation_deltas",
    "read_csv",
    "run_curve",
    "write_csv",
]


class IndexMismatchError(ValueError):
    """An index was not built from this model or this dataset."""


# ---------------------------------------------------------------------------------------------
# Search parameters.

def parse_level_values(text: str, name: str) -> dict[int, int]:
    """``"2=100,1=200,0=400"`` -> ``{2: 100, 1: 200, 0: 400}``.

    Args:
      text: comma-separated ``LEVEL=VALUE`` pairs (levels and values are integers).
      name: the option the text came from, named in the error message (e.g. ``"--ef"``).

    Raises:
      ValueError: the text is not such a list, or a level appears twice.
    """
    out: dict[int, int] = {}
    example = "2=100,1=200,0=400" if name.endswith("ef") else "1=2,0=4"
    for part in text.split(","):
        level, sep, value = part.strip().partition("=")
        try:
            lv, v = int(level), int(value)
        except ValueError:
            lv = v = None
        if not sep or lv is None or lv < 0:
            raise ValueError(f"{name} {text!r}: expected LEVEL=VALUE pairs with integer "
                             f"levels >= 0, e.g. {example}")
        if lv in out:
            raise ValueError(f"{name} {text!r}: level {lv} is given twice")
        out[lv] = v
    return out


def format_level_values(values: Mapping[int, int]) -> str:
    """``{2: 100, 0: 400}`` -> ``"2=100,0=400"`` (levels from the top down)."""
    return ",".join(f"{lv}={values[lv]}" for lv in sorted(values, reverse=True))


@dataclasses.dataclass(frozen=True)
class SearchParams:
    """Beam-retrieval and HNSW-retrieval parameters (a config's ``[search]`` table).

    Attributes:
      start_level: S, the level whose nodes are all scored first.
      ef: beam width per level ``S..0``.
      T: maximum rounds per level ``S-1..0`` (0 skips a level).
      k: results per query.
      hnsw_ef: HNSW-retrieval's ``ef0``.
      history_seeds: Beam-retrieval seeds each query with its history items.
    """

    start_level: int
    ef: Mapping[int, int]
    T: Mapping[int, int]
    k: int
    hnsw_ef: int
    history_seeds: bool = True

    @classmethod
    def from_config(cls, sc) -> "SearchParams":
        """From a :class:`nann_tf.config.SearchConfig` (keys of ``ef``/``T`` are strings)."""
        return cls(int(sc.start_level), {int(a): int(b) for a, b in sc.ef.items()},
                   {int(a): int(b) for a, b in sc.T.items()}, int(sc.k), int(sc.hnsw_ef),
                   bool(sc.history_seeds))

    def replace(self, **changes) -> "SearchParams":
        return dataclasses.replace(self, **changes)

    def checked(self, max_level: int | None = None) -> "SearchParams":
        """Validated copy keeping only the levels the search uses.

        Args:
          max_level: the index's top level (``start_level`` must not exceed it).

        Raises:
          ValueError: naming the parameter (start_level, ef, T, k, hnsw_ef) and what was expected.
        """
        s = self.start_level
        if s < 0:
            raise ValueError(f"start_level must be >= 0, got {s}")
        if max_level is not None and s > max_level:
            raise ValueError(f"start_level {s} is above the index's top level {max_level} "
                             f"(levels 0..{max_level}); use a start level <= {max_level}")
        ef, T = {}, {}
        for lv in range(s, -1, -1):
            if lv not in self.ef:
                raise ValueError(f"ef has no value for level {lv} (start level {s} needs "
                                 f"levels {s}..0, given {format_level_values(self.ef) or 'none'})")
            if self.ef[lv] < 1:
                raise ValueError(f"ef for level {lv} must be >= 1, got {self.ef[lv]}")
            ef[lv] = int(self.ef[lv])
        for lv in range(s - 1, -1, -1):
            if lv not in self.T:
                raise ValueError(f"T has no value for level {lv} (start level {s} needs "
                                 f"levels {s - 1}..0, given {format_level_values(self.T) or 'none'})")
            if self.T[lv] < 0:
                raise ValueError(f"T for level {lv} must be >= 0, got {self.T[lv]}")
            T[lv] = int(self.T[lv])
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.hnsw_ef < 1:
            raise ValueError(f"hnsw_ef must be >= 1, got {self.hnsw_ef}")
        return SearchParams(s, ef, T, int(self.k), int(self.hnsw_ef), bool(self.history_seeds))

    def describe(self) -> str:
        return (f"S={self.start_level} ef={format_level_values(self.ef)} "
                f"T={format_level_values(self.T) or '-'} k={self.k}"
                f"{' seeds=history' if self.history_seeds else ''}")

    def to_dict(self) -> dict:
        return {"start_level": self.start_level,
                "ef": {str(k): v for k, v in sorted(self.ef.items(), reverse=True)},
                "T": {str(k): v for k, v in sorted(self.T.items(), reverse=True)},
                "k": self.k, "hnsw_ef": self.hnsw_ef, "history_seeds": self.history_seeds}


# ---------------------------------------------------------------------------------------------
# Consistency of the artefacts.

def check_index_matches(model, ds, index, *, index_name: str = "index", model_name: str = "model",
                        data_name: str = "data", sample: int = 512) -> None:
    """Checks that ``index`` holds ``ds``'s items embedded by ``model``.

    Compares the item count and raw ids with the dataset, and the stored ``e_v`` of a sample of
    items with the model's item network.

    Raises:
      IndexMismatchError: naming the index and the model or dataset it does not belong to.
    """
    n = index.num_items
    if n != ds.num_items:
        raise IndexMismatchError(f"{index_name} holds {n} items but {data_name} has "
                                 f"{ds.num_items}: the index was built for another dataset")
    if not np.array_equal(index.raw_item_id, ds.raw_item_id):
        raise IndexMismatchError(f"{index_name}: its item ids differ from those of {data_name}: "
                                 "the index was built for another dataset")
    if model.num_items != n:
        raise IndexMismatchError(f"{model_name} was trained on {model.num_items} items but "
                                 f"{index_name} holds {n}")
    if index.embeddings.shape[1] != model.cfg.embedding_dim:
        raise IndexMismatchError(f"{index_name} has {index.embeddings.shape[1]}-d embeddings but "
                                 f"{model_name} makes {model.cfg.embedding_dim}-d ones: the index "
                                 "was built from another model")
    rng = np.random.default_rng(0)
    ids = np.unique(np.concatenate([[1, n], rng.integers(1, n + 1, size=min(sample, n))]))
    mine = np.asarray(model.item_embedding(ids.astype(np.int32)))
    stored = index.embeddings[ids]
    scale = float(np.abs(stored).max()) + 1e-12
    err = float(np.abs(mine - stored).max())
    if err > 1e-4 * scale + 1e-6:
        raise IndexMismatchError(
            f"{index_name} was not built from {model_name}: its stored e_v differ from the "
            f"model's item network by up to {err:.3g} (run `nann-tf build-index` for this model)")


# ---------------------------------------------------------------------------------------------
# Running the searches.

@dataclasses.dataclass
class RunResult:
    """One search over a set of users.

    Attributes:
      ids: int64 ``[U, k]`` dense item ids, best first (0 = padding).
      num_scored: int64 ``[U]`` items scored per query.
      seconds: wall time of the search (tracing excluded).
    """

    ids: np.ndarray
    num_scored: np.ndarray
    seconds: float

    @property
    def ms_per_query(self) -> float:
        return 1000.0 * self.seconds / max(len(self.ids), 1)


class Retriever:
    """A trained model and its index, searched for batches of user histories.

    Args:
      model: the trained :class:`~nann_tf.model.nann.NANNModel`.
      index: its :class:`~nann_tf.index.store.ItemIndex`.
      start_level: Beam-retrieval's start level S (at most the index's top level).
      visited_impl: ``"tf"`` or ``"bitmap"`` (the C++ op).
      batch_size: queries per search call (bounds memory: a round scores up to
        ``batch_size x ef x neighbours`` candidates at once).
      grid: score with XLA over this :class:`~nann_tf.model.scorer.ShapeGrid` (as the exported
        model does; e.g. ``ShapeGrid.for_search(...)``; :meth:`warm_up` compiles it). None: no
        XLA.
    """

    def __init__(self, model, index, start_level: int, visited_impl: str = "tf",
                 batch_size: int = 16, grid=None):
        import tensorflow as tf

        from nann_tf.index.hnsw import graph_tensors
        from nann_tf.model.scorer import ModelScorer

        if not 0 <= start_level <= index.graph.max_level:
            raise ValueError(f"start_level {start_level} is outside the index's levels "
                             f"0..{index.graph.max_level}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if visited_impl == "bitmap":
            from nann_tf import ops

            ops.load_library()  # OpLibraryError (with the rebuild command) if it is missing
        self.model = model
        self.index = index
        self.start_level = int(start_level)
        self.visited_impl = visited_impl
        self.batch_size = int(batch_size)
        self.num_items = index.num_items
        self._graph = graph_tensors(index.graph, self.start_level)
        self.grid = grid
        self._scorer = ModelScorer(model, tf.constant(index.embeddings), grid)
        self._bf = None
        s = self.start_level
        hist_spec = tf.TensorSpec([None, None], tf.int32)
        scalar = tf.TensorSpec([], tf.int32)

        @tf.function(input_signature=[hist_spec, tf.TensorSpec([s + 1], tf.int32),
                                      tf.TensorSpec([s], tf.int32), scalar, hist_spec])
        def beam_fn(hist, ef, T, k, seeds):
            from nann_tf.search.beam import beam_search

            b = tf.shape(hist)[0]
            scorer = self._scorer.bind(model.encode_user(hist), b)
            return beam_search(self._graph, scorer, b, ef={lv: ef[lv] for lv in range(s + 1)},
                               T={lv: T[lv] for lv in range(s)}, k=k,
                               visited_impl=visited_impl, seed_ids=seeds)

        @tf.function(input_signature=[hist_spec, scalar, scalar])
        def hnsw_fn(hist, ef0, k):
            from nann_tf.search.hnsw_search import hnsw_search

            b = tf.shape(hist)[0]
            scorer = self._scorer.bind(model.encode_user(hist), b)
            return hnsw_search(self._graph, scorer, b, ef0=ef0, k=k, visited_impl=visited_impl)

        self._beam_fn, self._hnsw_fn = beam_fn, hnsw_fn
        self._warm_fn = None
        self._warm: set[str] = set()

    def warm_up(self, hist: np.ndarray, batch_sizes) -> None:
        """With a grid: compiles the XLA score network for every grid size at these batch
        sizes, through a graph call as the search makes it (else the first searches would pay
        the compilations)."""
        import tensorflow as tf

        if self.grid is None:
            return
        if self._warm_fn is None:
            @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32),
                                          tf.TensorSpec([], tf.int32)])
            def warm_fn(h, width):
                b = tf.shape(h)[0]
                return self._scorer.score_first_items(self.model.encode_user(h), b, width)

            self._warm_fn = warm_fn
        for b in batch_sizes:
            h = tf.constant(np.asarray(hist[:b], np.int32))
            for w in self.grid.sizes:
                self._warm_fn(h, tf.constant(min(w, self.num_items)))

    def _run(self, name: str, fn, hist: np.ndarray, *params,
             seeds: np.ndarray | None = None) -> RunResult:
        import tensorflow as tf

        hist = np.ascontiguousarray(hist, np.int32)
        extra = () if seeds is None else (np.asarray(seeds, np.int32),)
        if name not in self._warm and len(hist):
            fn(tf.constant(hist[:1]), *params, *(tf.constant(x[:1]) for x in extra))  # traces once
            self._warm.add(name)
        ids, scored = [], []
        t0 = time.perf_counter()
        for i in range(0, len(hist), self.batch_size):
            out_ids, _, n = fn(tf.constant(hist[i:i + self.batch_size]), *params,
                               *(tf.constant(x[i:i + self.batch_size]) for x in extra))
            ids.append(out_ids.numpy())
            scored.append(n.numpy())
        seconds = time.perf_counter() - t0
        k = int(params[-1])
        return RunResult(np.concatenate(ids).astype(np.int64) if ids else np.zeros((0, k), np.int64),
                         np.concatenate(scored).astype(np.int64) if scored else np.zeros(0, np.int64),
                         seconds)

    def beam(self, hist: np.ndarray, ef: Mapping[int, int], T: Mapping[int, int],
             k: int, history_seeds: bool = True) -> RunResult:
        """Beam-retrieval of the top ``k`` for every row of ``hist`` [U, L], each query seeded
        with its own history items unless ``history_seeds`` is False.

        ``ef`` needs levels ``S..0`` and ``T`` levels ``S-1..0`` (validated by
        :meth:`SearchParams.checked`).
        """
        import tensorflow as tf

        s = self.start_level
        ef_v = tf.constant([int(ef[lv]) for lv in range(s + 1)], tf.int32)
        t_v = tf.constant([int(T[lv]) for lv in range(s)], tf.int32, shape=[s])
        hist = np.asarray(hist, np.int32)
        seeds = hist if history_seeds else hist[:, :0]  # no seed columns: E = 0
        return self._run("beam", self._beam_fn, hist, ef_v, t_v, tf.constant(int(k)),
                         seeds=seeds)

    def hnsw(self, hist: np.ndarray, ef0: int, k: int) -> RunResult:
        """HNSW-retrieval (greedy upper levels, best-first level 0 with ``ef0``)."""
        import tensorflow as tf

        return self._run("hnsw", self._hnsw_fn, hist, tf.constant(int(ef0)),
                         tf.constant(int(k)))

    def brute_force(self, hist: np.ndarray, k: int) -> RunResult:
        """The exact top ``k`` (every item scored; ties by the smaller id)."""
        from nann_tf.evaluate import BruteForceScorer

        if self._bf is None:
            self._bf = BruteForceScorer(self.model, self.index.embeddings)
            if len(hist):
                self._bf.topk(hist[:1], k)  # traces the chunk scorer outside the timing
        t0 = time.perf_counter()
        ids, _ = self._bf.topk(hist, k)
        seconds = time.perf_counter() - t0
        return RunResult(ids.astype(np.int64), np.full(len(ids), self.num_items, np.int64),
                         seconds)


# ---------------------------------------------------------------------------------------------
# Sweeps.

def beam_settings(params: SearchParams, scales: Sequence[float] = (0.5, 1.0, 2.0),
                  t0s: Sequence[int] = (1, 2, 3, 5)) -> list[tuple[dict, dict]]:
    """Beam-retrieval points around ``params``: every ``ef`` scaled, times each ``T_0``.

    ``ef_0`` is kept >= ``k`` (a smaller level-0 beam cannot return ``k`` items); the other
    levels' ``T`` stay as in ``params``. Returns ``[(ef, T), ...]`` without duplicates.
    """
    out, seen = [], set()
    for scale in scales:
        if scale <= 0:
            raise ValueError(f"ef scales must be > 0, got {scale}")
        ef = {lv: max(1, int(round(v * scale))) for lv, v in params.ef.items()}
        ef[0] = max(ef[0], params.k)
        for t0 in t0s:
            if params.start_level == 0:
                T = {}
            else:
                if t0 < 1:
                    raise ValueError(f"T_0 values must be >= 1, got {t0}")
                T = {**params.T, 0: int(t0)}
            key = (tuple(sorted(ef.items())), tuple(sorted(T.items())))
            if key not in seen:
                seen.add(key)
                out.append((ef, T))
    return out


def hnsw_settings(params: SearchParams,
                  factors: Sequence[float] = (0.5, 1.0, 1.5, 2.0, 3.0)) -> list[int]:
    """HNSW-retrieval ``ef0`` values: multiples of ``k`` (and the configured ``hnsw_ef``)."""
    values = {max(1, int(round(params.k * f))) for f in factors} | {params.hnsw_ef}
    return sorted(values)


def metric_fields(ms: Sequence[int]) -> list[str]:
    """The metric columns for the M values ``ms``."""
    return [f"{name}@{m}" for m in ms
            for name in ("recall_all", "recall_retrieval", "recall_delta", "coverage")]


CURVE_FIELDS = ["figure", "series", "model", "fgsm_eps", "method", "start_level", "ef", "T",
                "hnsw_ef", "k", "users", "items_scored", "scored_fraction", "ms_per_query"]
PERTURBATION_FIELDS = ["series", "model", "fgsm_eps", "radius", "top_m", "bin_lo", "bin_hi",
                       "count"]


def run_curve(retriever: Retriever, hist: np.ndarray, target: np.ndarray, bf_ids: np.ndarray,
              ms: Sequence[int], *, method: str, settings: Iterable, k: int,
              base: Mapping[str, Any], progress=None, history_seeds: bool = True) -> list[dict]:
    """One row of metrics per parameter point.

    Args:
      retriever: the model + index.
      hist / target: the users' histories [U, L] and ground truth [U].
      bf_ids: their brute-force top ids [U, >= max(ms)].
      ms: the M values for the metrics.
      method: ``"beam"`` (settings: ``(ef, T)`` pairs) or ``"hnsw"`` (settings: ``ef0`` ints).
      settings: the points, see ``method``.
      k: results per query.
      base: fixed columns copied into every row (figure, series, model, fgsm_eps).
      progress: optional ``callable(str)`` told about each point.
      history_seeds: beam points seed each query with its history.

    Returns:
      Rows with the keys :data:`CURVE_FIELDS` + :func:`metric_fields` ``(ms)``.
    """
    from nann_tf.search.metrics import summarize

    rows = []
    for point in settings:
        if method == "beam":
            ef, T = point
            res = retriever.beam(hist, ef, T, k, history_seeds)
            cols = {"ef": format_level_values(ef), "T": format_level_values(T), "hnsw_ef": ""}
        elif method == "hnsw":
            res = retriever.hnsw(hist, int(point), k)
            cols = {"ef": "", "T": "", "hnsw_ef": int(point)}
        else:
            raise ValueError(f"method must be 'beam' or 'hnsw', got {method!r}")
        summ = summarize(res.ids, bf_ids, target, res.num_scored, retriever.num_items, ms)
        row = dict(base, method=method, start_level=retriever.start_level if method == "beam"
                   else "", k=k, users=len(hist),
                   items_scored=float(np.mean(res.num_scored)),
                   scored_fraction=summ["scored_fraction"], ms_per_query=res.ms_per_query, **cols)
        row.update({f: summ[f] for f in metric_fields(ms)})
        rows.append(row)
        if progress:
            progress(f"{base.get('series', '')} {method} {cols['ef'] or cols['hnsw_ef']} "
                     f"{cols['T']}: scored {row['scored_fraction']:.4f}, coverage@{ms[-1]} "
                     f"{row[f'coverage@{ms[-1]}']:.4f}")
    return rows


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


# ---------------------------------------------------------------------------------------------
# CSV.

def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
              fields: Sequence[str]) -> Path:
    """Writes ``rows`` to ``path`` atomically (temp file + rename).

    Raises:
      ValueError: a row has a key that is not in ``fields`` (nothing is written).
    """
    allowed = set(fields)
    for i, row in enumerate(rows):
        extra = sorted(set(row) - allowed)
        if extra:
            raise ValueError(f"{path}: row {i} has keys {extra} that are not columns "
                             f"({', '.join(fields)})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(fields))
            w.writeheader()
            for row in rows:
                w.writerow({k: _csv_value(row.get(k, "")) for k in fields})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return v


def read_csv(path: str | os.PathLike) -> list[dict]:
    """Reads a CSV written by :func:`write_csv`; numeric cells come back as int or float."""
    with open(path, newline="") as f:
        return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse_cell(v: str) -> Any:
    if v == "":
        return ""
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v

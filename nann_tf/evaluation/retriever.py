"""A trained model and its index, searched for a matrix of user histories, in batches, timed.

:class:`Retriever` runs the searches of :mod:`nann_tf.search` with the model's own score:

- :meth:`Retriever.beam`: Beam-retrieval (paper Alg. 1/2) with per-level ``ef`` and ``T``;
- :meth:`Retriever.hnsw`: HNSW-retrieval (the SL2G baseline) with beam ``ef0`` on level 0;
- :meth:`Retriever.brute_force`: the exact top-k (every item scored), the reference;
- :meth:`Retriever.similar` / :meth:`Retriever.similar_exact`: items-to-item for rows of seed
  items, in either mode of :mod:`nann_tf.search.similar`, and its exact reference.

The beam and HNSW searches are traced once into ``tf.function`` s whose search parameters are
tensors, so a sweep over ``ef``/``T``/``ef0`` never retraces.

:func:`load_model_entry` loads a model with its index and checks that they belong together and
to the dataset (:func:`check_index_matches`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from nann_tf.errors import UserError

__all__ = ["IndexMismatchError", "ModelEntry", "Retriever", "RunResult", "check_index_matches",
           "load_model_entry", "searcher_module"]


class IndexMismatchError(UserError, ValueError):
    """An index was not built from this model or this dataset."""


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
    if not np.array_equal(index.raw_item_id, ds.raw_item_id) or not np.array_equal(
            getattr(index, "raw_item_key", None), getattr(ds, "raw_item_key", None)):
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

    The searches are those of the served model: a Retriever holds the
    :class:`~nann_tf.export.module.RetrievalModule` that ``nann-tf export`` saves (its item
    table, item-side table, HNSW levels, scorer and retired-item mask) and runs its beam search
    (:meth:`~nann_tf.export.module.RetrievalModule.search_dense`) on dense ids, so what
    evaluation and tuning measure is the function TF Serving runs. It adds the batching and
    timing, search parameters per call (a sweep never retraces), HNSW-retrieval (the SL2G
    baseline) and the exact references.

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
      module: search with this module instead of building one (e.g. the one an export is
        about to save); it must hold ``index`` with start level ``start_level``.
    """

    def __init__(self, model, index, start_level: int, visited_impl: str = "tf",
                 batch_size: int = 16, grid=None, module=None):
        import tensorflow as tf

        if not 0 <= start_level <= index.graph.max_level:
            raise ValueError(f"start_level {start_level} is outside the index's levels "
                             f"0..{index.graph.max_level}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if visited_impl == "bitmap":
            from nann_tf import ops

            ops.load_library()  # OpLibraryError (with the rebuild command) if it is missing
        if module is None:
            module = searcher_module(model, index, start_level, visited_impl, grid)
        elif (module.num_items != index.num_items or module._start_level != start_level
              or module.visited_impl != visited_impl):
            raise ValueError("module: built for another index, start level or visited set")
        self.module = module
        self.model = model
        self.index = index
        self.start_level = int(start_level)
        self.visited_impl = visited_impl
        self.batch_size = int(batch_size)
        self.num_items = index.num_items
        self.grid = module.grid
        self._bf = None
        s = self.start_level
        hist_spec = tf.TensorSpec([None, None], tf.int32)
        scalar = tf.TensorSpec([], tf.int32)

        @tf.function(input_signature=[hist_spec, tf.TensorSpec([s + 1], tf.int32),
                                      tf.TensorSpec([s], tf.int32), scalar, hist_spec,
                                      hist_spec])
        def beam_fn(hist, ef, T, k, seeds, exclude):
            return module.search_dense(hist, tf.shape(hist)[0],
                                       {lv: ef[lv] for lv in range(s + 1)},
                                       {lv: T[lv] for lv in range(s)}, k, exclude_dense=exclude,
                                       seed_ids=seeds)

        @tf.function(input_signature=[hist_spec, scalar, scalar])
        def hnsw_fn(hist, ef0, k):
            from nann_tf.search.hnsw_search import hnsw_search

            b = tf.shape(hist)[0]
            scorer = module.live_scorer(module.encode(hist), b)
            return hnsw_search(module.graph_tensors(), scorer, b, ef0=ef0, k=k,
                               visited_impl=visited_impl)

        self._beam_fn, self._hnsw_fn = beam_fn, hnsw_fn
        self._similar_fns: dict = {}
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
                return self.module.scorer.score_first_items(self.module.encode(h), b, width)

            self._warm_fn = warm_fn
        for b in batch_sizes:
            h = tf.constant(np.asarray(hist[:b], np.int32))
            for w in self.grid.sizes:
                self._warm_fn(h, tf.constant(min(w, self.num_items)))

    def _run(self, name: str, fn, hist: np.ndarray, *params,
             seeds: np.ndarray | None = None, exclude: np.ndarray | None = None) -> RunResult:
        import tensorflow as tf

        hist = np.ascontiguousarray(hist, np.int32)
        extra = tuple(np.asarray(x, np.int32) for x in (seeds, exclude) if x is not None)
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
        :meth:`nann_tf.search.params.SearchParams.checked`).
        """
        import tensorflow as tf

        s = self.start_level
        ef_v = tf.constant([int(ef[lv]) for lv in range(s + 1)], tf.int32)
        t_v = tf.constant([int(T[lv]) for lv in range(s)], tf.int32, shape=[s])
        hist = np.asarray(hist, np.int32)
        seeds = hist if history_seeds else hist[:, :0]  # no seed columns: E = 0
        return self._run("beam", self._beam_fn, hist, ef_v, t_v, tf.constant(int(k)),
                         seeds=seeds, exclude=hist[:, :0])

    def _similar_fn(self, start_level: int):
        """The embedding-mode search for a start level, traced once per level."""
        import tensorflow as tf

        from nann_tf.index.hnsw import make_graph_tensors
        from nann_tf.search.similar import similar_by_embedding

        if start_level not in self._similar_fns:
            s = int(start_level)
            m = self.module
            graph = make_graph_tensors(list(zip(m.level_values, m.level_splits)),
                                       self.index.graph.start_nodes(s), s, m.entry_point,
                                       self.num_items)
            table = m.item_table
            spec = tf.TensorSpec([None, None], tf.int32)

            @tf.function(input_signature=[spec, tf.TensorSpec([s + 1], tf.int32),
                                          tf.TensorSpec([s], tf.int32),
                                          tf.TensorSpec([], tf.int32), spec])
            def fn(seeds, ef, T, k, exclude):
                return similar_by_embedding(graph, table, seeds, tf.shape(seeds)[0],
                                            {lv: ef[lv] for lv in range(s + 1)},
                                            {lv: T[lv] for lv in range(s)}, k,
                                            exclude_ids=exclude, visited_impl=self.visited_impl)

            self._similar_fns[s] = fn
        return self._similar_fns[start_level]

    def similar(self, seeds: np.ndarray, mode: str, params, k: int | None = None) -> RunResult:
        """Items-to-item for rows of seed items (dense ids ``[U, Q]``, 0 = none), the seeds
        excluded, a row without seeds getting no results.

        Args:
          seeds: int ``[U, Q]``.
          mode: ``"embedding"`` (``params`` = the ``[similar]`` parameters, any start level) or
            ``"model"`` (the seeds as the history, right-aligned in ``Q`` columns; ``params``
            = the ``[search]`` parameters at this retriever's start level).
          params: a checked :class:`~nann_tf.search.params.SearchParams`.
          k: results per row (default ``params.k``).
        """
        import tensorflow as tf

        from nann_tf.search.similar import EMBEDDING, MODEL, seeds_as_history

        seeds = np.asarray(seeds, np.int32)
        k = int(params.k if k is None else k)
        s = params.start_level
        ef_v = tf.constant([int(params.ef[lv]) for lv in range(s + 1)], tf.int32)
        t_v = tf.constant([int(params.T[lv]) for lv in range(s)], tf.int32, shape=[s])
        if mode == EMBEDDING:
            fn = self._similar_fn(s)
            res = self._run(f"similar-{s}", fn, seeds, ef_v, t_v, tf.constant(k),
                            exclude=seeds[:, :0])
        elif mode == MODEL:
            if s != self.start_level:
                raise ValueError(f"model mode searches from this retriever's start level "
                                 f"{self.start_level}, not {s}")
            hist = seeds_as_history(seeds, seeds.shape[1]).numpy()
            res = self._run("beam", self._beam_fn, hist, ef_v, t_v, tf.constant(k),
                            seeds=hist if params.history_seeds else hist[:, :0], exclude=seeds)
        else:
            raise ValueError(f"mode must be embedding or model, got {mode!r}")
        res.ids[~(seeds > 0).any(axis=1)] = 0
        return res

    def similar_exact(self, seeds: np.ndarray, mode: str, k: int) -> RunResult:
        """The exact top ``k`` for :meth:`similar` (every item scored; seeds excluded)."""
        import tensorflow as tf

        from nann_tf.search.brute_force import brute_force
        from nann_tf.search.similar import (EMBEDDING, MODEL, DistanceScorer, seed_centroid,
                                            seeds_as_history)

        seeds = np.asarray(seeds, np.int32)
        q = seeds.shape[1]
        if mode == EMBEDDING:
            if "exact" not in self._similar_fns:
                table = self.module.item_table

                @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32),
                                              tf.TensorSpec([], tf.int32)])
                def exact_fn(seeds, k):
                    scorer = DistanceScorer(table, *seed_centroid(table, seeds))
                    return brute_force(scorer, tf.shape(seeds)[0], self.num_items, k,
                                       exclude_ids=seeds)

                self._similar_fns["exact"] = exact_fn
            t0 = time.perf_counter()
            ids = [self._similar_fns["exact"](tf.constant(seeds[i:i + self.batch_size]),
                                              tf.constant(int(k)))[0].numpy()
                   for i in range(0, len(seeds), self.batch_size)]
            ids = np.concatenate(ids).astype(np.int64) if ids else np.zeros((0, k), np.int64)
        elif mode == MODEL:
            hist = seeds_as_history(seeds, q).numpy()
            wide = self.brute_force(hist, k + q)
            t0 = time.perf_counter() - wide.seconds
            drop = (wide.ids[:, :, None] == seeds[:, None, :]).any(axis=2) & (seeds > 0).any(
                axis=1)[:, None]
            ids = np.stack([row[~d][:k] for row, d in zip(wide.ids, drop)]) if len(hist) else \
                np.zeros((0, k), np.int64)
        else:
            raise ValueError(f"mode must be embedding or model, got {mode!r}")
        seconds = time.perf_counter() - t0
        ids[~(seeds > 0).any(axis=1)] = 0
        return RunResult(ids, np.full(len(ids), self.num_items, np.int64), seconds)

    def hnsw(self, hist: np.ndarray, ef0: int, k: int) -> RunResult:
        """HNSW-retrieval (greedy upper levels, best-first level 0 with ``ef0``)."""
        import tensorflow as tf

        return self._run("hnsw", self._hnsw_fn, hist, tf.constant(int(ef0)),
                         tf.constant(int(k)))

    def brute_force(self, hist: np.ndarray, k: int) -> RunResult:
        """The exact top ``k`` (every item scored; ties by the smaller id; retired items never
        returned, as in the searches)."""
        from nann_tf.search.brute_force import ExactScorer

        if self._bf is None:
            self._bf = ExactScorer(self.model, self.module.item_table,
                                   side_table=self.module.item_side,
                                   retired=self.module.retired)
            if len(hist):
                self._bf.topk(hist[:1], k)  # traces the chunk scorer outside the timing
        t0 = time.perf_counter()
        ids, _ = self._bf.topk(hist, k)
        seconds = time.perf_counter() - t0
        return RunResult(ids.astype(np.int64), np.full(len(ids), self.num_items, np.int64),
                         seconds)


def searcher_module(model, index, start_level: int, visited_impl: str = "tf", grid=None):
    """The :class:`~nann_tf.export.module.RetrievalModule` a :class:`Retriever` searches with:
    float32 e_v, XLA over ``grid`` when one is given. Its default search parameters (what its
    own signatures would serve) are the ``[search]`` defaults at ``start_level``; a Retriever
    passes its parameters with every call."""
    from nann_tf.export.module import RetrievalModule
    from nann_tf.search.params import SearchParams

    s = int(start_level)
    defaults = SearchParams()
    params = SearchParams(
        start_level=s, ef={lv: defaults.ef.get(lv, max(defaults.ef.values()))
                           for lv in range(s + 1)},
        T={lv: defaults.T.get(lv, 1) for lv in range(s)}, k=min(defaults.k, defaults.ef[0]))
    return RetrievalModule(model, index, max(int(getattr(model, "max_len", 0) or 0), 1),
                           params, visited_impl=visited_impl, xla=grid is not None, grid=grid)


@dataclasses.dataclass
class ModelEntry:
    """A trained model with its index and config (:func:`load_model_entry`)."""

    label: str
    model_dir: str
    index_dir: str
    model: object
    cfg: object
    index: object
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def eps(self) -> float:
        return float(self.cfg.train.fgsm_eps)

    @property
    def search(self):
        """The search parameters the model serves with by default (the index's tuned ones when
        its ``[search]`` table followed the data: :func:`nann_tf.autoconfig.search_defaults`)."""
        from nann_tf.autoconfig import search_defaults

        return search_defaults(self.cfg, self.meta, self.index.meta)


def load_model_entry(model_dir, index_dir, ds, *, data_name: str = "the dataset",
                     model_flag: str = "model", index_flag: str = "index",
                     label: str | None = None) -> ModelEntry:
    """Loads a trained model and its index, and checks they belong to each other and to ``ds``.

    Args:
      model_dir / index_dir: the directories.
      ds: the dataset (:class:`~nann_tf.data.dataset.Dataset`).
      data_name / model_flag / index_flag: how errors name the three inputs (e.g. ``--data
        DIR``, ``--model``, ``--index``).
      label: the model's name in tables and plots (default: its directory and eps).

    Raises:
      UserError: a directory is missing or unreadable (ModelDirError, HnswIndexError), or
        IndexMismatchError: the three do not belong together.
    """
    from nann_tf.index.hnsw import HnswIndexError
    from nann_tf.index.store import load_index
    from nann_tf.model.saved import ModelDirError, load_trained_model

    try:
        model, cfg, meta = load_trained_model(model_dir)
    except ModelDirError as e:
        raise ModelDirError(f"{model_flag}: {e}") from e
    if meta["num_items"] != ds.num_items:
        raise IndexMismatchError(f"{model_flag} {model_dir} was trained on {meta['num_items']} "
                                 f"items but {data_name} has {ds.num_items}: not the same "
                                 "dataset")
    try:
        index = load_index(index_dir)
    except (OSError, HnswIndexError) as e:
        raise HnswIndexError(f"{index_flag} {index_dir}: {e}") from e
    check_index_matches(model, ds, index, index_name=f"{index_flag} {index_dir}",
                        model_name=f"{model_flag} {model_dir}", data_name=data_name)
    if label is None:
        label = f"{Path(model_dir).name} (eps={cfg.train.fgsm_eps:g})"
    return ModelEntry(label, str(model_dir), str(index_dir), model, cfg, index, meta)

"""The served model: one ``tf.Module`` holding the model, the item table, the HNSW levels and the
raw-id vocabulary, with the retrieval signatures TF Serving calls.

Everything large is a variable (a GraphDef is capped at 2 GB; variables live in the checkpoint).
Signatures take and return dense tensors only:

* ``serving_default(hist_item_ids int64 [B, L']) -> item_ids int64 [B, k], scores float32 [B, k],
  num_scored int32 [B]`` with the export's default search parameters.
* ``retrieve(hist_item_ids, k int32 [B], ef int32 [B, S+1], T int32 [B, S+1],
  exclude_item_ids int64 [B, E])``: per-request parameters; ``ef[:, l]`` / ``T[:, l]`` are for
  level ``l`` (``T[:, S]`` is unused). A batch runs with the element-wise maximum of its rows'
  ``ef`` and ``T`` (so batching requests together never lowers anyone's quality) and returns
  ``max(k)`` columns; a row's columns past its own ``k`` are padding.
* ``brute_force(hist_item_ids) -> item_ids, scores``: exact top-k over the whole corpus.
* ``warmup_grid(hist_item_ids, width int32 [B])``: scores ``max(width)`` items per row; it exists so
  the warm-up file can compile every size of the XLA shape grid.
* ``similar_items(item_ids int64 [B, Q], k int32 [B], exclude_item_ids int64 [B, E],
  include_seeds bool [B]) -> item_ids, scores, num_scored``: items-to-item in the item
  network's space (``-||e_v - c||^2``, ``c`` the centroid of the row's seed items), found by the
  beam search with the export's ``similar`` parameters. ``k`` 0 takes their default ``k``.
* ``similar_items_model(...)``: the same inputs and outputs, scored by the NANN model with the
  seed items as the history (at most ``L`` of them), found with the retrieval search.
  Both: the seeds are never returned unless ``include_seeds``, and a row without a known seed
  gets no results (see :mod:`nann_tf.search.similar`).

Seeds: with ``history_seeds`` in the search parameters (the default) the items of each request's own
history are extra entry points of its beam search (scored with the start level, expanded in the
first level-0 round, returned only on their score and never when excluded).

String item ids: when the index holds string item ids (``raw_item_key``, from a ``table`` log
of SKUs, UUIDs, ...), every input that takes raw item ids (``hist_item_ids``,
``exclude_item_ids``, the similar-items ``item_ids``) and every ``item_ids`` output is
``tf.string`` instead of int64, under the same signature names (a catalogue with string ids has
no integer ids to accept, so integer twins would be signatures nobody can call; a client reads
the dtype from the signature metadata). Padding is ``""``; unknown ids are ignored like unknown
integer ids. The vocabulary is in the graph: raw id -> dense id by a ``tf.lookup.StaticHashTable``
initialised from a SavedModel **asset** (``assets/item_vocabulary.txt``, one id per line, dense
id = line number + 1; the loader initialises the table from it, TF Serving included), not a graph
constant (a GraphDef is capped at 2 GB and a catalogue has millions of ids); dense id -> raw id by
a string variable and ``tf.gather``.

Padding convention: the history is RIGHT-aligned (most recent behaviour last); ``L' <= L`` (the
export's ``max_len``) columns, shorter histories are left-padded with 0 to ``L``. Raw id 0 and
negative ids are padding; unknown raw ids are ignored (masked) too. Output rows with fewer
than k results are padded with item id 0 and score -inf.

Placement: index traversal, the visited set, merges and embedding gathers are pinned to
``/CPU:0``; the user encoder and the score network carry no device, so TF Serving places them on
the GPU when there is one (soft placement falls back to the CPU).
"""

from __future__ import annotations

import functools
import os
import tempfile

import numpy as np
import tensorflow as tf

from nann_tf import ops
from nann_tf.index.hnsw import make_graph_tensors
from nann_tf.model.nann import item_side_table
from nann_tf.model.scorer import ModelScorer, ShapeGrid
from nann_tf.search.beam import (SearchContext, beam_search, merge_results, order_keys,
                                 resize_results)
from nann_tf.search.brute_force import brute_force, without_items
from nann_tf.search.filters import LabelTable, LabelTensors, cap_per_category, sorted_lookup
from nann_tf.search.params import SearchParamsError, format_level_values, similar_for_index
from nann_tf.search.similar import (DEFAULT_SIMILAR, embedding_scorer, seed_exclusions,
                                    seeds_as_history)

__all__ = ["RetrievalModule", "MAX_T", "default_max_ef", "VOCABULARY_FILE", "write_vocabulary",
           "DEFAULT_LIMITS", "FILTER_INPUTS", "WALK", "EXACT", "rules_inputs", "CAP_REFILL_ROUNDS"]

MAX_T = 64  # rounds per level a request may ask for
#: A filtered row scores its passing items exactly when they are at most this many times the
#: items the default (unfiltered) walk scores: up to where the scan costs what a filtered walk
#: costs. Measured on the 1M corpus, B=1, each path forced on random item sets
#: (bench/results/filters-synth-1m.json, "switch_point"): the unfiltered walk scores 4,649
#: items; the exact scan of 16,000 / 32,000 items takes 21.8 / 36.6 ms and finds all of the
#: answer, the filtered walk 57.5 / 44.5 ms for 0.977 / 0.976 of it. 32,000 / 4,649 = 6.9.
EXACT_PER_WALK_ITEM = 7.0

#: A filtered walk's extra entry points per row: the heads of its include labels' posting lists
#: (most popular first), or the most popular items for a row that only excludes (at most
#: ``filters.POPULAR_POOL`` of them). A row whose include labels hold less than
#: BROAD_FILTER_SHARE of the corpus takes half as many. Chosen on 200 validation users of the 1M
#: corpus (bench/bench_filter_beam.py; bench/results/filter-beam-synth-1m-e*.json): 4,096 /
#: 8,192 entries cover 0.988 / 0.991 of a 50% filter's exact top-200 at 1.80x / 1.90x the
#: unfiltered B=1 latency, 0.995 / 0.998 of a 10% filter's at 1.62x / 1.72x (2.30x on the test
#: users); a wider level-0 beam instead (3x ef[0], 4,096 entries) reaches 0.990 at 2.04x.
FILTER_ENTRIES = 8192

#: Include labels holding at least this share of the corpus make a broad filter, walked with all
#: FILTER_ENTRIES entry points (its answer is spread the widest); a narrower one takes half. Set
#: between the two measured shares (50%: the full count needed for 0.99; 10%: 0.995 with half,
#: and the full count costs it the 2x latency bound).
BROAD_FILTER_SHARE = 0.25

#: A walked filter's level-0 beam, in multiples of the row's ``ef[0]`` (at most ``max_ef``).
FILTER_EF_FACTOR = 2

#: Bounds on every input whose size drives a request's cost (``limits`` of the export, recorded
#: in its info and enforced by the graph: over a limit is INVALID_ARGUMENT naming the input and
#: the limit, before any search work). ``max_ef`` and ``MAX_T`` bound ef and T; k is bounded by
#: the row's level-0 ef.
DEFAULT_LIMITS = {
    "max_batch": 1024,            # rows per request
    "max_exclude": 10000,         # exclude_item_ids columns
    "max_filter_labels": 64,      # columns of each include/exclude label list
    "max_seeds": 256,             # similar_items seed columns (similar_items_model: at most L)
}

#: The filter inputs of the search signatures, int64 [B, F] raw label ids (0 = padding), and the
#: cap int32 [B].
FILTER_INPUTS = ("include_categories", "exclude_categories", "include_tags", "exclude_tags")

#: ``search_path`` values: the graph walk, or the exact scan of the include labels' items.
WALK, EXACT = 0, 1
# A capped row short of k after its search searches again outside its full categories, at
# most this many times (each round one more walk of the batch; measured in bench_filters).
CAP_REFILL_ROUNDS = 3
VOCABULARY_FILE = "item_vocabulary.txt"  # the string-id vocabulary asset (assets/ of a version)

CPU = "/CPU:0"


def default_max_ef(search) -> int:
    """The largest ef a ``retrieve`` request may ask for, by default: twice the largest default
    ef (it sizes the XLA shape grid and bounds a request's memory)."""
    return 2 * max(search.ef.values())


def write_vocabulary(path: str, keys) -> None:
    """Writes string item ids, one per line (UTF-8): line ``i`` (0-based) is dense id ``i + 1``.

    Raises:
      ValueError: an empty id, or one holding a control character (a line break would shift
        every later id).
    """
    import re

    bad = next((k for k in keys if not k or re.search(r"[\x00-\x1f\x7f-\x9f]", k)), None)
    if bad is not None:
        raise ValueError(f"string item id {bad!r} is empty or holds a control character: it "
                         "cannot be a line of the vocabulary file")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(f"{k}\n" for k in keys))


def rules_inputs(batch: int, **given) -> dict:
    """The rule inputs of the search signatures for ``batch`` rows: each of
    :data:`FILTER_INPUTS` int64 ``[B, F]`` (``given`` lists, one per row, right-padded with 0;
    none: a column of 0) and ``max_per_category`` int32 ``[B]`` (default 0: no cap)."""
    out = {}
    for name in FILTER_INPUTS:
        rows = given.get(name)
        if rows is None:
            out[name] = np.zeros([batch, 1], np.int64)
            continue
        width = max([len(r) for r in rows] + [1])
        arr = np.zeros([batch, width], np.int64)
        for i, r in enumerate(rows):
            arr[i, :len(r)] = r
        out[name] = arr
    cap = given.get("max_per_category")
    out["max_per_category"] = (np.zeros([batch], np.int32) if cap is None
                               else np.asarray(cap, np.int32).reshape([batch]))
    return out


def _assert(cond, message):
    return tf.debugging.Assert(cond, [tf.constant(message)])


class _Signatures:
    """The signatures' functions, each traced once, on first use, into the ConcreteFunction
    that the in-memory calls run and ``tf.saved_model.save`` writes.

    A plain object on purpose: a ``tf.function`` reachable from the module would be traced
    again by the save (its tracing context differs there), doubling an export's tracing time;
    a ConcreteFunction is saved as traced."""

    def __init__(self, specs: dict):
        self._specs = specs
        self._concrete: dict = {}
        self.names = tuple(specs)

    def get(self, name: str):
        if name not in self._specs:
            raise AttributeError(f"this export has no {name} signature")
        if name not in self._concrete:
            fn, spec = self._specs[name]
            self._concrete[name] = tf.function(fn, input_signature=spec,
                                               autograph=False).get_concrete_function()
        return self._concrete[name]


class RetrievalModule(tf.Module):
    """Builds the serving graph.

    Args:
      model: the trained :class:`~nann_tf.model.nann.NANNModel`.
      index: the :class:`~nann_tf.index.store.ItemIndex` built from it.
      max_len: L, the history length (longer histories are refused).
      search: the default :class:`~nann_tf.search.params.SearchParams`, checked against the
        index (every level from the start level down).
      max_ef: the largest ef a request may ask for (>= every default ef).
      visited_impl: ``"bitmap"`` (C++ op) or ``"tf"`` (stock ops only).
      xla: compile the score network with XLA over a shape grid.
      embedding_dtype: ``"float32"`` or ``"float16"`` storage of e_v.
      grid_ratio: growth factor of the XLA shape grid.
      similar: the :class:`~nann_tf.search.params.SearchParams` of ``similar_items``
        (embedding mode), checked against the index; default
        :data:`~nann_tf.search.similar.DEFAULT_SIMILAR`.
      labels: the items' labels for filters (:class:`~nann_tf.search.filters.LabelTable`);
        default: the index's categories (raw ids when the index has them) and no tags.
      limits: overrides of :data:`DEFAULT_LIMITS`.
      exact_max_items: a filtered row whose include labels hold at most this many items is
        answered by scoring them all (the exact path) instead of the walk. Default: an estimate
        of the items the default search scores (the index's tuned search, else 16 x ef) times
        :data:`EXACT_PER_WALK_ITEM`, at least 2,048, at most the XLA grid's widest row;
        ``nann-tf export`` replaces the estimate by the items its validation queries scored
        (:meth:`measured_exact_max_items`) before any filtered signature is traced.
      filter_hops: how a filtered row walks level 0 (``beam_search``'s ``filter_hops``): 2
        (default) scores passing items only, reaching them through failing ones; 1 scores
        every neighbour and keeps the passing ones apart (the earlier walk, kept to measure
        against).
      filter_entries: a walked filter's extra entry points per row (:data:`FILTER_ENTRIES`;
        0: none): the heads of its include labels' posting lists, most popular first, or the
        corpus's most popular items for a row that only excludes
        (:meth:`~nann_tf.search.filters.LabelTensors.entry_points`).
      grid: with ``xla``, this shape grid instead of the one built from the index and
        ``max_ef``/``grid_ratio`` (e.g. a :class:`~nann_tf.evaluation.retriever.Retriever`'s).
    """

    # Long on purpose: every variable of the SavedModel is created here, in one place, with its
    # device placement; the signatures below only read them.
    def __init__(self, model, index, max_len: int, search, max_ef: int | None = None,
                 visited_impl: str = "bitmap", xla: bool = True,
                 embedding_dtype: str = "float32", grid_ratio: float = 1.25, similar=None,
                 labels: LabelTable | None = None, limits: dict | None = None,
                 exact_max_items: int | None = None, filter_hops: int = 2,
                 filter_entries: int = FILTER_ENTRIES, grid: ShapeGrid | None = None):
        super().__init__(name="nann_retrieval")
        if filter_hops not in (1, 2):
            raise ValueError(f"filter_hops must be 1 or 2, got {filter_hops!r}")
        self.filter_hops = filter_hops
        if int(filter_entries) < 0:
            raise ValueError(f"filter_entries must be >= 0, got {filter_entries!r}")
        self.filter_entries = int(filter_entries)
        if visited_impl not in ("bitmap", "tf"):
            raise ValueError(f"visited_impl must be bitmap or tf, got {visited_impl!r}")
        if embedding_dtype not in ("float32", "float16"):
            raise ValueError(f"embedding_dtype must be float32 or float16, got "
                             f"{embedding_dtype!r}")
        graph = index.graph
        search = search.checked(graph.max_level)
        similar = (similar_for_index(DEFAULT_SIMILAR, graph.max_level) if similar is None
                   else similar).checked(graph.max_level, source="similar-items parameters")
        S = search.start_level
        max_ef = default_max_ef(search) if max_ef is None else int(max_ef)
        if max(search.ef.values()) > max_ef:
            raise SearchParamsError(f"max_ef {max_ef} is below the default ef "
                                    f"{format_level_values(search.ef)}: requests could not even "
                                    "ask for the defaults")
        self.model = model
        # The underlying tf.Variables, so the SavedModel checkpoint holds the weights.
        self.model_variables = [getattr(v, "value", v) for v in model.variables]
        self.num_items = int(index.num_items)
        self.max_len = int(max_len)
        self.search = search
        self.similar = similar
        self.max_ef = max_ef
        self.visited_impl = visited_impl
        self.xla = bool(xla)
        keys = getattr(index, "raw_item_key", None)
        self.string_ids = keys is not None
        id_dtype = tf.string if self.string_ids else tf.int64
        raw = np.asarray(index.raw_item_id, np.int64)
        order = np.argsort(raw[1:], kind="stable")
        start_nodes = graph.start_nodes(S)
        if not xla:
            self.grid = None
        elif grid is not None:
            self.grid = grid
        else:
            self.grid = ShapeGrid.for_search(graph, S, max_ef, max_len, grid_ratio,
                                             entries=self.filter_entries)
        with tf.device(CPU):
            self.item_table = tf.Variable(index.embeddings.astype(embedding_dtype),
                                          trainable=False, name="item_embeddings")
            # The item side of the score (attention query, e_v's first-layer block), computed
            # once per item here so that a scored candidate costs only the pair block.
            side = item_side_table(model, index.embeddings)
            self.item_side = None if side is None else tf.Variable(
                side.astype(embedding_dtype), trainable=False, name="item_side")
            self.level_values = [tf.Variable(v.astype(np.int32), trainable=False,
                                             name=f"level{i}_values")
                                 for i, (v, _) in enumerate(graph.levels)]
            self.level_splits = [tf.Variable(s.astype(np.int64), trainable=False,
                                             name=f"level{i}_row_splits")
                                 for i, (_, s) in enumerate(graph.levels)]
            self.start_nodes = tf.Variable(start_nodes.astype(np.int32), trainable=False,
                                           name="start_nodes")
            self.similar_start_nodes = self.start_nodes
            if similar.start_level != S:
                self.similar_start_nodes = tf.Variable(
                    graph.start_nodes(similar.start_level), trainable=False,
                    name="similar_start_nodes")
            self.entry_point = tf.Variable(int(graph.entry_point), dtype=tf.int32,
                                           trainable=False, name="entry_point")
            retired = getattr(index, "retired", None)
            self.retired = None if retired is None or not retired.any() else tf.Variable(
                np.asarray(retired, bool), trainable=False, name="retired_items")
            if self.string_ids:
                self._init_vocabulary(np.asarray(keys))
            else:
                self.raw_item_ids = tf.Variable(raw, trainable=False, name="raw_item_ids")
                self.sorted_raw_ids = tf.Variable(raw[1:][order], trainable=False,
                                                  name="sorted_raw_ids")
                self.sorted_dense_ids = tf.Variable((order + 1).astype(np.int32),
                                                    trainable=False, name="sorted_dense_ids")
        if labels is None:
            raw_cats = getattr(index, "raw_category_id", None)
            if raw_cats is None:
                raw_cats = np.arange(int(index.category.max()) + 1)
            labels = LabelTable.build(index.category, raw_cats,
                                      popularity=getattr(index, "freq", None))
        self.labels = LabelTensors(labels, CPU)
        self.limits = dict(DEFAULT_LIMITS, **(limits or {}))
        bad = [k for k in self.limits if k not in DEFAULT_LIMITS or int(self.limits[k]) < 1]
        if bad:
            raise ValueError(f"limits: unknown or < 1: {bad} (known: {sorted(DEFAULT_LIMITS)})")
        self._rules_traced = False
        self.exact_max_items_given = exact_max_items is not None
        if exact_max_items is None:
            walk = (index.meta.get("tuned_search") or {}).get("items_scored") or \
                max(search.ef.values()) * 16
            exact_max_items = self._exact_max_for(walk)
        self.exact_max_items = self._grid_capped(exact_max_items)
        self._start_level = S
        self._num_start = int(len(start_nodes))
        # With the op library (the bitmap visited set), the tables' rows are read by its
        # prefetching gather: the same rows, fetched ~1.3-1.9x faster at millions of items.
        self.scorer = ModelScorer(model, self.item_table, self.grid, gather_device=CPU,
                                  side_table=self.item_side,
                                  gather=ops.gather_rows if visited_impl == "bitmap" else None)
        L = None
        rules_spec = [tf.TensorSpec([None, None], tf.int64, name=n) for n in FILTER_INPUTS] + \
            [tf.TensorSpec([None], tf.int32, name="max_per_category")]
        retrieve_spec = [
            tf.TensorSpec([None, L], id_dtype, name="hist_item_ids"),
            tf.TensorSpec([None], tf.int32, name="k"),
            tf.TensorSpec([None, S + 1], tf.int32, name="ef"),
            tf.TensorSpec([None, S + 1], tf.int32, name="T"),
            tf.TensorSpec([None, None], id_dtype, name="exclude_item_ids")] + rules_spec
        self.explains = model.variant == "attention"
        hist_spec = tf.TensorSpec([None, L], id_dtype, name="hist_item_ids")
        similar_spec = [tf.TensorSpec([None, None], id_dtype, name="item_ids"),
                        tf.TensorSpec([None], tf.int32, name="k"),
                        tf.TensorSpec([None, None], id_dtype, name="exclude_item_ids"),
                        tf.TensorSpec([None], tf.bool, name="include_seeds")] + rules_spec
        specs = {"serving_default": (self._serve, [hist_spec]),
                 "retrieve": (self._retrieve, retrieve_spec),
                 "brute_force": (self._brute_force, [hist_spec]),
                 "warmup_grid": (self._warmup_grid, [
                     hist_spec, tf.TensorSpec([None], tf.int32, name="width")]),
                 "similar_items": (self._similar_items, similar_spec),
                 "similar_items_model": (self._similar_items_model, similar_spec)}
        if self.explains:
            specs["retrieve_explained"] = (self._retrieve_explained, retrieve_spec)
        self._traced = _Signatures(specs)

    # The signatures, each traced on its first use (a ConcreteFunction: see _Signatures).
    serving_default = property(lambda self: self._traced.get("serving_default"))
    retrieve = property(lambda self: self._traced.get("retrieve"))
    retrieve_explained = property(lambda self: self._traced.get("retrieve_explained"))
    brute_force = property(lambda self: self._traced.get("brute_force"))
    warmup_grid = property(lambda self: self._traced.get("warmup_grid"))
    similar_items = property(lambda self: self._traced.get("similar_items"))
    similar_items_model = property(lambda self: self._traced.get("similar_items_model"))

    def _init_vocabulary(self, keys: np.ndarray) -> None:
        """String ids: the asset file and the hash table over it, and the dense -> raw
        variable (see the module docstring)."""
        if keys[0] != "":
            raise ValueError(f"raw_item_key[0] must be '' (padding), got {keys[0]!r}")
        # The file must exist until the SavedModel is written (the save copies it to assets/).
        self._vocabulary_dir = tempfile.TemporaryDirectory(prefix="nann-tf-vocabulary-")
        path = os.path.join(self._vocabulary_dir.name, VOCABULARY_FILE)
        write_vocabulary(path, [str(k) for k in keys[1:]])
        self.vocabulary = tf.saved_model.Asset(path)
        self.id_table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                self.vocabulary, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER, vocab_size=len(keys) - 1),
            default_value=-1, name="item_vocabulary")
        self.raw_item_ids = tf.Variable(np.char.encode(keys, "utf-8"), dtype=tf.string,
                                        trainable=False, name="raw_item_keys")

    def _live(self, scorer):
        """``scorer`` with the retired items (``nann-tf update-index``) scored ``-inf``, like a
        request's excluded items: walked past, never returned, whatever the signature."""
        if self.retired is None:
            return scorer
        return without_items(scorer, self.retired, CPU)

    def live_scorer(self, state, batch):
        """The model's scorer for a batch's user state, retired items scored ``-inf``."""
        return self._live(self.scorer.bind(state, batch))

    # ----- pieces --------------------------------------------------------------------------
    def signatures(self) -> dict:
        return {name: self._traced.get(name) for name in self._traced.names}

    def to_dense(self, raw_ids):
        """Raw item ids (any shape) -> dense ids; padding (<= 0, or ``""``) and unknown ids ->
        0."""
        if self.string_ids:
            with tf.device(CPU):
                line = self.id_table.lookup(raw_ids)  # -1: padding or unknown
                return tf.where(line >= 0, tf.cast(line, tf.int32) + 1, 0)
        with tf.device(CPU):
            return sorted_lookup(raw_ids, self.sorted_raw_ids, self.sorted_dense_ids)

    def to_raw(self, dense_ids):
        with tf.device(CPU):
            return tf.gather(self.raw_item_ids, dense_ids)

    def _prepare_history(self, hist_item_ids):
        """Checks the history and returns ``(dense ids [B, max_len], batch size)``."""
        with tf.device(CPU):
            shape = tf.shape(hist_item_ids)
            checks = [
                _assert(shape[0] > 0, "hist_item_ids: the batch is empty (expected [B, L] "
                                      "with B >= 1)"),
                _assert(shape[1] <= self.max_len,
                        f"hist_item_ids: the history is longer than L={self.max_len} (the "
                        f"model's max_len); send the most recent {self.max_len} behaviours"),
            ]
            with tf.control_dependencies(checks):
                dense = self.to_dense(hist_item_ids)
            dense = tf.pad(dense, [[0, 0], [self.max_len - shape[1], 0]])
            dense = tf.reshape(dense, [-1, self.max_len])
        return dense, shape[0]

    def encode(self, dense_hist):
        with tf.device(CPU):
            emb = tf.gather(self.item_table, dense_hist)
        return self.model.encode_user_from_embeddings(tf.cast(emb, tf.float32),
                                                      tf.not_equal(dense_hist, 0))

    def graph_tensors(self, similar: bool = False):
        if similar:
            return make_graph_tensors(list(zip(self.level_values, self.level_splits)),
                                      self.similar_start_nodes, self.similar.start_level,
                                      self.entry_point, self.num_items)
        return make_graph_tensors(list(zip(self.level_values, self.level_splits)),
                                  self.start_nodes, self._start_level, self.entry_point,
                                  self.num_items)

    def _outputs(self, ids, scores, num_scored=None, path=None):
        out = {"item_ids": self.to_raw(ids), "scores": scores}
        if num_scored is not None:
            out["num_scored"] = num_scored
        if path is not None:
            out["search_path"] = path
        return out

    def _check_rules(self, b, exclude_item_ids, rules):
        """The bounded-cost checks of a search request's exclusions and rules."""
        lim = self.limits
        *labels, cap = rules
        checks = [
            _assert(b <= lim["max_batch"], f"the batch has more than max_batch="
                                           f"{lim['max_batch']} rows (the export's limit)"),
            _assert(tf.shape(exclude_item_ids)[1] <= lim["max_exclude"],
                    f"exclude_item_ids: more than max_exclude={lim['max_exclude']} columns "
                    "(the export's limit)"),
            _assert(tf.reduce_all([tf.equal(tf.shape(x)[0], b) for x in rules]),
                    f"{', '.join(FILTER_INPUTS)} and max_per_category must have the batch "
                    "size as their first dimension"),
            _assert(tf.reduce_all(cap >= 0), "max_per_category: every value must be >= 0 (0 "
                                             "= no cap)"),
        ]
        for name, x in zip(FILTER_INPUTS, labels):
            checks.append(_assert(tf.shape(x)[1] <= lim["max_filter_labels"],
                                  f"{name}: more than max_filter_labels="
                                  f"{lim['max_filter_labels']} columns (the export's limit)"))
        return checks

    @staticmethod
    def _exact_max_for(walk_items: float) -> int:
        return max(2048, int(EXACT_PER_WALK_ITEM * walk_items))

    def _grid_capped(self, n: int) -> int:
        return int(min(n, self.grid.max_size) if self.grid is not None else n)

    def measured_exact_max_items(self, walk_items_scored: float) -> int:
        """Sets the default exact-path bound from the items the default search was measured to
        score (the mean over some queries) and returns it; an explicit ``exact_max_items`` is
        kept. Call before any signature with rules is traced (it is a constant of the graph)."""
        if self._rules_traced:
            raise RuntimeError("exact_max_items is already part of a traced signature")
        if not self.exact_max_items_given:
            self.exact_max_items = self._grid_capped(self._exact_max_for(walk_items_scored))
        return self.exact_max_items

    def _search_rules(self, graph, scorer, b, ef, T, k_b, exclude, seeds, rules, width):
        """The search with a request's rules: ``(ids [B, k_b], scores, num_scored, path)``.

        A row filters with its labels (:mod:`nann_tf.search.filters`): rows whose include
        labels hold at most ``exact_max_items`` items score those items exactly (path
        :data:`EXACT`); the others walk the graph, the walk passing through items that fail
        and returning the best that pass (:data:`WALK`). Rows with a cap keep at most that many
        results per category, backfilled from the ``width`` best passing items scored and, while
        a row is short of k, from later rounds (:meth:`_rules_round`). Without
        any filter or cap in the batch, the plain search runs (path WALK).
        """
        *labels, cap = rules
        self._rules_traced = True
        req = self.labels.request(*labels)
        with tf.device(CPU):
            capped = tf.reduce_any(cap > 0)
            active = tf.logical_or(req.any_filter, capped)
            exact = tf.logical_and(req.has_include,
                                   self.labels.include_count(req) <= self.exact_max_items)
        search = functools.partial(beam_search, graph, scorer, b, T=T,
                                   visited_impl=self.visited_impl, exclude_ids=exclude,
                                   traversal_device=CPU, seed_ids=seeds,
                                   filter_hops=self.filter_hops,
                                   max_candidates=self.grid.max_size if self.grid else None)
        # A walked filter's level-0 beam is FILTER_EF_FACTOR x the row's ef[0] (at most
        # max_ef): its answer lies deeper in the unfiltered ranking.
        walk_ef = {int(lv): v for lv, v in ef.items()}
        with tf.device(CPU):
            walk_ef[0] = tf.minimum(FILTER_EF_FACTOR * tf.cast(walk_ef[0], tf.int32),
                                    self.max_ef)

        def plain():
            ids, scores, n = search(ef=ef, k=k_b)
            return ids, scores, n, tf.zeros([b], tf.int32)

        def candidates(f, rows=None):
            """The best ``width`` items passing ``f`` per row: exact or walked. ``rows`` (bool
            [B], default all) are the rows that need any: a path none of them takes is
            skipped."""
            need = tf.ones([b], tf.bool) if rows is None else rows

            def walk():
                # Built in the branch that walks (a request that does not pays nothing): a
                # filtered row also enters at the heads of its labels' posting lists, passing
                # items a walk from the history would not reach (another category).
                entries = None
                if self.filter_entries:
                    with tf.device(CPU):
                        entries = tf.where(req.row_filters[:, None],
                                           self.labels.entry_points(
                                               req, self.filter_entries, BROAD_FILTER_SHARE),
                                           0)
                return search(ef=walk_ef, k=width, item_filter=f, entry_ids=entries,
                              entries_pass=f.heads_pass)

            def skip():
                return (tf.zeros([b, width], tf.int32), tf.fill([b, width], float("-inf")),
                        tf.zeros([b], tf.int32))

            w_ids, w_scores, w_n = tf.cond(
                tf.reduce_any(tf.logical_and(need, tf.logical_not(exact))), walk, skip)
            e_ids, e_scores, e_n = tf.cond(tf.reduce_any(tf.logical_and(need, exact)),
                                           lambda: self._exact(scorer, b, req, exact, exclude,
                                                               f, width), skip)
            with tf.device(CPU):
                return (tf.where(exact[:, None], e_ids, w_ids),
                        tf.where(exact[:, None], e_scores, w_scores),
                        tf.where(exact, e_n, w_n))

        def with_rules():
            base = self.labels.item_filter(req)
            with tf.device(CPU):
                none = (tf.zeros([b, width], tf.int32), tf.fill([b, width], float("-inf")),
                        tf.zeros([b], tf.int32))
            # Round 0 searches every row with its filter (the results capped per category);
            # each later round (CAP_REFILL_ROUNDS at most) refills the capped rows short of k
            # from the categories they have not filled, without the items they hold. One copy
            # of the search in the graph: a loop whose first round is the search itself.
            _, ids, scores, n = tf.while_loop(
                lambda r, i, s, m: tf.logical_and(
                    r <= CAP_REFILL_ROUNDS,
                    tf.logical_or(tf.equal(r, 0), tf.reduce_any(self._short(i, cap, k_b)))),
                lambda r, i, s, m: (r + 1, *self._rules_round(candidates, base, i, s, m, cap,
                                                              k_b, width, tf.equal(r, 0))),
                [tf.constant(0), *none], parallel_iterations=1)
            with tf.device(CPU):
                ids, scores = resize_results(ids, scores, k_b)
            return ids, scores, n, tf.cast(exact, tf.int32) * EXACT

        return tf.cond(active, with_rules, plain)

    @staticmethod
    def _short(ids, cap, k_b):
        """bool [B]: rows with a cap that hold fewer than k results."""
        with tf.device(CPU):
            held = tf.reduce_sum(tf.cast(ids > 0, tf.int32), axis=1)
            return tf.logical_and(cap > 0, held < tf.cast(k_b, tf.int32))

    def _rules_round(self, candidates, base, ids, scores, n, cap, k_b, width, first):
        """One round of a search with rules: the best items of the rows that need any (every
        row when ``first``, else the capped rows short of k) outside their full categories and
        their results, merged into the results and capped per category."""
        with tf.device(CPU):
            need = tf.logical_or(first, self._short(ids, cap, k_b))

            def full_categories():
                cats = self.labels.category_of(ids)
                same = tf.equal(cats[:, :, None], cats[:, None, :])
                count = tf.reduce_sum(
                    tf.cast(tf.logical_and(same, ids[:, None, :] > 0), tf.int32), axis=2)
                return tf.where(tf.logical_and(ids > 0, count >= cap[:, None]), cats, 0)

            # Round 0 holds no results yet: no full category, nothing held.
            full = tf.cond(first, lambda: tf.zeros_like(ids), full_categories)

            # The request's filter, also refusing a row's full categories and held items, and
            # everything in the rows that need nothing (round 0: every row, nothing held).
            passes = base.restricted(full, ids, need)
        new_ids, new_scores, new_n = candidates(passes, need)
        with tf.device(CPU):
            all_ids = tf.concat([ids, new_ids], 1)
            all_scores = tf.concat([scores, new_scores], 1)
            _, order = tf.math.top_k(order_keys(all_ids, all_scores), k=tf.shape(all_ids)[1])
            all_ids = tf.gather(all_ids, order, batch_dims=1)
            all_scores = tf.gather(all_scores, order, batch_dims=1)
            out_ids, out_scores = cap_per_category(all_ids, all_scores,
                                                   self.labels.category_of(all_ids), cap, width)
            return out_ids, out_scores, n + tf.where(need, new_n, 0)

    def _exact(self, scorer, b, req, rows_mask, exclude, item_filter, width):
        """The exact path: every item of the masked rows' include labels scored once, the best
        ``width`` that pass."""
        ctx = SearchContext(scorer, b, self.num_items, exclude, self.visited_impl, CPU)
        with tf.device(CPU):
            ids, rows = self.labels.include_candidates(req, rows_mask)
            ids, rows, _ = ctx.filter_unvisited(ids, rows, ctx.visited_init())  # unique
        scores = ctx.score(rows, ids)
        with tf.device(CPU):
            scores = tf.where(item_filter(rows, ids), scores, float("-inf"))
            empty = resize_results(tf.zeros([b, 0], tf.int32), tf.zeros([b, 0], tf.float32),
                                   width)
            out_ids, out_scores, _, _ = merge_results(empty[0], empty[1], ids, rows, scores,
                                                      b, width)
            return out_ids, out_scores, ctx.count_per_row(rows)

    # ----- signatures ----------------------------------------------------------------------
    def search_dense(self, dense_hist, batch, ef, T, k, exclude_dense=None, rules=None,
                     width=None, state=None, seed_ids=None):
        """The retrieval search for dense histories: ``(ids [B, k], scores, num_scored)``;
        with ``rules`` (the filter inputs and the cap), :meth:`_search_rules` (returns the
        path too). ``seed_ids`` (dense ``[B, E]``; ``E`` may be 0) replaces the default seeds
        (the history itself with ``history_seeds``, else none)."""
        state = self.encode(dense_hist) if state is None else state
        scorer = self.live_scorer(state, batch)
        seeds = seed_ids if seed_ids is not None else (
            dense_hist if self.search.history_seeds else None)
        if rules is not None:
            return self._search_rules(self.graph_tensors(), scorer, batch, ef, T, k,
                                      exclude_dense, seeds, rules, width)
        return beam_search(self.graph_tensors(), scorer, batch, ef, T,
                           k, visited_impl=self.visited_impl, exclude_ids=exclude_dense,
                           traversal_device=CPU, seed_ids=seeds)

    def _serve(self, hist_item_ids):
        dense, b = self._prepare_history(hist_item_ids)
        ids, scores, n = self.search_dense(dense, b, self.search.ef, self.search.T,
                                           self.search.k)
        return self._outputs(ids, scores, n)

    def _retrieve(self, hist_item_ids, k, ef, T, exclude_item_ids, include_categories,
                  exclude_categories, include_tags, exclude_tags, max_per_category):
        rules = (include_categories, exclude_categories, include_tags, exclude_tags,
                 max_per_category)
        ids, scores, n, path, _, _ = self._retrieve_dense(hist_item_ids, k, ef, T,
                                                          exclude_item_ids, rules)
        return self._outputs(ids, scores, n, path)

    def _retrieve_explained(self, hist_item_ids, k, ef, T, exclude_item_ids,
                            include_categories, exclude_categories, include_tags,
                            exclude_tags, max_per_category):
        rules = (include_categories, exclude_categories, include_tags, exclude_tags,
                 max_per_category)
        ids, scores, n, path, dense, state = self._retrieve_dense(
            hist_item_ids, k, ef, T, exclude_item_ids, rules)
        out = self._outputs(ids, scores, n, path)
        # "Because you viewed": the history item each result attends to most.
        with tf.device(CPU):
            e = tf.cast(tf.gather(self.item_table, ids), tf.float32)
        w = self.model.attention_weights(state, e)  # [B, k, L]
        with tf.device(CPU):
            pos = tf.argmax(w, axis=2, output_type=tf.int32)
            weight = tf.reduce_max(w, axis=2)
            because = tf.gather(dense, pos, batch_dims=1)
            real = tf.logical_and(ids > 0, weight > 0)
            out["because_item_ids"] = self.to_raw(tf.where(real, because, 0))
            out["because_weights"] = tf.where(real, weight, 0.0)
        return out

    def _retrieve_dense(self, hist_item_ids, k, ef, T, exclude_item_ids, rules):
        """A checked ``retrieve`` request searched: ``(dense ids [B, max k], scores,
        num_scored, path, dense history, user state)``."""
        dense, b = self._prepare_history(hist_item_ids)
        S = self._start_level
        with tf.device(CPU):
            checks = self._check_rules(b, exclude_item_ids, rules) + [
                _assert(tf.reduce_all([tf.equal(tf.shape(k)[0], b), tf.equal(tf.shape(ef)[0], b),
                                       tf.equal(tf.shape(T)[0], b),
                                       tf.equal(tf.shape(exclude_item_ids)[0], b)]),
                        "k, ef, T and exclude_item_ids must have the batch size of "
                        "hist_item_ids as their first dimension"),
                _assert(tf.reduce_all(k >= 0), "k: every value must be >= 0 (0 = the export's "
                                               f"default, {self.search.k})"),
                _assert(tf.reduce_all(ef >= 0), "ef: every value must be >= 0 (0 = the "
                                                "export's default for that level)"),
                _assert(tf.reduce_all(T[:, :S] >= -1), "T: every value must be >= -1 (-1 = "
                                                       "the export's default for that level)"),
                _assert(tf.reduce_all(ef <= self.max_ef),
                        f"ef: every value must be <= max_ef={self.max_ef} (the export's "
                        "XLA shape grid and memory bound)"),
                _assert(tf.reduce_all(T[:, :S] <= MAX_T), f"T: every value must be <= {MAX_T}"),
            ]
            with tf.control_dependencies(checks):
                # 0 (ef, k) and -1 (T): the export's defaults, so a request may give only what
                # it changes (a filter, k).
                ef = tf.where(ef == 0, tf.constant(self.search.ef_row(), tf.int32)[None], ef)
                T = tf.where(T < 0, tf.constant(self.search.T_row(), tf.int32)[None], T)
                k = tf.where(k == 0, self.search.k, k)
            with tf.control_dependencies([_assert(tf.reduce_all(k <= ef[:, 0]), (
                    "k: must be <= ef[:, 0] (the level-0 beam width) in every row"))]):
                ef_b = tf.reduce_max(ef, axis=0)
                T_b = tf.reduce_max(T, axis=0)
                k_b = tf.reduce_max(k)
                exclude = self.to_dense(exclude_item_ids)
        ef_d = {lv: ef_b[lv] for lv in range(S + 1)}
        T_d = {lv: T_b[lv] for lv in range(S)}
        state = self.encode(dense)
        ids, scores, n, path = self.search_dense(dense, b, ef_d, T_d, k_b, exclude, rules,
                                                 width=ef_b[0], state=state)
        ids, scores = self._cut_to_k(ids, scores, k, k_b)
        return ids, scores, n, path, dense, state

    def _brute_force(self, hist_item_ids):
        dense, b = self._prepare_history(hist_item_ids)
        state = self.encode(dense)
        chunk = min(self.grid.max_size if self.grid else 16384, self.num_items, 16384)
        ids, scores, _ = brute_force(self.live_scorer(state, b), b, self.num_items,
                                     self.search.k,
                                     chunk_size=chunk)
        return self._outputs(ids, scores)

    def _prepare_seeds(self, item_ids, k, exclude_item_ids, include_seeds, default_k: int,
                       max_k: int, max_seeds: int | None, rules):
        """Checks a similar-items request; returns ``(dense seeds, dense exclusions, batch,
        k per row, k of the batch)``."""
        with tf.device(CPU):
            shape = tf.shape(item_ids)
            b = shape[0]
            max_seeds = min(max_seeds or self.limits["max_seeds"], self.limits["max_seeds"])
            checks = self._check_rules(b, exclude_item_ids, rules) + [
                _assert(b > 0, "item_ids: the batch is empty (expected [B, Q] with B >= 1)"),
                _assert(shape[1] > 0, "item_ids: no seed columns (expected [B, Q] with Q >= 1 "
                                      "seed items per row, 0 = padding)"),
                _assert(tf.reduce_all([tf.equal(tf.shape(k)[0], b),
                                       tf.equal(tf.shape(exclude_item_ids)[0], b),
                                       tf.equal(tf.shape(include_seeds)[0], b)]),
                        "k, exclude_item_ids and include_seeds must have the batch size of "
                        "item_ids as their first dimension"),
                _assert(tf.reduce_all(k >= 0), "k: every value must be >= 0 (0 = the "
                                               f"export's default, {default_k})"),
                _assert(tf.reduce_all(k <= max_k), f"k: every value must be <= {max_k} (the "
                                                   "level-0 beam width of this search)"),
            ]
            checks.append(_assert(shape[1] <= max_seeds, (
                f"item_ids: more than {max_seeds} seed columns (max_seeds; the model mode reads "
                f"the seeds as a history of at most L={self.max_len} items)")))
            with tf.control_dependencies(checks):
                seeds = self.to_dense(item_ids)
                exclude = self.to_dense(exclude_item_ids)
                k_row = tf.where(k > 0, k, default_k)
                k_b = tf.reduce_max(k_row)
        return seeds, exclude, b, k_row, k_b

    def _cut_to_k(self, ids, scores, k_row, k_b):
        """A batch's ``k_b`` columns with each row's columns past its own ``k_row`` padded
        (id 0, score -inf)."""
        with tf.device(CPU):
            beyond = tf.range(k_b)[None, :] >= k_row[:, None]
            return tf.where(beyond, 0, ids), tf.where(beyond, float("-inf"), scores)

    def _similar_items(self, item_ids, k, exclude_item_ids, include_seeds, include_categories,
                       exclude_categories, include_tags, exclude_tags, max_per_category):
        rules = (include_categories, exclude_categories, include_tags, exclude_tags,
                 max_per_category)
        p = self.similar
        seeds, exclude, b, k_row, k_b = self._prepare_seeds(
            item_ids, k, exclude_item_ids, include_seeds, p.k, p.ef[0], None, rules)
        scorer, exclude = embedding_scorer(self.item_table, seeds, exclude, include_seeds, CPU)
        scorer = self._live(scorer)
        ids, scores, n, path = self._search_rules(
            self.graph_tensors(similar=True), scorer, b, p.ef, p.T, k_b, exclude, seeds,
            rules, p.ef[0])
        ids, scores = self._cut_to_k(ids, scores, k_row, k_b)
        return self._outputs(ids, scores, n, path)

    def _similar_items_model(self, item_ids, k, exclude_item_ids, include_seeds,
                             include_categories, exclude_categories, include_tags, exclude_tags,
                             max_per_category):
        rules = (include_categories, exclude_categories, include_tags, exclude_tags,
                 max_per_category)
        p = self.search
        seeds, exclude, b, k_row, k_b = self._prepare_seeds(
            item_ids, k, exclude_item_ids, include_seeds, p.k, p.ef[0], self.max_len, rules)
        with tf.device(CPU):
            hist = seeds_as_history(seeds, self.max_len)
            exclude = seed_exclusions(seeds, exclude, include_seeds)
        ids, scores, n, path = self.search_dense(hist, b, p.ef, p.T, k_b, exclude, rules,
                                                 width=p.ef[0])
        with tf.device(CPU):
            # A row without a known seed has no history: it gets no results (as in the
            # embedding mode), not the model's answer for an empty history.
            no_seed = tf.reduce_all(tf.equal(seeds, 0), axis=1)
            k_row = tf.where(no_seed, 0, k_row)
        ids, scores = self._cut_to_k(ids, scores, k_row, k_b)
        return self._outputs(ids, scores, n, path)

    def _warmup_grid(self, hist_item_ids, width):
        dense, b = self._prepare_history(hist_item_ids)
        state = self.encode(dense)
        with tf.device(CPU):
            w = tf.clip_by_value(tf.reduce_max(width), 1, self.num_items)
        return {"scores": self.scorer.score_first_items(state, b, w)}

"""Beam-retrieval (NANN, paper Alg. 1/2): a fixed-cost beam search over the HNSW levels.

For a batch of B queries at once, in TensorFlow (eager or inside ``tf.function``):

1. score every node of the start level S, and the query's *seed items* if any, and keep each
   query's top ``ef[S]`` (the start nodes and seeds count as visited);
2. for each level ``l = S-1 .. 0`` run at most ``T[l]`` rounds: frontier (when entering a level:
   the whole result set) -> its neighbours on level ``l`` -> drop the items the query has
   already scored (the visited set: an item is scored at most once per query) -> score the new
   items of ALL queries in one scorer call -> results = top ``ef[l]`` of results + new -> next
   frontier = the new items that entered the results. A level ends early once every query's
   frontier is empty. The first round of a level expands the whole result set even when
   ``ef[l]`` is smaller than the previous level's (its merge then keeps the best ``ef[l]``);
3. return the top ``k`` of the level-0 results.

Seeds (``seed_ids``, optional, not in the paper) are per-query entry points; the exported model
seeds each query with the items of its own history. The start level of a 1M-item index holds
~1000 nodes, too few to sample every region of the corpus, and a user's score is flat-low
outside their interests, so a walk from the start level alone can settle in the wrong region
(on the 1M synthetic corpus: coverage@200 0.70 without seeds, 0.96 with, at the same
parameters; ``bench/results/retrieval-synth-1m.md``). A seed is scored once with the start
level, competes for the results like any item, and joins the first frontier of level 0 whatever
its score (an excluded seed, scored ``-inf``, is never returned but still leads to its
neighbours); a seed an upper level's cut dropped (the start level keeps ``ef[S]`` of its nodes
and the seeds, and ``ef[S]`` may be below ``k``) enters level 0's results again, so a user's own
top-scoring item is never lost to the cut. Seeds cost at most ``E`` extra items scored per
query.

This is the algorithm the offline C++ replay (``nann_tf._nann_core.beam_search_replay``)
implements; on scores without -inf/NaN both return the same ids, scores and counts (the replay
pads with id -1 where this pads with 0).

Conventions shared by every search in this package (:mod:`.hnsw_search`, :mod:`.brute_force`):

- scorer contract: ``scorer(row_ids int32 [n], item_ids int32 [n]) -> float32 [n]``, the score
  of item ``item_ids[i]`` for query ``row_ids[i]``; higher is better; ``n`` may be 0. NaN scores
  count as ``-inf``.
- order: by score descending, ties by the smaller item id. Every top-k selection inside the
  search uses this rule (the offline C++ replay uses the same one).
- results: ids int32 ``[B, k]`` and scores float32 ``[B, k]``; a query with fewer than ``k``
  results is padded with id 0 and score ``-inf``. An item scoring ``-inf`` never enters the
  results.
- ``exclude_ids`` int ``[B, E]`` (0 = no item): an excluded item still counts as scored, but its
  score is masked to ``-inf``, so it never enters the results (and is never expanded).
- ``num_scored`` int32 ``[B]``: items scored per query (start level included).
- traversal ops run under ``tf.device(traversal_device)`` (the CPU by default); the scorer is
  called outside that scope so it can run on an accelerator.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping

import numpy as np
import tensorflow as tf

from nann_tf import ops
from nann_tf.index.hnsw import GraphTensors
from nann_tf.search.rows import row_runs, row_slots, sort_by_row
from nann_tf.search import visited
from nann_tf.search.params import DEFAULT_EF, DEFAULT_T

__all__ = [
    "ItemFilter",
    "Scorer",
    "SearchContext",
    "beam_search",
    "expand_passing",
]

Scorer = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

_NEG_INF = float("-inf")
_ID_MASK = 0xFFFFFFFF


# Long on purpose: it builds one TensorFlow graph; the start level and the level loop share the
# search state (results, visited set, the passing items' buffer).
def beam_search(graph: GraphTensors, scorer: Scorer, batch_size: Any,
                ef: Mapping[Any, Any] | None = None, T: Mapping[Any, Any] | None = None,
                k: Any = 200, start_level: int | None = None, visited_impl: str = "tf",
                exclude_ids: Any = None, traversal_device: str | None = "/CPU:0",
                seed_ids: Any = None, item_filter: "ItemFilter | None" = None,
                filter_hops: int = 2, entry_ids: Any = None, entries_pass: Any = None,
                max_candidates: int | None = None):
    """Beam-retrieval of the top ``k`` items for each of ``batch_size`` queries.

    Args:
      graph: :class:`~nann_tf.index.hnsw.GraphTensors` (its ``start_nodes`` are the nodes of
        its ``start_level``).
      scorer: see the module docstring.
      batch_size: B (Python int or int32 scalar tensor).
      ef: ``{level: beam width}`` for levels ``S..0`` (default ``{2: 100, 1: 200, 0: 400}``);
        keys may be ints or strings, values ints or int32 scalar tensors.
      T: ``{level: max rounds}`` for levels ``S-1..0`` (default ``{1: 2, 0: 4}``); 0 skips a
        level (its results pass on unchanged).
      k: results per query (ints or int32 scalar tensor). ``k > ef[0]`` only adds padding.
      start_level: S; ``None`` takes ``graph.start_level`` (another value is an error: the start
        nodes in ``graph`` belong to that level).
      visited_impl: ``"tf"`` (stock ops) or ``"bitmap"`` (the C++ op); identical results.
      exclude_ids: optional int ``[B, E]`` items never to return (0 = none).
      traversal_device: device for the graph-walking ops (``None``: no placement).
      seed_ids: optional int ``[B, E]`` entry items per query (0 = none; repeats are fine),
        e.g. the user's history; ``E`` may be 0. Ids outside ``[0, N]`` raise
        InvalidArgumentError.
      item_filter: optional ``item_filter(row_ids, item_ids) -> bool [n]``, which items may be
        returned to which query. Items that fail still enter the beam and lead to their
        neighbours (the graph stays connected); the output is the top ``k`` of every item the
        query scored that passes, kept in a buffer of its own, whose new entries are expanded
        too (a second beam, of passing items).
      filter_hops: with ``item_filter``, how level 0 is walked: 1 as above; 2 (default) on the
        passing items only: a frontier item's neighbours that fail are not scored, their own
        neighbours that pass are (two hops through a failing item), so the beam holds passing
        items and every scored item can be returned.
      entry_ids: optional int ``[B, P]`` (0 = none) with ``item_filter``: candidates scored
        with the start level whose passing ones go straight to the passing items' buffer (and
        so are expanded on the levels below), e.g. the most popular items of a row's labels;
        the ones that fail are not scored.
      entries_pass: optional bool scalar (tensor): every entry point is known to pass
        ``item_filter`` (e.g. :attr:`~nann_tf.search.filters.LabelFilter.heads_pass`); when
        True, the entry points are not checked.
      max_candidates: with ``filter_hops=2``, at most this many items per query in one round
        of the two-hop walk (the first ones, in frontier order; the rest are dropped): a
        scorer with a fixed shape grid cannot take wider calls.

    Returns:
      ``(ids int32 [B, k], scores float32 [B, k], num_scored int32 [B])``.

    Raises:
      ValueError: bad levels or parameters (``ef``/``T`` missing a level, ...).
    """
    s_level = graph.start_level if start_level is None else int(start_level)
    if s_level != graph.start_level:
        raise ValueError(f"start_level {s_level} differs from the graph tensors' start level "
                         f"{graph.start_level}; build them with graph_tensors(graph, "
                         f"start_level={s_level})")
    ef_by_level = level_params(DEFAULT_EF if ef is None else ef, "ef", range(s_level, -1, -1))
    t_by_level = level_params(DEFAULT_T if T is None else T, "T", range(s_level - 1, -1, -1),
                              minimum=0)
    if isinstance(k, int) and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if filter_hops not in (1, 2):
        raise ValueError(f"filter_hops must be 1 or 2, got {filter_hops!r}")
    ctx = SearchContext(scorer, batch_size, graph.num_items, exclude_ids, visited_impl,
                        traversal_device)

    with ctx.device():
        start = tf.reshape(graph.start_nodes, [-1])
        n_start = start.shape[0] if start.shape[0] is not None else tf.size(start)
        rows = tf.repeat(tf.range(ctx.batch_size), n_start)
        ids = tf.tile(start, [ctx.batch_size])
        state = ctx.visited_init()
        _, _, state = ctx.filter_unvisited(ids, rows, state)  # marks the start nodes
        seeds = _seed_pairs(seed_ids, ctx)
        if seeds is not None:
            seed_ids_new, seed_rows_new, state = ctx.filter_unvisited(seeds[0], seeds[1], state)
            ids = tf.concat([ids, seed_ids_new], 0)
            rows = tf.concat([rows, seed_rows_new], 0)
        n_grid = ctx.batch_size * n_start
        n_seeded = tf.size(ids)  # the start grid and the seeds; the entry points after them
        entries = None if item_filter is None else _seed_pairs(entry_ids, ctx)
        if entries is not None:
            if entries_pass is None:
                keep = item_filter(entries[1], entries[0])
            else:
                keep = tf.cond(entries_pass, lambda: tf.ones_like(entries[0], tf.bool),
                               lambda: item_filter(entries[1], entries[0]))
            e_ids, e_rows, state = ctx.filter_unvisited(tf.boolean_mask(entries[0], keep),
                                                        tf.boolean_mask(entries[1], keep), state)
            ids = tf.concat([ids, e_ids], 0)
            rows = tf.concat([rows, e_rows], 0)
    # The start level, the seeds and the entry points in one scorer call.
    scores = ctx.score(rows, ids)
    with ctx.device():
        width = min_of(ef_by_level[s_level], n_start)
        num_scored = tf.fill([ctx.batch_size], n_start)
        res_ids, res_scores = top_by_key(tf.reshape(ids[:n_grid], [ctx.batch_size, -1]),
                                         tf.reshape(scores[:n_grid], [ctx.batch_size, -1]),
                                         width)
        if seeds is not None:
            # Up to ef[S] of the start nodes and seeds together (a query has at most
            # n_start + E candidates).
            width = min_of(ef_by_level[s_level], n_start + seeds[2])
            res_ids, res_scores = resize_results(res_ids, res_scores, width)
            res_ids, res_scores, _, _ = merge_results(
                res_ids, res_scores, ids[n_grid:n_seeded], rows[n_grid:n_seeded],
                scores[n_grid:n_seeded], ctx.batch_size, width, fused=ctx.fused)
        num_scored += ctx.count_per_row(rows[n_grid:])
        res_ids = tf.where(res_scores > _NEG_INF, res_ids, 0)
        # The scored seeds, to compete again at level 0 if an upper level's cut dropped them (a
        # filtered walk's output buffer already holds every passing item scored).
        scored_seeds = None if seeds is None or item_filter is not None or s_level == 0 else (
            ids[n_grid:n_seeded], rows[n_grid:n_seeded], scores[n_grid:n_seeded])
        out = None
        if item_filter is not None:  # the passing items scored so far, best first
            out = resize_results(tf.zeros([ctx.batch_size, 0], tf.int32),
                                 tf.zeros([ctx.batch_size, 0], tf.float32), k)
            # One merge per part: the start grid's rows, the seeds' rows and the entry points'
            # rows are each sorted, not together.
            out = _merge_passing(out, item_filter, ids[:n_grid], rows[:n_grid],
                                 scores[:n_grid], ctx, k)
            if seeds is not None:
                out = _merge_passing(out, item_filter, ids[n_grid:n_seeded],
                                     rows[n_grid:n_seeded], scores[n_grid:n_seeded], ctx, k)
            if entries is not None:  # they pass: no second look at the filter
                out = _merge_passing(out, None, ids[n_seeded:], rows[n_seeded:],
                                     scores[n_seeded:], ctx, k)

    for level in range(s_level - 1, -1, -1):
        ef_l = ef_by_level[level]
        with ctx.device():
            # The whole result set is the first frontier, even when ef shrinks on this level:
            # results are cut to ef_l by the first round's merge (T_l = 0 keeps them as they
            # are). The carried width stays max(previous width, ef_l) so shapes are constant.
            width = max_of(res_ids.shape[1] if res_ids.shape[1] is not None
                           else tf.shape(res_ids)[1], ef_l)
            res_ids, res_scores = resize_results(res_ids, res_scores, width)
            if level == 0 and scored_seeds is not None:
                # A seed is one of the user's own items and often among their best: one that an
                # upper level's cut dropped (the start level keeps ef[S] of the start nodes and
                # seeds, which may be < k) competes again here. Else it stayed visited and out
                # of the results for good, whatever its score.
                res_ids, res_scores = _readd(res_ids, res_scores, scored_seeds, ctx, width)
            frontier = res_ids > 0
            f_ids = tf.boolean_mask(res_ids, frontier)
            f_rows = tf.cast(tf.where(frontier)[:, 0], tf.int32)
            if out is not None:
                # A filtered walk also expands the best passing items: where the items that
                # pass cluster (e_v knows the category), their neighbours pass too.
                f_ids, f_rows = _join_frontiers(f_ids, f_rows, *_entered(out[0], out[0] > 0))
            if level == 0 and seeds is not None:
                # The seeds join level 0's first frontier; rows must stay sorted.
                f_ids, f_rows = _join_frontiers(f_ids, f_rows, seeds[0], seeds[1])
        if level == 0 and out is not None and filter_hops == 2:
            # The two-hop level-0 beam starts from the passing items found so far and scores
            # passing items only: its best k are the output, so it keeps at least k and needs
            # no output buffer of its own (nor a second frontier: what enters the best k
            # enters the beam).
            width = max_of(width, k)
            with ctx.device():
                res_ids, res_scores = resize_results(out[0], out[1], width)
            res_ids, res_scores, state, num_scored, _ = _run_level(
                ctx, graph.levels[level], max_of(ef_l, k), width, t_by_level[level], res_ids,
                res_scores, f_ids, f_rows, state, num_scored, hop=item_filter,
                max_candidates=max_candidates)
            with ctx.device():
                out = resize_results(res_ids, res_scores, k)
            continue
        res_ids, res_scores, state, num_scored, out = _run_level(
            ctx, graph.levels[level], ef_l, width, t_by_level[level], res_ids, res_scores,
            f_ids, f_rows, state, num_scored, out, item_filter, k)

    if out is not None:
        return out[0], out[1], num_scored
    with ctx.device():
        out_ids, out_scores = resize_results(res_ids, res_scores, k)
    return out_ids, out_scores, num_scored


ItemFilter = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def _readd(res_ids, res_scores, scored, ctx, width):
    """The results with the ``scored`` items ``(ids, rows, scores)`` that are not among them
    merged back in (top ``width``)."""
    from nann_tf.search.filters import row_contains

    ids, rows, scores = scored
    back = tf.logical_not(row_contains(rows, ids, res_ids))
    res_ids, res_scores, _, _ = merge_results(
        res_ids, res_scores, tf.boolean_mask(ids, back), tf.boolean_mask(rows, back),
        tf.boolean_mask(scores, back), ctx.batch_size, width, fused=ctx.fused)
    return res_ids, res_scores


def _merge_passing(out, item_filter: ItemFilter, ids, rows, scores, ctx, k,
                   with_entered: bool = False):
    """The output buffer ``(ids [B, k], scores)`` with the newly scored items that pass the
    filter merged in (rows sorted ascending, as every scorer call's are); with
    ``with_entered``, also the mask ``[B, k]`` of the new items that entered it."""
    with ctx.device():
        passing = scores if item_filter is None else tf.where(item_filter(rows, ids), scores,
                                                              _NEG_INF)
        out_ids, out_scores, entered, _ = merge_results(out[0], out[1], ids, rows, passing,
                                                        ctx.batch_size, k, fused=ctx.fused)
    if with_entered:
        return out_ids, out_scores, entered
    return out_ids, out_scores


def expand_passing(ctx, f_ids, f_rows, level_rt, state, item_filter: ItemFilter,
                   max_candidates: int | None = None):
    """The frontier's unvisited neighbours that pass ``item_filter``, and the unvisited
    neighbours that pass of those that fail (two hops), rows ascending; every one marked
    visited except the failing second-hop items (reached later from a first hop, they are
    expanded then). A label filter on the bitmap visited set runs as one fused op
    (``NannGatherPassingNeighbors``); the stock ops below are its twin."""
    fused = getattr(item_filter, "fused_inputs", None)
    if fused is not None and ctx.fused:
        ids, rows, state = ops.gather_passing_neighbors(
            tf.cast(f_ids, tf.int32), tf.cast(f_rows, tf.int32),
            tf.cast(level_rt.values, tf.int32), tf.cast(level_rt.row_splits, tf.int64), state,
            *fused, tf.constant(-1 if max_candidates is None else max_candidates, tf.int32))
        return ids, rows, state
    n_ids, n_rows, state = ctx.expand(f_ids, f_rows, level_rt, state)
    ok = item_filter(n_rows, n_ids)
    fail_ids = tf.boolean_mask(n_ids, tf.logical_not(ok))
    fail_rows = tf.boolean_mask(n_rows, tf.logical_not(ok))
    starts = tf.gather(level_rt.row_splits, fail_ids)
    lengths = tf.gather(level_rt.row_splits, fail_ids + 1) - starts
    h_ids = tf.gather(level_rt.values, tf.ragged.range(starts, starts + lengths).flat_values)
    h_rows = tf.repeat(fail_rows, tf.cast(lengths, tf.int32))
    keep = item_filter(h_rows, h_ids)
    h_ids, h_rows, state = ctx.filter_unvisited(tf.boolean_mask(h_ids, keep),
                                                tf.boolean_mask(h_rows, keep), state)
    ids, rows = _join_frontiers(tf.boolean_mask(n_ids, ok), tf.boolean_mask(n_rows, ok),
                                h_ids, h_rows)
    if max_candidates is not None:
        # Each row's first max_candidates (rows are sorted: a row's position is its offset
        # from the row's first item).
        first = tf.searchsorted(rows, tf.range(ctx.batch_size), side="left")
        keep = tf.range(tf.size(rows)) - tf.gather(first, rows) < max_candidates
        ids, rows = tf.boolean_mask(ids, keep), tf.boolean_mask(rows, keep)
    return ids, rows, state


def _entered(ids, entered):
    """``(ids, rows)`` int32 of the ``[B, W]`` results marked ``entered``, row-major (rows
    ascending)."""
    at = tf.where(entered)
    return tf.gather_nd(ids, at), tf.cast(at[:, 0], tf.int32)


def _join_frontiers(a_ids, a_rows, b_ids, b_rows):
    """Two frontiers as one, rows ascending (an item in both is expanded twice: the visited
    set scores its neighbours once)."""
    _, rows, ids, _ = sort_by_row(tf.concat([a_rows, b_rows], 0), tf.concat([a_ids, b_ids], 0))
    return ids, rows


def _seed_pairs(seed_ids: Any, ctx: "SearchContext"):
    """``(ids, rows, E)`` int32: the non-zero seeds in row-major order, and the seeds per
    query (the width of ``seed_ids``); None without seeds."""
    if seed_ids is None:
        return None
    seed_ids = tf.convert_to_tensor(seed_ids)
    if seed_ids.dtype not in (tf.int32, tf.int64):
        raise ValueError(f"seed_ids must be int32/int64, got {seed_ids.dtype}")
    if seed_ids.shape.rank != 2:
        raise ValueError(f"seed_ids must be [batch_size, E], got shape {seed_ids.shape}")
    # Known values are checked here; in a graph (the served model passes its dense history,
    # always valid) no assert is added to the hot path: an id beyond the corpus still fails
    # there, in the visited filter or the embedding gather (InvalidArgumentError).
    known = tf.get_static_value(seed_ids)
    batch = tf.get_static_value(ctx.batch_size)
    if known is not None:
        if batch is not None and known.shape[0] != batch:
            raise _invalid(f"seed_ids has {known.shape[0]} rows: expected one per query "
                           f"(batch_size = {batch})")
        bad = (known < 0) | (known > ctx.num_items)
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            raise _invalid(f"seed_ids{list(at)} = {known[at]}: seed_ids must be item ids in "
                           f"[0, {ctx.num_items}] (0 = no seed)")
    seed_ids = tf.cast(seed_ids, tf.int32)
    flat = tf.reshape(seed_ids, [-1])
    rows = tf.repeat(tf.range(ctx.batch_size), tf.shape(seed_ids)[1])
    keep = tf.not_equal(flat, 0)  # a negative id goes on to fail in the visited filter
    width = seed_ids.shape[1] if seed_ids.shape[1] is not None else tf.shape(seed_ids)[1]
    return tf.boolean_mask(flat, keep), tf.boolean_mask(rows, keep), width


def _invalid(message: str) -> tf.errors.InvalidArgumentError:
    return tf.errors.InvalidArgumentError(None, None, message)


def _run_level(ctx: "SearchContext", level_rt: tf.RaggedTensor, ef: Any, width: Any,
               rounds: Any, res_ids, res_scores, f_ids, f_rows, state, num_scored,
               out=None, item_filter: ItemFilter | None = None, k: Any = None,
               hop: ItemFilter | None = None, max_candidates: int | None = None):
    """At most ``rounds`` expansion rounds on one level (a tf.while_loop); each round keeps
    the best ``ef`` and pads the results back to the carried ``width``; with a filter, the
    passing items of every round also go to the output buffer ``out``."""
    filtered = out is not None

    def cond(t, res_ids, res_scores, f_ids, f_rows, state, num_scored, *out):
        return tf.logical_and(t < rounds, tf.size(f_ids) > 0)

    def body(t, res_ids, res_scores, f_ids, f_rows, state, num_scored, *out):
        with ctx.device():
            if hop is None:
                n_ids, n_rows, state = ctx.expand(f_ids, f_rows, level_rt, state)
            else:
                n_ids, n_rows, state = expand_passing(ctx, f_ids, f_rows, level_rt, state,
                                                      hop, max_candidates)
        n_scores = ctx.score(n_rows, n_ids)
        with ctx.device():
            num_scored += ctx.count_per_row(n_rows)
            res_ids, res_scores, entered, _ = merge_results(
                res_ids, res_scores, n_ids, n_rows, n_scores, ctx.batch_size, ef,
                fused=ctx.fused)
            f_ids, f_rows = _entered(res_ids, entered)
            res_ids, res_scores = resize_results(res_ids, res_scores, width)
        if filtered:
            o_ids, o_scores, o_entered = _merge_passing(out, item_filter, n_ids, n_rows,
                                                        n_scores, ctx, k, with_entered=True)
            out = (o_ids, o_scores)
            with ctx.device():  # the next frontier: what entered either beam
                f_ids, f_rows = _join_frontiers(f_ids, f_rows, *_entered(o_ids, o_entered))
        return (t + 1, res_ids, res_scores, f_ids, f_rows, state, num_scored, *out)

    loop_vars = (tf.constant(0), res_ids, res_scores, f_ids, f_rows, state, num_scored,
                 *(out or ()))
    invariants = (tf.TensorShape([]), res_ids.shape, res_scores.shape,
                  tf.TensorShape([None]), tf.TensorShape([None]), relaxed_shapes(state),
                  num_scored.shape, *((out[0].shape, out[1].shape) if filtered else ()))
    result = tf.while_loop(cond, body, loop_vars, shape_invariants=invariants)
    _, res_ids, res_scores, _, _, state, num_scored, *out = result
    return res_ids, res_scores, state, num_scored, (tuple(out) if filtered else None)


# ---------------------------------------------------------------------------------------------
# Shared by beam_search, hnsw_search and brute_force.

class SearchContext:
    """Per-call state shared by the search algorithms: scoring, exclusion, visited set."""

    def __init__(self, scorer: Scorer, batch_size: Any, num_items: int, exclude_ids: Any,
                 visited_impl: str, traversal_device: str | None):
        if visited_impl not in visited.IMPLS:
            raise ValueError(f"visited_impl must be one of {visited.IMPLS}, got "
                             f"{visited_impl!r}")
        if isinstance(batch_size, int) and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.scorer = scorer
        self.batch_size = batch_size if isinstance(batch_size, int) else tf.cast(
            batch_size, tf.int32)
        self.num_items = int(num_items)
        self.visited_impl = visited_impl
        # With the op library (the bitmap visited set), merges and filtered expansions run as
        # fused ops.
        self.fused = visited_impl == "bitmap"
        self.traversal_device = traversal_device
        self.exclude = None
        if exclude_ids is not None:
            exclude = tf.convert_to_tensor(exclude_ids)
            if exclude.dtype not in (tf.int32, tf.int64):
                raise ValueError(f"exclude_ids must be int32/int64, got {exclude.dtype}")
            if exclude.shape.rank != 2:
                raise ValueError(f"exclude_ids must be [batch_size, E], got shape "
                                 f"{exclude.shape}")
            # One sorted key per (row, excluded id): a scored pair is looked up by binary
            # search, O(n log(B E)) per call instead of comparing it with all E ids of its row.
            with self.device():
                exclude = tf.cast(exclude, tf.int64)
                rows = tf.cast(tf.repeat(tf.range(tf.shape(exclude)[0]),
                                         tf.shape(exclude)[1]), tf.int64)
                flat = tf.reshape(exclude, [-1])
                span = tf.constant(self.num_items + 1, tf.int64)
                keys = tf.sort(tf.boolean_mask(rows * span + flat, flat > 0))
                self.exclude = tf.concat([keys, [tf.int64.max]], 0)  # never empty

    def device(self):
        if self.traversal_device is None:
            return contextlib.nullcontext()
        return tf.device(self.traversal_device)

    def score(self, rows: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
        """Calls the scorer once; NaN and excluded items become -inf."""
        scores = tf.reshape(tf.cast(self.scorer(rows, ids), tf.float32), [-1])
        with self.device():
            tf.debugging.assert_equal(tf.size(scores), tf.size(ids), message=(
                "scorer(row_ids, item_ids) must return one score per item"))
            scores = tf.where(tf.math.is_nan(scores), _NEG_INF, scores)
            if self.exclude is not None:
                key = tf.cast(rows, tf.int64) * (self.num_items + 1) + tf.cast(ids, tf.int64)
                pos = tf.searchsorted(self.exclude, key, side="left")
                hit = tf.equal(tf.gather(self.exclude, pos), key)
                scores = tf.where(hit, _NEG_INF, scores)
        return scores

    def count_per_row(self, rows: tf.Tensor) -> tf.Tensor:
        return tf.math.unsorted_segment_sum(tf.ones_like(rows), rows, self.batch_size)

    def visited_init(self):
        """An all-clear visited bitmap over the ids 0..N (0 is the padding id)."""
        return visited.new_visited(self.batch_size, self.num_items + 1)

    def filter_unvisited(self, ids, rows, state):
        return visited.filter_unvisited(ids, rows, state, impl=self.visited_impl)

    def expand(self, f_ids, f_rows, level_rt: tf.RaggedTensor, state):
        """Neighbours of the frontier on one level, minus visited (and marked visited), in
        frontier order (so their row ids stay sorted when the frontier's are)."""
        return visited.gather_unvisited_neighbors(f_ids, f_rows, level_rt.values,
                                                  level_rt.row_splits, state,
                                                  impl=self.visited_impl)


def level_params(params: Mapping[Any, Any], name: str, levels,
                 minimum: int = 1) -> dict[int, Any]:
    """``{level: value}`` with int keys, checked to hold every level in ``levels``."""
    out = {}
    for key, value in params.items():
        try:
            out[int(key)] = value
        except (TypeError, ValueError):
            raise ValueError(f"{name}: keys must be levels (ints), got {key!r}") from None
    for level in levels:
        if level not in out:
            raise ValueError(f"{name} has no value for level {level} (given: "
                             f"{sorted(out)})")
        value = out[level]
        if isinstance(value, bool) or (isinstance(value, int) and value < minimum):
            raise ValueError(f"{name}[{level}] must be >= {minimum}, got {value!r}")
    return out


def min_of(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    return tf.minimum(tf.cast(a, tf.int32), tf.cast(b, tf.int32))


def max_of(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b)
    return tf.maximum(tf.cast(a, tf.int32), tf.cast(b, tf.int32))


def order_keys(ids: tf.Tensor, scores: tf.Tensor) -> tf.Tensor:
    """int64 keys whose descending order is (score desc, id asc); ids must be in [0, 2**32)."""
    scores = tf.where(tf.equal(scores, 0.0), tf.zeros_like(scores), scores)  # -0.0 == +0.0
    bits = tf.bitcast(scores, tf.int32)
    monotone = tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, 0x7FFFFFFF), bits)
    return tf.cast(monotone, tf.int64) * (1 << 32) + (_ID_MASK - tf.cast(ids, tf.int64))


def decode_keys(keys: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Inverse of :func:`order_keys`: ``(ids int32, scores float32)``."""
    low = tf.bitwise.bitwise_and(keys, _ID_MASK)
    ids = tf.cast(_ID_MASK - low, tf.int32)
    monotone = tf.cast((keys - low) // (1 << 32), tf.int32)
    bits = tf.where(monotone < 0, tf.bitwise.bitwise_xor(monotone, 0x7FFFFFFF), monotone)
    return ids, tf.bitcast(bits, tf.float32)


def top_by_key(ids: tf.Tensor, scores: tf.Tensor, k: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """Row-wise top ``k`` of ``[B, C]`` candidates in (score desc, id asc) order."""
    _, idx = tf.math.top_k(order_keys(ids, scores), k=k)
    return tf.gather(ids, idx, batch_dims=1), tf.gather(scores, idx, batch_dims=1)


def resize_results(ids: tf.Tensor, scores: tf.Tensor, width: Any):
    """Sorted ``[B, W]`` results cut or padded (id 0, score -inf) to ``[B, width]``."""
    if isinstance(width, int) and ids.shape[1] is not None and ids.shape[1] == width:
        return ids, scores
    pad = tf.maximum(tf.cast(width, tf.int32) - tf.shape(ids)[1], 0)
    ids = tf.pad(ids, [[0, 0], [0, pad]])
    scores = tf.pad(scores, [[0, 0], [0, pad]], constant_values=_NEG_INF)
    return ids[:, :width], scores[:, :width]


def merge_results(res_ids, res_scores, n_ids, n_rows, n_scores, batch_size, width,
                  res_flags=None, fused: bool = False):
    """Top ``width`` of (results ``[B, W]``) + (new flat items, row ids sorted ascending).

    New items scoring -inf are dropped. Returns ``(ids, scores, entered, flags)``: ``entered``
    [B, width] marks new items that made it into the results; ``flags`` carries ``res_flags``
    (False for new items) when given. ``fused`` (without ``res_flags``): one
    ``NannMergeResults`` op (the op library), the same answers as the ~45 stock ops below, which
    a walk round would otherwise dispatch one by one.
    """
    if fused and res_flags is None:
        ids, scores, entered = ops.merge_results(
            tf.cast(res_ids, tf.int32), tf.cast(res_scores, tf.float32), tf.cast(n_ids, tf.int32),
            tf.cast(n_rows, tf.int32), tf.cast(n_scores, tf.float32), tf.cast(width, tf.int32))
        return ids, scores, entered, None
    # Each row's new items as a row of [B, W] (gathers over the row runs; an item scoring -inf
    # becomes padding, id 0, as its row's empty slots: it cannot enter).
    starts, counts = row_runs(tf.cast(n_rows, tf.int32), batch_size)
    slots = row_slots(starts, counts, tf.reduce_max(tf.concat([counts, [0]], 0)),
                      tf.size(n_ids))
    new_ids = tf.gather(tf.concat([tf.where(n_scores > _NEG_INF, n_ids, 0), [0]], 0), slots)
    new_scores = tf.gather(tf.concat([n_scores, [_NEG_INF]], 0), slots)
    old_width = tf.shape(res_ids)[1]
    cand_ids = tf.concat([res_ids, new_ids], axis=1)
    cand_scores = tf.concat([res_scores, new_scores], axis=1)
    _, idx = tf.math.top_k(order_keys(cand_ids, cand_scores), k=width)
    out_ids = tf.gather(cand_ids, idx, batch_dims=1)
    out_scores = tf.gather(cand_scores, idx, batch_dims=1)
    entered = tf.logical_and(idx >= old_width, out_scores > _NEG_INF)
    flags = None
    if res_flags is not None:
        cand_flags = tf.concat([res_flags, tf.zeros_like(new_ids, tf.bool)], axis=1)
        flags = tf.gather(cand_flags, idx, batch_dims=1)
    return out_ids, out_scores, entered, flags


def relaxed_shapes(structure):
    """Shape invariants with every dimension unknown (for loop-carried visited state)."""
    return tf.nest.map_structure(lambda t: tf.TensorShape([None] * t.shape.rank), structure)

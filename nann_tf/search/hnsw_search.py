"""HNSW-retrieval (the SL2G baseline): the original HNSW search, with the neural score.

For each query: greedy descent from the entry point through levels ``max_level .. 1`` (ef = 1:
move to the best neighbour while it improves the score), then best-first search on level 0 with
beam ``ef0`` (HNSW's SEARCH-LAYER while-loop: take the best unexpanded candidate, stop when it is
worse than the worst of the ``ef0`` results, expand its neighbours, score the unvisited ones).

All queries advance together inside one ``tf.while_loop`` per level, one expansion per query per
iteration, with every query's new candidates scored in one scorer call; finished queries idle.

The batched form is exact (ties broken by the shared score-desc/id-asc rule) and scores no
item twice for a query:

- the greedy levels share one visited set: skipping an item scored earlier never changes a
  greedy step, because every item scored so far is no better than the current node;
- level 0 has its own visited set, as in HNSW (an item scored on an upper level can still enter
  the ef0 results); the scores of items met again are taken from a cache of the greedy phase
  instead of being scored a second time;
- SEARCH-LAYER's candidate queue only ever pops an item outside the result set when the search
  stops, so "expand the best unexpanded result; stop when every result is expanded" is the same
  loop.

Conventions (scorer, ordering, padding, exclusion, num_scored = distinct items scored) are those
of :mod:`nann_tf.search.beam`.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from nann_tf.index.hnsw import GraphTensors
from nann_tf.search.beam import (
    Scorer,
    SearchContext,
    decode_keys,
    merge_results,
    order_keys,
    relaxed_shapes,
    resize_results,
)

__all__ = ["hnsw_search"]

_NEG_INF = float("-inf")


def hnsw_search(graph: GraphTensors, scorer: Scorer, batch_size: Any, ef0: Any = 400,
                k: Any = 200, visited_impl: str = "tf", exclude_ids: Any = None,
                traversal_device: str | None = "/CPU:0", max_iterations: Any = None):
    """HNSW-retrieval of the top ``k`` items for each of ``batch_size`` queries.

    Args:
      graph: :class:`~nann_tf.index.hnsw.GraphTensors` (uses ``levels`` and ``entry_point``).
      scorer: ``scorer(row_ids int32 [n], item_ids int32 [n]) -> float32 [n]``.
      batch_size: B (Python int or int32 scalar tensor).
      ef0: beam width on level 0 (``ef0 >= k`` for a full result list).
      k: results per query.
      visited_impl: ``"tf"`` or ``"bitmap"``.
      exclude_ids: optional int ``[B, E]`` items never to return (0 = none).
      traversal_device: device for the graph-walking ops (``None``: no placement).
      max_iterations: optional bound on level-0 expansions per query (default: none; the loop
        ends by itself since every expansion consumes a scored item).

    Returns:
      ``(ids int32 [B, k], scores float32 [B, k], num_scored int32 [B])``.
    """
    if isinstance(ef0, int) and ef0 < 1:
        raise ValueError(f"ef0 must be >= 1, got {ef0}")
    if isinstance(k, int) and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ctx = SearchContext(scorer, batch_size, graph.num_items, exclude_ids, visited_impl,
                        traversal_device)
    b = ctx.batch_size
    with ctx.device():
        rows = tf.range(b)
        cur = tf.fill([b], tf.cast(graph.entry_point, tf.int32))
        state = ctx.visited_init()
        _, _, state = ctx.filter_unvisited(cur, rows, state)
    cur_scores = ctx.score(rows, cur)
    num_scored = tf.ones([b], tf.int32)
    cache = (cur, rows, cur_scores)  # everything scored in the greedy phase

    for level in range(len(graph.levels) - 1, 0, -1):
        cur, cur_scores, state, num_scored, cache = _greedy_level(
            ctx, graph.levels[level], cur, cur_scores, state, num_scored, cache)

    with ctx.device():
        res_ids, res_scores = resize_results(cur[:, None], cur_scores[:, None], ef0)
        expanded = tf.zeros_like(res_ids, tf.bool)
        c_ids, c_rows, c_scores = cache
        c_keys = _pair_keys(c_rows, c_ids, ctx.num_items)
        order = tf.argsort(c_keys)
        cache = (tf.gather(c_keys, order), tf.gather(c_scores, order))
        state0 = ctx.visited_init()
        _, _, state0 = ctx.filter_unvisited(cur, rows, state0)
    res_ids, res_scores, num_scored = _best_first_level0(
        ctx, graph.levels[0], ef0, res_ids, res_scores, expanded, state0, num_scored, cache,
        max_iterations)
    with ctx.device():
        # A start node scoring -inf stayed in the results only to be expanded.
        res_ids = tf.where(res_scores > _NEG_INF, res_ids, 0)
        out_ids, out_scores = resize_results(res_ids, res_scores, k)
    return out_ids, out_scores, num_scored


def _pair_keys(rows, ids, num_items):
    return tf.cast(rows, tf.int64) * (num_items + 1) + tf.cast(ids, tf.int64)


def _greedy_level(ctx: SearchContext, level_rt, cur, cur_scores, state, num_scored, cache):
    """Moves every query to its best neighbour on this level while that improves its score;
    appends everything it scores to ``cache`` (ids, rows, scores)."""

    def cond(active, cur, cur_scores, state, num_scored, c_ids, c_rows, c_scores):
        return tf.reduce_any(active)

    def body(active, cur, cur_scores, state, num_scored, c_ids, c_rows, c_scores):
        with ctx.device():
            f_ids = tf.boolean_mask(cur, active)
            f_rows = tf.cast(tf.where(active)[:, 0], tf.int32)
            n_ids, n_rows, state = ctx.expand(f_ids, f_rows, level_rt, state)
        n_scores = ctx.score(n_rows, n_ids)
        with ctx.device():
            num_scored += ctx.count_per_row(n_rows)
            best = tf.math.unsorted_segment_max(order_keys(n_ids, n_scores), n_rows,
                                                ctx.batch_size)
            # A query with no new item gets int64 min, which never improves.
            best_ids, best_scores = decode_keys(best)
            improved = tf.logical_and(best > order_keys(cur, cur_scores),
                                      best_scores > _NEG_INF)
            cur = tf.where(improved, best_ids, cur)
            cur_scores = tf.where(improved, best_scores, cur_scores)
            c_ids = tf.concat([c_ids, n_ids], 0)
            c_rows = tf.concat([c_rows, n_rows], 0)
            c_scores = tf.concat([c_scores, n_scores], 0)
        return improved, cur, cur_scores, state, num_scored, c_ids, c_rows, c_scores

    active = tf.ones_like(cur, tf.bool)
    unknown = tf.TensorShape([None])
    out = tf.while_loop(cond, body, (active, cur, cur_scores, state, num_scored) + tuple(cache),
                        shape_invariants=(active.shape, cur.shape, cur_scores.shape,
                                          relaxed_shapes(state), num_scored.shape,
                                          unknown, unknown, unknown))
    return out[1], out[2], out[3], out[4], tuple(out[5:])


def _best_first_level0(ctx: SearchContext, level_rt, ef0, res_ids, res_scores, expanded,
                       state, num_scored, cache, max_iterations):
    """HNSW SEARCH-LAYER on level 0, one expansion per query per iteration. ``state`` is the
    level's own visited set; ``cache`` (sorted pair keys, scores) the greedy phase's scores."""
    cache_keys = tf.concat([cache[0], [-1]], 0)  # the sentinel keeps searchsorted in range
    cache_scores = tf.concat([cache[1], [0.0]], 0)

    def pending(res_ids, expanded):
        return tf.logical_and(tf.logical_not(expanded), res_ids > 0)

    def cond(it, res_ids, res_scores, expanded, state, num_scored):
        go = tf.reduce_any(pending(res_ids, expanded))
        if max_iterations is not None:
            go = tf.logical_and(go, it < max_iterations)
        return go

    def body(it, res_ids, res_scores, expanded, state, num_scored):
        with ctx.device():
            todo = pending(res_ids, expanded)
            has = tf.reduce_any(todo, axis=1)
            # Results are sorted, so the first unexpanded one is the best candidate.
            pos = tf.argmax(tf.cast(todo, tf.int32), axis=1, output_type=tf.int32)
            f_rows = tf.cast(tf.where(has)[:, 0], tf.int32)
            f_ids = tf.gather(tf.gather(res_ids, pos, batch_dims=1), f_rows)
            expanded = tf.logical_or(expanded, tf.logical_and(
                tf.one_hot(pos, tf.shape(res_ids)[1], on_value=True, off_value=False),
                has[:, None]))
            n_ids, n_rows, state = ctx.expand(f_ids, f_rows, level_rt, state)
            keys = _pair_keys(n_rows, n_ids, ctx.num_items)
            pos = tf.searchsorted(cache_keys[:-1], keys)
            known = tf.equal(tf.gather(cache_keys, pos), keys)
            fresh_at = tf.cast(tf.where(tf.logical_not(known))[:, 0], tf.int32)
            known_at = tf.cast(tf.where(known)[:, 0], tf.int32)
            fresh_ids = tf.gather(n_ids, fresh_at)
            fresh_rows = tf.gather(n_rows, fresh_at)
        fresh_scores = ctx.score(fresh_rows, fresh_ids)
        with ctx.device():
            num_scored += ctx.count_per_row(fresh_rows)
            n_scores = tf.dynamic_stitch(
                [fresh_at, known_at],
                [fresh_scores, tf.gather(cache_scores, tf.gather(pos, known_at))])
            res_ids, res_scores, _, expanded = merge_results(
                res_ids, res_scores, n_ids, n_rows, n_scores, ctx.batch_size, ef0,
                res_flags=expanded)
        return it + 1, res_ids, res_scores, expanded, state, num_scored

    out = tf.while_loop(cond, body,
                        (tf.constant(0), res_ids, res_scores, expanded, state, num_scored),
                        shape_invariants=(tf.TensorShape([]), res_ids.shape, res_scores.shape,
                                          expanded.shape, relaxed_shapes(state),
                                          num_scored.shape))
    return out[1], out[2], out[5]

"""The cheapest Beam-retrieval parameters that reach a coverage target, found by replay.

Running the TensorFlow beam search once per candidate setting would score the same items with the
model again and again. Instead the model scores EVERY item once for a sample of users
(:meth:`nann_tf.search.brute_force.ExactScorer.full_scores`, a ``[U, N + 1]`` float32 matrix), and the C++ core replays the beam search
on those scores for each setting of a grid (``nann_tf._nann_core.beam_search_replay``, the same
algorithm and tie rule as :func:`nann_tf.search.beam.beam_search`; it releases the GIL, so the
settings run on a thread pool). Each replay gives coverage@k against the exact top k of the
matrix and the number of items scored; the cheapest setting meeting the target wins, and
:func:`tune` checks it once with the real TensorFlow search on the same users.

A setting meets the target when the lower one-sided 95% bound of its mean coverage over the
sampled users does (:func:`coverage_bound`), not the sample mean alone: the parameters are
chosen on validation users and served to everyone else. At paper scale, beams chosen on the
mean of 100 validation users (0.9928) covered 0.9921 [0.9891, 0.9947] of 100 test users'
exact top-200 (``bench/results/scale-1.json``).
"""

from __future__ import annotations

import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Sequence

import numpy as np

from nann_tf.errors import arg
from nann_tf.search.params import (SearchParams, SearchParamsError, format_level_values,
                                  parse_level_grid)

__all__ = [
    "Setting",
    "choose",
    "coverage_bound",
    "default_grid",
    "wider_grid",
    "grid_from_lists",
    "pareto_frontier",
    "replay",
    "replay_grid",
    "tune",
]

Setting = tuple[dict, dict]  # (ef {level: width}, T {level: rounds})

#: The standard normal quantile of :func:`coverage_bound` (one-sided 95%).
CONFIDENCE_Z = 1.645


def replay(graph, start_level: int, scores: np.ndarray, ef: Mapping[int, int],
           T: Mapping[int, int], k: int, num_threads: int = 1,
           seeds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The beam search's result on precomputed ``scores`` [U, N + 1].

    ``seeds`` [U, E] (0 = none) are per-query entry items, as the beam search's ``seed_ids``
    (the serving model seeds with the user's history).

    Returns:
      ``(ids int64 [U, k] (0 = padding), num_scored int64 [U])``.

    Raises:
      nann_tf.ops.OpLibraryError: the C++ core is not built.
      ValueError: bad parameters or arrays (from the core, naming the input).
    """
    from nann_tf import ops

    core = ops.numpy_core()
    levels = [graph.levels[lv] for lv in range(start_level)]
    ids, _, scored = core.beam_search_replay(
        levels, graph.start_nodes(start_level).astype(np.int64), scores,
        {int(a): int(b) for a, b in ef.items() if int(a) <= start_level},
        {int(a): int(b) for a, b in T.items() if int(a) < start_level}, int(k), num_threads,
        None if seeds is None else np.asarray(seeds, np.int64))
    return np.maximum(ids, 0), scored


def grid_from_lists(start_level: int, ef_values: Mapping[int, Sequence[int]],
                    t_values: Mapping[int, Sequence[int]], k: int | None = None) -> list[Setting]:
    """Every combination of the per-level candidate values (ef: levels S..0, T: S-1..0); with
    ``k``, every setting is checked by :meth:`~nann_tf.search.params.SearchParams.checked`'s
    rules (so an ef for level 0 below k is refused here as everywhere).

    Raises:
      SearchParamsError: a level missing or unused, or a value out of range.
    """
    ef_levels = list(range(start_level, -1, -1))
    t_levels = list(range(start_level - 1, -1, -1))
    for name, values, low in ((arg("ef_values"), ef_values, 1), (arg("t_values"), t_values, 0)):
        text = format_level_values(values)
        parse_level_grid(text, name, minimum=low)  # the value rules, with the same messages
    lowest = SearchParams(start_level, {lv: min(v) for lv, v in ef_values.items() if v},
                          {lv: min(v) for lv, v in t_values.items() if v}, k or 1)
    try:
        lowest.checked()
    except SearchParamsError as e:
        raise SearchParamsError(f"the grid ({arg('ef_values')}/{arg('t_values')}): {e}") from None
    out = []
    for efs in itertools.product(*[sorted(set(ef_values[lv])) for lv in ef_levels]):
        for ts in itertools.product(*[sorted(set(t_values[lv])) for lv in t_levels]):
            out.append((dict(zip(ef_levels, efs)), dict(zip(t_levels, ts))))
    return out


def default_grid(start_level: int, k: int, num_start: int) -> tuple[dict, dict]:
    """Candidate values per level around the paper's defaults, scaled by ``k``.

    ef_S in {k/4, k/2, k} (at most ``num_start``, the start level's size), ef_l in {k/2, k, 2k}
    for 0 < l < S, ef_0 in {k, 1.5k, 2k, 3k}; T_0 in {1, 2, 3, 4, 6, 8, 12}, T_l in {1, 2}
    above. Extra rounds cost few items (a round expands only the items that entered the results
    in the previous one) but add latency: on a 1M-item corpus coverage still grows at T_0 = 6.

    Returns:
      ``(ef_values, t_values)`` for :func:`grid_from_lists`.
    """
    def r(x):
        return max(1, int(round(x)))

    ef_values: dict[int, list[int]] = {}
    t_values: dict[int, list[int]] = {}
    for lv in range(start_level, -1, -1):
        if lv == start_level and start_level > 0:
            ef_values[lv] = sorted({min(r(k * f), num_start) for f in (0.25, 0.5, 1.0)})
        elif lv == 0:
            ef_values[lv] = sorted({r(k * f) for f in (1.0, 1.5, 2.0, 3.0)})
        else:
            ef_values[lv] = sorted({r(k * f) for f in (0.5, 1.0, 2.0)})
    for lv in range(start_level - 1, -1, -1):
        t_values[lv] = [1, 2, 3, 4, 6, 8, 12] if lv == 0 else [1, 2]
    return ef_values, t_values


def _coverage(ids: np.ndarray, exact: np.ndarray, k: int) -> float:
    from nann_tf.evaluation.metrics import coverage

    return coverage(ids, exact, k)


def coverage_bound(per_user) -> float:
    """The lower one-sided 95% confidence bound of the mean of ``per_user`` coverages (normal
    approximation; the mean itself for fewer than two users)."""
    per = np.asarray(per_user, np.float64)
    if per.size < 2:
        return float(per.mean()) if per.size else 0.0
    return float(per.mean() - CONFIDENCE_Z * per.std(ddof=1) / np.sqrt(per.size))


def replay_grid(graph, start_level: int, scores: np.ndarray, exact: np.ndarray,
                grid: Sequence[Setting], k: int, threads: int = 0, progress=None,
                seeds: np.ndarray | None = None) -> list[dict]:
    """Replays every setting (with the per-query ``seeds``, see :func:`replay`); one row per
    setting.

    Returns:
      Rows ``{"ef", "T", "coverage", "coverage_low", "items_scored", "scored_fraction"}``
      (items scored: mean per query; coverage@k against ``exact``, its mean over the queries
      and :func:`coverage_bound`), in grid order.
    """
    from nann_tf.evaluation.metrics import per_user_coverage

    n = scores.shape[1] - 1
    threads = threads or os.cpu_count() or 1

    def one(setting):
        ef, T = setting
        ids, scored = replay(graph, start_level, scores, ef, T, k, num_threads=1, seeds=seeds)
        mean = float(np.mean(scored))
        per = per_user_coverage(ids, exact, k)
        return {"ef": dict(ef), "T": dict(T), "coverage": float(np.mean(per)),
                "coverage_low": coverage_bound(per), "items_scored": mean,
                "scored_fraction": mean / n}

    rows = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for i, row in enumerate(pool.map(one, grid)):
            rows.append(row)
            if progress and (i + 1) % 50 == 0:
                progress(i + 1, len(grid))
    return rows


def pareto_frontier(rows: Sequence[dict]) -> list[dict]:
    """The rows no other row beats: cheaper (fewer items scored) rows all have lower coverage."""
    out, best = [], -1.0
    for r in sorted(rows, key=lambda r: (r["items_scored"], -r["coverage"])):
        if r["coverage"] > best:
            out.append(r)
            best = r["coverage"]
    return out


def choose(rows: Sequence[dict], target: float) -> dict | None:
    """The row with the fewest items scored among those whose coverage bound (``coverage_low``;
    rows without one: their ``coverage``) is >= ``target`` (ties: the higher coverage), or
    None."""
    ok = [r for r in rows if r.get("coverage_low", r["coverage"]) >= target]
    return min(ok, key=lambda r: (r["items_scored"], -r["coverage"])) if ok else None


def wider_grid(start_level: int, k: int, num_start: int,
               num_items: int | None = None) -> tuple[dict, dict]:
    """Wider settings than :func:`default_grid`'s, for a model whose score landscape the default
    grid cannot cover to the target (an under-trained model: flat scores send the walk astray):
    ef_S in {k, 2k} (at most ``num_start``), ef_l in {2k, 4k} for 0 < l < S, ef_0 in {4k, 6k,
    8k}; T_0 in {4, 6, 8, 12}, T_l = 2 above; widths capped at ``num_items`` (but not below k).
    Each costs more items than a default setting of the same T.

    Returns:
      ``(ef_values, t_values)`` for :func:`grid_from_lists`.
    """
    cap = max(k, num_items) if num_items else float("inf")

    def widths(factors, most=float("inf")):
        return sorted({int(min(k * f, most, cap)) for f in factors})

    ef_values: dict[int, list[int]] = {}
    t_values: dict[int, list[int]] = {}
    for lv in range(start_level, -1, -1):
        if lv == start_level and start_level > 0:
            ef_values[lv] = widths((1, 2), num_start)
        elif lv == 0:
            ef_values[lv] = widths((4, 6, 8))
        else:
            ef_values[lv] = widths((2, 4))
    for lv in range(start_level - 1, -1, -1):
        t_values[lv] = [4, 6, 8, 12] if lv == 0 else [2]
    return ef_values, t_values


def tune(model, index, hist: np.ndarray, *, start_level: int, k: int, target: float,
         grid: Sequence[Setting], threads: int = 0, visited_impl: str = "tf",
         batch_size: int = 16, progress=None, history_seeds: bool = True,
         wider: Sequence[Setting] = ()) -> dict:
    """Finds the cheapest setting of ``grid`` whose coverage@k on these users reaches ``target``
    (its :func:`coverage_bound`: with ~95% confidence on users not sampled);
    when none reaches it, of ``wider`` (replayed on the same scores only then).

    Args:
      model / index: the trained model and its index.
      hist: the users' histories [U, L] (validation users).
      start_level: S.
      k: results per query (coverage@k is measured).
      target: the coverage target in (0, 1].
      grid: the settings (:func:`grid_from_lists`).
      threads: replay threads (0: all cores).
      visited_impl / batch_size: for the TensorFlow check.
      progress: optional ``callable(str)``.
      history_seeds: seed each user's search with their history (as the exported model does).
      wider: settings tried when no setting of ``grid`` reaches the target
        (:func:`wider_grid`).

    Returns:
      ``{"users", "k", "target", "start_level", "num_items", "rows", "pareto", "chosen",
      "widened", "check", "seconds"}`` (``widened``: ``wider`` was replayed; its rows follow
      the grid's). ``chosen`` is None when no setting reaches the target; ``check``
      (the TF beam search with the chosen setting, else with the best-covering one) holds
      ``tf_coverage``, ``replay_coverage``, ``tf_items_scored``, ``replay_items_scored``.
    """
    from nann_tf.evaluation.retriever import Retriever
    from nann_tf.search.brute_force import ExactScorer, topk_of_scores

    say = progress or (lambda msg: None)
    n = index.num_items
    t0 = time.perf_counter()
    say(f"scoring all {n} items for {len(hist)} users")
    scores = ExactScorer(model, index.embeddings, user_batch=64).full_scores(
        hist, progress=lambda d, t: say(f"  scored {d}/{t} users"))
    exact = topk_of_scores(scores, k)
    t1 = time.perf_counter()
    say(f"replaying {len(grid)} settings")
    seeds = np.asarray(hist, np.int64) if history_seeds else None
    rows = replay_grid(index.graph, start_level, scores, exact, grid, k, threads,
                       progress=lambda d, t: say(f"  {d}/{t} settings"), seeds=seeds)
    chosen = choose(rows, target)
    widened = chosen is None and len(wider) > 0
    if widened:
        say(f"no setting reaches coverage@{k} {target}: replaying {len(wider)} wider settings")
        rows += replay_grid(index.graph, start_level, scores, exact, wider, k, threads,
                            progress=lambda d, t: say(f"  {d}/{t} settings"), seeds=seeds)
        chosen = choose(rows, target)
    t2 = time.perf_counter()
    check_row = chosen or max(rows, key=lambda r: (r["coverage"], -r["items_scored"]))
    retriever = Retriever(model, index, start_level, visited_impl, batch_size)
    res = retriever.beam(hist, check_row["ef"], check_row["T"], k, history_seeds)
    check = {"ef": check_row["ef"], "T": check_row["T"],
             "tf_coverage": _coverage(res.ids, exact, k),
             "replay_coverage": check_row["coverage"],
             "tf_items_scored": float(np.mean(res.num_scored)),
             "replay_items_scored": check_row["items_scored"],
             "tf_ms_per_query": res.ms_per_query}
    t3 = time.perf_counter()
    return {"users": int(len(hist)), "k": int(k), "target": float(target),
            "history_seeds": bool(history_seeds),
            "start_level": int(start_level), "num_items": int(n), "rows": rows,
            "pareto": pareto_frontier(rows), "chosen": chosen, "widened": widened,
            "check": check,
            "seconds": {"score": t1 - t0, "replay": t2 - t1, "tf_check": t3 - t2}}

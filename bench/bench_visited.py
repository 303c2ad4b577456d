"""Benchmark of the visited filter (paper Table 1 analogue: bitmap op vs TensorFlow set ops).

Run (from the repository root, after `pip install --no-build-isolation -e .`):

    python bench/bench_visited.py                  # full run, ~2 minutes
    python bench/bench_visited.py --quick          # smaller corpus, for a smoke test

Writes bench/results/visited.json and bench/results/visited.md.

Setting (one synthetic graph, shared by every method): a corpus of 1.3M items; a 3-level
graph (level 2 = every 1024th item, level 1 = every 32nd item, level 0 = all) whose neighbours
are drawn near the node (id locality, so frontier expansions overlap like HNSW neighbourhoods
do). Each query runs the rounds of the paper's default search, 1 + 1 + 3 rounds: all 1,270
start-level nodes, then frontier expansions on level 1 (1 round) and level 0 (3 rounds). The
candidate lists are generated once with NumPy (frontiers drawn from the ids the query kept,
nearest a per-query centre, as a converging beam's are), so every method filters exactly the
same ids: about 23.7k candidate ids per query of which ~17k are new (the rest, ~28%, are repeats
within a round or already visited).

Methods, each a whole search's worth of filtering (all 5 rounds, a fresh visited state) inside
one tf.function, for batch sizes 1 and 16. Given the candidate ids of every round:
  (a) tf_sets        stock tf.sets.difference / tf.sets.union on sparse per-query id sets
  (b) tf_twin        nann_tf.search.visited impl="tf" (stock ops, bitmap state)
  (c) bitmap_op      nann_tf.search.visited impl="bitmap" (the C++ op)
Given the frontier of rounds 2-5 instead (the neighbour gathering is timed too):
      tf_twin_fused          gather_unvisited_neighbors impl="tf" (stock gather + twin)
      gather_then_bitmap_op  stock-op neighbour gather, then the bitmap op
      bitmap_op_fused        gather_unvisited_neighbors impl="bitmap" (one fused op)
All methods must report the same number of kept ids per query (checked).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def build_levels(num_items: int, rng: np.random.Generator, degree0: int, degree1: int,
                 window: int):
    """A 3-level graph with id locality: CSR (values int32, row_splits int64) per level 0, 1."""
    def local_neighbors(nodes: np.ndarray, stride: int, degree: int) -> np.ndarray:
        offsets = rng.integers(-window, window + 1, size=(len(nodes), degree)) * stride
        # Modulo a multiple of the stride: neighbours stay on the level.
        return (nodes[:, None] + offsets) % (num_items - num_items % stride)

    level0_nodes = np.arange(num_items, dtype=np.int64)
    values0 = local_neighbors(level0_nodes, 1, degree0).astype(np.int32).ravel()
    splits0 = np.arange(num_items + 1, dtype=np.int64) * degree0

    level1_nodes = np.arange(0, num_items, 32, dtype=np.int64)
    values1 = local_neighbors(level1_nodes, 32, degree1)
    counts1 = np.zeros(num_items, dtype=np.int64)
    counts1[level1_nodes] = degree1
    splits1 = np.concatenate([[0], np.cumsum(counts1)])
    start_nodes = np.arange(0, num_items, 1024, dtype=np.int64)  # also on levels 1, 0
    return [(values0, splits0), (values1.astype(np.int32).ravel(), splits1)], start_nodes


def make_rounds(levels, start_nodes, batch: int, rng: np.random.Generator, frontier_sizes):
    """Per round: (frontier ids, frontier rows, level) and the expanded (ids, rows) candidates.

    Round 0 is the start level (no frontier: the start nodes are the candidates). Frontiers of
    later rounds are the ids the query kept that lie nearest to a per-query centre: a beam
    converges on a region of the graph, so the neighbourhoods of its frontier overlap (the source
    of the repeated and already-visited ids the filter drops).
    """
    rounds = []
    kept_so_far = [np.empty(0, np.int64) for _ in range(batch)]
    last_kept = [np.empty(0, np.int64) for _ in range(batch)]
    visited = [set() for _ in range(batch)]
    num_items = len(levels[0][1]) - 1
    centres = rng.integers(0, num_items, batch)

    def expand(level, frontier):
        values, splits = levels[level]
        return np.concatenate([values[splits[f]:splits[f + 1]] for f in frontier]).astype(np.int64)

    # Round 0: start level.
    ids = np.tile(start_nodes, batch)
    rows = np.repeat(np.arange(batch), len(start_nodes))
    rounds.append({"level": None, "ids": ids, "rows": rows})
    for q in range(batch):
        visited[q].update(start_nodes.tolist())
        kept_so_far[q] = start_nodes
        last_kept[q] = start_nodes
    for level, size, source in frontier_sizes:
        f_ids, f_rows, c_ids, c_rows = [], [], [], []
        for q in range(batch):
            pool = kept_so_far[q] if source == "all" else last_kept[q]
            pool = pool[levels[level][1][pool + 1] > levels[level][1][pool]]  # nodes on the level
            frontier = pool[np.argsort(np.abs(pool - centres[q]), kind="stable")[:size]]
            cand = expand(level, frontier)
            f_ids.append(frontier)
            f_rows.append(np.full(len(frontier), q))
            c_ids.append(cand)
            c_rows.append(np.full(len(cand), q))
            new = [c for c in dict.fromkeys(cand.tolist()) if c not in visited[q]]
            visited[q].update(new)
            last_kept[q] = np.array(new, dtype=np.int64)
            kept_so_far[q] = np.concatenate([kept_so_far[q], last_kept[q]])
        rounds.append({"level": level, "frontier": np.concatenate(f_ids),
                       "frontier_rows": np.concatenate(f_rows), "ids": np.concatenate(c_ids),
                       "rows": np.concatenate(c_rows)})
    kept_per_query = float(np.mean([len(v) for v in visited]))
    return rounds, kept_per_query


def round_stats(rounds, batch):
    total = sum(len(r["ids"]) for r in rounds) / batch
    per_round = [len(r["ids"]) / batch for r in rounds]
    return total, per_round


def time_interleaved(calls: dict, min_time: float, min_reps: int = 5) -> dict:
    """Median wall and process-CPU seconds per call of each function, timed round-robin.

    Interleaving spreads any background load (this machine is shared) over all methods alike,
    so their ratios stay meaningful even when absolute times drift; CPU time (all threads of
    this process) does not count the time other processes hold the cores.
    """
    for fn, args in calls.values():
        fn(*args).numpy()  # warm-up (the trace happened when the result was checked)
    samples = {name: [] for name in calls}
    cpu = {name: [] for name in calls}
    start = time.perf_counter()
    while (min(len(v) for v in samples.values()) < min_reps
           or time.perf_counter() - start < min_time):
        for name, (fn, args) in calls.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn(*args).numpy()
            samples[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {name: (float(np.median(v)), float(np.median(cpu[name])), len(v))
            for name, v in samples.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-items", type=int, default=1_300_000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--min-time", type=float, default=8.0,
                        help="seconds of interleaved timing per batch size and mode")
    parser.add_argument("--searches", type=int, default=20,
                        help="searches per tf.function call (amortises the call overhead)")
    parser.add_argument("--quick", action="store_true", help="130k items, short timing")
    parser.add_argument("--out", default=RESULTS_DIR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.num_items, args.min_time = 130_000, 1.0

    import tensorflow as tf

    from nann_tf.fsutil import write_text_atomic
    from nann_tf.search import visited as V

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    # Neighbour window chosen so that ~17k of the ~24k candidate ids per query are new, the
    # paper's benchmark setting.
    window = min(8000, args.num_items // 4)
    levels, start_nodes = build_levels(args.num_items, rng, degree0=32, degree1=32,
                                       window=window)
    # (level, frontier size, frontier drawn from: all kept ids / ids kept last round)
    frontier_sizes = [(1, 100, "all"), (0, 200, "all"), (0, 200, "last"), (0, 200, "last")]
    n = args.num_items
    level_tensors = [(tf.constant(v), tf.constant(s)) for v, s in levels]
    print(f"graph built in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    def filter_search(impl):
        def search(ids_list, rows_list, batch):
            bitmap = V.new_visited(batch, n)
            total = tf.constant(0, tf.int64)
            for ids, rows in zip(ids_list, rows_list):
                kept, _, bitmap = V.filter_unvisited(ids, rows, bitmap, impl=impl)
                total += tf.size(kept, out_type=tf.int64)
            return total
        return search

    def fused_search(impl):
        def search(start_ids, start_rows, frontiers, frontier_rows, batch):
            bitmap = V.new_visited(batch, n)
            kept, _, bitmap = V.filter_unvisited(start_ids, start_rows, bitmap, impl=impl)
            total = tf.size(kept, out_type=tf.int64)
            for (level, _, _), f, fr in zip(frontier_sizes, frontiers, frontier_rows):
                values, splits = level_tensors[level]
                kept, _, bitmap = V.gather_unvisited_neighbors(f, fr, values, splits, bitmap,
                                                               impl=impl)
                total += tf.size(kept, out_type=tf.int64)
            return total
        return search

    def gather_then_filter_search(impl):
        """The unfused pipeline: neighbours gathered with stock ops, then the filter."""
        def search(start_ids, start_rows, frontiers, frontier_rows, batch):
            bitmap = V.new_visited(batch, n)
            kept, _, bitmap = V.filter_unvisited(start_ids, start_rows, bitmap, impl=impl)
            total = tf.size(kept, out_type=tf.int64)
            for (level, _, _), f, fr in zip(frontier_sizes, frontiers, frontier_rows):
                values, splits = level_tensors[level]
                starts, limits = tf.gather(splits, f), tf.gather(splits, f + 1)
                ids = tf.gather(values, tf.ragged.range(starts, limits).flat_values)
                rows = tf.repeat(fr, limits - starts)
                kept, _, bitmap = V.filter_unvisited(ids, rows, bitmap, impl=impl)
                total += tf.size(kept, out_type=tf.int64)
            return total
        return search

    def sets_search():
        def search(sparse_rounds, batch):
            visited = tf.SparseTensor(tf.zeros([0, 2], tf.int64), tf.zeros([0], tf.int64),
                                      tf.constant([batch, 0], tf.int64))
            total = tf.constant(0, tf.int64)
            for candidates in sparse_rounds:
                new = tf.sets.difference(candidates, visited)
                visited = tf.sets.union(visited, new)
                total += tf.size(new.values, out_type=tf.int64)
            return total
        return search

    def as_function(search, searches: int):
        """One tf.function call running `searches` whole searches back to back."""
        if searches == 1:
            return tf.function(search)

        @tf.function
        def run(*args):
            def body(i, total):
                return i + 1, total + search(*args)
            return tf.while_loop(lambda i, _: i < searches, body,
                                 (tf.constant(0), tf.constant(0, tf.int64)))[1]
        return run

    results = {
        "command": "python bench/bench_visited.py" + (" --quick" if args.quick else ""),
        "num_items": n, "tensorflow": tf.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "rounds": "1 start-level + 1 level-1 + 3 level-0", "searches_per_call": args.searches,
        "batches": {},
    }
    for batch in args.batch_sizes:
        rounds, kept_per_query = make_rounds(levels, start_nodes, batch, rng, frontier_sizes)
        total_ids, per_round = round_stats(rounds, batch)
        ids_list = [tf.constant(r["ids"]) for r in rounds]
        rows_list = [tf.constant(r["rows"]) for r in rounds]
        frontiers = [tf.constant(r["frontier"]) for r in rounds[1:]]
        frontier_rows = [tf.constant(r["frontier_rows"]) for r in rounds[1:]]
        sparse_rounds = [
            tf.RaggedTensor.from_value_rowids(r["ids"], r["rows"], nrows=batch).to_sparse()
            for r in rounds]
        fused_args = (ids_list[0], rows_list[0], frontiers, frontier_rows, batch)
        methods = {
            "tf_sets": (sets_search(), (sparse_rounds, batch)),
            "tf_twin": (filter_search("tf"), (ids_list, rows_list, batch)),
            "bitmap_op": (filter_search("bitmap"), (ids_list, rows_list, batch)),
            # From here on the neighbour gathering is part of the timed work.
            "tf_twin_fused": (fused_search("tf"), fused_args),
            "gather_then_bitmap_op": (gather_then_filter_search("bitmap"), fused_args),
            "bitmap_op_fused": (fused_search("bitmap"), fused_args),
        }
        entry = {"candidate_ids_per_query": total_ids, "candidate_ids_per_round": per_round,
                 "new_ids_per_query": kept_per_query,
                 "dropped_fraction": 1 - kept_per_query / total_ids, "methods": {}}
        expected = round(kept_per_query * batch)
        for key, searches in (("amortised", args.searches), ("single", 1)):
            calls = {}
            for name, (search, search_args) in methods.items():
                fn = as_function(search, searches)
                kept = int(fn(*search_args).numpy())
                if kept != searches * expected:
                    raise AssertionError(f"{name} kept {kept} ids, expected {searches * expected}")
                calls[name] = (fn, search_args)
            if searches == 1:  # the fixed cost of a call, with the same inputs
                calls["empty_call"] = (tf.function(lambda *a: tf.constant(0)),
                                       (ids_list, rows_list, batch))
            timed = time_interleaved(calls, args.min_time)
            if "empty_call" in timed:
                entry["empty_call_ms"] = 1e3 * timed.pop("empty_call")[0]
            for name, (seconds, cpu_seconds, reps) in timed.items():
                seconds /= searches
                entry["methods"].setdefault(name, {})[key] = {
                    "ms_per_query": 1e3 * seconds / batch, "qps": batch / seconds,
                    "seconds_per_search": seconds,
                    "cpu_ms_per_query": 1e3 * cpu_seconds / searches / batch,
                    "calls_timed": reps, "searches_per_call": searches}
        for name, m in entry["methods"].items():
            print(f"B={batch:3d} {name:22s} {m['amortised']['ms_per_query']:8.3f} ms/query "
                  f"{m['amortised']['qps']:9.1f} QPS  (one search per call: "
                  f"{m['single']['ms_per_query']:.3f} ms/query)", file=sys.stderr)
        for key in ("amortised", "single"):
            op = entry["methods"]["bitmap_op"][key]["seconds_per_search"]
            for m in entry["methods"].values():
                m[key]["time_vs_bitmap_op"] = m[key]["seconds_per_search"] / op
        results["batches"][str(batch)] = entry

    results["load_average_at_end"] = os.getloadavg()
    os.makedirs(args.out, exist_ok=True)
    write_text_atomic(os.path.join(args.out, "visited.json"), json.dumps(results, indent=2) + "\n")
    write_text_atomic(os.path.join(args.out, "visited.md"), markdown(results))
    print(markdown(results))
    return 0


def markdown(results) -> str:
    lines = [
        "# Visited filter: bitmap op vs TensorFlow set ops (paper Table 1 analogue)",
        "",
        f"Command: `{results['command']}`; TensorFlow {results['tensorflow']}, "
        f"{results['cpu_count']} CPU(s). Corpus {results['num_items']:,} items. One search = "
        f"{results['rounds']} rounds of filtering with a fresh visited state, inside a "
        f"tf.function. *Amortised*: {results['searches_per_call']} searches per tf.function call "
        f"(in a tf.while_loop), so the fixed cost of a call is spread out, as it is in a whole "
        f"search graph; *one per call*: one search per call. Medians of repeated "
        f"calls; RT = time per query = search time / batch size, QPS = batch size / search time; "
        f"first five columns amortised. CPU ms: process CPU time (all threads). The machine was "
        f"shared: load average {results['load_average_at_start'][0]:.1f} at the start, "
        f"{results['load_average_at_end'][0]:.1f} at the end.",
        "",
    ]
    for batch, entry in results["batches"].items():
        lines += [
            f"## Batch size {batch}",
            "",
            f"Candidate ids per query: {entry['candidate_ids_per_query']:,.0f} "
            f"(per round: {', '.join(f'{x:,.0f}' for x in entry['candidate_ids_per_round'])}); "
            f"new (kept) per query: {entry['new_ids_per_query']:,.0f}; dropped as repeated or "
            f"visited: {100 * entry['dropped_fraction']:.0f}%. An empty tf.function call with the "
            f"same inputs takes {entry['empty_call_ms']:.3f} ms.",
            "",
            "| method | RT/query ms | QPS | time / bitmap op | CPU ms/query | "
            "RT/query ms (one per call) | time / bitmap op (one per call) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, m in entry["methods"].items():
            a, s = m["amortised"], m["single"]
            lines.append(f"| {name} | {a['ms_per_query']:.3f} | {a['qps']:,.0f} | "
                         f"{a['time_vs_bitmap_op']:.1f}x | {a['cpu_ms_per_query']:.3f} | "
                         f"{s['ms_per_query']:.3f} | {s['time_vs_bitmap_op']:.1f}x |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

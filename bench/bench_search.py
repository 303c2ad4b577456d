"""Latency of Beam-retrieval vs HNSW-retrieval vs brute force with a toy neural scorer.

Run from the repository root::

    python bench/bench_search.py --items 1000000 --dim 64

Generates ``--items`` random item embeddings, builds the HNSW graph (hnswlib, M = 32,
ef_construction = 40; ``--graph-dir`` caches it between runs), and times, inside
``tf.function`` on the CPU, for batches of ``--batches`` sizes (default 1 and 16):

- ``beam`` (default ef {2: 100, 1: 200, 0: 400}, T {1: 2, 0: 4}, k = 200, no seeds) with the ``tf`` and
  the ``bitmap`` visited sets (the latter only when the op library is built);
- ``hnsw`` (HNSW-retrieval, ef0 = 400);
- ``brute`` (whole corpus, chunks of 65536).

The scorer is a small MLP of the item embedding with a per-query first-layer offset plus an l2
pull towards a per-query point near a random item (``w2 . relu(W1 e_v + u_q) - |e_v - p_q|^2``,
64 hidden units): cheap enough that traversal costs show. Random Gaussian embeddings have no
structure, so coverage here is a floor, not what a trained model gets. Writes
``bench/results/search.json`` (also printed): median ms per batch and per query, items scored
per query, coverage@200 against brute force, the machine and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nann_tf.fsutil import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "search.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--threads", type=int, default=0, help="hnswlib build threads (0: all)")
    p.add_argument("--graph-dir", type=Path, default=None,
                   help="load the graph from here if saved, else build and save it there")
    p.add_argument("--skip", nargs="*", default=[], choices=["hnsw", "brute", "bitmap"])
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    import tensorflow as tf

    from nann_tf import ops
    from nann_tf.index.hnsw import HnswGraph, build_hnsw, graph_tensors
    from nann_tf.search.beam import beam_search
    from nann_tf.search.brute_force import brute_force
    from nann_tf.search.hnsw_search import hnsw_search
    from nann_tf.evaluation.metrics import coverage

    rng = np.random.default_rng(0)
    n, d = args.items, args.dim
    emb = rng.normal(size=(n + 1, d)).astype(np.float32)
    emb[0] = 0
    t0 = time.perf_counter()
    if args.graph_dir is not None and (args.graph_dir / "meta.json").is_file():
        graph = HnswGraph.load(args.graph_dir)
        if graph.num_items != n:
            sys.exit(f"{args.graph_dir}: holds {graph.num_items} items, --items is {n}")
        build_s, how = time.perf_counter() - t0, "loaded"
    else:
        graph = build_hnsw(emb, M=32, ef_construction=40, num_threads=args.threads)
        build_s, how = time.perf_counter() - t0, "built"
        if args.graph_dir is not None:
            graph.save(args.graph_dir)
    print(f"graph {how} in {build_s:.1f} s: levels "
          f"{[len(graph.start_nodes(lvl)) for lvl in range(graph.max_level + 1)]}", flush=True)
    gt = graph_tensors(graph)

    hidden = 64
    w1 = tf.constant((rng.normal(size=(d, hidden)) / np.sqrt(d)).astype(np.float32))
    w2 = tf.constant((rng.normal(size=(hidden,)) / np.sqrt(hidden)).astype(np.float32))
    e_table = tf.constant(emb)
    try:
        ops.load_library()
        impls = ["tf", "bitmap"] if "bitmap" not in args.skip else ["tf"]
    except ops.OpLibraryError:
        impls = ["tf"]

    def make(method, impl, b):
        @tf.function(input_signature=[tf.TensorSpec([b, hidden], tf.float32),
                                      tf.TensorSpec([b, d], tf.float32)])
        def run(user, point):
            def scorer(rows, ids):
                e = tf.gather(e_table, ids)
                h = tf.nn.relu(tf.matmul(e, w1) + tf.gather(user, rows))
                diff = e - tf.gather(point, rows)
                return tf.linalg.matvec(h, w2) - tf.reduce_sum(diff * diff, axis=1)
            if method == "beam":
                return beam_search(gt, scorer, b, k=args.k, visited_impl=impl)
            if method == "hnsw":
                return hnsw_search(gt, scorer, b, ef0=400, k=args.k, visited_impl=impl)
            return brute_force(scorer, b, n, args.k, chunk_size=65536)
        return run

    rows = []
    for b in args.batches:
        user = tf.constant(rng.normal(size=(b, hidden)).astype(np.float32))
        # each query's l2 anchor: a random item, moved a little
        point = tf.constant(emb[rng.integers(1, n + 1, size=b)]
                            + 0.3 * rng.normal(size=(b, d)).astype(np.float32))
        runs = [("beam", impl) for impl in impls]
        runs += [("hnsw", impls[-1])] if "hnsw" not in args.skip else []
        runs += [("brute", "-")] if "brute" not in args.skip else []
        reference = None
        for method, impl in runs:
            fn = make(method, impl, b)
            t0 = time.perf_counter()
            out = fn(user, point)  # trace + first run
            first_s = time.perf_counter() - t0
            times = []
            for _ in range(args.repeats if method != "brute" else max(1, args.repeats // 2)):
                t0 = time.perf_counter()
                out = fn(user, point)
                times.append(time.perf_counter() - t0)
            ms = 1000 * float(np.median(times))
            row = {"method": method, "visited": impl, "batch": b, "ms_per_batch": round(ms, 2),
                   "ms_per_query": round(ms / b, 2), "first_call_s": round(first_s, 2),
                   "scored_per_query": float(np.mean(out[2].numpy()))}
            if method == "brute":
                reference = out[0].numpy()
            rows.append((row, out[0].numpy()))
            print(json.dumps(row), flush=True)
        if reference is not None:
            for row, ids in rows:
                if row["batch"] == b:
                    row["coverage@k"] = round(coverage(ids, reference, args.k), 4)
    result = {
        "items": n, "dim": d, "k": args.k, "graph": {"how": how, "seconds": round(build_s, 1),
                                                     "max_level": graph.max_level},
        "scorer": f"w2 . relu(W1 e_v + u_q) - |e_v - p_q|^2, {hidden} hidden",
        "results": [r for r, _ in rows],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                    "tensorflow": tf.__version__,
                    "gpus": len(tf.config.list_physical_devices("GPU"))},
    }
    write_json_atomic(args.out, result, sort_keys=False)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

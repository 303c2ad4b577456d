"""Benchmark of the scorer's table gather: NannGatherRows (prefetching) vs tf.gather.

Run (from the repository root, after `pip install --no-build-isolation -e .`):

    python bench/bench_gather_rows.py              # paper-scale tables, ~2 minutes, ~5 GB
    python bench/bench_gather_rows.py --items 100000 --rounds 2    # a smoke run

Writes bench/results/gather-rows.json (``--out``).

Setting: the two tables a scoring call reads, at the paper's corpus size (4.16M items): e_v
[N, 64] and the item side [N, 80] (the attention query and e_v's first-layer block), float32,
each a tf.Variable. A call gathers the rows of ``W`` random ids from both, inside one
tf.function, as the scorer does: W = 800 / 1,300 (a walk round's new items), 3,850 (the start
level at paper scale), 8,192. Each method is timed over the same 200 id sets per W, the methods
alternating over ``--rounds`` rounds; the ratio tf.gather / NannGatherRows is taken per round and
reported with its range. The rows are checked to be identical first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=4_162_024)
    p.add_argument("--widths", default="800,1300,3850,8192")
    p.add_argument("--calls", type=int, default=200, help="id sets per width")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "gather-rows.json"))
    args = p.parse_args(argv)
    import tensorflow as tf

    from nann_tf import ops
    from nann_tf.fsutil import write_text_atomic

    rng = np.random.default_rng(0)
    n = args.items
    e = tf.Variable(rng.standard_normal((n, 64), dtype=np.float32))
    side = tf.Variable(rng.standard_normal((n, 80), dtype=np.float32))

    @tf.function
    def stock(ids):
        return tf.gather(e, ids), tf.gather(side, ids)

    @tf.function
    def op(ids):
        return ops.gather_rows(e, ids), ops.gather_rows(side, ids)

    methods = {"tf_gather": stock, "nann_gather_rows": op}
    results = {"items": n, "tables": {"e_v": [n, 64], "item_side": [n, 80]},
               "calls_per_width": args.calls, "rounds": args.rounds,
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "tensorflow": tf.__version__, "widths": {}}
    for w in (int(x) for x in args.widths.split(",")):
        idss = [tf.constant(rng.integers(1, n, (1, w)), tf.int32) for _ in range(args.calls)]
        a, b = stock(idss[0]), op(idss[0])
        same = all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a, b))
        per_round = {m: [] for m in methods}
        for r in range(args.rounds):
            for name in (list(methods) if r % 2 == 0 else list(methods)[::-1]):
                ts = []
                for ids in idss:
                    t = time.perf_counter()
                    methods[name](ids)
                    ts.append(time.perf_counter() - t)
                per_round[name].append(float(np.median(ts)) * 1e3)
        ratios = [s / o for s, o in zip(per_round["tf_gather"], per_round["nann_gather_rows"])]
        entry = {"identical_rows": bool(same),
                 **{f"{m}_p50_ms": float(np.median(v)) for m, v in per_round.items()},
                 "per_round_p50_ms": per_round,
                 "speedup_median": float(np.median(ratios)),
                 "speedup_range": [float(min(ratios)), float(max(ratios))]}
        results["widths"][str(w)] = entry
        print(f"W={w}: tf.gather {entry['tf_gather_p50_ms']:.3f} ms, NannGatherRows "
              f"{entry['nann_gather_rows_p50_ms']:.3f} ms, {entry['speedup_median']:.2f}x "
              f"[{min(ratios):.2f}, {max(ratios):.2f}], identical {same}", flush=True)
    results["load_average_at_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

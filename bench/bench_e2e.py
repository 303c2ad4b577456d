"""The main job end to end, timed: `nann-tf demo` (synth -> prepare -> train -> build-index ->
export -> serve -> gRPC queries -> stop) on one config, with the time of every stage.

    python bench/bench_e2e.py                                  # ci-synth, fresh temp work dir
    python bench/bench_e2e.py --config ci-synth --workdir /tmp/e2e-ci   # reuse a work dir

Writes bench/results/e2e-<config>.json (or --out): per-stage status ("ran"/"reused") and
seconds, the demo's table (recall@k of beam search and brute force, coverage@k, items scored,
p50/p99 gRPC latency over the local development server), the host and its load average.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from nann_tf.fsutil import write_json_atomic  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="ci-synth")
    p.add_argument("--workdir", help="work directory (default: a fresh temporary one)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--fresh", action="store_true", help="redo every stage in --workdir")
    p.add_argument("--out", help="result file (default bench/results/e2e-<config>.json)")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from nann_tf.demo import format_table, run_demo
    from nann_tf.errors import UserError

    name = os.path.splitext(os.path.basename(args.config))[0]
    out = args.out or os.path.join(REPO, "bench", "results", f"e2e-{name}.json")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nann-e2e-") as tmp:
        workdir = args.workdir or os.path.join(tmp, "work")
        try:
            report = run_demo(workdir, args.config, queries=args.queries, fresh=args.fresh)
        except UserError as e:
            print(f"bench_e2e: {e}", file=sys.stderr)
            return 2
    import tensorflow as tf

    result = {
        "benchmark": "nann-tf demo end to end (local development server, loopback gRPC)",
        "command": "python bench/bench_e2e.py " + " ".join(argv if argv is not None
                                                          else sys.argv[1:]),
        "config": args.config,
        "total_seconds": round(time.perf_counter() - start, 2),
        "stages": {s: {"status": r["status"], "seconds": round(r["seconds"], 2)}
                   for s, r in report["stages"].items()},
        "model_version": report["model_version"],
        "query": report["query"],
        "table": format_table(report["query"]).splitlines(),
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(),
                 "python": platform.python_version(), "tensorflow": tf.__version__,
                 "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(out, result, sort_keys=False, default=float)
    print(f"total {result['total_seconds']} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

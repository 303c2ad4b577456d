"""Two versions of one served model side by side: the same B=1 requests, answers and latency.

    python bench/bench_version_ab.py --a MODELS/nann/1 --b MODELS/nann/2 --data D \
        --name scale-1-to-dense [--users 100] [--rounds 6]

Both versions are loaded in this process the way TF Serving loads them
(:class:`~nann_tf.serving.loader.SessionModel`); ``serving_default`` is called with one test
user's history per request (the dataset's test users, raw ids). Every request runs once
untimed on both (XLA compiles its shapes), the answers are compared (item ids and items
scored must be identical when the two differ only in how the graph computes them), then
``--rounds`` rounds alternate the order (a, b, then b, a, ...) so that a slower stretch of the
machine lands on both alike. Writes ``bench/results/ab-<name>.json``: p50/p99 of each, the
ratio a/b of each round's medians, and whether the answers were the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="the first version directory (the baseline)")
    p.add_argument("--b", required=True, help="the second version directory")
    p.add_argument("--data", required=True, help="the dataset directory (its test users)")
    p.add_argument("--name", required=True, help="results go to bench/results/ab-NAME.json")
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args(argv)
    if args.users < 1 or args.rounds < 2:
        p.error("--users must be >= 1 and --rounds >= 2")
    from nann_tf.data.dataset import Dataset
    from nann_tf.serving.loader import SessionModel

    ds = Dataset.load(args.data)
    users = min(args.users, len(ds.test))
    hist = ds.raw_items(ds.test.hist[:users])
    models = {"a": SessionModel(args.a), "b": SessionModel(args.b)}
    answers = {n: [m.run("serving_default", {"hist_item_ids": hist[i:i + 1]})
                   for i in range(users)] for n, m in models.items()}
    same = all(np.array_equal(x["item_ids"], y["item_ids"])
               and np.array_equal(x["num_scored"], y["num_scored"])
               for x, y in zip(answers["a"], answers["b"]))
    lat = {"a": [], "b": []}
    for r in range(args.rounds):
        for name in ("a", "b") if r % 2 == 0 else ("b", "a"):
            for i in range(users):
                t = time.perf_counter()
                models[name].run("serving_default", {"hist_item_ids": hist[i:i + 1]})
                lat[name].append(time.perf_counter() - t)
    ms = {n: np.asarray(v) * 1e3 for n, v in lat.items()}
    per_round = {n: np.median(v.reshape(args.rounds, users), axis=1) for n, v in ms.items()}
    ratio = per_round["a"] / per_round["b"]
    result = {
        "benchmark": "two versions side by side (bench/bench_version_ab.py)",
        "command": "python bench/bench_version_ab.py " + " ".join(argv if argv is not None
                                                                  else sys.argv[1:]),
        "a": args.a, "b": args.b, "users": users, "rounds": args.rounds,
        "same_answers": bool(same),
        "p50_ms": {n: round(float(np.percentile(v, 50)), 3) for n, v in ms.items()},
        "p99_ms": {n: round(float(np.percentile(v, 99)), 3) for n, v in ms.items()},
        "a_over_b_per_round": [round(float(x), 3) for x in ratio],
        "a_over_b_median": round(float(np.median(ratio)), 3),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = REPO / "bench" / "results" / f"ab-{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

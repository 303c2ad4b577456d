"""What a filtered walk costs beside the unfiltered search, code trees side by side.

Usage (repository root; a trained model with its index and dataset, e.g. the 1M corpus):

    python bench/bench_filtered_walk.py --model M --index I --data D --name synth-1m \
        --tree before=/path/to/old/checkout --tree after=.

Each tree (a directory holding a built ``nann_tf/``) is measured in its own process, the trees
alternating for ``--rounds`` rounds: the served module (``nann-tf export``'s, the bitmap visited
op, XLA over its shape grid) answers B=1 requests of ``--users`` test users, unfiltered and with
filters of whole categories holding 50% and 10% of the items (both walked: above the exact
scan's bound), interleaved, each query answered once before timing. Reported per tree: the p50
of each, the ratio filtered / unfiltered (the target of issue 22: at most 2), the items scored,
and a digest of every answer's ids (trees that must answer alike show the same digest). Writes
``bench/results/filtered-walk-<name>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
SHARES = (0.5, 0.1)


def worker(args) -> dict:
    sys.path.insert(0, str(Path(args.worker).resolve()))
    sys.path.insert(1, str(BENCH))
    import tensorflow as tf  # noqa: F401

    import nann_tf
    from bench_filters import category_groups, group_tags, retrieve, _timed
    from nann_tf.autoconfig import search_defaults
    from nann_tf.data.dataset import Dataset
    from nann_tf.export.module import RetrievalModule
    from nann_tf.index.store import load_index
    from nann_tf.model.saved import load_trained_model
    from nann_tf.search.filters import LabelTable

    assert Path(nann_tf.__file__).resolve().is_relative_to(Path(args.worker).resolve())
    ds = Dataset.load(args.data)
    model, cfg, meta = load_trained_model(args.model)
    index = load_index(args.index)
    search = search_defaults(cfg, meta, index.meta).checked(index.graph.max_level)
    tags, _ = group_tags(ds, category_groups(ds, SHARES))
    labels = LabelTable.build(index.category, ds.raw_category_id, tags, popularity=index.freq)
    m = RetrievalModule(model, index, int(meta["max_len"]), search, visited_impl="bitmap",
                        labels=labels)
    hd = ds.test.hist[:args.users]
    hist = np.where(hd > 0, ds.raw_item_id[hd], 0).astype(np.int64)
    walk_scored = float(np.mean(m.serving_default(tf.constant(hist[:64]))["num_scored"]))
    m.measured_exact_max_items(walk_scored)
    kinds = {"unfiltered": {}, **{f"{int(100 * s)}%": {"include_tags": [[g + 1]]}
                                  for g, s in enumerate(SHARES)}}

    def call(u, rules):
        return retrieve(m, hist[u:u + 1], search.start_level, **rules)

    digest, scored = hashlib.sha256(), {k: [] for k in kinds}
    for u in range(args.users):
        for kind, rules in kinds.items():
            out = call(u, rules)
            digest.update(out["item_ids"].tobytes())
            scored[kind].append(int(out["num_scored"][0]))
    ms = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for u in range(args.users):
            for kind, rules in kinds.items():
                ms[kind].append(_timed(lambda: call(u, rules)))
    p50 = {k: float(np.median(v)) for k, v in ms.items()}
    return {"p50_ms": p50,
            "ratio": {k: p50[k] / p50["unfiltered"] for k in kinds if k != "unfiltered"},
            "items_scored": {k: float(np.mean(v)) for k, v in scored.items()},
            "exact_max_items": int(m.exact_max_items), "ids_digest": digest.hexdigest()[:16]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--tree", action="append", default=[],
                    help="LABEL=PATH: a code tree with a built nann_tf/ (repeat; default: "
                         "this checkout as 'current')")
    ap.add_argument("--users", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    from bench_export_cost import code_trees

    trees = {label: str(path)
             for label, path in code_trees(ap, args.tree or [f"current={BENCH.parent}"])}
    runs = {label: [] for label in trees}
    for r in range(args.rounds):
        for label, path in trees.items():
            cmd = [sys.executable, __file__, "--model", args.model, "--index", args.index,
                   "--data", args.data, "--name", args.name, "--users", str(args.users),
                   "--repeats", str(args.repeats), "--worker", path]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=path)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"tree {label} failed:\n{out.stderr[-3000:]}")
            runs[label].append(json.loads(line[0][7:]))
            print(label, f"round {r + 1}:", runs[label][-1], flush=True)
    summary = {}
    for label, rs in runs.items():
        summary[label] = {
            "p50_ms": {k: float(np.mean([x["p50_ms"][k] for x in rs])) for k in rs[0]["p50_ms"]},
            "ratio": {k: float(np.mean([x["ratio"][k] for x in rs])) for k in rs[0]["ratio"]},
            "ratio_per_round": {k: [x["ratio"][k] for x in rs] for k in rs[0]["ratio"]},
            "items_scored": rs[0]["items_scored"], "ids_digest": rs[0]["ids_digest"]}
    out = {"name": args.name, "model": args.model, "index": args.index, "data": args.data,
           "command": "python bench/bench_filtered_walk.py " + " ".join(
               a for a in sys.argv[1:]), "users": args.users, "repeats": args.repeats,
           "rounds": args.rounds, "trees": trees, "runs": runs, "summary": summary}
    from nann_tf.fsutil import write_json_atomic

    path = BENCH / "results" / f"filtered-walk-{args.name}.json"
    write_json_atomic(path, out)
    print(f"\n{args.name}: B=1 p50 (mean of {args.rounds} rounds), {args.users} test users\n")
    print("| tree | unfiltered | 50% filter | 10% filter | ratio 50% / 10% | ids digest |")
    print("|---|---|---|---|---|---|")
    for label, s in summary.items():
        p, q = s["p50_ms"], s["ratio"]
        print(f"| {label} | {p['unfiltered']:.1f} ms | {p['50%']:.1f} ms | {p['10%']:.1f} ms | "
              f"{q['50%']:.2f} / {q['10%']:.2f} | {s['ids_digest']} |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

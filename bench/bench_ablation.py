"""Does a model or training change help? Paired intervals on held-out users, change by change.

Usage (repository root):

    python bench/bench_ablation.py --data /tmp/ml100k --name movielens-100k \
        --base "train.loss=nce,model.position_bias=false,model.dot_term=false" \
        --step "softmax: train.loss=softmax" \
        --step "recency: model.position_bias=true" \
        --step "dot term: model.dot_term=true" --seeds 0,1

Trains the ``--base`` configuration (``--config``, default ``auto``: the defaults that follow the
data, with ``--base`` on top), then each ``--step`` applied on top of everything before it (so the
last row is every change together), each with validation inside training, once per seed. Every
model is evaluated by exact search on the validation and the test users: recall-all@50/200 of the
paper's one target and of the next ``--next-n`` behaviours. Each step is compared with the row
before it by the paired difference on the same users (per-user figures averaged over the seeds),
with its 95% interval. Changes are chosen on the validation users; the test users only report.
Writes ``bench/results/ablation-<name>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nann_tf.autoconfig import load_config_for_data
from nann_tf.data.dataset import Dataset
from nann_tf.evaluation.evaluate import evaluate_brute_force
from nann_tf.evaluation.metrics import Bootstrap, paired_difference, summarize_per_user
from nann_tf.fsutil import write_json_atomic
from nann_tf.model.saved import load_trained_model
from nann_tf.train import train


def _pairs(text: str) -> dict:
    from nann_tf.config import parse_overrides

    return parse_overrides([p.strip() for p in text.split(",") if p.strip()])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a prepared dataset directory")
    ap.add_argument("--name", required=True)
    ap.add_argument("--config", default="auto")
    ap.add_argument("--base", default="", help="KEY=VALUE,... of the first row")
    ap.add_argument("--step", action="append", default=[],
                    help="'LABEL: KEY=VALUE,...' applied on top of the rows before")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--next-n", type=int, default=10)
    ap.add_argument("--users", type=int, default=0,
                    help="evaluate the first N validation and test users (0: all)")
    ap.add_argument("--workdir")
    args = ap.parse_args()
    ds = Dataset.load(args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [("base", _pairs(args.base))]
    for step in args.step:
        label, _, pairs = step.partition(":")
        rows.append((label.strip(), {**rows[-1][1], **_pairs(pairs)}))
    ms = (50, 200)
    results, per_user = [], {"val": [], "test": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        for label, overrides in rows:
            runs = {"val": [], "test": []}
            info = []
            for seed in seeds:
                cfg = load_config_for_data(args.config, ds, {**overrides, "train.seed": seed})
                out = work / f"{len(results)}-s{seed}"
                t0 = time.perf_counter()
                summary = train(cfg, args.data, out, verbose=2, overwrite=True)
                info.append({"seconds": time.perf_counter() - t0,
                             "epochs": summary["steps_run_now"] / summary["steps_per_epoch"],
                             "best_step": summary.get("best_step")})
                model, _, _ = load_trained_model(out)
                for split in ("val", "test"):
                    pu: dict = {}
                    res = evaluate_brute_force(model, ds, split, args.users, ms,
                                               per_user_out=pu, next_n=args.next_n)
                    runs[split].append(pu["model"])
            row = {"label": label, "overrides": overrides, "runs": info}
            arrays = {f"{split}/{k}": np.mean([r[k] for r in runs[split]], axis=0)
                      for split in runs for k in runs[split][0]}
            np.savez(work / f"per-user-{len(results)}.npz", **arrays)  # for later comparisons
            for split in ("val", "test"):
                mean = {k: np.mean([r[k] for r in runs[split]], axis=0) for k in runs[split][0]}
                boot = Bootstrap(len(mean[next(iter(mean))]), 1000, 0)
                row[split] = summarize_per_user(mean, boot)
                if per_user[split]:
                    row[f"{split}_minus_previous"] = paired_difference(mean, per_user[split][-1],
                                                                       boot)
                per_user[split].append(mean)
            results.append(row)
            print(label, {k: round(v, 4) for k, v in row["val"].items()
                          if not k.endswith("ci95")}, flush=True)
    keys = res["metrics"]
    out = {"name": args.name, "data": str(args.data), "config": args.config,
           "command": "python bench/bench_ablation.py " + " ".join(sys.argv[1:]),
           "num_items": ds.num_items,
           "val_users": min(len(ds.val), args.users or len(ds.val)),
           "test_users": min(len(ds.test), args.users or len(ds.test)),
           "seeds": seeds, "next_n": args.next_n, "metrics": keys, "rows": results}
    write_json_atomic(Path(__file__).resolve().parent / "results" / f"ablation-{args.name}.json",
                      out)
    for split in ("val", "test"):
        print(f"\n{args.name}, {split} users ({out[split + '_users']}), seeds {seeds}; each "
              "change minus the row before it (paired, 95%)\n")
        print("| change | " + " | ".join(k.replace("_", "-") for k in keys) + " |")
        print("|---|" + "---|" * len(keys))
        for row in results:
            cells = []
            for k in keys:
                r = row[split]
                cell = f"{r[k]:.3f}"
                d = row.get(f"{split}_minus_previous")
                if d:
                    lo, hi = d[f"{k}_ci95"]
                    cell += f" ({d[k]:+.3f} [{lo:+.3f}, {hi:+.3f}])"
                cells.append(cell)
            print(f"| {row['label']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

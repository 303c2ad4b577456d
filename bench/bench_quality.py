"""Model quality: recall-all@50/200 (exact top-M) of every model variant vs most popular.

Usage (repository root):

    python bench/bench_quality.py --config movielens-100k \
        --format movielens --input ../shared/data/movielens-100k
    python bench/bench_quality.py --config ci-synth          # generated data

Prepares the dataset (or generates it from the config's [data] synth_* keys when --input is
omitted), trains attention / sum_pool / two_tower with the config, evaluates each by brute force
on the test users, and writes bench/results/quality-<config>.json plus a Markdown table. Every
figure has its 95% bootstrap interval over the test users; the attention model is compared with
each other model by the paired difference on the same users, with the paired interval.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from nann_tf.config import load_config
from nann_tf.data.dataset import Dataset
from nann_tf.data.prepare import prepare_dataset
from nann_tf.evaluation.evaluate import evaluate_brute_force
from nann_tf.evaluation.metrics import paired_difference
from nann_tf.fsutil import write_json_atomic
from nann_tf.model.saved import load_trained_model
from nann_tf.pipeline import Pipeline
from nann_tf.train import train

VARIANTS = ("attention", "sum_pool", "two_tower")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--format", default="userbehavior")
    ap.add_argument("--input", help="behaviour log (omit: generate from the config)")
    ap.add_argument("--workdir", help="keep artefacts here (default: a temporary directory)")
    args = ap.parse_args()
    cfg = load_config(args.config)
    dc = cfg.data
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.input is None:  # generated from the config, through the pipeline runner
            Pipeline(work, cfg).run("prepare")
        else:
            prepare_dataset(args.input, work / "data", args.format, max_len=dc.max_len,
                            min_len=dc.min_len, val_users=dc.val_users,
                            test_users=dc.test_users, seed=dc.split_seed, overwrite=True)
        ds = Dataset.load(work / "data")
        rows, per_user = {}, {}
        for variant in VARIANTS:
            cfg.model.variant = variant
            t0 = time.perf_counter()
            train(cfg, work / "data", work / f"model-{variant}", verbose=2, overwrite=True)
            model, _, _ = load_trained_model(work / f"model-{variant}")
            pu: dict = {}
            res = evaluate_brute_force(model, ds, "test", 0, (50, 200), per_user_out=pu)
            rows[variant] = dict(res["model"], train_seconds=time.perf_counter() - t0)
            rows["most_popular"] = res["most_popular"]
            per_user[variant], per_user["most_popular"] = pu["model"], pu["most_popular"]
            boot = pu["bootstrap"]
            print(variant, rows[variant], flush=True)
    diffs = {f"attention - {other}": paired_difference(per_user["attention"], per_user[other],
                                                        boot)
             for other in (*VARIANTS[1:], "most_popular")}
    out = {"config": args.config, "input": str(args.input or "generated"),
           "command": "python bench/bench_quality.py " + " ".join(sys.argv[1:]),
           "num_items": ds.num_items, "test_users": len(ds.test), "fgsm_eps": cfg.train.fgsm_eps,
           "bootstrap": res["bootstrap"], "results": rows, "paired_differences": diffs}
    write_json_atomic(Path(__file__).resolve().parent / "results" / f"quality-{args.config}.json",
                      out)
    print(f"\n{args.config}: {ds.num_items} items, {len(ds.test)} test users; 95% bootstrap "
          f"intervals over users\n")
    print("| model | recall-all@50 | recall-all@200 |\n|---|---|---|")
    for name in (*VARIANTS, "most_popular"):
        r = rows[name]
        print(f"| {name} | {_ci(r, 'recall_all@50')} | {_ci(r, 'recall_all@200')} |")
    for name, d in diffs.items():
        print(f"| {name} (paired) | {_ci(d, 'recall_all@50', '+')} | "
              f"{_ci(d, 'recall_all@200', '+')} |")


def _ci(r: dict, key: str, sign: str = "") -> str:
    lo, hi = r[f"{key}_ci95"]
    return f"{r[key]:{sign}.3f} [{lo:{sign}.3f}, {hi:{sign}.3f}]"


if __name__ == "__main__":
    main()

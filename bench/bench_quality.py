"""Model quality: recall-all@50/200 (exact top-M) of every model variant vs most popular.

Usage (repository root):

    python bench/bench_quality.py --config movielens-100k \
        --format movielens --input ../shared/data/movielens-100k
    python bench/bench_quality.py --config ci-synth          # generated data

Prepares the dataset (or generates it from the config's [data] synth_* keys when --input is
omitted), trains attention / sum_pool / two_tower with the config, evaluates each by brute force
on the test users, and writes bench/results/quality-<config>.json plus a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from nann_tf.config import load_config
from nann_tf.data.dataset import Dataset
from nann_tf.data.prepare import prepare_dataset
from nann_tf.evaluation.evaluate import evaluate_brute_force
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
        rows = {}
        for variant in VARIANTS:
            cfg.model.variant = variant
            t0 = time.perf_counter()
            train(cfg, work / "data", work / f"model-{variant}", verbose=2, overwrite=True)
            model, _, _ = load_trained_model(work / f"model-{variant}")
            res = evaluate_brute_force(model, ds, "test", 0, (50, 200))
            rows[variant] = dict(res["model"], train_seconds=time.perf_counter() - t0)
            rows["most_popular"] = res["most_popular"]
            print(variant, rows[variant], flush=True)
    out = {"config": args.config, "input": str(args.input or "generated"),
           "num_items": ds.num_items, "test_users": len(ds.test), "fgsm_eps": cfg.train.fgsm_eps,
           "results": rows}
    path = Path("bench/results") / f"quality-{args.config}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"\n{args.config}: {ds.num_items} items, {len(ds.test)} test users\n")
    print("| model | recall-all@50 | recall-all@200 |\n|---|---|---|")
    for name in (*VARIANTS, "most_popular"):
        r = rows[name]
        print(f"| {name} | {r['recall_all@50']:.4f} | {r['recall_all@200']:.4f} |")


if __name__ == "__main__":
    main()

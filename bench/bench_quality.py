"""Model quality: every model variant beside what a user would pick instead, on the same users.

Usage (repository root):

    python bench/bench_quality.py --config movielens-100k \
        --format movielens --input ../shared/data/movielens-100k
    python bench/bench_quality.py --data /tmp/ciaodvd --name ciaodvd   # a prepared dataset
    python bench/bench_quality.py --config ci-synth                    # generated data

Prepares the dataset (or takes a prepared one with ``--data``, or generates it from the config's
[data] synth_* keys), trains attention / sum_pool / two_tower with the config (``--config auto``,
the default, is the defaults that follow the data; every variant gets the same config, the
variant aside, so the comparison is fair), each with validation inside training, and evaluates on
the test users: the exact top-M of each model (recall-all@M, the paper's one ground-truth item,
and with ``--next-n N`` the next N behaviours beside it), the two-tower model served through an
hnswlib inner-product index (``two_tower_hnsw``), the two-tower model's exact list with the
user's history filtered out (``two_tower_unseen``: the post-filter a deployment adds where nobody
takes an item twice; the NANN model learns whether to do that from the data), and the
most-popular list. ``--seeds 0,1,2``
trains each variant once per seed and averages the per-user figures over the seeds. Writes
``bench/results/quality-<name>.json`` and prints a Markdown table; every figure has its 95%
bootstrap interval over the test users, and the attention model is compared with every other row
by the paired difference on the same users, with the paired interval.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nann_tf.autoconfig import load_config_for_data
from nann_tf.config import load_config
from nann_tf.data.dataset import Dataset
from nann_tf.data.prepare import prepare_dataset
from nann_tf.evaluation.baselines import two_tower_ann_topk, without_history
from nann_tf.evaluation.evaluate import evaluate_brute_force
from nann_tf.evaluation.metrics import Bootstrap, paired_difference, summarize_per_user
from nann_tf.fsutil import write_json_atomic
from nann_tf.model.saved import load_trained_model
from nann_tf.pipeline import Pipeline
from nann_tf.train import train

VARIANTS = ("attention", "sum_pool", "two_tower")


def _overrides(items):
    from nann_tf.config import parse_overrides

    return parse_overrides(items)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="auto")
    ap.add_argument("--format", default="userbehavior")
    ap.add_argument("--input", help="behaviour log (omit: --data, or generate from the config)")
    ap.add_argument("--data", help="a prepared dataset directory")
    ap.add_argument("--name", help="results name (default: the config's)")
    ap.add_argument("--workdir", help="keep artefacts here (default: a temporary directory)")
    ap.add_argument("--seeds", default="0", help="training seeds, averaged per user")
    ap.add_argument("--next-n", type=int, default=10)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    name = args.name or Path(args.config).stem
    ms = (50, 200)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = Path(args.data) if args.data else work / "data"
        if args.data is None and args.input is None:  # generated from the config
            Pipeline(work, load_config(args.config)).run("prepare")
        elif args.data is None:
            dc = load_config(args.config).data if args.config != "auto" else None
            kw = {} if dc is None else dict(max_len=dc.max_len, min_len=dc.min_len,
                                            val_users=dc.val_users, test_users=dc.test_users,
                                            seed=dc.split_seed)
            prepare_dataset(args.input, data, args.format, overwrite=True, **kw)
        ds = Dataset.load(data)
        per_user, rows, configs = {}, {}, {}
        boot = Bootstrap(len(ds.test), 1000, 0)
        pop_res = None
        for variant in VARIANTS:
            runs, extra, seconds, epochs = [], {}, [], []
            for seed in seeds:
                cfg = load_config_for_data(args.config, ds, {**_overrides(args.set),
                                                              "model.variant": variant,
                                                              "train.seed": seed})
                out = work / f"model-{variant}-s{seed}"
                t0 = time.perf_counter()
                summary = train(cfg, data, out, verbose=2, overwrite=True)
                seconds.append(time.perf_counter() - t0)
                epochs.append(summary["steps_run_now"] / summary["steps_per_epoch"])
                model, _, _ = load_trained_model(out)
                pu: dict = {}
                res = evaluate_brute_force(model, ds, "test", 0, ms, per_user_out=pu,
                                           next_n=args.next_n)
                runs.append(pu["model"])
                pop_res = pu["most_popular"]
                if variant == "two_tower":
                    for key, ids in (
                            ("two_tower_hnsw", two_tower_ann_topk(model, ds.test.hist, max(ms))),
                            ("two_tower_unseen", without_history(
                                _exact(model, ds.test.hist, max(ms) + ds.max_len),
                                ds.test.hist, max(ms)))):
                        pa: dict = {}
                        evaluate_brute_force(None, ds, "test", 0, ms, per_user_out=pa,
                                             next_n=args.next_n, top_ids=ids)
                        extra.setdefault(key, []).append(pa["model"])
            configs[variant] = cfg.to_dict()
            per_user[variant] = _mean_runs(runs)
            rows[variant] = dict(summarize_per_user(per_user[variant], boot),
                                 train_seconds=float(np.mean(seconds)),
                                 epochs=float(np.mean(epochs)))
            for key, key_runs in extra.items():
                per_user[key] = _mean_runs(key_runs)
                rows[key] = summarize_per_user(per_user[key], boot)
            print(variant, rows[variant], flush=True)
        per_user["most_popular"] = pop_res
        rows["most_popular"] = summarize_per_user(pop_res, boot)
    keys = res["metrics"]
    diffs = {f"attention - {other}": paired_difference(per_user["attention"], per_user[other],
                                                        boot)
             for other in per_user if other != "attention"}
    out = {"name": name, "config": args.config, "input": str(args.input or args.data or
                                                             "generated"),
           "command": "python bench/bench_quality.py " + " ".join(sys.argv[1:]),
           "num_items": ds.num_items, "test_users": len(ds.test), "seeds": seeds,
           "next_n": args.next_n, "metrics": keys, "bootstrap": res["bootstrap"],
           "configs": configs, "results": rows, "paired_differences": diffs}
    write_json_atomic(Path(__file__).resolve().parent / "results" / f"quality-{name}.json", out)
    print(f"\n{name}: {ds.num_items} items, {len(ds.test)} test users, seeds {seeds}; 95% "
          f"bootstrap intervals over users\n")
    print("| model | " + " | ".join(k.replace("_", "-") for k in keys) + " |")
    print("|---|" + "---|" * len(keys))
    for row_name, r in rows.items():
        print(f"| {row_name} | " + " | ".join(_ci(r, k) for k in keys) + " |")
    for row_name, d in diffs.items():
        print(f"| {row_name} (paired) | " + " | ".join(_ci(d, k, "+") for k in keys) + " |")


def _exact(model, hist, k):
    from nann_tf.model.nann import all_item_embeddings
    from nann_tf.search.brute_force import ExactScorer

    return ExactScorer(model, all_item_embeddings(model)).topk(hist, k, progress=False)[0]


def _mean_runs(runs: list[dict]) -> dict:
    """Per-user figures averaged over seeds."""
    return {k: np.mean([r[k] for r in runs], axis=0) for k in runs[0]}


def _ci(r: dict, key: str, sign: str = "") -> str:
    lo, hi = r[f"{key}_ci95"]
    return f"{r[key]:{sign}.3f} [{lo:{sign}.3f}, {hi:{sign}.3f}]"


if __name__ == "__main__":
    main()

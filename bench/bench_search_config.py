"""The model search against the shipped config, on the test users (paired intervals).

Usage (repository root):

    python bench/bench_search_config.py --data /tmp/ml100k --name movielens-100k \
        --config movielens-100k --budget-minutes 45

Runs ``nann-tf search-config`` on the dataset (its validation users only) from ``--config``
with the budget, then trains the shipped config and the best config found, each with
``--seeds``, and evaluates both on the test users (exact top-M: recall-all@50/200 of the paper's
target and of the next ``--next-n`` behaviours) with the paired difference (best - shipped) and
its 95% interval. The search's study directory is kept (``--workdir``), so running the command
again resumes the search instead of starting over. Writes
``bench/results/search-config-<name>.json`` and prints a Markdown table.
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
from nann_tf.train.model_search import run_search


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--config", default="auto")
    ap.add_argument("--budget-minutes", type=float, default=45)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--next-n", type=int, default=10)
    ap.add_argument("--workdir")
    args = ap.parse_args()
    ds = Dataset.load(args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        base = load_config_for_data(args.config, ds)
        t0 = time.perf_counter()
        search = run_search(base, args.data, work / "best.toml",
                            budget_minutes=args.budget_minutes, study_dir=work / "study")
        search_minutes = (time.perf_counter() - t0) / 60
        print(search["table"], flush=True)
        per_user, info = {}, {}
        for label, config in (("shipped", args.config), ("searched", str(work / "best.toml"))):
            runs = []
            for seed in seeds:
                cfg = load_config_for_data(config, ds, {"train.seed": seed})
                out = work / f"{label}-s{seed}"
                train(cfg, args.data, out, verbose=2, overwrite=True)
                model, _, _ = load_trained_model(out)
                pu: dict = {}
                res = evaluate_brute_force(model, ds, "test", 0, (50, 200), per_user_out=pu,
                                           next_n=args.next_n)
                runs.append(pu["model"])
            per_user[label] = {k: np.mean([r[k] for r in runs], axis=0) for k in runs[0]}
            info[label] = cfg.to_dict()
    boot = Bootstrap(len(ds.test), 1000, 0)
    rows = {label: summarize_per_user(pu, boot) for label, pu in per_user.items()}
    diff = paired_difference(per_user["searched"], per_user["shipped"], boot)
    keys = res["metrics"]
    out = {"name": args.name, "data": str(args.data), "config": args.config,
           "command": "python bench/bench_search_config.py " + " ".join(sys.argv[1:]),
           "budget_minutes": args.budget_minutes, "search_minutes": search_minutes,
           "search": {k: v for k, v in search.items() if k != "table"},
           "trials_table": search["table"], "seeds": seeds, "test_users": len(ds.test),
           "configs": info, "results": rows, "searched_minus_shipped": diff}
    write_json_atomic(Path(__file__).resolve().parent / "results" /
                      f"search-config-{args.name}.json", out)
    print(f"\n{args.name}: {len(ds.test)} test users, seeds {seeds}; the search: "
          f"{search['trials_scored']} trials in {search_minutes:.0f} minutes, best trial "
          f"{search['best_trial']} {search['best_params']}\n")
    print("| config | " + " | ".join(k.replace("_", "-") for k in keys) + " |")
    print("|---|" + "---|" * len(keys))
    for label, r in rows.items():
        print(f"| {label} | " + " | ".join(
            f"{r[k]:.3f} [{r[k + '_ci95'][0]:.3f}, {r[k + '_ci95'][1]:.3f}]" for k in keys) + " |")
    print("| searched - shipped (paired) | " + " | ".join(
        f"{diff[k]:+.3f} [{diff[k + '_ci95'][0]:+.3f}, {diff[k + '_ci95'][1]:+.3f}]"
        for k in keys) + " |")


if __name__ == "__main__":
    main()

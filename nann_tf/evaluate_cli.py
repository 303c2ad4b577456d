"""``nann-tf evaluate``: recall of the trained model on held-out users.

``--brute-force`` scores the whole corpus for every test user (exact top-M: recall-all@M) and
prints it beside the most-popular baseline.
"""

from __future__ import annotations

import argparse
import json
import time

from nann_tf.cli import CliError

__all__ = ["add_arguments", "run", "evaluate_brute_force"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory from `nann-tf train`")
    p.add_argument("--data", required=True, help="dataset directory from `nann-tf prepare`")
    p.add_argument("--brute-force", action="store_true",
                   help="exact top-M over the whole corpus (recall-all@M)")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--users", type=int, default=0,
                   help="evaluate the first N held-out users only (0: all)")
    p.add_argument("--at", default="50,200", help="comma-separated M values (default 50,200)")
    p.add_argument("--output-json", help="also write the results to this JSON file")


def _parse_at(text: str) -> list[int]:
    try:
        ms = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        ms = []
    if not ms or min(ms) <= 0:
        raise CliError(f"--at {text!r}: expected comma-separated positive integers, e.g. 50,200")
    return ms


def evaluate_brute_force(model, ds, split: str = "test", users: int = 0,
                         ms=(50, 200)) -> dict:
    """recall-all@M of the model (exact top-M) and of most-popular on a held-out split."""
    from nann_tf.evaluate import brute_force_topk, most_popular_topk, recall_at

    held = getattr(ds, split)
    hist, target = held.hist, held.target
    if users:
        hist, target = hist[:users], target[:users]
    t0 = time.perf_counter()
    ids, _ = brute_force_topk(model, hist, max(ms))
    seconds = time.perf_counter() - t0
    pop = most_popular_topk(ds.item_freq, max(ms))
    out = {"split": split, "users": int(len(target)), "num_items": int(ds.num_items),
           "brute_force_seconds": seconds, "model": {}, "most_popular": {}}
    for m in ms:
        out["model"][f"recall_all@{m}"] = recall_at(ids, target, m)
        out["most_popular"][f"recall_all@{m}"] = recall_at(pop, target, m)
    return out


def run(args: argparse.Namespace) -> int:
    from nann_tf.data.dataset import DataError, Dataset
    from nann_tf.train import TrainError, load_trained_model

    ms = _parse_at(args.at)
    if not args.brute_force:
        raise CliError("nothing to evaluate: pass --brute-force")
    try:
        ds = Dataset.load(args.data)
        model, cfg, meta = load_trained_model(args.model)
    except (DataError, TrainError) as e:
        raise CliError(str(e)) from e
    if meta["num_items"] != ds.num_items:
        raise CliError(f"--model {args.model} was trained on {meta['num_items']} items but "
                       f"--data {args.data} has {ds.num_items}: not the same dataset")
    res = evaluate_brute_force(model, ds, args.split, args.users, ms)
    res["variant"] = cfg.model.variant
    print(f"{args.split} users: {res['users']}, items: {res['num_items']}, "
          f"model: {cfg.model.variant}")
    print(f"{'method':<24}" + "".join(f"{'recall-all@' + str(m):>16}" for m in ms))
    for name, row in [(f"brute force ({cfg.model.variant})", res["model"]),
                      ("most popular", res["most_popular"])]:
        print(f"{name:<24}" + "".join(f"{row[f'recall_all@{m}']:>16.4f}" for m in ms))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(res, f, indent=2)
    return 0

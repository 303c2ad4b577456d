"""``nann-tf update-index``: a new index with items launched and items retired, in minutes."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the model directory that built --index")
    p.add_argument("--index", required=True, help="the index directory to start from (not "
                                                  "changed)")
    p.add_argument("--output", required=True, help="the new index directory (must not exist)")
    p.add_argument("--add-items", metavar="FILE",
                   help="an item table of new items (CSV/TSV/Parquet): raw id and raw category "
                        "id; placed from their category (--cold-start; the model has no id "
                        "embedding for them) and inserted into the graph")
    p.add_argument("--columns", metavar="item=COL,category=COL",
                   help="--add-items's columns: header names or 1-based positions")
    p.add_argument("--retire-items", metavar="FILE",
                   help="raw ids, one per line: never returned again by any signature, still "
                        "valid in histories and as seeds")
    p.add_argument("--cold-start", choices=["popular", "category"], default="popular",
                   help="a launched item's embedding: that of its category's most frequent item "
                        "in training (popular, the default) or the item network on its category "
                        "alone (category; what [model] id_dropout trains)")
    p.add_argument("--threads", type=int, default=0, help="insertion threads (0: all cores)")


def run(args: argparse.Namespace) -> int:
    from nann_tf.index.update import update_index

    info = update_index(args.model, args.index, args.output, add_items=args.add_items,
                        columns=args.columns, retire_items=args.retire_items,
                        num_threads=args.threads, cold_start=args.cold_start)
    print(f"index -> {args.output}: {info['added_items']} items launched "
          f"({info['new_categories']} new categories; cold start: "
          f"{info.get('cold_start', args.cold_start)}), {info['retired_items']} retired in all, "
          f"in {info['seconds']:.1f}s; publish it with `nann-tf export --model {args.model} "
          f"--index {args.output} --output <base path>` (the next version)")
    return 0

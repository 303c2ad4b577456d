"""``nann-tf build-index``: e_v for every item with the trained item network + the HNSW graph."""

from __future__ import annotations

import argparse
import logging


__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory from `nann-tf train`")
    p.add_argument("--data", required=True, help="the dataset directory it was trained on")
    p.add_argument("--output", required=True, help="index directory to write")
    p.add_argument("--M", type=int, default=None, help="HNSW links per node (config: 32)")
    p.add_argument("--ef-construction", type=int, default=None,
                   help="HNSW build beam width (config: 40)")
    p.add_argument("--threads", type=int, default=None, help="build threads (0: all cores)")
    p.add_argument("--tune-coverage", type=float, default=None,
                   help="measure the cheapest beam parameters reaching this coverage@k on "
                        "validation users and record them for the export (default 0.99; 0: "
                        "off); used when the model's [search] table followed the data")


def run(args: argparse.Namespace) -> int:
    from nann_tf.index.build import build_index

    if args.tune_coverage is not None and not 0 <= args.tune_coverage <= 1:
        from nann_tf.cli import CliError

        raise CliError(f"--tune-coverage {args.tune_coverage}: expected a value in [0, 1] (0: "
                       "off)")
    info = build_index(args.model, args.data, args.output, args.M, args.ef_construction,
                       args.threads, tune_coverage=args.tune_coverage)
    print(f"index -> {args.output}: {info['nodes_per_level'][0]} items, levels "
          f"{info['nodes_per_level']}, e_v {info['embed_seconds']:.1f}s, HNSW "
          f"{info['hnsw_build_seconds']:.1f}s")
    tuned = info.get("tuned_search")
    if tuned:
        print(f"search tuned on {tuned['users']} validation users: start level "
              f"{tuned['start_level']}, ef {tuned['ef']}, T {tuned['T'] or '-'}: coverage@"
              f"{tuned['k']} {tuned['coverage']:.4f} (95% bound "
              f"{tuned['coverage_low']:.4f}), "
              f"{100 * tuned['scored_fraction']:.2f}% of "
              "the corpus scored per query")
    return 0

"""``nann-tf train``: train the NANN model on a prepared dataset."""

from __future__ import annotations

import argparse
import json

from nann_tf.cli import CliError

__all__ = ["add_arguments", "run", "parse_overrides"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="auto",
                   help="config name in configs/ (e.g. ci-synth) or a .toml path (default: "
                        "auto: every key the data rules cover follows the dataset; a file's "
                        "own keys are used as given, the rules fill in the others)")
    p.add_argument("--data", required=True, help="dataset directory from `nann-tf prepare`")
    p.add_argument("--output", required=True,
                   help="model directory (an interrupted run there is resumed)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 "
                        "--set model.variant=two_tower (VALUE is TOML/JSON)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished model")
    p.add_argument("--warm-start", metavar="MODEL_DIR",
                   help="start from a model trained on an earlier dataset: item and category "
                        "rows carried over by raw id (new ids fresh, vanished ids dropped), every "
                        "other weight copied (same [model] table), optimizer fresh")


def parse_overrides(items: list[str]) -> dict:
    """``["train.epochs=3", "model.variant=sum_pool"]`` -> ``{"train.epochs": 3, ...}``
    (:func:`nann_tf.config.parse_overrides`, its errors naming ``--set``)."""
    from nann_tf.config import ConfigError, parse_overrides as parse

    try:
        return parse(items)
    except ConfigError as e:
        raise CliError(f"--set {e}") from e


def run(args: argparse.Namespace) -> int:
    from nann_tf.autoconfig import load_config_for_data
    from nann_tf.config import ConfigError
    from nann_tf.data.dataset import DataError
    from nann_tf.train import TrainError, train

    try:
        cfg = load_config_for_data(args.config, args.data, parse_overrides(args.set))
        summary = train(cfg, args.data, args.output, overwrite=args.overwrite,
                        warm_start_from=args.warm_start)
    except (ConfigError, DataError, TrainError) as e:
        raise CliError(str(e)) from e
    best = ""
    metric = next((k[4:] for k in summary if k.startswith("val_")), None)
    if metric:
        best = (f"; best validation {metric} {summary['val_' + metric]:.4f} at step "
                f"{summary['best_step']}{' (stopped early)' if summary['stopped_early'] else ''}")
    print(f"trained {cfg.model.variant} model -> {args.output}: "
          f"{summary['examples_per_s']:.0f} examples/s{best}, final {summary['final']}")
    return 0

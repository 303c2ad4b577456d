"""``nann-tf prepare``: behaviour log -> dataset directory.

Examples::

    nann-tf prepare --format userbehavior --input UserBehavior.csv --output data/ub \\
        --config userbehavior
    nann-tf prepare --format movielens --input ../shared/data/movielens-100k \\
        --output data/ml-100k --config movielens-100k --min-rating 4
    nann-tf prepare --format csv --input ratings.csv --output data/ratings

Formats: ``userbehavior`` (``user_id,item_id,category_id,behavior_type,timestamp``, no
header), ``movielens`` (RecBole ``.inter`` + ``.item``; a directory input is searched for them;
category = first genre), ``csv`` (``user,item,rating,timestamp``, optional header, no
category). Options not given come from the ``[data]`` table of ``--config`` (or the defaults).
"""

from __future__ import annotations

import argparse
import logging

from nann_tf.data.readers import INPUT_FORMATS as FORMATS  # numpy only, no TensorFlow

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``prepare`` options to ``parser``."""
    parser.add_argument("--format", required=True, metavar="FORMAT",
                        help=f"input format: {', '.join(FORMATS)}")
    parser.add_argument("--input", required=True,
                        help="the log file (movielens: the .inter file or its directory)")
    parser.add_argument("--item-file", help="movielens: the .item file (categories)")
    parser.add_argument("--output", required=True, help="dataset directory to write")
    parser.add_argument("--config", help="config name or .toml path for the defaults")
    parser.add_argument("--max-len", type=int, help="history length L (config: max_len)")
    parser.add_argument("--min-len", type=int,
                        help="drop users with fewer behaviours (config: min_len)")
    parser.add_argument("--val-users", type=int, help="validation users (config: val_users)")
    parser.add_argument("--test-users", type=int, help="test users (config: test_users)")
    parser.add_argument("--seed", type=int, help="seed of the held-out split (config: split_seed)")
    parser.add_argument("--min-rating", type=float,
                        help="movielens/csv: keep only ratings >= this")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing non-empty output directory")


def run(args: argparse.Namespace) -> int:
    """Runs ``prepare`` and prints a summary."""
    from nann_tf.cli import CliError
    from nann_tf.config import ConfigError, DataConfig, load_config
    from nann_tf.data.dataset import DataError
    from nann_tf.data.prepare import prepare_dataset

    if args.format not in FORMATS:
        raise CliError(f"unknown format {args.format!r} (expected one of {', '.join(FORMATS)})")
    if args.min_rating is not None and args.format == "userbehavior":
        raise CliError("--min-rating: the userbehavior format has no rating column")
    try:
        cfg = load_config(args.config).data if args.config else DataConfig()
    except ConfigError as e:
        raise CliError(str(e)) from e

    def pick(value, default):
        return default if value is None else value

    try:
        meta = prepare_dataset(
            args.input, args.output, args.format, item_file=args.item_file,
            max_len=pick(args.max_len, cfg.max_len), min_len=pick(args.min_len, cfg.min_len),
            val_users=pick(args.val_users, cfg.val_users),
            test_users=pick(args.test_users, cfg.test_users),
            seed=pick(args.seed, cfg.split_seed), min_rating=args.min_rating,
            overwrite=args.overwrite)
    except DataError as e:
        raise CliError(str(e)) from e
    except OSError as e:  # unreadable input, full disk ...: nothing was left half-written
        raise CliError(f"{e.filename or args.output}: {e.strerror or e}") from e
    print(f"wrote {args.output}: {meta['num_items']} items, {meta['num_categories']} "
          f"categories, {meta['num_train_users']} train users ({meta['num_train_samples']} "
          f"samples), {meta['num_val_users']} val, {meta['num_test_users']} test users "
          f"from {meta['rows']} rows ({meta['rows_kept']} kept)")
    return 0

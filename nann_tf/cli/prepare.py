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
    parser.add_argument("--item-file", help="movielens: the .item file (categories); table: an "
                        "item table (with --item-columns)")
    parser.add_argument("--output", required=True, help="dataset directory to write")
    parser.add_argument("--config", help="config name or .toml path for the defaults")
    parser.add_argument("--max-len", type=int, help="history length L (config: max_len)")
    parser.add_argument("--min-len", type=int,
                        help="drop users with fewer behaviours (config: min_len)")
    parser.add_argument("--train-min-len", type=int,
                        help="users with fewer than --min-len but at least this many behaviours "
                             "train too (never held out); default: the config's train_min_len")
    parser.add_argument("--val-users", type=int,
                        help="validation users, honoured exactly (default: the config's "
                             "val_users, scaled to at most 10%% of the users)")
    parser.add_argument("--test-users", type=int,
                        help="test users, honoured exactly (default: the config's test_users, "
                             "scaled to at most 10%% of the users)")
    parser.add_argument("--seed", type=int, help="seed of the held-out split (config: split_seed)")
    parser.add_argument("--min-rating", type=float,
                        help="movielens/csv/table: keep only ratings >= this")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing non-empty output directory")
    t = parser.add_argument_group(
        "the table format: any CSV/TSV/Parquet log, with a column mapping")
    t.add_argument("--columns", metavar="ROLE=COLUMN,...",
                   help="e.g. user=userId,item=movieId,time=timestamp,rating=rating,"
                        "category=genres; roles user and item are required; a column is a "
                        "header name or a 1-based position")
    t.add_argument("--item-columns", metavar="item=COLUMN,category=COLUMN",
                   help="the columns of --item-file (its categories, e.g. genres)")
    t.add_argument("--table-format", choices=["csv", "tsv", "parquet"],
                   help="default: from the file name (.parquet/.pq, .tsv/.tab, else csv)")
    t.add_argument("--delimiter", help="CSV field separator (default: sniffed); \\t for a tab")
    t.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the first line is a header (default: yes when --columns "
                        "names columns, no when it gives positions)")
    t.add_argument("--category-sep", default="|",
                   help="separator of a multi-valued category field (default |; '' = none)")
    t.add_argument("--category-rule", default="first", choices=["first", "most-frequent"],
                   help="a multi-valued category's value: the first, or per item the most "
                        "frequent (default first)")


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

    table = None
    table_flags = {"--item-columns": args.item_columns, "--table-format": args.table_format,
                   "--delimiter": args.delimiter, "--header": args.header}
    if args.format == "table":
        if not args.columns:
            raise CliError("--format table needs --columns ROLE=COLUMN,... (e.g. "
                           "user=userId,item=movieId,time=timestamp)")
        from nann_tf.data.table import TableSpec

        delimiter = args.delimiter.replace("\\t", "\t") if args.delimiter else None
        if delimiter is not None and len(delimiter) != 1:
            raise CliError(f"--delimiter {args.delimiter!r}: expected one character")
        table = TableSpec(args.columns, file_format=args.table_format, delimiter=delimiter,
                          header=args.header, item_columns=args.item_columns,
                          category_sep=args.category_sep, category_rule=args.category_rule)
    else:
        given = [flag for flag, v in [("--columns", args.columns), *table_flags.items()]
                 if v is not None]
        if given:
            raise CliError(f"{', '.join(given)}: only for --format table")

    try:
        meta = prepare_dataset(
            args.input, args.output, args.format, item_file=args.item_file,
            max_len=pick(args.max_len, cfg.max_len), min_len=pick(args.min_len, cfg.min_len),
            val_users=pick(args.val_users, cfg.val_users),
            test_users=pick(args.test_users, cfg.test_users),
            seed=pick(args.seed, cfg.split_seed), min_rating=args.min_rating,
            overwrite=args.overwrite, table=table,
            explicit_held_out=(args.val_users is not None, args.test_users is not None),
            train_min_len=pick(args.train_min_len, cfg.train_min_len) or None)
    except DataError as e:
        raise CliError(str(e)) from e
    except OSError as e:  # unreadable input, full disk ...: nothing was left half-written
        raise CliError(f"{e.filename or args.output}: {e.strerror or e}") from e
    print(f"wrote {args.output}: {meta['num_items']} items, {meta['num_categories']} "
          f"categories, {meta['num_train_users']} train users ({meta['num_train_samples']} "
          f"samples), {meta['num_val_users']} val, {meta['num_test_users']} test users "
          f"from {meta['rows']} rows ({meta['rows_kept']} kept)")
    return 0

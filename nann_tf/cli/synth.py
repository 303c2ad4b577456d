"""``nann-tf synth``: write a synthetic UserBehavior-format behaviour log.

Example::

    nann-tf synth --users 3000 --items 2000 --categories 20 --output /tmp/log.csv
    nann-tf synth --config synth-1m --output /data/synth-1m.csv

Counts not given on the command line come from the ``[data]`` table of ``--config`` (the
``synth_*`` keys), or from the built-in defaults.

A log of more than :data:`STREAM_ABOVE_ROWS` expected rows (users x events per user) is
generated and written in blocks of about ``--block-rows`` rows, so that memory is bounded by a
block (the paper-scale log is 100M rows); smaller logs are generated in memory. The two draw
different random streams, so ``--block-rows`` is part of what makes a log reproducible.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

__all__ = ["add_arguments", "run", "STREAM_ABOVE_ROWS"]

STREAM_ABOVE_ROWS = 20_000_000
BLOCK_ROWS = 4_000_000

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``synth`` options to ``parser``."""
    parser.add_argument("--users", type=int, help="number of users (config: synth_users)")
    parser.add_argument("--items", type=int, help="number of items (config: synth_items)")
    parser.add_argument("--categories", type=int,
                        help="number of item categories (config: synth_categories)")
    parser.add_argument("--events-per-user", type=int,
                        help="mean behaviours per user (config: synth_events_per_user)")
    parser.add_argument("--seed", type=int, help="random seed (config: synth_seed)")
    parser.add_argument("--config", help="config name or .toml path for the defaults")
    parser.add_argument("--output", required=True, help="CSV file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    parser.add_argument("--block-rows", type=int,
                        help="generate and write in blocks of about this many rows (bounded "
                             "memory); 0: in memory. Default: 0 up to "
                             f"{STREAM_ABOVE_ROWS:,} expected rows, else {BLOCK_ROWS:,}")


def run(args: argparse.Namespace) -> int:
    """Generates the log and writes it (atomically)."""
    from nann_tf.cli import CliError
    from nann_tf.config import ConfigError, DataConfig, load_config
    from nann_tf.data.synth import generate_log, write_synthetic_log, write_userbehavior_csv

    try:
        cfg = load_config(args.config).data if args.config else DataConfig()
    except ConfigError as e:
        raise CliError(str(e)) from e
    params = {
        "users": args.users if args.users is not None else cfg.synth_users,
        "items": args.items if args.items is not None else cfg.synth_items,
        "categories": args.categories if args.categories is not None else cfg.synth_categories,
        "events-per-user": (args.events_per_user if args.events_per_user is not None
                            else cfg.synth_events_per_user),
    }
    for name, value in params.items():
        if value < 1:
            raise CliError(f"--{name} must be >= 1, got {value}")
    seed = args.seed if args.seed is not None else cfg.synth_seed
    out = Path(args.output)
    if out.is_dir():
        raise CliError(f"--output {out}: is a directory (expected a file path)")
    if not out.parent.is_dir():
        raise CliError(f"--output {out}: directory {out.parent} does not exist")
    if out.exists() and not args.overwrite:
        raise CliError(f"--output {out}: file exists (pass --overwrite to replace it)")

    expected = params["users"] * params["events-per-user"]
    block_rows = args.block_rows
    if block_rows is None:
        block_rows = BLOCK_ROWS if expected > STREAM_ABOVE_ROWS else 0
    if block_rows < 0:
        raise CliError(f"--block-rows must be >= 0, got {block_rows}")
    t0 = time.perf_counter()
    try:
        if block_rows:
            log.info("about %d rows: generating in blocks of ~%d rows (--block-rows)",
                     expected, block_rows)
            rows = write_synthetic_log(out, params["users"], params["items"],
                                       params["categories"], params["events-per-user"], seed,
                                       chunk_rows=block_rows)
        else:
            cols = generate_log(params["users"], params["items"], params["categories"],
                                params["events-per-user"], seed)
            rows = write_userbehavior_csv(cols, out)
    except OSError as e:
        raise CliError(f"--output {out}: {e.strerror or e}") from e
    dt = time.perf_counter() - t0
    log.info("generated and wrote %d rows to %s in %.2fs (%.0f rows/s)", rows, out, dt,
             rows / max(dt, 1e-9))
    print(f"wrote {rows} rows ({params['users']} users, {params['items']} items, "
          f"{params['categories']} categories, seed {seed}"
          f"{f', blocks of ~{block_rows} rows' if block_rows else ''}) to {out}")
    return 0

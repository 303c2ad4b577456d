"""Throughput of ``nann-tf synth`` and ``nann-tf prepare`` on a large synthetic log.

Run from the repository root::

    python bench/bench_prepare.py --rows 10000000

It generates a log of about ``--rows`` behaviours (users = rows / events-per-user), writes it
as UserBehavior CSV, prepares a dataset from it, reads the same log through the ``table``
format as CSV and as a Parquet copy (checking all three give the same columns), and writes
``bench/results/prepare.json``
(also printed): rows, wall seconds and rows/s of each stage, CPU seconds (the cost when other
jobs share the cores: see ``load_avg_1m``), and the machine. The log and dataset go
to a temporary directory that is deleted afterwards (``--workdir`` to keep them). The 10M-row
log is about 390 MB; the run takes well under a minute and about 1.5 GB of memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nann_tf.data.dataset import Dataset  # noqa: E402
from nann_tf.data.prepare import build_dataset, write_dataset  # noqa: E402
from nann_tf.data.readers import read_log  # noqa: E402
from nann_tf.data import synth  # noqa: E402
from nann_tf.data.synth import generate_log, write_userbehavior_csv  # noqa: E402
from nann_tf.data.table import TableSpec  # noqa: E402
from nann_tf.fsutil import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "prepare.json"


class _Clock:
    """Wall and CPU seconds of a block (CPU time shows the cost when the machine is shared)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def _rate(rows: int, clocks: list[_Clock]) -> dict:
    wall, cpu = sum(c.wall for c in clocks), sum(c.cpu for c in clocks)
    return {"rows": rows, "seconds": round(wall, 3), "rows_per_s": round(rows / wall),
            "cpu_seconds": round(cpu, 3), "rows_per_cpu_s": round(rows / cpu)}


def _write_parquet(csv_path: Path, out: Path) -> None:
    """The UserBehavior CSV as Parquet, streamed (row groups of 1M rows)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    names = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
    reader = pacsv.open_csv(csv_path, pacsv.ReadOptions(column_names=names))
    with pq.ParquetWriter(out, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch, row_group_size=1 << 20)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="approximate log size")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--categories", type=int, default=2000)
    ap.add_argument("--events-per-user", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="keep the log and dataset here")
    ap.add_argument("--output", default=str(RESULTS), help="results JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-prep-"))
    work.mkdir(parents=True, exist_ok=True)
    log_path, ds_path = work / "log.csv", work / "dataset"
    try:
        # Users for about --rows rows: the mean sequence length, measured on a cheap pilot of
        # the generator's length distribution (clipping and short users move it off the target).
        pilot = synth._sequence_lengths(np.random.default_rng(0), 200_000, args.events_per_user,
                                        synth.SynthParams().short_user_frac)
        users = max(1, round(args.rows / pilot.mean()))
        with _Clock() as c_gen:
            cols = generate_log(users, args.items, args.categories, args.events_per_user,
                                args.seed)
        rows = len(cols["user_id"])
        with _Clock() as c_write:
            write_userbehavior_csv(cols, log_path)
        del cols

        with _Clock() as c_read:
            data = read_log("userbehavior", log_path)
        # The same log through the table format: the CSV with a positional mapping, and a
        # Parquet copy (row groups of 1M rows) with named columns; both must read the same.
        spec = TableSpec("user=1,item=2,category=3,time=5")
        with _Clock() as c_tcsv:
            tcsv = read_log("table", log_path, table=spec)
        pq_path = work / "log.parquet"
        with _Clock() as c_topq:
            _write_parquet(log_path, pq_path)
        with _Clock() as c_tpq:
            tpq = read_log("table", pq_path, table=TableSpec(
                "user=user_id,item=item_id,category=category_id,time=timestamp"))
        for other in (tcsv, tpq):
            for col in ("user", "item", "timestamp", "category"):
                assert np.array_equal(getattr(other, col), getattr(data, col)), col
        del tcsv, tpq
        with _Clock() as c_build:
            ds = build_dataset(data, max_len=50, min_len=10, val_users=10000, test_users=10000)
        del data
        if ds_path.exists():
            shutil.rmtree(ds_path)
        with _Clock() as c_save:
            write_dataset(ds, ds_path)
        with _Clock() as c_load:
            loaded = Dataset.load(ds_path)

        result = {
            "benchmark": "prepare",
            "command": "python bench/bench_prepare.py " + " ".join(argv or sys.argv[1:]),
            "log_bytes": log_path.stat().st_size,
            "users": users, "items": args.items, "categories": args.categories,
            "synth": {**_rate(rows, [c_gen, c_write]), "generate_s": round(c_gen.wall, 3),
                      "write_csv_s": round(c_write.wall, 3)},
            "prepare": {**_rate(rows, [c_read, c_build, c_save]),
                        "read_s": round(c_read.wall, 3), "build_s": round(c_build.wall, 3),
                        "write_s": round(c_save.wall, 3)},
            "load_s": round(c_load.wall, 3),
            "table_format_read": {
                "csv": _rate(rows, [c_tcsv]),
                "parquet": {**_rate(rows, [c_tpq]), "bytes": pq_path.stat().st_size,
                            "csv_to_parquet_s": round(c_topq.wall, 3)},
                "userbehavior_reader": _rate(rows, [c_read]),
            },
            "dataset": {k: loaded.meta[k] for k in ("num_items", "num_categories",
                                                    "num_train_users", "num_train_samples",
                                                    "num_val_users", "num_test_users",
                                                    "rows_kept")},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                        "platform": platform.platform(),
                        "python": platform.python_version(), "numpy": np.__version__},
        }
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    write_json_atomic(args.output, result, sort_keys=False)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

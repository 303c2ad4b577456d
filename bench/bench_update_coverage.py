"""Coverage of an updated catalogue's version, for yesterday's graphs built differently.

Usage (repository root; the artefacts of ``bench/bench_launch.py``'s daily loop: a model,
yesterday's index or indexes, the launched items' table and the retired ids, today's dataset):

    python bench/bench_update_coverage.py --model W/model-dropout0.1 \
        --index efc40=W/index-1 --index efc200=W/index-1-efc200 \
        --add-items W/new.csv --retire-items W/retired.txt \
        --yesterday W/data-yesterday --today D --name synth-1m

For each of yesterday's indexes: ``update-index`` (the launched items added, the retired ones
retired), ``export`` as a version (the model's default search), then, in a fresh session of that
version, coverage@200 of ``serving_default`` against its ``brute_force`` over the updated
catalogue for ``--users`` of today's test users (histories with launched ids), with its 95%
bootstrap interval, the worst user, the items scored, and the retired items returned (must be
0). Times of update-index and export beside. Writes
``bench/results/update-coverage-<name>.json``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent


def measure(args, index: Path, work: Path) -> dict:
    from nann_tf.data.dataset import Dataset
    from nann_tf.evaluation.metrics import Bootstrap
    from nann_tf.export.export import export_version
    from nann_tf.index.store import load_index
    from nann_tf.index.update import update_index
    from nann_tf.serving.loader import SessionModel

    updated, base = work / "index-2", work / "models" / "nann"
    t0 = time.perf_counter()
    upd = update_index(args.model, index, updated, add_items=args.add_items,
                       columns="item=item,category=category", retire_items=args.retire_items)
    t1 = time.perf_counter()
    info = export_version(args.model, updated, base, data_dir=args.yesterday)
    t2 = time.perf_counter()
    today = Dataset.load(args.today)
    hist = today.raw_items(today.test.hist[:args.users])
    with SessionModel(base / "1", load_ops=info["visited"] != "tf") as sm:
        out = sm.run("serving_default", {"hist_item_ids": hist})
        exact = sm.run("brute_force", {"hist_item_ids": hist})["item_ids"]
    got = out["item_ids"]
    per_user = np.array([len(set(g) & set(e)) / len(e) for g, e in zip(got, exact)])
    gone = {int(x) for x in Path(args.retire_items).read_text().split()}
    boot = Bootstrap(len(per_user), seed=0)
    return {"index": str(index), "ef_construction": load_index(index).meta.get("ef_construction"),
            "update_index_s": t1 - t0, "insert_seconds": upd.get("insert_seconds"),
            "export_s": t2 - t1, "users": int(len(per_user)),
            "coverage_at_200": float(per_user.mean()),
            "coverage_ci95": list(boot.interval(boot.means(per_user))),
            "worst_user": float(per_user.min()),
            "items_scored": float(np.mean(out["num_scored"])),
            "retired_items_returned": int(sum(len(set(r) & gone)
                                              for r in np.r_[got, exact].tolist())),
            "search": info.get("search")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--index", action="append", required=True, help="LABEL=PATH (repeat)")
    ap.add_argument("--add-items", required=True)
    ap.add_argument("--retire-items", required=True)
    ap.add_argument("--yesterday", required=True, help="the dataset yesterday's index serves")
    ap.add_argument("--today", required=True, help="today's dataset (its test users)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--users", type=int, default=200)
    args = ap.parse_args()
    from nann_tf.fsutil import write_json_atomic

    rows = {}
    for spec in args.index:
        label, sep, path = spec.partition("=")
        if not sep or not Path(path).is_dir():
            sys.exit(f"--index {spec!r}: expected LABEL=PATH to an index directory")
        work = Path(tempfile.mkdtemp(prefix="nann-update-coverage-"))
        try:
            rows[label] = measure(args, Path(path), work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(label, rows[label], flush=True)
    out = {"name": args.name, "command": "python bench/bench_update_coverage.py "
           + " ".join(sys.argv[1:]), "model": args.model, "today": args.today, "rows": rows}
    path = BENCH / "results" / f"update-coverage-{args.name}.json"
    write_json_atomic(path, out)
    print("\n| yesterday's graph | coverage@200 of the updated version | worst user | items "
          "scored | retired returned | update-index + export |\n|---|---|---|---|---|---|")
    for label, r in rows.items():
        lo, hi = r["coverage_ci95"]
        print(f"| {label} | {r['coverage_at_200']:.4f} [{lo:.4f}, {hi:.4f}] | "
              f"{r['worst_user']:.3f} | {r['items_scored']:.0f} | {r['retired_items_returned']} "
              f"| {r['update_index_s']:.0f} + {r['export_s']:.0f} s |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

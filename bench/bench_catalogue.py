"""A living catalogue, timed: items launched and retired and served, against a full rebuild.

Usage (repository root):

    python bench/bench_catalogue.py [--config ci-synth] [--launch 0.01] [--retire 0.01]

1. The whole pipeline (synth, prepare, train, build-index, export) in a fresh work directory:
   each stage's time; their sum from prepare on is the **full rebuild**.
2. ``nann-tf serve``'s server (in process) serving that version; then, from the moment the item
   files exist: ``update-index`` (``--launch`` of the catalogue as new items in the categories
   of random existing items, ``--retire`` of it retired), ``export`` of the next version (with
   its usual validation), and the wait until the server reports it AVAILABLE (its warm-up
   replayed). That total is the **update**; the ratio to the full rebuild is the target
   (<= 10%).
3. On the served new version, for ``--users`` test users: coverage@k of ``serving_default``
   against the exact ``brute_force`` over the updated catalogue, with its bootstrap interval,
   and the count of retired items in every answer (must be 0).

Not measured here: the launched items' recall on users who later engaged with them (that needs a
log whose items appear only after training; see the README's "living catalogue").

Writes ``bench/results/catalogue-<config>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _wait_available(server, name: str, version: int, timeout: float = 1800.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        states = {r.version: r.state for r in server.manager.status(name)}
        if states.get(version) == "AVAILABLE":
            return time.perf_counter()
        time.sleep(0.1)
    raise TimeoutError(f"version {version} not AVAILABLE after {timeout:.0f}s")


def main(argv=None) -> int:
    from nann_tf.data.dataset import Dataset
    from nann_tf.evaluation.metrics import Bootstrap
    from nann_tf.export.export import export_version
    from nann_tf.fsutil import write_json_atomic
    from nann_tf.index.store import load_index
    from nann_tf.index.update import update_index
    from nann_tf.pipeline import Pipeline
    from nann_tf.serving.loader import SessionModel
    from nann_tf.serving.model_config import ServedModelConfig, ServerOptions
    from nann_tf.serving.server import ModelServer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="ci-synth")
    ap.add_argument("--launch", type=float, default=0.01)
    ap.add_argument("--retire", type=float, default=0.01)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="default: a temporary directory")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        pipe = Pipeline(work / "pipeline", args.config, fresh=True)
        stages = pipe.run("export")
        rebuild = sum(stages[s]["seconds"] for s in ("prepare", "train", "build-index",
                                                     "export"))
        idx = load_index(pipe.paths["index"])
        n = idx.num_items
        n_new, n_old = max(1, round(args.launch * n)), max(1, round(args.retire * n))
        cats = idx.raw_category_id[idx.category[rng.integers(1, n + 1, n_new)]]
        first = int(idx.raw_item_id.max()) + 1
        (work / "new.csv").write_text("item,category\n" + "".join(
            f"{first + j},{int(c)}\n" for j, c in enumerate(cats)))
        retired = rng.choice(np.arange(1, n + 1), n_old, replace=False)
        (work / "retired.txt").write_text("".join(f"{idx.raw_item_id[i]}\n" for i in retired))
        base = pipe.paths["models"]
        server = ModelServer([ServedModelConfig(pipe.model_name, str(base))],
                             ServerOptions(host="127.0.0.1", port=0,
                                           file_system_poll_wait_seconds=0.5))
        server.start()
        try:
            _wait_available(server, pipe.model_name, 1)
            t0 = time.perf_counter()
            upd = update_index(pipe.paths["model"], pipe.paths["index"], work / "index-2",
                               add_items=work / "new.csv", columns="item=item,category=category",
                               retire_items=work / "retired.txt")
            t1 = time.perf_counter()
            info = export_version(pipe.paths["model"], work / "index-2", base,
                                  data_dir=str(pipe.paths["data"]))
            t2 = time.perf_counter()
            t3 = _wait_available(server, pipe.model_name, 2)
        finally:
            server.stop(2.0)
        update = {"update_index_s": t1 - t0, "export_s": t2 - t1, "until_available_s": t3 - t2,
                  "total_s": t3 - t0}
        ds = Dataset.load(pipe.paths["data"])
        hist = idx.raw_ids(ds.test.hist[:args.users])
        with SessionModel(base / "2", load_ops=info["visited"] != "tf") as m:
            got = m.run("serving_default", {"hist_item_ids": hist})["item_ids"]
            exact = m.run("brute_force", {"hist_item_ids": hist})["item_ids"]
        per_user = np.array([len(set(g) & set(e)) / len(e) for g, e in zip(got, exact)])
        gone = set(idx.raw_item_id[retired].tolist())
        returned_retired = int(sum(len(set(row) & gone) for row in np.r_[got, exact].tolist()))
        boot = Bootstrap(len(per_user), seed=args.seed)
        lo, hi = boot.interval(boot.means(per_user))
    result = {
        "config": args.config, "machine": platform.machine(), "items": n,
        "launched": n_new, "retired": n_old, "users": int(len(per_user)),
        "stages_s": {s: stages[s]["seconds"] for s in stages},
        "full_rebuild_s": rebuild, "update": update,
        "update_over_rebuild": update["total_s"] / rebuild,
        "coverage_at_k": float(per_user.mean()), "coverage_ci95": [float(lo), float(hi)],
        "k": int(got.shape[1]), "retired_items_returned": returned_retired,
        "update_index": {k: v for k, v in upd.items() if k != "updated_from"},
        "export": {"launched_items": info["launched_items"],
                   "retired_items": info["retired_items"],
                   "validation_coverage": info.get("validation", {}).get(
                       "coverage_vs_brute_force")},
    }
    out = Path(__file__).resolve().parent / "results" / f"catalogue-{args.config}.json"
    write_json_atomic(out, result)
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

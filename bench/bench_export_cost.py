"""What an export costs, code trees side by side: one model and index exported by each tree
(interleaved), its time by stage, the SavedModel's size, and what a fresh process then pays to
load the version and replay its warm-up (what TF Serving pays before the version is
AVAILABLE).

Usage (repository root):

    python bench/bench_export_cost.py --model M --index I --data D \
        --tree before=/path/to/old/checkout --tree after=. [--repeat 1] \
        [--out bench/results/export-cost.json]

Each tree is a source tree with its op library built (``nann_tf/*.so``); it runs in its own
processes (``PYTHONPATH=TREE``) with this interpreter. Prints a table and writes a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run in a fresh process per version: load it as TF Serving does and replay its warm-up.
LOAD_AND_WARM = r"""
import json, sys, time
t0 = time.perf_counter()
from nann_tf.serving.loader import SessionModel, replay_warmup
t1 = time.perf_counter()
m = SessionModel(sys.argv[1])
t2 = time.perf_counter()
n = replay_warmup(m)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "warmup_s": t3 - t2, "records": n}))
"""


def run_tree(tree: Path, args, base: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-m", "nann_tf.cli", "export", "--model", args.model, "--index",
           args.index, "--output", str(base)]
    if args.data:
        cmd += ["--data", args.data]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, cwd=tree, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    version = base / "1"
    info = json.loads((version / "assets.extra" / "nann_tf_export.json").read_text())
    out = subprocess.run([sys.executable, "-c", LOAD_AND_WARM, str(version)], env=env,
                         check=True, cwd=tree, capture_output=True, text=True).stdout
    served = json.loads(out.strip().splitlines()[-1])
    return {"export_wall_s": wall, "export_seconds": info["export_seconds"],
            "stage_seconds": info["stage_seconds"],
            "validation_seconds": info["validation"]["seconds"],
            "size_bytes": info["size_bytes"],
            "saved_model_pb_bytes": (version / "saved_model.pb").stat().st_size,
            "num_items": info["num_items"], "grid_sizes": len(info["grid"]),
            "warmup_records": info["warmup_records"], "fresh_process": served}


def code_trees(ap: argparse.ArgumentParser, specs) -> list[tuple[str, Path]]:
    """``--tree LABEL=PATH`` values as ``(label, resolved path)``; a value that is not one, or
    a path without ``nann_tf/``, is the parser's error."""
    trees = []
    for t in specs:
        label, sep, path = t.partition("=")
        if not sep or not Path(path, "nann_tf").is_dir():
            ap.error(f"--tree {t!r}: expected LABEL=PATH to a source tree with nann_tf/")
        trees.append((label, Path(path).resolve()))
    return trees


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--data")
    ap.add_argument("--tree", action="append", required=True,
                    help="LABEL=PATH (a source tree with its op library built); two or more")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default="bench/results/export-cost.json")
    args = ap.parse_args()
    trees = code_trees(ap, args.tree)
    runs: dict[str, list] = {label: [] for label, _ in trees}
    for r in range(args.repeat):
        for label, tree in trees:  # interleaved
            with tempfile.TemporaryDirectory(prefix="nann-export-cost-") as td:
                res = run_tree(tree, args, Path(td) / "nann")
            runs[label].append(res)
            print(f"[{r}] {label}: export {res['export_seconds']:.1f} s, "
                  f"{res['size_bytes'] / 1e6:.1f} MB, fresh load {res['fresh_process']['load_s']:.1f}"
                  f" s + warm-up {res['fresh_process']['warmup_s']:.1f} s", flush=True)

    def mean(label, get):
        vals = [get(x) for x in runs[label]]
        return sum(vals) / len(vals)

    rows = {}
    for label, _ in trees:
        rows[label] = {
            "export_s": mean(label, lambda x: x["export_seconds"]),
            "search_in_memory_s": mean(label, lambda x: x["stage_seconds"]["search_in_memory"]),
            "save_s": mean(label, lambda x: x["stage_seconds"]["save"]),
            "validate_s": mean(label, lambda x: x["stage_seconds"]["validate"]),
            "size_mb": mean(label, lambda x: x["size_bytes"] / 1e6),
            "fresh_load_s": mean(label, lambda x: x["fresh_process"]["load_s"]),
            "fresh_warmup_s": mean(label, lambda x: x["fresh_process"]["warmup_s"]),
        }
    first = trees[0][0]
    print("\n| tree | export s | in-memory search s | save s | validation s | size MB | "
          "fresh load s | warm-up replay s |")
    print("|---|---|---|---|---|---|---|---|")
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join(f"{v:.1f}" for v in row.values()) + " |")
    ratios = {label: {k: row[k] / rows[first][k] for k in row if rows[first][k]}
              for label, row in rows.items() if label != first}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "bench": "export_cost", "command": " ".join(sys.argv),
        "model": args.model, "index": args.index, "data": args.data,
        "trees": {label: str(p) for label, p in trees}, "repeat": args.repeat,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "runs": runs, "mean": rows, f"ratio_to_{first}": ratios}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

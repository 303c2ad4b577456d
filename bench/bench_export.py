"""Served-model latency through the TF1 session loader (the way TF Serving runs it).

Usage (repository root):

    python bench/bench_export.py --model MODEL_DIR --index INDEX_DIR [--data DATA_DIR] \
        [--requests 200] [--variants bitmap:xla:float32,...] [--T 1=2,0=4] [--no-history-seeds] \
        [--out bench/results/export-<name>.json]

Exports the model five times into a temporary base path — {bitmap, tf} visited x {XLA, no XLA}
with float32 e_v, plus bitmap+XLA with float16 e_v — loads each version with
``nann_tf.serving.loader.SessionModel``, replays its warm-up file (as TF Serving does), then times
``serving_default`` at B=1 and B=16 on test-user histories: p50/p99 latency per request and
QPS (sequential requests, one client), and the ``brute_force`` signature of the first variant
(``--brute-requests`` requests per batch size: the served speed-up of the beam search over an
exact scan with the same scorer). Also records each version's size on disk. Search parameters
default to the model config's ``[search]`` table (``--ef``/``--T``/``--history-seeds`` override
it, e.g. for a model trained before the defaults changed). Writes a JSON results file and prints
a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nann_tf.export.export import export_version, validation_histories
from nann_tf.index.store import load_index
from nann_tf.serving.loader import SessionModel, replay_warmup

VARIANTS = [
    ("bitmap", True, "float32"),
    ("bitmap", False, "float32"),
    ("tf", True, "float32"),
    ("tf", False, "float32"),
    ("bitmap", True, "float16"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--data")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--validation-users", type=int, default=64,
                    help="users the export validates on (brute force over the corpus)")
    ap.add_argument("--out", default="bench/results/export.json")
    ap.add_argument("--variants", default=None,
                    help="VISITED:xla|noxla:DTYPE,... (default: all five)")
    ap.add_argument("--ef", help="e.g. 2=100,1=200,0=400 (default: the model config's)")
    ap.add_argument("--T", help="e.g. 1=2,0=4 (default: the model config's)")
    ap.add_argument("--history-seeds", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--brute-requests", type=int, default=10,
                    help="brute_force signature requests per batch size (first variant)")
    args = ap.parse_args()
    variants = VARIANTS
    if args.variants:
        variants = []
        for v in args.variants.split(","):
            visited, xla, dtype = v.split(":")
            variants.append((visited, xla == "xla", dtype))
    idx = load_index(args.index)
    rows, brute = [], []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "nann"
        for n_variant, (visited, xla, dtype) in enumerate(variants):
            info = export_version(args.model, args.index, base, visited=visited, xla=xla,
                                  embedding_dtype=dtype, data_dir=args.data,
                                  min_coverage=0.0, ef=args.ef,
                                  T=args.T, history_seeds=args.history_seeds,
                                  validation_users=args.validation_users)
            vdir = base / str(info["version"])
            hist = validation_histories(idx, args.data or info.get("data_dir"),
                                        info["max_len"], 256)
            with SessionModel(vdir, load_ops=(visited == "bitmap")) as m:
                t0 = time.perf_counter()
                replay_warmup(m)
                warm = time.perf_counter() - t0
                for b in [int(x) for x in args.batch_sizes.split(",")]:
                    lat = []
                    for i in range(args.requests):
                        rows_ = hist[np.arange(i * b, (i + 1) * b) % len(hist)]
                        t = time.perf_counter()
                        m.run("serving_default", {"hist_item_ids": rows_})
                        lat.append(time.perf_counter() - t)
                    lat = np.array(lat) * 1000
                    rows.append({"visited": visited, "xla": xla, "embedding_dtype": dtype,
                                 "batch_size": b, "p50_ms": float(np.percentile(lat, 50)),
                                 "p99_ms": float(np.percentile(lat, 99)),
                                 "qps": float(b * 1000 / lat.mean()),
                                 "size_mb": info["size_bytes"] / 1e6,
                                 "warmup_seconds": warm, "grid_sizes": len(info["grid"]),
                                 "search": info["search"],
                                 "coverage": info["validation"]["coverage_vs_brute_force"]})
                    print(rows[-1], flush=True)
                    if n_variant == 0 and args.brute_requests > 0:
                        m.run("brute_force", {"hist_item_ids": hist[:b]})
                        bl = []
                        for i in range(args.brute_requests):
                            rows_ = hist[np.arange((i + 1) * b, (i + 2) * b) % len(hist)]
                            t = time.perf_counter()
                            m.run("brute_force", {"hist_item_ids": rows_})
                            bl.append(time.perf_counter() - t)
                        p50 = 1000 * float(np.percentile(bl, 50))
                        brute.append({"visited": visited, "xla": xla, "embedding_dtype": dtype,
                                      "batch_size": b, "brute_p50_ms": p50,
                                      "beam_p50_ms": rows[-1]["p50_ms"],
                                      "speedup": p50 / rows[-1]["p50_ms"]})
                        print(brute[-1], flush=True)
    out = {"model": args.model, "num_items": idx.num_items, "cpu_count": os.cpu_count(),
           "machine": platform.machine(), "command": "python bench/bench_export.py "
           + " ".join(sys.argv[1:]), "rows": rows, "brute_force": brute}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"\n{idx.num_items} items\n")
    print("| visited | XLA | e_v | B | p50 ms | p99 ms | queries/s | size MB |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['visited']} | {'yes' if r['xla'] else 'no'} | {r['embedding_dtype']} | "
              f"{r['batch_size']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['qps']:.0f} | "
              f"{r['size_mb']:.1f} |")
    for r in brute:
        print(f"\nB={r['batch_size']}: brute_force signature p50 {r['brute_p50_ms']:.1f} ms vs "
              f"serving_default {r['beam_p50_ms']:.1f} ms: {r['speedup']:.1f}x")


if __name__ == "__main__":
    main()

"""Served latency through TensorFlow's C API loader next to the Python session loader.

Usage (repository root)::

    python bench/bench_cc_loader.py --version-dir models/nann/1 [--version-dir ...] \\
        [--requests 100] [--repeat 5] [--name ci-synth]

For each exported version: ``nann-tf-cc-loader`` (the C program ``nann-tf validate --loader cc``
runs: TF_LoadSessionFromSavedModel, warm-up replayed, TF_SessionRun with the signature's tensor
names; no Python in its process) and the TF1 session loader in this process
(``nann_tf.serving.loader.SessionModel``, what ``nann-tf serve`` runs) answer the same
``serving_default`` requests: ``--requests`` different histories at B=1 and as many B=16
batches, each sent ``--repeat`` times in a row, sequentially. Both loaders replay the warm-up
first, so no request compiles. Reports p50/p99 ms per request and queries/s, and the load +
warm-up time of each. The C figure is the closest we can get to ``tensorflow_model_server``'s
without Docker (it has no gRPC in the path).

Writes ``bench/results/cc-loader-<name>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"


def requests_of(version_dir: Path, n: int, batch: int) -> list:
    """``n`` serving_default requests of ``batch`` rows, from the warm-up records' histories."""
    from nann_tf.serving.warmup import read_warmup_requests, warmup_file_path

    rows = np.concatenate([r.inputs["hist_item_ids"]
                           for r in read_warmup_requests(warmup_file_path(version_dir))
                           if "hist_item_ids" in r.inputs
                           and (r.signature_name or "serving_default") == "serving_default"])
    rows = np.unique(rows, axis=0)
    rng = np.random.default_rng(0)
    return [("serving_default",
             {"hist_item_ids": rows[rng.choice(len(rows), batch, replace=len(rows) < batch)]})
            for _ in range(n)]


def stats(ms: list[float], batch: int) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "queries_per_s": float(batch * 1000.0 / a.mean()), "calls": int(a.size)}


def bench_version(vdir: Path, n: int, repeat: int) -> dict:
    from nann_tf.export.cc_loader import export_visited, run_cc_loader, session_config
    from nann_tf.export.export import EXPORT_INFO
    from nann_tf.serving.loader import SessionModel, replay_warmup

    op_library = export_visited(vdir) != "tf"
    out = {"version_dir": str(vdir), "visited": "bitmap" if op_library else "tf"}
    info = json.loads((vdir / EXPORT_INFO).read_text())
    out.update(xla=info.get("xla"), num_items=info.get("num_items"))
    for batch in (1, 16):
        reqs = requests_of(vdir, n, batch)
        t0 = time.perf_counter()
        cc = run_cc_loader(vdir, reqs, op_library=op_library, repeat=repeat)
        cc_total = time.perf_counter() - t0
        cc_ms = [ms for calls in cc["latency_ms"].values() for ms in calls]
        t0 = time.perf_counter()
        with SessionModel(vdir, load_ops=op_library, session_config=session_config()) as m:
            replay_warmup(m)
            py_load = time.perf_counter() - t0
            py_ms = []
            for sig, inputs in reqs:
                for _ in range(repeat):
                    t1 = time.perf_counter()
                    m.run(sig, inputs)
                    py_ms.append((time.perf_counter() - t1) * 1000.0)
        out[f"B{batch}"] = {"cc": stats(cc_ms, batch), "python": stats(py_ms, batch)}
        out["cc_load_ms"] = cc.get("load_ms")
        out["cc_process_s"] = cc_total
        out["python_load_and_warmup_s"] = py_load
        print(f"{vdir} B={batch}: cc p50 {out[f'B{batch}']['cc']['p50_ms']:.2f} ms, python "
              f"p50 {out[f'B{batch}']['python']['p50_ms']:.2f} ms", flush=True)
    return out


def main() -> None:
    from nann_tf.fsutil import write_json_atomic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version-dir", action="append", required=True)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--name", default="ci-synth")
    args = ap.parse_args()
    rows = [bench_version(Path(v), args.requests, args.repeat) for v in args.version_dir]
    import os

    res = {"benchmark": "cc-loader", "name": args.name,
           "command": "python bench/bench_cc_loader.py " + " ".join(sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load avg (1 min) "
                      f"{os.getloadavg()[0]:.1f}", "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    write_json_atomic(RESULTS / f"cc-loader-{args.name}.json", res)
    print("\n| visited | XLA | B | C API p50 ms | C API p99 ms | session loader p50 ms | "
          "session loader p99 ms |\n|---|---|---|---|---|---|---|")
    for r in rows:
        for b in (1, 16):
            c, p = r[f"B{b}"]["cc"], r[f"B{b}"]["python"]
            print(f"| {r['visited']} | {'yes' if r['xla'] else 'no'} | {b} | {c['p50_ms']:.2f} | "
                  f"{c['p99_ms']:.2f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} |")


if __name__ == "__main__":
    main()

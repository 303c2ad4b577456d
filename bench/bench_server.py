"""Throughput and latency of the local gRPC server (`nann-tf serve`) for one model.

Starts `nann-tf serve` in a subprocess on 127.0.0.1 (as a user would), waits until the model is
AVAILABLE, then runs N concurrent gRPC clients (threads, one channel each) sending M requests
each, and reports QPS and latency percentiles. Requests use the histories found in the
version's warm-up records (real item ids for an exported model); without warm-up records,
random ids.

    # an exported model (a base path of version directories, or one version directory):
    python bench/bench_server.py --model_dir models/nann --clients 8 --requests 500
    # a small stand-in model with the same signatures:
    python bench/bench_server.py --toy

Writes bench/results/server.json (or --out). This measures the development server, not TF
Serving; for production numbers run the same clients against tensorflow_model_server
(--server HOST:PORT skips starting a server).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from nann_tf.fsutil import write_json_atomic  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model_dir", help="model base path (numbered versions) or one version dir")
    src.add_argument("--toy", action="store_true", help="benchmark a generated toy model")
    src.add_argument("--server", help="HOST:PORT of a running server (TF Serving or nann-tf "
                     "serve); needs --model_name")
    p.add_argument("--model_name", default="nann", help="model name (default nann)")
    p.add_argument("--signature", default="serving_default")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--requests", type=int, default=500, help="requests per client (default 500)")
    p.add_argument("--batch", type=int, default=1, help="queries per request (default 1)")
    p.add_argument("--warmup_requests", type=int, default=20,
                   help="untimed requests per client first (default 20)")
    p.add_argument("--grpc_max_threads", type=int, default=16)
    p.add_argument("--history_length", type=int, default=None,
                   help="L to send when the signature leaves it open (default: the export's "
                        "max_len from assets.extra/nann_tf_export.json)")
    p.add_argument("--toy_items", type=int, default=10000, help="corpus size of --toy")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "server.json"))
    return p.parse_args(argv)


def _export_max_len(model_dir: str | None) -> int | None:
    """``max_len`` recorded by ``nann-tf export`` in the newest version of ``model_dir``."""
    import glob

    if not model_dir:
        return None
    found = sorted(glob.glob(os.path.join(model_dir, "assets.extra", "nann_tf_export.json"))
                   + glob.glob(os.path.join(model_dir, "*", "assets.extra",
                                            "nann_tf_export.json")))
    if not found:
        return None
    with open(found[-1]) as f:
        return int(json.load(f)["max_len"])


def _base_path_for(model_dir: str, tmp: str) -> str:
    """A base path: model_dir itself, or a temp base path linking a single version dir."""
    model_dir = os.path.abspath(model_dir)
    if os.path.exists(os.path.join(model_dir, "saved_model.pb")):
        base = os.path.join(tmp, "base")
        os.makedirs(base)
        name = os.path.basename(model_dir)
        os.symlink(model_dir, os.path.join(base, name if name.isdigit() else "1"))
        return base
    return model_dir


def _request_pool(base: str | None, signature: str, batch: int, length: int, seed: int = 0):
    """Histories from the newest version's warm-up records, cut into batches."""
    from nann_tf.serving.warmup import read_warmup_requests

    rows = []
    if base is not None:
        versions = sorted((int(d) for d in os.listdir(base) if d.isdigit()), reverse=True)
        for v in versions[:1]:
            try:
                records = read_warmup_requests(os.path.join(base, str(v)))
            except (FileNotFoundError, ValueError):
                records = []
            for r in records:
                if "hist_item_ids" in r.inputs and r.inputs["hist_item_ids"].shape[1] == length:
                    rows.extend(r.inputs["hist_item_ids"])
    rng = np.random.default_rng(seed)
    if not rows:
        rows = list(rng.integers(1, 10**6, size=(256, length), dtype=np.int64))
    rows = np.asarray(rows, np.int64)
    return [rows[rng.integers(0, len(rows), size=batch)] for _ in range(256)]


def _start_server(base: str, args):
    """``nann-tf serve`` on 127.0.0.1, a free port; returns the started ServerProcess."""
    from nann_tf.serving.process import ServerProcess

    server = ServerProcess(base, args.model_name, port=0, host="127.0.0.1",
                           extra_args=[f"--grpc_max_threads={args.grpc_max_threads}",
                                       f"--max_batch_size={max(args.batch, 1024)}"])
    server.start(timeout_s=600)
    return server


def run_clients(address: str, args, pool) -> dict:
    from nann_tf.serving.client import RetrievalClient

    latencies: list[list[float]] = [[] for _ in range(args.clients)]
    errors: list[str] = []
    barrier = threading.Barrier(args.clients + 1)

    def worker(w: int):
        with RetrievalClient(address, args.model_name, signature_name=args.signature,
                             timeout_s=60, retries=0) as client:
            for i in range(args.warmup_requests):
                client.predict({"hist_item_ids": pool[(w + i) % len(pool)]})
            barrier.wait()
            mine = latencies[w]
            for i in range(args.requests):
                t0 = time.perf_counter()
                try:
                    client.predict({"hist_item_ids": pool[(w * 7 + i) % len(pool)]})
                except Exception as e:  # counted, reported
                    errors.append(repr(e))
                    continue
                mine.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ms = np.concatenate([np.asarray(x) for x in latencies]) * 1e3
    return {
        "requests": int(ms.size), "errors": len(errors), "first_errors": errors[:3],
        "seconds": round(elapsed, 3),
        "qps": round(ms.size / elapsed, 1),
        "queries_per_second": round(ms.size * args.batch / elapsed, 1),
        "latency_ms": {q: round(float(np.percentile(ms, float(q[1:]))), 3)
                       for q in ("p50", "p90", "p99")} | {"mean": round(float(ms.mean()), 3)},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    from nann_tf.serving.client import RetrievalClient

    with tempfile.TemporaryDirectory(prefix="nann-bench-") as tmp:
        server = None
        base = None
        model_desc = args.model_dir or args.server
        if args.toy:
            sys.path.insert(0, os.path.join(REPO, "tests"))  # the toy model is a test helper
            from toy_model import ToyModelSpec, write_toy_model

            base = os.path.join(tmp, "toy")
            spec = ToyModelSpec(num_items=args.toy_items, dim=32, history_length=50,
                                default_k=100, default_ef=(400, 200, 100))
            write_toy_model(base, 1, spec=spec, model_name=args.model_name)
            model_desc = f"toy model ({args.toy_items} items, brute-force scorer, L=50, k=100)"
        elif args.model_dir:
            base = _base_path_for(args.model_dir, tmp)
        try:
            if args.server:
                address = args.server
            else:
                server = _start_server(base, args)
                address = server.address
            with RetrievalClient(address, args.model_name, args.signature) as client:
                version = client.wait_until_ready(timeout_s=600)
                length = client.history_length(args.signature)
            if length is None:
                length = args.history_length or _export_max_len(args.model_dir)
            if length is None:
                raise SystemExit("the signature's hist_item_ids has no fixed length L: pass "
                                 "--history_length")
            pool = _request_pool(base, args.signature, args.batch, length)
            print(f"benchmarking {model_desc} version {version} at {address}: "
                  f"{args.clients} clients x {args.requests} requests, batch {args.batch}",
                  flush=True)
            result = run_clients(address, args, pool)
        finally:
            if server is not None:
                server.stop(60)
    import tensorflow as tf

    report = {
        "benchmark": "nann-tf serve (development gRPC server), loopback",
        "model": model_desc, "model_version": version, "signature": args.signature,
        "clients": args.clients, "requests_per_client": args.requests, "batch": args.batch,
        "grpc_max_threads": args.grpc_max_threads, **result,
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(),
                 "python": platform.python_version(), "tensorflow": tf.__version__},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(args.out, report, sort_keys=False)
    lat = result["latency_ms"]
    print(f"{result['qps']} QPS ({result['queries_per_second']} queries/s), p50 {lat['p50']} ms, "
          f"p90 {lat['p90']} ms, p99 {lat['p99']} ms, errors {result['errors']} -> {args.out}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

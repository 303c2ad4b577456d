"""Paper scale, end to end, on one machine: every stage's wall time and peak RSS.

    python bench/bench_scale.py                      # the paper's size: ~100M behaviours,
                                                     # ~1M users, ~4.2M items, ~9.4k categories
    python bench/bench_scale.py --scale 0.01         # smoke mode: 1% of it, a few minutes

Stages, each in its own child process (its peak RSS is the child's own ``ru_maxrss`` from
``os.wait4``, children it waited for included, e.g. the export's validation process):

  synth        a synthetic UserBehavior CSV (nann_tf.data.synth.write_synthetic_log, streamed)
  prepare      nann-tf prepare --format userbehavior
  train        nann_tf.train.train, stopped after --train-minutes (steps and examples recorded)
  build-index  nann-tf build-index (e_v of every item + hnswlib HNSW)
  export       nann-tf export (bitmap op, XLA grid, warm-up records, validation in a fresh
               process)
  serve        nann-tf serve (TF Serving's gRPC API): load + warm-up replay until AVAILABLE;
               its peak RSS is the server's VmHWM read before it is stopped
  query        over gRPC, --users test users one per request: serving_default (beam search)
               and brute_force -> coverage@200 and the fraction of the corpus scored, B=1
               p50/p99 of both; then B=16 requests of serving_default -> queries/s

Config: nann_tf/configs/userbehavior-synth.toml (``--config``); ``--scale F`` multiplies its
users, items and categories (behaviours per user stay). Writes bench/results/scale-<F>.json
(``--out``) and prints one JSON line last: coverage@200, scored_fraction,
b1_speedup_vs_brute_force, max_peak_rss_gb, prepare_rows_per_s, train_examples_per_s,
recall_all@200 and the targets met.
The work directory (``--workdir``, default a temporary one, deleted unless ``--keep``) needs
~15 GB of disk at full scale.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The paper's UserBehavior subset (section 5.1.1).
PAPER = {"users": 987_994, "items": 4_162_024, "categories": 9_439, "behaviours": 100_150_807}
TARGETS = {"prepare_rows_per_s": 1e6, "max_peak_rss_gb": 16.0, "coverage@200": 0.99,
           "scored_fraction": 0.005, "b1_speedup_vs_brute_force": 100.0}


# ----------------------------------------------------------------------------- child entries
def _child_synth(a: dict) -> None:
    from nann_tf.data.synth import write_synthetic_log

    rows = write_synthetic_log(a["output"], a["users"], a["items"], a["categories"],
                               a["events_per_user"], a["seed"])
    Path(a["summary"]).write_text(json.dumps({"rows": rows}))


def _child_train(a: dict) -> None:
    import keras

    from nann_tf.autoconfig import load_config_for_data
    from nann_tf.progress import Progress, format_duration
    from nann_tf.train import train

    class BoxProgress(keras.callbacks.Callback):
        """Counts the steps of the time box and shows its ETA; the box itself is the product's
        own ``[train] max_seconds`` (the step past it is the last one, validated, and the
        best weights validated are the model)."""

        def __init__(self, seconds: float):
            super().__init__()
            self.seconds, self.steps, self.t0, self.last = seconds, 0, None, 0.0

        def on_train_begin(self, logs=None):
            if self.t0 is None:
                self.t0 = time.perf_counter()
            # Off a terminal, train() logs steps against the whole epoch; this logs the time
            # box, the ETA that matters here.
            self.bar = Progress(self.seconds, f"train (time box {format_duration(self.seconds)})",
                                "s", enabled=not sys.stdout.isatty())

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            self.last = time.perf_counter() - self.t0
            self.bar.set(min(self.last, self.seconds))

        def on_train_end(self, logs=None):
            self.bar.close()
            print(f"train: {self.steps} steps in {format_duration(self.last)}", flush=True)

    box = a["minutes"] * 60.0
    # As `nann-tf train` does: the keys the config leaves out follow the data (the search's
    # ef and T: the export then serves the ones build-index tuned).
    cfg = load_config_for_data(a["config"], a["data"],
                               dict(a.get("overrides") or {}, **{"train.max_seconds": box}))
    progress = BoxProgress(box)
    t0 = time.perf_counter()
    summary = train(cfg, a["data"], a["output"], overwrite=True, extra_callbacks=[progress])
    seconds = time.perf_counter() - t0
    steps = summary["steps_run_now"]
    val = json.loads((Path(a["output"]) / "model.json").read_text()).get("validation") or {}
    Path(a["summary"]).write_text(json.dumps({
        "steps": steps, "batch_size": cfg.train.batch_size,
        "examples": steps * cfg.train.batch_size,
        "steps_per_epoch": summary.get("steps_per_epoch"),
        "epoch_fraction": steps / max(1, summary.get("steps_per_epoch") or 1),
        "stopped_by_time_limit": bool(summary.get("time_box_reached")), "fit_seconds": seconds,
        "examples_per_s": steps * cfg.train.batch_size / max(seconds, 1e-9),
        # the box: from the first step's start to the last one's end (the first steps'
        # tracing and compiling and the validations inside the box included)
        "box_seconds": progress.last,
        "box_examples_per_s": steps * cfg.train.batch_size / max(progress.last, 1e-9),
        "validations": [{k: e.get(k) for k in ("step", "value", "seconds")}
                        for e in val.get("history", [])],
        "best_step": (val.get("best") or {}).get("step"),
        "final": summary.get("final", {})}, default=float))


CHILDREN = {"synth": _child_synth, "train": _child_train}


# ----------------------------------------------------------------------------- measuring
def run_stage(name: str, cmd: list[str], env: dict | None = None) -> dict:
    """Runs one stage's child process (its output, progress included, goes to this terminal);
    returns its wall seconds and its own peak RSS (``os.wait4``: the child and the children it
    waited for).

    Raises:
      StageFailed: the child exited with a non-zero status."""
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {"seconds": round(seconds, 2), "peak_rss_gb": round(usage.ru_maxrss / 1e6, 3),
              "exit_status": proc.returncode}
    print(f"=== {name}: {seconds:.1f} s, peak RSS {usage.ru_maxrss / 1e6:.2f} GB, exit status "
          f"{proc.returncode}", flush=True)
    if proc.returncode != 0:
        raise StageFailed(name, result)
    return result


class StageFailed(RuntimeError):
    def __init__(self, stage: str, result: dict):
        super().__init__(f"stage {stage} failed (exit status {result['exit_status']})")
        self.stage, self.result = stage, result


def _vm_hwm_gb(pid: int) -> float | None:
    """Peak RSS (VmHWM) of a running process, GB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        return None
    return None


def _dir_gb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e9


def _query(address: str, ds, users: int, b16_requests: int, k: int) -> dict:
    """Test users over gRPC: beam (serving_default) and brute_force at B=1, then B=16."""
    import numpy as np

    from nann_tf.evaluation.metrics import Bootstrap, summarize
    from nann_tf.progress import Progress
    from nann_tf.serving.client import RetrievalClient

    users = min(users, len(ds.test))
    hist = ds.raw_items(ds.test.hist[:users])
    target = ds.raw_items(ds.test.target[:users])
    out: dict = {"users": users}
    with RetrievalClient(address, "nann", timeout_s=600, retries=1) as client:
        for sig in ("serving_default", "brute_force"):  # untimed first calls
            for i in range(min(2, users)):
                client.predict({"hist_item_ids": hist[i:i + 1]}, signature=sig)
        res = {}
        for sig in ("serving_default", "brute_force"):
            ids, scored, lat = [], [], []
            with Progress(users, f"query: {sig} at B=1", "queries") as bar:
                for i in range(users):
                    t = time.perf_counter()
                    p = client.predict({"hist_item_ids": hist[i:i + 1]}, signature=sig)
                    lat.append(time.perf_counter() - t)
                    ids.append(p.outputs["item_ids"][0])
                    if "num_scored" in p.outputs:
                        scored.append(int(p.outputs["num_scored"][0]))
                    bar.update()
            ms = np.asarray(lat) * 1e3
            res[sig] = {"ids": np.stack(ids), "scored": scored,
                        "p50_ms": float(np.percentile(ms, 50)),
                        "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}
        # B=16: consecutive test users, 16 per request, sequential requests.
        rng = np.random.default_rng(0)
        lat16 = []
        with Progress(b16_requests, "query: serving_default at B=16", "requests") as bar:
            for r in range(b16_requests + 2):
                rows = hist[rng.integers(0, users, size=16)]
                t = time.perf_counter()
                client.predict({"hist_item_ids": rows})
                if r >= 2:  # the first two untimed
                    lat16.append(time.perf_counter() - t)
                    bar.update()
    beam, bf = res["serving_default"], res["brute_force"]
    k = min(k, beam["ids"].shape[1], bf["ids"].shape[1])
    m = summarize(beam["ids"], bf["ids"], target, beam["scored"], ds.num_items, m=k,
                  bootstrap=Bootstrap(users))  # 95% intervals over the users
    ms16 = np.asarray(lat16) * 1e3
    out.update({
        "k": k, "num_items": int(ds.num_items),
        f"coverage@{k}": float(m[f"coverage@{k}"]),
        f"coverage@{k}_ci95": m[f"coverage@{k}_ci95"],
        "scored_fraction": float(m["scored_fraction"]),
        "items_scored_mean": float(np.mean(beam["scored"])),
        f"recall_retrieval@{k}": float(m[f"recall_retrieval@{k}"]),
        f"recall_all@{k}": float(m[f"recall_all@{k}"]),
        f"recall_all@{k}_ci95": m[f"recall_all@{k}_ci95"],
        "b1": {"beam": {x: round(beam[x], 3) for x in ("p50_ms", "p99_ms", "mean_ms")},
               "brute_force": {x: round(bf[x], 3) for x in ("p50_ms", "p99_ms", "mean_ms")}},
        "b16": {"requests": len(lat16), "p50_ms": round(float(np.percentile(ms16, 50)), 3),
                "p99_ms": round(float(np.percentile(ms16, 99)), 3),
                "queries_per_s": round(16 * len(lat16) / float(ms16.sum() / 1e3), 1)},
        "b1_speedup_vs_brute_force": round(bf["p50_ms"] / beam["p50_ms"], 2),
    })
    return out


def _in_process(version_dir: Path, ds, users: int, b16_requests: int) -> dict:
    """The same B=1 and B=16 queries of serving_default without gRPC: the version loaded
    in this process the way TF Serving loads it (``SessionModel``: one TF session, the
    SavedModel's own graph), each query shape run once untimed first."""
    import numpy as np

    from nann_tf.serving.loader import SessionModel

    users = min(users, len(ds.test))
    hist = ds.raw_items(ds.test.hist[:users])
    t = time.perf_counter()
    with SessionModel(version_dir) as model:
        load = time.perf_counter() - t
        for i in range(users):  # untimed: compiles each padded shape once
            model.run("serving_default", {"hist_item_ids": hist[i:i + 1]})
        lat = []
        for i in range(users):
            t = time.perf_counter()
            model.run("serving_default", {"hist_item_ids": hist[i:i + 1]})
            lat.append(time.perf_counter() - t)
        # The gRPC run's B=16 requests (same draws); each run once untimed first, as the
        # server's warm-up records did for its shapes.
        rng = np.random.default_rng(0)
        batches = [hist[rng.integers(0, users, size=16)] for _ in range(b16_requests + 2)][2:]
        for rows in batches:
            model.run("serving_default", {"hist_item_ids": rows})
        lat16 = []
        for rows in batches:
            t = time.perf_counter()
            model.run("serving_default", {"hist_item_ids": rows})
            lat16.append(time.perf_counter() - t)
    ms, ms16 = np.asarray(lat) * 1e3, np.asarray(lat16) * 1e3
    return {"load_seconds": round(load, 2), "users": users,
            "b1": {"p50_ms": round(float(np.percentile(ms, 50)), 3),
                   "p99_ms": round(float(np.percentile(ms, 99)), 3),
                   "mean_ms": round(float(ms.mean()), 3)},
            "b16": {"requests": len(lat16), "p50_ms": round(float(np.percentile(ms16, 50)), 3),
                    "queries_per_s": round(16 * len(lat16) / float(ms16.sum() / 1e3), 1)}}


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--scale", type=float, default=1.0,
                   help="fraction of the paper's users, items and categories (default 1)")
    p.add_argument("--config", default="userbehavior-synth")
    p.add_argument("--train-minutes", type=float, default=30.0,
                   help="training time box (default 30)")
    p.add_argument("--users", type=int, default=200,
                   help="test users queried over gRPC for coverage and latency (default 200)")
    p.add_argument("--b16-requests", type=int, default=50,
                   help="B=16 requests for the throughput (default 50)")
    p.add_argument("--workdir", help="work directory (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.add_argument("--out", help="result file (default bench/results/scale-<F>.json)")
    args = p.parse_args(argv)
    if not 0 < args.scale <= 1.0:
        p.error(f"--scale must be in (0, 1], got {args.scale}")
    if args.train_minutes <= 0:
        p.error(f"--train-minutes must be > 0, got {args.train_minutes}")
    if args.users < 100:
        p.error(f"--users must be >= 100 (the coverage is measured on at least 100 test "
                f"users), got {args.users}")
    if args.b16_requests < 1:
        p.error(f"--b16-requests must be >= 1, got {args.b16_requests}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from nann_tf.config import load_config

    cfg = load_config(args.config)
    dc = cfg.data
    size = {"users": max(100, round(dc.synth_users * args.scale)),
            "items": max(100, round(dc.synth_items * args.scale)),
            "categories": max(1, round(dc.synth_categories * args.scale)),
            "events_per_user": dc.synth_events_per_user, "seed": dc.synth_seed}
    tag = f"{args.scale:g}"
    out_file = Path(args.out or REPO / "bench" / "results" / f"scale-{tag}.json")
    tmp = None
    if args.workdir:
        work = Path(args.workdir).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="nann-scale-")
        work = Path(tmp)
    py = [sys.executable]
    cli = [sys.executable, "-m", "nann_tf.cli"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO) + os.pathsep +
               os.environ.get("PYTHONPATH", ""))
    log_csv, data, model, index, models = (work / "log.csv", work / "data", work / "model",
                                           work / "index", work / "models" / "nann")
    stages: dict[str, dict] = {}
    report: dict = {
        "benchmark": "paper scale end to end (bench/bench_scale.py)",
        "command": "python bench/bench_scale.py " + " ".join(argv if argv is not None
                                                             else sys.argv[1:]),
        "scale": args.scale, "config": args.config, "paper": PAPER, "synth": size,
        "train_minutes": args.train_minutes, "workdir": str(work), "stages": stages,
    }
    failed = None
    start = time.perf_counter()

    def child(name: str, a: dict) -> list[str]:
        a = dict(a, summary=str(work / f"{name}.summary.json"))
        return py + [str(Path(__file__).resolve()), "--child", name, json.dumps(a)]

    try:
        stages["synth"] = run_stage("synth", child("synth", {**size, "output": str(log_csv)}),
                                    env)
        synth_rows = json.loads((work / "synth.summary.json").read_text())["rows"]
        stages["synth"].update(rows=synth_rows, csv_gb=round(log_csv.stat().st_size / 1e9, 3),
                               rows_per_s=round(synth_rows / stages["synth"]["seconds"]))

        stages["prepare"] = run_stage("prepare", cli + [
            "prepare", "--format", "userbehavior", "--input", str(log_csv), "--output",
            str(data), "--config", args.config, "--overwrite"], env)
        meta = json.loads((data / "meta.json").read_text())
        stages["prepare"].update(
            rows=meta["rows"], rows_per_s=round(meta["rows"] / stages["prepare"]["seconds"]),
            items=meta["num_items"], categories=meta["num_categories"],
            train_users=meta["num_train_users"], train_samples=meta["num_train_samples"],
            test_users=meta["num_test_users"])

        stages["train"] = run_stage("train", child("train", {
            "config": args.config, "data": str(data), "output": str(model),
            "minutes": args.train_minutes}), env)
        stages["train"].update(json.loads((work / "train.summary.json").read_text()))

        stages["build-index"] = run_stage("build-index", cli + [
            "build-index", "--model", str(model), "--data", str(data), "--output", str(index)],
            env)
        info = json.loads((index / "index.json").read_text())
        stages["build-index"].update(embed_seconds=round(info["embed_seconds"], 2),
                                     hnsw_seconds=round(info["hnsw_build_seconds"], 2),
                                     nodes_per_level=info["nodes_per_level"])

        stages["export"] = run_stage("export", cli + [
            "export", "--model", str(model), "--index", str(index), "--output", str(models),
            "--visited", "bitmap", "--xla", "--data", str(data)], env)
        vdir = max((p for p in models.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        einfo = json.loads((vdir / "assets.extra" / "nann_tf_export.json").read_text())
        stages["export"].update(
            saved_model_gb=round(_dir_gb(vdir), 3), grid_sizes=len(einfo["grid"]),
            warmup_records=einfo["warmup_records"],
            validation_coverage=einfo["validation"]["coverage_vs_brute_force"],
            search=einfo["search"])

        from nann_tf.data.dataset import Dataset
        from nann_tf.serving.process import ServerProcess

        ds = Dataset.load(data)
        server = ServerProcess(models, "nann", port=0,
                               log_path=work / "serve.log")
        print(f"\n=== serve: {' '.join(server.command)} (log {work / 'serve.log'})", flush=True)
        try:
            t = time.perf_counter()
            address = server.start(timeout_s=3600)
            load = time.perf_counter() - t
            stages["serve"] = {"load_and_warmup_seconds": round(load, 2), "address": address}
            print(f"=== serve: AVAILABLE after {load:.1f} s (load + warm-up)", flush=True)
            print("\n=== query", flush=True)
            t = time.perf_counter()
            q = _query(address, ds, args.users, args.b16_requests, cfg.search.k)
            stages["query"] = {"seconds": round(time.perf_counter() - t, 2), **q}
            stages["serve"]["peak_rss_gb"] = round(_vm_hwm_gb(server.proc.pid) or float("nan"),
                                                   3)
        finally:
            status = server.stop()
        stages.setdefault("serve", {})["exit_status"] = status
        import resource

        stages["query"]["peak_rss_gb"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3)  # this process
        print("\n=== in process (no gRPC): serving_default at B=1 and B=16", flush=True)
        t = time.perf_counter()
        stages["in_process"] = {**_in_process(vdir, ds, args.users, args.b16_requests),
                                "seconds": round(time.perf_counter() - t, 2)}
    except StageFailed as e:
        stages[e.stage] = e.result
        failed = e.stage
    finally:
        report["total_seconds"] = round(time.perf_counter() - start, 1)
        if tmp and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    rss = {s: r.get("peak_rss_gb") for s, r in stages.items() if r.get("peak_rss_gb")}
    q = stages.get("query", {})
    summary = {
        "scale": args.scale,
        "coverage@200": q.get("coverage@200"),
        "coverage@200_ci95": q.get("coverage@200_ci95"),
        "scored_fraction": q.get("scored_fraction"),
        "b1_speedup_vs_brute_force": q.get("b1_speedup_vs_brute_force"),
        "max_peak_rss_gb": max(rss.values()) if rss else None,
        "max_peak_rss_stage": max(rss, key=rss.get) if rss else None,
        "prepare_rows_per_s": stages.get("prepare", {}).get("rows_per_s"),
        "b1_p50_ms": q.get("b1", {}).get("beam", {}).get("p50_ms"),
        "b1_p99_ms": q.get("b1", {}).get("beam", {}).get("p99_ms"),
        "b1_in_process_p50_ms": stages.get("in_process", {}).get("b1", {}).get("p50_ms"),
        "b16_in_process_queries_per_s":
            stages.get("in_process", {}).get("b16", {}).get("queries_per_s"),
        "brute_force_p50_ms": q.get("b1", {}).get("brute_force", {}).get("p50_ms"),
        "b16_queries_per_s": q.get("b16", {}).get("queries_per_s"),
        "train_steps": stages.get("train", {}).get("steps"),
        "train_examples": stages.get("train", {}).get("examples"),
        # examples over train()'s whole call (data loading and compiling included), as before
        "train_examples_per_s": stages.get("train", {}).get("examples_per_s"),
        "train_box_examples_per_s": stages.get("train", {}).get("box_examples_per_s"),
        "recall_all@200": q.get("recall_all@200"),
        "recall_all@200_ci95": q.get("recall_all@200_ci95"),
        "items_scored_mean": q.get("items_scored_mean"),
        "failed_stage": failed,
    }
    met = {}
    for key, target in TARGETS.items():
        v = summary.get(key)
        if v is not None:
            met[key] = bool(v <= target) if key in ("max_peak_rss_gb", "scored_fraction") \
                else bool(v >= target)
    summary["targets_met"] = met
    import tensorflow as tf

    report.update(summary=summary, targets=TARGETS, host={
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "tensorflow": tf.__version__,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]},
        when=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    from nann_tf.fsutil import write_json_atomic

    out_file.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_file, report, sort_keys=False, default=float)
    print("\nper stage (wall s, peak RSS GB): " + ", ".join(
        f"{s} {r.get('seconds', r.get('load_and_warmup_seconds'))} s / {r.get('peak_rss_gb')}"
        for s, r in stages.items()) + f"\nresults -> {out_file}", flush=True)
    print(json.dumps(summary), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import logging

        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for noisy in ("absl", "tensorflow"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        CHILDREN[sys.argv[2]](json.loads(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())

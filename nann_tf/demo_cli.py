"""``nann-tf demo``: the whole chain on generated data, served over gRPC and measured.

    nann-tf demo --workdir work/ [--config ci-synth] [--port 0] [--queries 200] [--fresh]

Stages, each reported with its time: ``synth`` (a synthetic behaviour log) -> ``prepare`` (the
dataset) -> ``train`` (the NANN attention model, NCE + FGSM) -> ``build-index`` (e_v + HNSW) ->
``export`` (a validated SavedModel version) -> ``serve`` (``nann-tf serve`` in a subprocess,
waited on until the version is AVAILABLE) -> ``query`` (test users over gRPC: ``serving_default``
for the beam search, ``brute_force`` for the exact answer, one user per request) -> ``stop``
(SIGTERM; the server must exit with status 0). It prints one table: recall@k of the beam search
(recall-retrieval) and of brute force (recall-all), coverage@k of the beam search vs brute
force, items scored per query, and p50/p99 gRPC latency.

Everything stays under the work directory::

    DIR/log.csv            synthetic UserBehavior log
    DIR/data/              dataset (nann-tf prepare)
    DIR/model/             trained model (nann-tf train)
    DIR/index/             item embeddings + HNSW levels (nann-tf build-index)
    DIR/models/<name>/<v>/ SavedModel versions (nann-tf export)
    DIR/logs/serve.log     the server's output
    DIR/demo.json          which stage outputs are up to date (config fingerprints)
    DIR/results.json       the measurements of the last run

Running again with the same work directory reuses every stage whose output exists, loads, and
was made from the same configuration (a changed ``[model]`` table retrains, and so on
downstream); ``--fresh`` redoes every stage (the export then adds a new version). Outputs that
were not written by ``nann-tf demo`` are never overwritten without ``--fresh``.

The server subprocess is always stopped, also when a stage fails or on Ctrl-C / SIGTERM.
:class:`ServerProcess` (start ``nann-tf serve``, wait until AVAILABLE, stop) is reusable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from nann_tf.cli import CliError

__all__ = ["add_arguments", "run", "run_demo", "ServerProcess", "STAGES", "STATE_FILE",
           "RESULTS_FILE", "format_table"]

STAGES = ("synth", "prepare", "train", "build-index", "export", "serve", "query", "stop")
STATE_FILE = "demo.json"
RESULTS_FILE = "results.json"
_STATE_FORMAT = "nann-tf-demo"
_LISTENING_RE = re.compile(r"listening on ([\w.:\[\]-]+):(\d+)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True,
                   help="directory for every artefact (created; reused by a later run)")
    p.add_argument("--config", default="ci-synth",
                   help="config name in configs/ or a .toml path (default ci-synth)")
    p.add_argument("--port", type=int, default=0,
                   help="gRPC port of the local server (default 0: a free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface the server binds (default 127.0.0.1)")
    p.add_argument("--queries", type=int, default=200,
                   help="test users to query over gRPC (default 200)")
    p.add_argument("--model-name", default="nann",
                   help="served model name; versions go to DIR/models/<name>/ (default nann)")
    p.add_argument("--fresh", action="store_true",
                   help="redo every stage instead of reusing up-to-date outputs")
    p.add_argument("--server-timeout", type=float, default=600.0,
                   help="seconds the server may take to load the model (default 600)")


# ------------------------------------------------------------------------------ the server
class ServerProcess:
    """``nann-tf serve`` in a subprocess: start it, wait until the model is AVAILABLE, stop it.

    The process gets its own session, so a Ctrl-C in the terminal reaches only the parent,
    which then stops the server with one SIGTERM (the server's graceful shutdown). Use it as a
    context manager, or call :meth:`stop` in a ``finally``.

    Args:
      base_path: the model base path (numbered version directories).
      model_name: the served model name.
      port: gRPC port (0: a free one, read back from the server's output).
      host: interface to bind.
      log_path: file receiving the server's stdout and stderr (default: discarded).
      extra_args: more ``nann-tf serve`` flags, e.g. ``["--file_system_poll_wait_seconds=0.2"]``.
    """

    def __init__(self, base_path, model_name: str = "nann", port: int = 0,
                 host: str = "127.0.0.1", log_path=None, extra_args=()):
        self.base_path = os.path.abspath(os.fspath(base_path))
        self.model_name = model_name
        self.port = int(port)
        self.host = host
        self.log_path = os.fspath(log_path) if log_path is not None else None
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.address: str | None = None
        self.version: int | None = None
        self.returncode: int | None = None
        self._log = None
        self._pump: threading.Thread | None = None
        self._tail: list[str] = []

    @property
    def command(self) -> list[str]:
        """The server's command line (``nann-tf serve ...`` run with this Python)."""
        return [sys.executable, "-m", "nann_tf.cli", "serve", f"--host={self.host}",
                f"--port={self.port}", f"--model_name={self.model_name}",
                f"--model_base_path={self.base_path}", *self.extra_args]

    def start(self, timeout_s: float = 600.0) -> str:
        """Starts the server and waits until a version of the model is AVAILABLE.

        Returns:
          The gRPC address ``host:port``.

        Raises:
          CliError: the server exited, or did not become ready within ``timeout_s`` (the
            message holds the end of its output); the process is stopped first.
        """
        if self.proc is not None:
            raise RuntimeError("server already started")
        if self.log_path:
            os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
            self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     text=True, env=env, start_new_session=True)
        found = threading.Event()
        box: list[tuple[str, int]] = []

        def pump():
            for line in self.proc.stdout:
                if self._log is not None:
                    self._log.write(line)
                    self._log.flush()
                self._tail = (self._tail + [line])[-40:]
                m = _LISTENING_RE.search(line)
                if m and not box:
                    box.append((m.group(1), int(m.group(2))))
                    found.set()
            found.set()  # EOF: the process is gone

        self._pump = threading.Thread(target=pump, name="serve-output", daemon=True)
        self._pump.start()
        deadline = time.monotonic() + timeout_s
        try:
            while not found.wait(0.2):
                if time.monotonic() > deadline:
                    raise CliError(self._failure(f"did not start listening within "
                                                 f"{timeout_s:g} s"))
            if not box:
                self.proc.wait(10)
                raise CliError(self._failure(f"exited with status {self.proc.returncode} "
                                             "before listening"))
            host, port = box[0]
            self.port = port
            self.address = f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
            from nann_tf.serving.client import RetrievalClient

            with RetrievalClient(self.address, self.model_name, timeout_s=10) as client:
                try:
                    self.version = client.wait_until_ready(
                        timeout_s=max(1.0, deadline - time.monotonic()))
                except TimeoutError as e:
                    raise CliError(self._failure(str(e))) from e
        except BaseException:
            self.stop()
            raise
        return self.address

    def _failure(self, what: str) -> str:
        tail = "".join(self._tail[-15:]).rstrip()
        where = f" (log: {self.log_path})" if self.log_path else ""
        return (f"the server `{' '.join(self.command[2:])}` {what}{where}"
                + (f"; its last output:\n{tail}" if tail else ""))

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """Sends SIGTERM and waits (SIGKILL after ``timeout_s``); returns the exit status."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.returncode = proc.returncode
        finally:
            if self._pump is not None:
                self._pump.join(5)
            if proc.stdout is not None:
                proc.stdout.close()
            if self._log is not None:
                self._log.close()
                self._log = None
        return self.returncode

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------------------ state
def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _stage_keys(cfg, model_name: str) -> dict[str, str]:
    """A key per cached stage from the config parts it depends on (chained downstream)."""
    d = cfg.to_dict()
    data = d["data"]
    synth = {k: v for k, v in data.items() if k.startswith("synth_")}
    keys = {"synth": _fingerprint("synth", synth)}
    keys["prepare"] = _fingerprint(keys["synth"], {k: v for k, v in data.items()
                                                   if not k.startswith("synth_")})
    keys["train"] = _fingerprint(keys["prepare"], d["model"], d["train"])
    keys["build-index"] = _fingerprint(keys["train"], d["index"])
    keys["export"] = _fingerprint(keys["build-index"], d["search"], model_name)
    return keys


class _State:
    """``DIR/demo.json``: the key and details of every finished stage (written atomically)."""

    def __init__(self, workdir: Path):
        self.path = workdir / STATE_FILE
        self.data = {"format": _STATE_FORMAT, "stages": {}}
        if self.path.exists():
            try:
                raw = json.loads(self.path.read_text())
            except (OSError, ValueError) as e:
                raise CliError(f"{self.path}: unreadable demo state ({e}); delete it or use "
                               "another --workdir") from e
            if not isinstance(raw, dict) or raw.get("format") != _STATE_FORMAT:
                raise CliError(f"{self.path}: not a nann-tf demo state file")
            self.data = raw

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def get(self, stage: str) -> dict | None:
        return self.data["stages"].get(stage)

    def set(self, stage: str, entry: dict) -> None:
        self.data["stages"][stage] = entry
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        os.replace(tmp, self.path)


# ------------------------------------------------------------------------------ helpers
class _Progress:
    def __init__(self):
        self.t0 = time.perf_counter()

    def start(self, i: int, name: str, what: str) -> float:
        print(f"[{i}/{len(STAGES)}] {name}: {what}", flush=True)
        return time.perf_counter()

    def done(self, i: int, name: str, t: float, how: str) -> float:
        seconds = time.perf_counter() - t
        print(f"[{i}/{len(STAGES)}] {name}: {how} in {seconds:.1f} s "
              f"(total {time.perf_counter() - self.t0:.1f} s)", flush=True)
        return seconds


def _cli(*args) -> None:
    """Runs a ``nann-tf`` subcommand in-process; a failure becomes a CliError."""
    from nann_tf.cli import main

    argv = [str(a) for a in args]
    rc = main(argv)
    if rc == 130:
        raise KeyboardInterrupt
    if rc != 0:
        raise CliError(f"stage `nann-tf {' '.join(argv)}` failed (exit status {rc}; its error "
                       "is printed above)")


def _output_valid(stage: str, paths: dict, entry: dict | None) -> bool:
    """Whether a stage's recorded output is still there and loads."""
    try:
        if stage == "synth":
            return paths["log"].is_file() and paths["log"].stat().st_size > 0
        if stage == "prepare":
            from nann_tf.data.dataset import Dataset

            Dataset.load(paths["data"])
            return True
        if stage == "train":
            meta = json.loads((paths["model"] / "model.json").read_text())
            return (paths["model"] / "model.weights.h5").is_file() and "num_items" in meta
        if stage == "build-index":
            from nann_tf.index.store import load_index

            load_index(paths["index"])
            return True
        if stage == "export":
            from nann_tf.export.export import EXPORT_INFO

            vdir = paths["models"] / str(entry["version"])
            info = json.loads((vdir / EXPORT_INFO).read_text())
            return (vdir / "saved_model.pb").is_file() and \
                info.get("format") == "nann-tf-export" and info.get("version") == entry["version"]
    except Exception:  # noqa: BLE001 - anything unreadable means "redo the stage"
        return False
    return False


def _stage_output(stage: str, paths: dict) -> Path:
    return {"synth": paths["log"], "prepare": paths["data"], "train": paths["model"],
            "build-index": paths["index"], "export": paths["models"]}[stage]


# ------------------------------------------------------------------------------ stages
def _query(address: str, model_name: str, ds, num_queries: int, k: int, num_items: int,
           timeout_s: float = 60.0) -> dict:
    """Test users over gRPC: beam search (serving_default) and brute force, one per request."""
    import numpy as np

    from nann_tf.data.dataset import popularity_topk
    from nann_tf.search.metrics import summarize
    from nann_tf.serving.client import RetrievalClient

    users = min(num_queries, len(ds.test))
    if users == 0:
        raise CliError(f"{ds.path}: the dataset has no test users to query")
    raw = ds.raw_item_id.astype(np.int64)
    hist = np.where(ds.test.hist[:users] > 0, raw[ds.test.hist[:users]], 0).astype(np.int64)
    target = raw[ds.test.target[:users]]
    out: dict = {"users": users}
    with RetrievalClient(address, model_name, timeout_s=timeout_s, retries=1) as client:
        for sig in ("serving_default", "brute_force"):  # untimed: first-call costs
            for i in range(min(3, users)):
                client.predict({"hist_item_ids": hist[i:i + 1]}, signature=sig)
        results = {}
        for sig in ("serving_default", "brute_force"):
            ids, scores, scored, lat, versions = [], [], [], [], set()
            for i in range(users):
                t = time.perf_counter()
                p = client.predict({"hist_item_ids": hist[i:i + 1]}, signature=sig)
                lat.append(time.perf_counter() - t)
                versions.add(p.model_version)
                ids.append(p.outputs["item_ids"][0])
                scores.append(p.outputs["scores"][0])
                if "num_scored" in p.outputs:
                    scored.append(int(p.outputs["num_scored"][0]))
            ms = np.asarray(lat) * 1e3
            results[sig] = {"ids": np.stack(ids), "num_scored": scored, "versions": versions,
                            "p50_ms": float(np.percentile(ms, 50)),
                            "p99_ms": float(np.percentile(ms, 99)),
                            "mean_ms": float(ms.mean())}
    beam, bf = results["serving_default"], results["brute_force"]
    k = min(k, beam["ids"].shape[1], bf["ids"].shape[1])
    beam_m = summarize(beam["ids"], bf["ids"], target, beam["num_scored"], num_items, m=k)
    pop = popularity_topk(ds, k)
    pop_ids = np.where(pop > 0, raw[pop], 0)
    pop_ids = np.broadcast_to(pop_ids.reshape(1, -1), (users, pop_ids.size))
    pop_m = summarize(pop_ids, bf["ids"], target, m=k)
    out.update({
        "k": k, "num_items": num_items,
        "model_versions": sorted(beam["versions"] | bf["versions"]),
        "rows": {
            "beam search (serving_default)": {
                f"recall@{k}": beam_m[f"recall_retrieval@{k}"],
                f"coverage@{k}": beam_m[f"coverage@{k}"],
                "items_scored": float(np.mean(beam["num_scored"])),
                "scored_fraction": beam_m["scored_fraction"],
                "p50_ms": beam["p50_ms"], "p99_ms": beam["p99_ms"], "mean_ms": beam["mean_ms"]},
            "brute force (brute_force)": {
                f"recall@{k}": beam_m[f"recall_all@{k}"], f"coverage@{k}": 1.0,
                "items_scored": float(num_items), "scored_fraction": 1.0,
                "p50_ms": bf["p50_ms"], "p99_ms": bf["p99_ms"], "mean_ms": bf["mean_ms"]},
            "most popular (no model)": {
                f"recall@{k}": pop_m[f"recall_retrieval@{k}"],
                f"coverage@{k}": pop_m[f"coverage@{k}"],
                "items_scored": None, "scored_fraction": None, "p50_ms": None,
                "p99_ms": None, "mean_ms": None},
        },
        f"recall_delta@{k}": beam_m[f"recall_delta@{k}"],
    })
    return out


def format_table(results: dict) -> str:
    """The demo's table (one line per method) from :func:`run_demo`'s ``query`` results."""
    k = results["k"]
    cols = [(f"recall@{k}", f"recall@{k}", "{:.4f}"), (f"coverage@{k}", f"coverage@{k}", "{:.4f}"),
            ("items scored", "items_scored", "{:.1f}"),
            ("of corpus", "scored_fraction", "{:.2%}"),
            ("p50 ms", "p50_ms", "{:.2f}"), ("p99 ms", "p99_ms", "{:.2f}")]
    name_w = max(len("method"), *(len(n) for n in results["rows"]))
    widths = [max(len(title), 9) for title, _, _ in cols]
    lines = ["  ".join(["method".ljust(name_w)] +
                       [t.rjust(w) for (t, _, _), w in zip(cols, widths)])]
    for name, row in results["rows"].items():
        cells = ["-" if row.get(key) is None else fmt.format(row[key]) for _, key, fmt in cols]
        lines.append("  ".join([name.ljust(name_w)] +
                               [c.rjust(w) for c, w in zip(cells, widths)]))
    return "\n".join(lines)


def run_demo(workdir, config: str = "ci-synth", *, port: int = 0, host: str = "127.0.0.1",
             queries: int = 200, model_name: str = "nann", fresh: bool = False,
             server_timeout_s: float = 600.0) -> dict:
    """Runs the demo (see the module docstring) and returns what it measured.

    Returns:
      A dict with ``stages`` (per stage: ``status`` "ran" or "reused", ``seconds``),
      ``query`` (users, k, per-method rows, served versions), ``server_exit_status``,
      ``workdir``, ``config`` and ``address``; also written to ``DIR/results.json``.

    Raises:
      CliError: a bad argument, a failed stage, or a server that failed to start or to stop
        cleanly (the server is stopped in every case).
    """
    from nann_tf.config import ConfigError, load_config

    if queries < 1:
        raise CliError(f"--queries must be >= 1, got {queries}")
    if not 0 <= port <= 65535:
        raise CliError(f"--port must be in 0..65535, got {port}")
    if not model_name or not re.fullmatch(r"[\w.-]+", model_name):
        raise CliError(f"--model-name {model_name!r}: use letters, digits, '_', '.', '-'")
    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise CliError(str(e)) from e
    if cfg.model.variant != "attention":
        print(f"note: config {config} has model variant {cfg.model.variant}; the demo trains "
              "it as given", flush=True)
    work = Path(workdir).resolve()
    if work.exists() and not work.is_dir():
        raise CliError(f"--workdir {work}: exists and is not a directory")
    work.mkdir(parents=True, exist_ok=True)
    paths = {"log": work / "log.csv", "data": work / "data", "model": work / "model",
             "index": work / "index", "models": work / "models" / model_name,
             "serve_log": work / "logs" / "serve.log"}
    state = _State(work)
    keys = _stage_keys(cfg, model_name)
    progress = _Progress()
    report: dict = {"workdir": str(work), "config": str(config), "stages": {}}
    print(f"nann-tf demo: config {cfg.name}, work directory {work}", flush=True)

    redo = fresh
    for i, stage in enumerate(STAGES[:5], start=1):
        entry = state.get(stage)
        if not redo and entry and entry.get("key") == keys[stage] and \
                _output_valid(stage, paths, entry):
            t = time.perf_counter()
            detail = f" (version {entry['version']})" if stage == "export" else ""
            print(f"[{i}/{len(STAGES)}] {stage}: reusing {_stage_output(stage, paths)}{detail}",
                  flush=True)
            report["stages"][stage] = {"status": "reused",
                                       "seconds": time.perf_counter() - t}
            continue
        out = _stage_output(stage, paths)
        if out.exists() and entry is None and not fresh and stage != "export":
            raise CliError(f"{out} exists but was not written by `nann-tf demo` in this work "
                           "directory; use an empty --workdir, or --fresh to replace it")
        redo = True  # everything downstream of a redone stage is redone too
        if stage == "train" and (fresh or (entry or {}).get("started_key") not in
                                 (None, keys[stage])):
            # An interrupted run of another config (or --fresh): start over, don't resume.
            from nann_tf.train import remove_training_state

            remove_training_state(paths["model"])
        # Marked before it runs: an interrupted stage's output is ours to resume or replace.
        state.set(stage, {"key": None, "status": "started", "started_key": keys[stage]})
        t = progress.start(i, stage, {
            "synth": f"synthetic log -> {paths['log']}",
            "prepare": f"dataset -> {paths['data']}",
            "train": f"training the {cfg.model.variant} model (NCE + FGSM) -> {paths['model']}",
            "build-index": f"item embeddings + HNSW -> {paths['index']}",
            "export": f"SavedModel version -> {paths['models']}/<version>"}[stage])
        extra: dict = {}
        if stage == "synth":
            _cli("synth", "--config", config, "--output", paths["log"], "--overwrite")
        elif stage == "prepare":
            _cli("prepare", "--format", "userbehavior", "--config", config, "--input",
                 paths["log"], "--output", paths["data"], "--overwrite")
        elif stage == "train":
            _cli("train", "--config", config, "--data", paths["data"], "--output",
                 paths["model"], "--overwrite")
        elif stage == "build-index":
            _cli("build-index", "--model", paths["model"], "--data", paths["data"], "--output",
                 paths["index"])
        else:
            extra = _export(paths, model_name)
        seconds = progress.done(i, stage, t, "done" + (f" (version {extra['version']}, "
                                                       f"validation coverage "
                                                       f"{extra['coverage']:.3f})"
                                                       if extra else ""))
        state.set(stage, {"key": keys[stage], "status": "done", "seconds": seconds, **extra})
        report["stages"][stage] = {"status": "ran", "seconds": seconds, **extra}
    report["model_version"] = state.get("export")["version"]

    from nann_tf.data.dataset import Dataset

    ds = Dataset.load(paths["data"])
    server = ServerProcess(paths["models"], model_name, port=port, host=host,
                           log_path=paths["serve_log"])
    try:
        t = progress.start(6, "serve", f"nann-tf serve --model_name={model_name} "
                                       f"--model_base_path={paths['models']} --port={port} "
                                       f"(log: {paths['serve_log']})")
        address = server.start(timeout_s=server_timeout_s)
        report["address"] = address
        report["stages"]["serve"] = {"status": "ran", "seconds": progress.done(
            6, "serve", t, f"{address} serving {model_name} version {server.version}, pid "
                           f"{server.proc.pid},")}
        t = progress.start(7, "query", f"{min(queries, len(ds.test))} test users over gRPC "
                                       "(serving_default and brute_force, one per request)")
        from nann_tf.serving.client import ServingError

        try:
            report["query"] = _query(address, model_name, ds, queries, cfg.search.k,
                                     ds.num_items)
        except ServingError as e:
            raise CliError(f"a gRPC query to {address} failed: {e} (server log: "
                           f"{paths['serve_log']})") from e
        report["stages"]["query"] = {"status": "ran",
                                     "seconds": progress.done(7, "query", t, "done")}
    finally:
        t = time.perf_counter()
        status = server.stop()
    report["server_exit_status"] = status
    if status != 0:
        raise CliError(f"the server exited with status {status} after SIGTERM (expected 0); "
                       f"see {paths['serve_log']}")
    report["stages"]["stop"] = {"status": "ran", "seconds": progress.done(
        8, "stop", t, "server stopped (SIGTERM, exit status 0)")}
    q = report["query"]
    delta = q[f"recall_delta@{q['k']}"]
    print(f"\n{q['users']} test users, {q['num_items']} items, k={q['k']}, model {model_name} "
          f"version(s) {q['model_versions']} over gRPC at {report['address']}; "
          f"recall-delta@{q['k']} {delta:.4f}\n")
    print(format_table(q), flush=True)
    print(f"\nrecall@{q['k']}: of the beam search = recall-retrieval, of brute force = "
          f"recall-all (one held-out item per user); coverage@{q['k']}: share of brute force's "
          f"top-{q['k']} the beam search returns; latency: one user per gRPC request.",
          flush=True)
    tmp = work / f".{RESULTS_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True, default=float))
    os.replace(tmp, work / RESULTS_FILE)
    print(f"\nartefacts under {work}; measurements in {work / RESULTS_FILE}", flush=True)
    return report


def _export(paths: dict, model_name: str) -> dict:
    from nann_tf.data.dataset import DataError
    from nann_tf.export.export import ExportError, export_version
    from nann_tf.index.hnsw import HnswIndexError
    from nann_tf.train import TrainError

    try:
        info = export_version(paths["model"], paths["index"], paths["models"],
                              data_dir=str(paths["data"]), model_name=model_name)
    except (ExportError, TrainError, HnswIndexError, DataError) as e:
        raise CliError(str(e)) from e
    return {"version": int(info["version"]),
            "coverage": float(info["validation"]["coverage_vs_brute_force"])}


class _Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP to the demo: unwinds like Ctrl-C so the server is stopped."""


def run(args: argparse.Namespace) -> int:
    """``nann-tf demo``."""
    import logging

    # Before TensorFlow is first imported: keep the stage lines readable.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum, frame):
            raise _Terminated(signal.Signals(signum).name)

        for s in (signal.SIGTERM, signal.SIGHUP):
            handlers[s] = signal.signal(s, on_signal)
    try:
        run_demo(args.workdir, args.config, port=args.port, host=args.host,
                 queries=args.queries, model_name=args.model_name, fresh=args.fresh,
                 server_timeout_s=args.server_timeout)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return 0

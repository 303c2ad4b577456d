"""The demo: the whole chain on generated data, served over gRPC and measured (``nann-tf demo``).

Stages, each reported with its time: ``synth`` (a synthetic behaviour log) -> ``prepare`` (the
dataset) -> ``train`` (the NANN attention model, NCE + FGSM) -> ``build-index`` (e_v + HNSW) ->
``export`` (a validated SavedModel version) -> ``serve`` (``nann-tf serve`` in a subprocess,
waited on until the version is AVAILABLE) -> ``query`` (test users over gRPC: ``serving_default``
for the beam search, ``brute_force`` for the exact answer, one user per request; then
``similar_items`` for the last item of test users) -> ``stop`` (SIGTERM; the server must exit
with status 0). It prints one table: recall@k of the beam search (recall-retrieval) and of brute
force (recall-all), coverage@k of the beam search vs brute force, items scored per query, and
p50/p99 gRPC latency; then the similar items of a few items with their categories, for a person
to judge, and how often similar items share their seed's category, beside random items.

Everything stays under the work directory::

    DIR/log.csv            synthetic UserBehavior log
    DIR/data/              dataset (nann-tf prepare)
    DIR/model/             trained model (nann-tf train)
    DIR/index/             item embeddings + HNSW levels (nann-tf build-index)
    DIR/models/<name>/<v>/ SavedModel versions (nann-tf export)
    DIR/logs/serve.log     the server's output
    DIR/pipeline.json      which stage outputs are up to date (config fingerprints)
    DIR/results.json       the measurements of the last run

The first five stages run through :class:`nann_tf.pipeline.Pipeline`: running again with the same
work directory reuses every stage whose output exists, loads, and was made from the same
configuration (a changed ``[model]`` table retrains, and so on downstream); ``fresh`` redoes
every stage (the export then adds a new version).

The server subprocess is always stopped, also when a stage fails or on Ctrl-C / SIGTERM.
The server runs as :class:`nann_tf.serving.process.ServerProcess`.
"""

from __future__ import annotations

import re
import time

from nann_tf.errors import UserError
from nann_tf.fsutil import write_json_atomic
from nann_tf.serving.process import ServerProcess

__all__ = ["run_demo", "format_table", "format_similar", "DemoError", "STAGES", "RESULTS_FILE"]

STAGES = ("synth", "prepare", "train", "build-index", "export", "serve", "query", "stop")
RESULTS_FILE = "results.json"


class DemoError(UserError, RuntimeError):
    """A bad demo argument, a failed query, or a server that did not stop cleanly."""


def _query(address: str, model_name: str, ds, num_queries: int, k: int, num_items: int,
           timeout_s: float = 60.0) -> dict:
    """Test users over gRPC: beam search (serving_default) and brute force, one per request."""
    import numpy as np

    from nann_tf.data.dataset import popularity_topk
    from nann_tf.evaluation.metrics import summarize
    from nann_tf.serving.client import RetrievalClient

    users = min(num_queries, len(ds.test))
    if users == 0:
        raise DemoError(f"{ds.path}: the dataset has no test users to query")
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


def _category_label(ds, dense_id: int) -> str:
    """An item's category as the input named it (its name where the input has names)."""
    raw_cat = int(ds.raw_category_id[ds.item_category[dense_id]])
    names = ds.meta.get("category_names") or {}
    return str(names.get(str(raw_cat), raw_cat))


def _similar_examples(address: str, model_name: str, ds, rows: int = 100, show: int = 3,
                      k: int = 5, timeout_s: float = 60.0) -> dict:
    """``similar_items`` over gRPC for the last item of test users: the first ``show`` listed
    with categories, and over ``rows`` items the share of similar items in the seed's category,
    beside ``k`` random items per seed."""
    import numpy as np

    from nann_tf.evaluation.similar import shares_label
    from nann_tf.serving.client import RetrievalClient

    held = ds.test
    seeds = held.hist[held.hist_len > 0][:rows, -1]
    if len(seeds) == 0:
        raise DemoError(f"{ds.path}: no test user has a history to take seed items from")
    raw = ds.raw_item_id.astype(np.int64)
    dense_of = {int(r): i for i, r in enumerate(raw) if i > 0}
    with RetrievalClient(address, model_name, timeout_s=timeout_s, retries=1) as client:
        ids, scores, _ = client.similar_items(raw[seeds][:, None], k=k)
    dense = np.vectorize(lambda r: dense_of.get(int(r), 0))(ids)
    examples = []
    for i in range(min(show, len(seeds))):
        examples.append({
            "item": int(raw[seeds[i]]), "category": _category_label(ds, int(seeds[i])),
            "similar": [{"item": int(r), "category": _category_label(ds, int(d)),
                         "distance": float(-sc)}
                        for r, d, sc in zip(ids[i], dense[i], scores[i]) if r != 0]})
    rng = np.random.default_rng(0)
    random_ids = rng.integers(1, ds.num_items + 1, size=dense.shape)
    share = float(np.nanmean(shares_label(dense, seeds[:, None], ds.item_category)))
    base = float(np.nanmean(shares_label(random_ids, seeds[:, None], ds.item_category)))
    return {"k": k, "seeds": int(len(seeds)), "examples": examples,
            "shares_category": share, "random_shares_category": base}


def _rules_example(address: str, model_name: str, ds, k: int = 5,
                   timeout_s: float = 60.0) -> dict:
    """One filtered query (only the category of the user's most recent item) and one
    explained result ("because you viewed"), over gRPC, for the first test user with a
    history."""
    import numpy as np

    from nann_tf.serving.client import RetrievalClient

    held = ds.test
    u = int(np.flatnonzero(held.hist_len > 0)[0])
    raw = ds.raw_item_id.astype(np.int64)
    hist = [int(raw[d]) for d in held.hist[u] if d > 0]
    dense_of = {int(r): i for i, r in enumerate(raw) if i > 0}
    last = dense_of[hist[-1]]
    raw_cat = int(ds.raw_category_id[ds.item_category[last]])
    with RetrievalClient(address, model_name, timeout_s=timeout_s, retries=1) as client:
        only = client.retrieve([hist], k=k, include_categories=[raw_cat], full=True)
        explained = client.retrieve([hist], k=k, explain=True, full=True)
    return {"history_last": {"item": hist[-1], "category": _category_label(ds, last)},
            "category": raw_cat, "search_path": int(only["search_path"][0]),
            "only_category": [{"item": int(r), "category": _category_label(
                ds, dense_of.get(int(r), 0))} for r in only["item_ids"][0] if r != 0],
            "explained": [{"item": int(r), "because": int(b), "weight": float(w)}
                          for r, b, w in zip(explained["item_ids"][0],
                                             explained["because_item_ids"][0],
                                             explained["because_weights"][0]) if r != 0]}


def format_rules(example: dict) -> str:
    """The demo's filtered and explained results."""
    last = example["history_last"]
    path = "scored exactly" if example["search_path"] else "walked"
    lines = [f"business rules (retrieve over gRPC; the user's most recent item {last['item']} "
             f"[{last['category']}]):",
             f"  only category {example['category']} ({path}): " + ", ".join(
                 f"{r['item']} [{r['category']}]" for r in example["only_category"]),
             "  because you viewed (retrieve_explained: item <- the history item it attends "
             "to most, weight):"]
    lines += [f"      {r['item']} <- {r['because']}  {r['weight']:.2f}"
              for r in example["explained"]]
    return "\n".join(lines)


def format_similar(similar: dict) -> str:
    """The demo's similar-items lines."""
    lines = ["similar items (similar_items over gRPC: nearest in the item embedding space; "
             "item [category]  distance):"]
    for ex in similar["examples"]:
        lines.append(f"  {ex['item']} [{ex['category']}]")
        for s in ex["similar"]:
            lines.append(f"      {s['item']} [{s['category']}]  {s['distance']:.4f}")
    lines.append(f"over {similar['seeds']} items (test users' last items), "
                 f"{similar['shares_category']:.2f} of their top-{similar['k']} similar items "
                 f"are in the item's category; {similar['random_shares_category']:.2f} of "
                 f"random items are.")
    return "\n".join(lines)


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
      DemoError: a bad argument, a failed stage, or a server that failed to start or to stop
        cleanly (the server is stopped in every case).
    """
    from nann_tf.pipeline import Pipeline, StageLog

    if queries < 1:
        raise DemoError(f"queries must be >= 1, got {queries}")
    if not 0 <= port <= 65535:
        raise DemoError(f"port must be in 0..65535, got {port}")
    if not model_name or not re.fullmatch(r"[\w.-]+", model_name):
        raise DemoError(f"model name {model_name!r}: use letters, digits, '_', '.', '-'")
    pipeline = Pipeline(workdir, config, model_name=model_name, fresh=fresh)
    cfg, work = pipeline.cfg, pipeline.workdir
    if cfg.model.variant != "attention":
        print(f"note: config {config} has model variant {cfg.model.variant}; the demo trains "
              "it as given", flush=True)
    paths = dict(pipeline.paths, serve_log=work / "logs" / "serve.log")
    progress = StageLog(len(STAGES), lambda line: print(line, flush=True))
    report: dict = {"workdir": str(work), "config": str(config), "stages": {}}
    print(f"nann-tf demo: config {cfg.name}, work directory {work}", flush=True)
    report["stages"] = pipeline.run("export", log=progress)
    report["model_version"] = report["stages"]["export"]["version"]

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
            report["similar"] = _similar_examples(address, model_name, ds,
                                                  rows=min(queries, 100))
            if cfg.model.variant == "attention":
                report["rules"] = _rules_example(address, model_name, ds)
        except ServingError as e:
            raise DemoError(f"a gRPC query to {address} failed: {e} (server log: "
                           f"{paths['serve_log']})") from e
        report["stages"]["query"] = {"status": "ran",
                                     "seconds": progress.done(7, "query", t, "done")}
    finally:
        t = time.perf_counter()
        status = server.stop()
    report["server_exit_status"] = status
    if status != 0:
        raise DemoError(f"the server exited with status {status} after SIGTERM (expected 0); "
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
    print("\n" + format_similar(report["similar"]), flush=True)
    if "rules" in report:
        print("\n" + format_rules(report["rules"]), flush=True)
    write_json_atomic(work / RESULTS_FILE, report, default=float)
    print(f"\nartefacts under {work}; measurements in {work / RESULTS_FILE}", flush=True)
    return report



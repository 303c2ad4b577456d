"""Retrieval benchmark: Beam-retrieval vs HNSW-retrieval vs brute force with a trained NANN model.

Usage (repository root)::

    # MovieLens 100K (a few minutes)
    python bench/bench_retrieval.py --config movielens-100k \\
        --format movielens --input ../shared/data/movielens-100k
    # the 1M-item synthetic corpus (~40 min on 2 cores; --items 300000 scales it down)
    nohup python bench/bench_retrieval.py --config synth-1m \\
        --workdir /tmp/nann-bench-synth-1m > /tmp/bench-1m.log 2>&1 &

Stages (each is skipped when ``--workdir`` already holds its output, so an interrupted run
resumes): prepare the dataset (``--input``, or generated from the config's ``synth_*`` keys);
train the attention model with the config's FGSM eps and, unless ``--no-compare``, one with
``fgsm_eps = 0``; build both indexes (timed: e_v extraction and the hnswlib build); then on
``--users`` test users:

- the ``nann-tf evaluate`` table at the config's ``[search]`` parameters (brute force, beam
  with and without history seeds, HNSW-retrieval, most popular: recall@M, recall-delta@M,
  coverage@M, fraction scored), plus beam with the paper's rounds (T_1 = 1, T_0 = 3) with and
  without seeds;
- the sweep of ``nann-tf evaluate --sweep`` (Figs. 3, 4, 6, 7a; PNG + CSV), and from it beam vs
  HNSW-retrieval coverage at equal items scored;
- ``nann-tf tune`` on ``--tune-users`` validation users (target ``--target-coverage``), and the
  chosen setting evaluated on the test users;
- latency per query at batch sizes 1 and 16: the beam search (config, tuned, and the paper's
  rounds without seeds) vs in-graph brute force over the whole corpus with the same scorer.

Writes ``bench/results/retrieval-<config>.json``, ``retrieval-<config>.md`` (Markdown tables)
and ``retrieval-<config>/`` (PNGs and CSVs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_SCORED_FRACTION = 0.02
TARGET_SPEEDUP = 30.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare(args, cfg, work: Path) -> dict:
    """The dataset in ``work/data``: generated through the pipeline runner (reused when its
    fingerprint matches), or prepared from ``--input``."""
    from nann_tf.data.prepare import prepare_dataset
    from nann_tf.pipeline import Pipeline

    dc = cfg.data
    t0 = time.perf_counter()
    if args.input is None:
        overrides = {"data.synth_items": args.items or dc.synth_items,
                     "data.synth_users": args.synth_users or dc.synth_users}
        stages = Pipeline(work, args.config, overrides=overrides, say=log).run("prepare")
        return {"reused": all(r["status"] == "reused" for r in stages.values()),
                "generate_s": stages["synth"]["seconds"],
                "prepare_s": stages["prepare"]["seconds"]}
    data = work / "data"
    if (data / "meta.json").is_file():
        log(f"dataset: reusing {data}")
        return {"reused": True}
    prepare_dataset(args.input, data, args.format, max_len=dc.max_len, min_len=dc.min_len,
                    val_users=dc.val_users, test_users=dc.test_users, seed=dc.split_seed,
                    overwrite=True)
    return {"reused": False, "generate_s": 0.0, "prepare_s": time.perf_counter() - t0}


def train_model(cfg, work: Path, name: str, eps: float) -> dict:
    import copy

    from nann_tf.model.saved import MODEL_META
    from nann_tf.train import train

    out = work / name
    if (out / MODEL_META).is_file():
        log(f"{name}: reusing the trained model")
        meta = json.loads((out / MODEL_META).read_text())
        return dict(meta["train_summary"], reused=True)
    c = copy.deepcopy(cfg)
    c.train.fgsm_eps = eps
    log(f"{name}: training (fgsm_eps={eps:g}, {c.train.epochs} epochs x "
        f"{c.train.steps_per_epoch or 'all'} steps, batch {c.train.batch_size})")
    summary = train(c, work / "data", out, verbose=2, overwrite=True)
    log(f"{name}: trained in {summary['seconds']:.0f}s")
    return summary


def build(work: Path, name: str) -> dict:
    from nann_tf.index.build import build_index

    out = work / f"index-{name}"
    reused = (out / "index.json").is_file()
    if reused:
        log(f"index-{name}: reusing")
        meta = json.loads((out / "index.json").read_text())
    else:
        log(f"index-{name}: building")
        meta = build_index(work / name, work / "data", out)
    info = {k: meta[k] for k in ("embed_seconds", "hnsw_build_seconds", "M", "ef_construction",
                                 "max_level", "nodes_per_level")}
    info["reused"] = reused
    log(f"index-{name}: e_v {info['embed_seconds']:.1f}s, HNSW {info['hnsw_build_seconds']:.1f}s,"
        f" levels {info['nodes_per_level']}")
    return info


def envelope(points):
    """Upper envelope of (x, y, ...) tuples: the points whose y no cheaper point reaches."""
    out, best = [], -1.0
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if p[1] > best:
            out.append(p)
            best = p[1]
    return out


def at_equal_cost(curves, m: int) -> list[dict]:
    """The Fig. 3 series (beam with history seeds, beam without, HNSW-retrieval) at equal cost:
    for every point of a series' upper envelope (coverage@m vs items scored), the best coverage
    of each other series scoring at most as many items (None when even its cheapest point costs
    more)."""
    names = list(dict.fromkeys(r["series"] for r in curves if r["figure"] == "fig3"))
    pts = {s: envelope([(r["items_scored"], r[f"coverage@{m}"], r) for r in curves
                        if r["figure"] == "fig3" and r["series"] == s]) for s in names}
    out = []
    for s in names:
        for x, y, r in pts[s]:
            others = {}
            for o in names:
                if o == s:
                    continue
                ox = np.array([p[0] for p in pts[o]])
                i = np.searchsorted(ox, x, side="right") - 1
                others[o] = float(pts[o][i][1]) if i >= 0 else None
            out.append({"series": s, "params": (f"ef={r['ef']} T={r['T']}"
                                                if r["method"] == "beam"
                                                else f"ef0={r['hnsw_ef']}"),
                        "items_scored": x, "scored_fraction": r["scored_fraction"],
                        "coverage": y, "others": others})
    return sorted(out, key=lambda r: r["items_scored"])


def latency(model, index, hist, params, visited: str, batches, repeats: int,
            ef=None, T=None, brute: bool = True, history_seeds=None, xla: bool = False) -> dict:
    """Median ms per batch and per query for the beam search (and in-graph brute force with
    the same scorer). ``xla``: both score with XLA over the exported model's shape grid (every
    grid size compiled before timing), as TF Serving runs the export."""
    import tensorflow as tf

    from nann_tf.model.scorer import ModelScorer, ShapeGrid
    from nann_tf.search.brute_force import DEFAULT_CHUNK_SIZE, brute_force
    from nann_tf.evaluation.retriever import Retriever

    ef = params.ef if ef is None else ef
    T = params.T if T is None else T
    seeds = params.history_seeds if history_seeds is None else history_seeds
    out = {}
    table = tf.constant(index.embeddings)
    n = index.num_items
    grid = (ShapeGrid.for_search(index.graph, params.start_level, 2 * max(ef.values()),
                                 hist.shape[1]) if xla else None)
    scorer = ModelScorer(model, table, grid)
    chunk = min(DEFAULT_CHUNK_SIZE, grid.max_size) if grid else DEFAULT_CHUNK_SIZE

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
    def bf_fn(h):
        b = tf.shape(h)[0]
        return brute_force(scorer.bind(model.encode_user(h), b), b, n, params.k,
                           chunk_size=chunk)

    for b in batches:
        def batch_of(i, b=b):  # the i-th batch of b users (wrapping around a small test set)
            return hist[np.arange(i * b, (i + 1) * b) % len(hist)]

        r = Retriever(model, index, params.start_level, visited, batch_size=b, grid=grid)
        if grid is not None:
            t0 = time.perf_counter()
            r.warm_up(hist, [b])
            if brute:
                bf_fn(tf.constant(hist[:b]))  # its chunk widths: one full, one last
            log(f"XLA: compiled {len(grid.sizes)} grid sizes at B={b} in "
                f"{time.perf_counter() - t0:.0f}s")
        times = []
        for i in range(repeats):
            res = r.beam(batch_of(i + 1), ef, T, params.k, seeds)  # batch 0 warms up
            times.append(res.seconds)
        row = {"beam_ms_per_batch": 1000 * float(np.median(times)),
               "beam_items_scored": float(np.mean(res.num_scored))}
        row["beam_ms_per_query"] = row["beam_ms_per_batch"] / b
        if brute:
            bf_fn(tf.constant(hist[:b]))
            times = []
            for i in range(max(1, repeats // 2)):
                t0 = time.perf_counter()
                ids, _, _ = bf_fn(tf.constant(batch_of(i + 1)))
                ids.numpy()
                times.append(time.perf_counter() - t0)
            row["brute_ms_per_batch"] = 1000 * float(np.median(times))
            row["brute_ms_per_query"] = row["brute_ms_per_batch"] / b
            row["speedup"] = row["brute_ms_per_query"] / row["beam_ms_per_query"]
        out[str(b)] = row
        log(f"latency B={b}{' (XLA)' if xla else ''}: {row}")
    return out


def _took(t0: float, info: dict) -> float:
    """Seconds a stage took: measured now, or as recorded when its output was reused."""
    if info.get("reused"):
        return float(info.get("seconds", info.get("embed_seconds", 0.0)
                               + info.get("hnsw_build_seconds", 0.0)))
    return time.perf_counter() - t0


def fmt(x, digits=4):
    return "-" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def markdown(res: dict) -> str:
    ms = res["at"]
    m = ms[-1]
    L = [f"# Retrieval benchmark: {res['config']}", "",
         f"{res['num_items']} items, e_v {res['dim']}-d, {res['test_users']} test users "
         f"(tuning: {res['tune']['users']} validation users), machine: {res['machine']}.", "",
         f"Search parameters (config): `{res['params_desc']}`, hnsw_ef = "
         f"{res['params']['hnsw_ef']}; visited set: {res['visited']}.", "",
         "## Quality at the config's parameters", "",
         "| method | " + " | ".join(f"recall@{x} | recall-delta@{x} | coverage@{x}" for x in ms)
         + " | scored | ms/query |",
         "|---|" + "---|" * (3 * len(ms) + 2)]
    labels = {"brute_force": "brute force", "beam": "beam (config params)",
              "beam_no_seeds": "beam, config params, no seeds",
              "hnsw": "HNSW-retrieval", "most_popular": "most popular"}
    rows = dict(res["table"]["rows"])
    order = ["brute_force", "beam"] + (["beam_no_seeds"] if "beam_no_seeds" in rows else [])
    for key, r in res.get("paper", {}).items():
        rows[key] = r
        labels[key] = f"beam, paper's T ({r['T']}), {'history seeds' if r['seeds'] else 'no seeds'}"
        order.append(key)
    if res.get("tuned_eval"):
        rows["tuned"] = res["tuned_eval"]
        labels["tuned"] = "beam (tuned: " + res["tuned_desc"] + ")"
        order.append("tuned")
    if res.get("no_fgsm_table"):
        rows["no_fgsm_beam"] = res["no_fgsm_table"]["rows"]["beam"]
        labels["no_fgsm_beam"] = "beam, model without FGSM"
        order.append("no_fgsm_beam")
    order += ["hnsw", "most_popular"]
    for key in order:
        r = rows[key]
        cells = []
        for x in ms:
            rec = r.get(f"recall_retrieval@{x}", r.get(f"recall_all@{x}"))
            cells += [fmt(rec), fmt(r[f"recall_delta@{x}"]), fmt(r[f"coverage@{x}"])]
        L.append(f"| {labels[key]} | " + " | ".join(cells) + f" | "
                 f"{fmt(r.get('scored_fraction'))} | {fmt(r.get('ms_per_query'), 2)} |")
    L += ["", "recall@M: recall-all@M for brute force, recall-retrieval@M otherwise; scored: "
          "fraction of the corpus scored per query; ms/query: batched throughput "
          f"(batch {res['batch_size']}) on this machine.", ""]
    L += ["## Targets", ""]
    if res["num_items"] < 100_000:
        L += [f"(The 2% and {TARGET_SPEEDUP:g}x targets are meant for the 1M-item corpus: here "
              f"k = {res['params']['k']} alone is {100 * res['params']['k'] / res['num_items']:.0f}"
              "% of the corpus and a whole-corpus scan is cheap.)", ""]
    for t in res["targets"]:
        L.append(f"- {t['what']}: {t['value']} -> **{'met' if t['met'] else 'MISSED'}**")
    L += ["", "## Latency per query (ms, median)", "",
          "| batch | beam (config) | beam (tuned) | beam (paper's T, no seeds) | brute force | "
          "speed-up (config) | speed-up (tuned) |", "|---|---|---|---|---|---|---|"]
    for b, row in res["latency"]["config"].items():
        tuned = res["latency"].get("tuned", {}).get(b, {})
        paper = res["latency"].get("paper", {}).get(b, {})
        L.append(f"| {b} | {fmt(row['beam_ms_per_query'], 2)} | "
                 f"{fmt(tuned.get('beam_ms_per_query'), 2)} | "
                 f"{fmt(paper.get('beam_ms_per_query'), 2)} | "
                 f"{fmt(row.get('brute_ms_per_query'), 1)} | {fmt(row.get('speedup'), 1)}x | "
                 + (f"{row['brute_ms_per_query'] / tuned['beam_ms_per_query']:.1f}x |"
                    if tuned and 'brute_ms_per_query' in row else "- |"))
    if res["latency"].get("config_xla"):
        L += ["", "With XLA scoring over the export's shape grid (as TF Serving runs the exported "
              "model; every grid size compiled before timing), beam at the config's parameters "
              "vs brute force with the same XLA scorer:", "",
              "| batch | beam (config, XLA) | brute force (XLA) | speed-up | speed-up vs the faster "
              "brute force |", "|---|---|---|---|---|"]
        for b, row in res["latency"]["config_xla"].items():
            fastest = min(x for x in (row.get("brute_ms_per_query"),
                                      res["latency"]["config"].get(b, {}).get(
                                          "brute_ms_per_query")) if x)
            L.append(f"| {b} | {fmt(row['beam_ms_per_query'], 2)} | "
                     f"{fmt(row.get('brute_ms_per_query'), 1)} | {fmt(row.get('speedup'), 1)}x | "
                     f"{fastest / row['beam_ms_per_query']:.1f}x |")
    names = list(dict.fromkeys(r["series"] for r in res["equal_cost"]))
    L += ["", f"## Beam vs HNSW-retrieval at equal items scored (coverage@{m})", "",
          "Each series' upper envelope over the sweep (points no cheaper point of the same "
          "series beats), with each other series' best coverage at no more items scored. "
          "'beam' seeds each query with its history (the default); 'beam, no seeds' is the "
          "paper's algorithm.", "",
          "| series | parameters | items scored | coverage | "
          + " | ".join(f"best {n} at <= these items" for n in names) + " |",
          "|---|---|---|---|" + "---|" * len(names)]
    for r in res["equal_cost"]:
        L.append(f"| {r['series']} | {r['params']} | {r['items_scored']:.0f} "
                 f"({100 * r['scored_fraction']:.2f}%) | {fmt(r['coverage'])} | "
                 + " | ".join("" if n == r["series"] else fmt(r["others"][n]) for n in names)
                 + " |")
    if res.get("fgsm"):
        f = res["fgsm"]
        L += ["", f"## FGSM vs no FGSM (beam at the config's parameters, M = {m})", "",
              "| model | fgsm_eps | recall-all | recall-retrieval | recall-delta | coverage | "
              "scored |", "|---|---|---|---|---|---|---|"]
        for name in ("with", "without"):
            r = f[name]
            L.append(f"| {name} FGSM | {r['fgsm_eps']:g} | {fmt(r[f'recall_all@{m}'])} | "
                     f"{fmt(r[f'recall_retrieval@{m}'])} | {fmt(r[f'recall_delta@{m}'])} | "
                     f"{fmt(r[f'coverage@{m}'])} | {fmt(r['scored_fraction'])} |")
        L += ["", "Perturbation |s(e_v) - s(e_v + delta)| over the brute-force top items "
              f"(|delta| = {res['perturb_r']:.3g}): " + "; ".join(
                  f"{k}: median {v['median']:.4g}, p90 {v['p90']:.4g}"
                  for k, v in res["perturbation_summary"].items())]
    tr = res["tune"]
    L += ["", "## Tuning (replay on validation users)", "",
          f"Target coverage@{tr['k']} >= {tr['target']}: chosen "
          f"`{res.get('tuned_desc', 'none')}`; replay coverage {fmt(tr['check']['replay_coverage'])}"
          f", TF beam search on the same users {fmt(tr['check']['tf_coverage'])}; "
          f"{tr['grid_size']} settings replayed in {tr['seconds']['replay']:.1f}s.", "",
          "## Build and run times (s)", ""]
    for k, v in res["stages"].items():
        L.append(f"- {k}: {v:.1f}")
    if any(x.get("reused") for x in list(res["train"].values()) + list(res["index"].values())):
        L.append("- (train/index: as recorded when those artefacts were built by an earlier run "
                 "in the same work directory; 'total' covers this run only)")
    L += ["", "Figures: " + ", ".join(f"`{Path(p).name}`" for p in res["figures"])]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--format", default="userbehavior")
    ap.add_argument("--input", help="behaviour log (omit: generate from the config)")
    ap.add_argument("--items", type=int, help="override the config's synth_items")
    ap.add_argument("--synth-users", type=int, help="override the config's synth_users")
    ap.add_argument("--workdir", help="artefacts (default /tmp/nann-bench-<config>)")
    ap.add_argument("--users", type=int, default=200, help="test users (0: all)")
    ap.add_argument("--tune-users", type=int, default=100, help="validation users for tune")
    ap.add_argument("--target-coverage", type=float, default=0.97)
    ap.add_argument("--no-compare", action="store_true", help="skip the model without FGSM")
    ap.add_argument("--fgsm-eps", type=float, default=None,
                    help="FGSM eps of the main model (default: the config's train.fgsm_eps)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--latency-repeats", type=int, default=20,
                    help="timed batches per batch size (brute force: half as many)")
    ap.add_argument("--no-xla-latency", action="store_true",
                    help="skip the latency run with XLA scoring (as served)")
    ap.add_argument("--sweep-scales", default="0.5,1,2")
    ap.add_argument("--sweep-T0", default="1,2,3,6,10")
    ap.add_argument("--sweep-hnsw-ef", default=None,
                    help="HNSW ef0 values (default: k x 0.5,1,1.5,2,3 and hnsw_ef)")
    ap.add_argument("--name", help="results name (default: the config name)")
    args = ap.parse_args(argv)

    import tensorflow as tf

    from nann_tf import ops
    from nann_tf.config import load_config
    from nann_tf.data.dataset import Dataset
    from nann_tf.evaluation.evaluate import evaluate_retrieval, format_table
    from nann_tf.evaluation.retriever import load_model_entry
    from nann_tf.evaluation.sweep import run_sweep
    from nann_tf.evaluation.metrics import summarize
    from nann_tf.search.params import format_level_values
    from nann_tf.search.tune import default_grid, grid_from_lists, tune

    cfg = load_config(args.config)
    name = args.name or args.config
    work = Path(args.workdir or f"/tmp/nann-bench-{name}")
    work.mkdir(parents=True, exist_ok=True)
    try:
        ops.load_library()
        visited = "bitmap"
    except ops.OpLibraryError:
        visited = "tf"
    stages = {}
    t_all = time.perf_counter()

    t = time.perf_counter()
    prep = prepare(args, cfg, work)
    stages["dataset"] = time.perf_counter() - t
    ds = Dataset.load(work / "data")
    log(f"dataset: {ds.num_items} items, {len(ds.test)} test / {len(ds.val)} val users")

    eps = cfg.train.fgsm_eps if args.fgsm_eps is None else args.fgsm_eps
    if eps == 0 and not args.no_compare:
        log("FGSM is off in this config (pass --fgsm-eps to compare): one model is trained")
        args.no_compare = True
    fgsm_name = f"model-fgsm{eps:g}"
    t = time.perf_counter()
    train_fgsm = train_model(cfg, work, fgsm_name, eps)
    stages["train (FGSM)"] = _took(t, train_fgsm)
    if not args.no_compare:
        t = time.perf_counter()
        train_plain = train_model(cfg, work, "model-nofgsm", 0.0)
        stages["train (no FGSM)"] = _took(t, train_plain)
    t = time.perf_counter()
    index_info = {"fgsm": build(work, fgsm_name)}
    stages["index (FGSM)"] = _took(t, index_info["fgsm"])
    if not args.no_compare:
        t = time.perf_counter()
        index_info["nofgsm"] = build(work, "model-nofgsm")
        stages["index (no FGSM)"] = _took(t, index_info["nofgsm"])

    data_dir = str(work / "data")
    primary = load_model_entry(work / fgsm_name, work / f"index-{fgsm_name}", ds,
                               data_name=str(data_dir), label=f"FGSM eps={eps:g}")
    compare = None if args.no_compare else load_model_entry(
        work / "model-nofgsm", work / "index-model-nofgsm", ds, data_name=str(data_dir),
        label="no FGSM (eps=0)")
    params = cfg.search.checked(primary.index.graph.max_level)
    s_level = params.start_level
    ms = sorted({x for x in (50, 200) if x <= params.k} | {params.k})

    t = time.perf_counter()
    log(f"evaluate on {args.users or 'all'} test users: {params.describe()}")
    table, arrays = evaluate_retrieval(primary.model, primary.index, ds, params, "test",
                                       args.users, ms, visited, args.batch_size)
    print(format_table(table), flush=True)
    stages["evaluate (brute force + beam + HNSW)"] = time.perf_counter() - t

    # The paper's rounds (T = 1 on level 1, 3 on level 0), with and without history seeds.
    paper = {}
    if s_level >= 2:
        paper_T = {**params.T, 1: 1, 0: 3}
        for seeds in (False, True):
            res_p = arrays["retriever"].beam(arrays["hist"], params.ef, paper_T, params.k, seeds)
            row = summarize(res_p.ids, arrays["bf_ids"], arrays["target"], res_p.num_scored,
                            ds.num_items, ms)
            row.update(ms_per_query=res_p.ms_per_query, T=format_level_values(paper_T),
                       seeds=seeds, items_scored=float(np.mean(res_p.num_scored)))
            paper[f"paper_{'seeds' if seeds else 'plain'}"] = row
            log(f"paper's T {paper_T}, seeds={seeds}: coverage@{ms[-1]} {row[f'coverage@{ms[-1]}']}")

    no_fgsm_table = None
    if compare is not None:
        t = time.perf_counter()
        no_fgsm_table, _ = evaluate_retrieval(compare.model, compare.index, ds, params, "test",
                                              args.users, ms, visited, args.batch_size)
        print("without FGSM:\n" + format_table(no_fgsm_table), flush=True)
        stages["evaluate (no FGSM model)"] = time.perf_counter() - t

    t = time.perf_counter()
    out_dir = RESULTS / f"retrieval-{name}"
    scales = [float(x) for x in args.sweep_scales.split(",")]
    t0s = [int(x) for x in args.sweep_T0.split(",")]
    eps_models = [primary] + ([compare] if compare is not None else [])
    sweep = run_sweep(primary, ds, params, out_dir, compare=compare, eps_models=eps_models,
                      users=args.users, ms=ms, visited=visited, batch_size=args.batch_size,
                      scales=scales, t0s=t0s, primary_state=arrays, progress=log,
                      hnsw_efs=[int(x) for x in args.sweep_hnsw_ef.split(",")]
                      if args.sweep_hnsw_ef else None)
    stages["sweep"] = time.perf_counter() - t

    t = time.perf_counter()
    s = params.start_level
    ef_values, t_values = default_grid(s, params.k, len(primary.index.graph.start_nodes(s)))
    grid = grid_from_lists(s, ef_values, t_values)
    val_hist = ds.val.hist[:args.tune_users] if args.tune_users else ds.val.hist
    tuned = tune(primary.model, primary.index, val_hist, start_level=s, k=params.k,
                 target=args.target_coverage, grid=grid, visited_impl=visited,
                 batch_size=args.batch_size, progress=log, history_seeds=params.history_seeds)
    stages["tune"] = time.perf_counter() - t
    tuned_eval = tuned_desc = None
    if tuned["chosen"] is not None:
        c = tuned["chosen"]
        tuned_desc = f"ef={format_level_values(c['ef'])} T={format_level_values(c['T'])}"
        res = arrays["retriever"].beam(arrays["hist"], c["ef"], c["T"], params.k,
                                       params.history_seeds)
        tuned_eval = summarize(res.ids, arrays["bf_ids"], arrays["target"], res.num_scored,
                               ds.num_items, ms)
        tuned_eval.update(ms_per_query=res.ms_per_query,
                          items_scored=float(np.mean(res.num_scored)))
        log(f"tuned {tuned_desc} on test users: {tuned_eval}")

    t = time.perf_counter()
    hist = ds.test.hist
    lat = {"config": latency(primary.model, primary.index, hist, params, visited, (1, 16),
                             args.latency_repeats)}
    if tuned["chosen"] is not None:
        lat["tuned"] = latency(primary.model, primary.index, hist, params, visited, (1, 16),
                               args.latency_repeats, ef=tuned["chosen"]["ef"],
                               T=tuned["chosen"]["T"], brute=False)
    if paper:
        lat["paper"] = latency(primary.model, primary.index, hist, params, visited, (1, 16),
                               args.latency_repeats, T={**params.T, 1: 1, 0: 3}, brute=False,
                               history_seeds=False)
    if not args.no_xla_latency:
        lat["config_xla"] = latency(primary.model, primary.index, hist, params, visited,
                                    (1, 16), args.latency_repeats, xla=True)
    stages["latency"] = time.perf_counter() - t
    stages["total"] = time.perf_counter() - t_all

    m = ms[-1]
    beam_row = table["rows"]["beam"]
    targets = [
        {"what": f"coverage@{m} >= {args.target_coverage} at the config's parameters",
         "value": round(beam_row[f"coverage@{m}"], 4),
         "met": beam_row[f"coverage@{m}"] >= args.target_coverage},
        {"what": f"fraction scored <= {TARGET_SCORED_FRACTION} at the config's parameters",
         "value": round(beam_row["scored_fraction"], 4),
         "met": beam_row["scored_fraction"] <= TARGET_SCORED_FRACTION},
    ]
    if tuned_eval is not None:
        targets += [
            {"what": f"tuned ({tuned_desc}): coverage@{m} >= {args.target_coverage} on test "
                     "users", "value": round(tuned_eval[f"coverage@{m}"], 4),
             "met": tuned_eval[f"coverage@{m}"] >= args.target_coverage},
            {"what": f"tuned: fraction scored <= {TARGET_SCORED_FRACTION}",
             "value": round(tuned_eval["scored_fraction"], 4),
             "met": tuned_eval["scored_fraction"] <= TARGET_SCORED_FRACTION}]
    for b in ("1", "16"):
        for which in ("config", "tuned", "config_xla"):
            row = lat.get(which, {}).get(b)
            if row is None:
                continue
            base_lat = lat["config_xla" if which == "config_xla" else "config"][b]
            brute = base_lat.get("brute_ms_per_query")
            sp = brute / row["beam_ms_per_query"] if brute else None
            if sp is not None:
                targets.append({"what": f"beam ({which}) >= {TARGET_SPEEDUP:g}x faster than "
                                        f"brute force per query at B={b}",
                                "value": f"{sp:.1f}x", "met": sp >= TARGET_SPEEDUP})

    fgsm = None
    if no_fgsm_table is not None:
        fgsm = {"with": dict(table["rows"]["beam"], fgsm_eps=primary.eps,
                             **{f"recall_all@{x}": table["rows"]["brute_force"][f"recall_all@{x}"]
                                for x in ms}),
                "without": dict(no_fgsm_table["rows"]["beam"], fgsm_eps=compare.eps,
                                **{f"recall_all@{x}":
                                   no_fgsm_table["rows"]["brute_force"][f"recall_all@{x}"]
                                   for x in ms})}
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    res = {
        "benchmark": "retrieval", "config": args.config, "name": name,
        "command": "python bench/bench_retrieval.py " + " ".join(sys.argv[1:] if argv is None
                                                                  else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
                   f"load avg (1 min) at the end {load1:.1f}",
        "num_items": int(ds.num_items), "dim": int(primary.index.embeddings.shape[1]),
        "test_users": int(len(arrays["hist"])), "at": ms, "visited": visited,
        "batch_size": args.batch_size, "params": params.to_dict(),
        "params_desc": params.describe(), "model_config": cfg.to_dict()["model"],
        "train_config": cfg.to_dict()["train"], "dataset": prep,
        "train": {"fgsm": train_fgsm, **({"nofgsm": train_plain} if not args.no_compare
                                         else {})},
        "index": index_info, "table": table, "no_fgsm_table": no_fgsm_table,
        "tuned_desc": tuned_desc, "tuned_eval": tuned_eval, "paper": paper,
        "tune": {k: v for k, v in tuned.items() if k not in ("rows",)}
        | {"grid_size": len(grid)},
        "latency": lat, "equal_cost": at_equal_cost(sweep["curves"], m), "fgsm": fgsm,
        "perturb_r": sweep["perturb_r"], "perturbation_summary": sweep["perturbation_summary"],
        "targets": targets, "stages": stages,
        "figures": [str(Path(p).relative_to(RESULTS.parent.parent)) for p in sweep["files"]],
    }
    res["tune"]["pareto"] = [{k: ({str(a): b for a, b in v.items()} if isinstance(v, dict)
                                  else v) for k, v in r.items()} for r in res["tune"]["pareto"]]
    for key in ("chosen", "check"):
        if res["tune"][key]:
            res["tune"][key] = {k: ({str(a): b for a, b in v.items()} if isinstance(v, dict)
                                    else v) for k, v in res["tune"][key].items()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"retrieval-{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    (RESULTS / f"retrieval-{name}.md").write_text(md)
    print("\n" + md, flush=True)
    log(f"done in {stages['total']:.0f}s -> {RESULTS / f'retrieval-{name}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

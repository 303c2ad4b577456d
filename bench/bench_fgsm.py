"""The FGSM study (paper Figs. 4 and 7a): does the adversarial auxiliary loss help retrieval?

Usage (repository root; each run is resumable, a finished model is not trained again)::

    # MovieLens 100K (~40 min on 2 cores): 5 settings x 3 seeds
    python bench/bench_fgsm.py --dataset movielens-100k
    # the 1M-item synthetic corpus (~12 min per model with FGSM, ~7 without)
    python bench/bench_fgsm.py --dataset synth-1m --eps 0,r0.03 --users 500
    # tables and plots again from the saved runs, without training
    python bench/bench_fgsm.py --dataset movielens-100k --report-only

For every FGSM setting (``--eps``: ``0`` = off, ``rX`` = relative, ``train.fgsm_eps = X`` with
``fgsm_eps_mode = relative``, i.e. X x the RMS of the batch's e_v coordinates; ``aX`` or a
plain number = the paper's absolute step) and every seed (``--seeds``; the seed sets the
initialisation and the sampling order, and is the same for every setting, so runs with one seed
differ only by FGSM), the study trains the config's model, builds its index and, on the same
held-out test users, measures:

- recall-all@50/200 (exact top-M of the model: its capacity);
- at the config's ``[search]`` parameters ("defaults") and at the paper's (T_1 = 1, T_0 = 3,
  no history seeds, same ef): recall-retrieval@200, recall-delta@200, coverage@200 against
  brute force, and the fraction of the corpus scored.

Each figure is the mean over seeds of the mean over users, with a 95% interval from a seeded
bootstrap over users of the seed-averaged per-user values (``nann_tf.evaluation.metrics``).
Each FGSM setting is compared with ``0`` by the paired difference: per user and seed, FGSM run
minus the no-FGSM run of the same seed, averaged over seeds, with the paired bootstrap's
interval; the per-seed differences are listed too, so seed-to-seed spread is visible.

Writes ``bench/results/fgsm-<dataset>.json``, ``fgsm-<dataset>.md`` and
``fgsm-<dataset>.png``; per-run arrays are kept in ``--workdir``.
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
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# Held-out users for the study: more test users than the configs' defaults, for tighter
# intervals (MovieLens: 200 of 943 users tested, 50 validated, the rest trained on). The
# committed MovieLens results predate explicit_held_out here: prepare capped both at 10%
# (94 test users), which the results file records.
DATASETS = {
    "movielens-100k": {"config": "movielens-100k", "format": "movielens",
                       "input": SHARED / "movielens-100k", "val_users": 50, "test_users": 200},
    "synth-1m": {"config": "synth-1m"},
    "ci-synth": {"config": "ci-synth"},
}
M_VALUES = (50, 200)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_setting(text: str) -> tuple[str, float, str]:
    """``"0"`` / ``"r0.03"`` / ``"a3e-4"`` / ``"3e-4"`` -> ``(label, eps, mode)``."""
    t = text.strip()
    mode = "relative" if t.startswith("r") else "absolute"
    try:
        eps = float(t[1:] if t[:1] in ("r", "a") else t)
    except ValueError:
        raise SystemExit(f"--eps {text!r}: expected 0, rX (relative) or aX / X (absolute)")
    if eps < 0:
        raise SystemExit(f"--eps {text!r}: expected eps >= 0")
    if eps == 0:
        return "0", 0.0, "absolute"
    return (f"r{eps:g}" if mode == "relative" else f"a{eps:g}"), eps, mode


def prepare(name: str, work: Path) -> Path:
    from nann_tf.config import load_config
    from nann_tf.data.prepare import prepare_dataset
    from nann_tf.pipeline import Pipeline

    spec = DATASETS[name]
    cfg = load_config(spec["config"])
    if "input" not in spec:  # generated from the config through the pipeline runner
        Pipeline(work / "pipeline", cfg, say=log).run("prepare")
        return work / "pipeline" / "data"
    out = work / "data"
    if not (out / "meta.json").is_file():
        prepare_dataset(spec["input"], out, spec["format"], max_len=cfg.data.max_len,
                        min_len=cfg.data.min_len, val_users=spec["val_users"],
                        test_users=spec["test_users"], seed=cfg.data.split_seed, overwrite=True,
                        explicit_held_out=(True, True))
    return out


def one_run(name: str, data: Path, work: Path, label: str, eps: float, mode: str, seed: int,
            users: int) -> Path:
    """Trains, indexes and evaluates one (setting, seed); returns its ``.npz`` (cached)."""
    out = work / "runs" / f"{label}-s{seed}.npz"
    if out.is_file():
        return out
    from nann_tf.config import load_config
    from nann_tf.data.dataset import Dataset
    from nann_tf.evaluation.evaluate import held_out
    from nann_tf.evaluation.retriever import Retriever
    from nann_tf.index.build import build_index
    from nann_tf.index.store import load_index
    from nann_tf.model.saved import load_trained_model
    from nann_tf.train import train

    cfg = load_config(DATASETS[name]["config"], {"train.fgsm_eps": eps,
                                                 "train.fgsm_eps_mode": mode,
                                                 "train.seed": seed})
    mdir, idir = work / "models" / f"{label}-s{seed}", work / "indexes" / f"{label}-s{seed}"
    t0 = time.perf_counter()
    summary = train(cfg, data, mdir, verbose=0, overwrite=True)
    t_train = time.perf_counter() - t0
    log(f"{label} seed {seed}: trained in {t_train:.0f}s, final {summary['final']}")
    t0 = time.perf_counter()
    build_index(mdir, data, idir)
    t_index = time.perf_counter() - t0
    ds = Dataset.load(data)
    model, _, _ = load_trained_model(mdir)
    index = load_index(idir)
    params = cfg.search.overridden(k=max(M_VALUES)).checked(index.graph.max_level)
    paper = params.overridden(T={**params.T, **{lv: 1 for lv in range(1, params.start_level)},
                                 0: 3},
                              history_seeds=False).checked(index.graph.max_level)
    hist, target = held_out(ds, "test", users)
    r = Retriever(model, index, params.start_level, "bitmap", batch_size=16)
    bf = r.brute_force(hist, params.k)
    default = r.beam(hist, params.ef, params.T, params.k, params.history_seeds)
    pap = r.beam(hist, paper.ef, paper.T, paper.k, paper.history_seeds)
    norms = np.linalg.norm(index.embeddings[1:], axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, target=target, bf_ids=bf.ids, default_ids=default.ids,
             default_scored=default.num_scored, paper_ids=pap.ids, paper_scored=pap.num_scored,
             info=json.dumps({"label": label, "eps": eps, "mode": mode, "seed": seed,
                              "train_seconds": t_train, "index_seconds": t_index,
                              "final": summary["final"], "num_items": int(ds.num_items),
                              "median_ev_norm": float(np.median(norms)),
                              "default": params.describe(), "paper": paper.describe()}))
    tmp.replace(out)
    log(f"{label} seed {seed}: coverage@200 default "
        f"{np.mean(_cov(default.ids, bf.ids)):.4f}, paper {np.mean(_cov(pap.ids, bf.ids)):.4f}")
    return out


def _cov(ids, bf):
    from nann_tf.evaluation.metrics import per_user_coverage

    return per_user_coverage(ids, bf, 200)


def per_user(run: dict) -> dict[str, dict[str, np.ndarray]]:
    """``{"capacity" | "default" | "paper": per-user metrics}`` of one saved run."""
    from nann_tf.evaluation.metrics import per_user_metrics, per_user_recall

    t, bf = run["target"], run["bf_ids"]
    out = {"capacity": {f"recall_all@{m}": per_user_recall(bf, t, m) for m in M_VALUES}}
    for where in ("default", "paper"):
        pu = per_user_metrics(run[f"{where}_ids"], bf, t, 200)
        pu["scored_fraction"] = run[f"{where}_scored"] / run["num_items"]
        out[where] = pu
    return out


def report(name: str, work: Path, settings, seeds, resamples: int, command: str) -> dict:
    from nann_tf.evaluation.metrics import Bootstrap, paired_difference, summarize_per_user
    from nann_tf.fsutil import write_json_atomic, write_text_atomic

    runs: dict[str, dict[int, dict]] = {}
    for label, _, _ in settings:
        for seed in seeds:
            p = work / "runs" / f"{label}-s{seed}.npz"
            if not p.is_file():
                continue
            with np.load(p) as z:
                run = {k: z[k] for k in z.files}
            info = json.loads(str(run.pop("info")))
            run["num_items"] = info["num_items"]
            runs.setdefault(label, {})[seed] = {"info": info, "metrics": per_user(run)}
    if "0" not in runs:
        raise SystemExit("no finished run without FGSM (setting 0): nothing to compare with")
    users = len(next(iter(runs["0"].values()))["metrics"]["default"]["coverage@200"])
    boot = Bootstrap(users, resamples, seed=0)

    def seed_mean(label: str, where: str, seeds_: list[int]) -> dict[str, np.ndarray]:
        ms = [runs[label][s]["metrics"][where] for s in seeds_]
        return {k: np.mean([m[k] for m in ms], axis=0) for k in ms[0]}

    def scored(label: str, where: str, seeds_: list[int]) -> float:
        return float(np.mean([runs[label][s]["metrics"][where]["scored_fraction"].mean()
                              for s in seeds_]))

    rows = []
    for label, eps, mode in settings:
        if label not in runs:
            continue
        done = sorted(runs[label])
        paired = [s for s in done if s in runs["0"]]
        row = {"setting": label, "fgsm_eps": eps, "fgsm_eps_mode": mode, "seeds": done,
               "aux_loss": [runs[label][s]["info"]["final"].get("aux") for s in done],
               "fgsm_step": [runs[label][s]["info"]["final"].get("fgsm_step") for s in done],
               "median_ev_norm": [runs[label][s]["info"]["median_ev_norm"] for s in done],
               "train_seconds": [runs[label][s]["info"]["train_seconds"] for s in done]}
        for where in ("capacity", "default", "paper"):
            pu = {k: v for k, v in seed_mean(label, where, done).items()
                  if k != "scored_fraction"}
            row[where] = summarize_per_user(pu, boot)
            row[where]["per_seed"] = {
                s: summarize_per_user({k: v for k, v in runs[label][s]["metrics"][where].items()
                                       if k != "scored_fraction"}) for s in done}
            if where != "capacity":
                row[where]["scored_fraction"] = scored(label, where, done)
            if label != "0" and paired:
                a = {k: v for k, v in seed_mean(label, where, paired).items()
                     if k != "scored_fraction"}
                b = {k: v for k, v in seed_mean("0", where, paired).items()
                     if k != "scored_fraction"}
                row[where]["vs_no_fgsm"] = paired_difference(a, b, boot)
                row[where]["vs_no_fgsm"]["per_seed"] = {
                    s: {k: float(np.nanmean(runs[label][s]["metrics"][where][k])
                                 - np.nanmean(runs["0"][s]["metrics"][where][k]))
                        for k in a} for s in paired}
        rows.append(row)
    first = next(iter(runs["0"].values()))["info"]
    res = {"benchmark": "fgsm", "dataset": name, "command": command,
           "machine": f"{platform.machine()}, TF {_tf_version()}",
           "test_users": users, "num_items": first["num_items"], "bootstrap_resamples": resamples,
           "search_default": first["default"], "search_paper": first["paper"], "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    write_json_atomic(RESULTS / f"fgsm-{name}.json", res)
    write_text_atomic(RESULTS / f"fgsm-{name}.md", markdown(res))
    plot(res, RESULTS / f"fgsm-{name}.png")
    return res


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def _ci(r: dict, key: str, digits: int = 3) -> str:
    lo, hi = r[f"{key}_ci95"]
    return f"{r[key]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(res: dict) -> str:
    lines = [f"# FGSM study: {res['dataset']} ({res['num_items']} items, {res['test_users']} "
             f"test users)", "", f"Command: `{res['command']}`", "",
             f"Search: defaults `{res['search_default']}`; paper's `{res['search_paper']}`.",
             "Means over seeds of means over users, 95% bootstrap intervals over users "
             f"({res['bootstrap_resamples']} resamples).", "",
             "| FGSM | seeds | aux loss | recall-all@200 | coverage@200 (defaults) | "
             "coverage@200 (paper) | recall-delta@200 (paper) | scored (paper) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        aux = [a for a in r["aux_loss"] if a is not None]
        lines.append(
            f"| {r['setting']} | {len(r['seeds'])} | {np.mean(aux) if aux else 0:.3g} | "
            f"{_ci(r['capacity'], 'recall_all@200')} | {_ci(r['default'], 'coverage@200')} | "
            f"{_ci(r['paper'], 'coverage@200')} | {_ci(r['paper'], 'recall_delta@200')} | "
            f"{r['paper']['scored_fraction']:.4f} |")
    lines += ["", "Paired differences, FGSM minus no FGSM (same seed, same users); per-seed "
              "differences in brackets after the interval:", "",
              "| FGSM | recall-all@200 | coverage@200 (defaults) | coverage@200 (paper) | "
              "recall-retrieval@200 (paper) |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        if "vs_no_fgsm" not in r["capacity"]:
            continue
        cells = []
        for where, key in (("capacity", "recall_all@200"), ("default", "coverage@200"),
                           ("paper", "coverage@200"), ("paper", "recall_retrieval@200")):
            d = r[where]["vs_no_fgsm"]
            seeds = ", ".join(f"{v[key]:+.3f}" for v in d["per_seed"].values())
            lo, hi = d[f"{key}_ci95"]
            cells.append(f"{d[key]:+.3f} [{lo:+.3f}, {hi:+.3f}] ({seeds})")
        lines.append(f"| {r['setting']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, series in zip(axes, [
            [("paper", "coverage@200", "coverage@200, paper's T"),
             ("default", "coverage@200", "coverage@200, defaults")],
            [("capacity", "recall_all@200", "recall-all@200"),
             ("paper", "recall_retrieval@200", "recall-retrieval@200, paper's T")]]):
        for i, (where, key, name) in enumerate(series):
            v = np.array([r[where][key] for r in rows])
            ci = np.array([r[where][f"{key}_ci95"] for r in rows])
            ax.errorbar(x + 0.08 * i, v, yerr=[v - ci[:, 0], ci[:, 1] - v], fmt="o-", capsize=3,
                        label=name)
        ax.set_xticks(x, [r["setting"] for r in rows])
        ax.set_xlabel("FGSM setting (0 = off, rX = X x RMS(e_v), aX = absolute)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"FGSM study, {res['dataset']}: mean of {len(rows[0]['seeds'])} seeds, "
                 f"95% bootstrap intervals over {res['test_users']} users")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    ap.add_argument("--eps", default="0,r0.01,r0.03,r0.1,r0.3",
                    help="FGSM settings: 0, rX (relative), aX (absolute)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--users", type=int, default=0, help="test users (0: all)")
    ap.add_argument("--workdir", help="default /tmp/nann-fgsm-<dataset>")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    settings = [parse_setting(t) for t in args.eps.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.workdir or f"/tmp/nann-fgsm-{args.dataset}")
    work.mkdir(parents=True, exist_ok=True)
    command = "python bench/bench_fgsm.py " + " ".join(sys.argv[1:])
    if not args.report_only:
        data = prepare(args.dataset, work)
        for seed in seeds:  # seed-major: every setting has a paired run as early as possible
            for label, eps, mode in settings:
                one_run(args.dataset, data, work, label, eps, mode, seed, args.users)
    res = report(args.dataset, work, settings, seeds, args.resamples, command)
    print(markdown(res))


if __name__ == "__main__":
    main()

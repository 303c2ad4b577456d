"""``nann-tf evaluate``: retrieval quality of a trained model on held-out users.

Two modes:

- ``--brute-force`` alone scores the whole corpus for every test user (exact top-M:
  recall-all@M) and prints it beside the most-popular baseline.
- ``--index I`` (the model's ``nann-tf build-index`` output) prints one table comparing brute
  force, Beam-retrieval, HNSW-retrieval and most popular: recall@M (recall-all for brute force,
  recall-retrieval for the rest), recall-delta@M, coverage@M against brute force, the fraction
  of the corpus scored per query and the search time per query. Search parameters default to the
  model config's ``[search]`` table; ``--start-level/--ef/--T/-k/--hnsw-ef`` override them.

``--sweep OUTDIR`` (with ``--index``) also writes the paper's figures as PNG and their numbers as
CSV (``sweep.csv``, ``perturbation.csv``):

- Fig. 3 (``fig3_beam_vs_hnsw.png``): coverage@M and recall-retrieval@M against the fraction of
  the corpus scored, Beam-retrieval (``ef`` scaled by ``--sweep-scales`` x ``T_0`` in
  ``--sweep-T0``) vs HNSW-retrieval (``ef0`` in ``--sweep-hnsw-ef``);
- Fig. 4 (``fig4_fgsm.png``, with ``--compare-model/--compare-index``, e.g. a model trained with
  ``--set train.fgsm_eps=0``): the Beam-retrieval curves of both models;
- Fig. 7a (``fig7a_eps.png``, with ``--eps-models eps:model:index,...``): coverage@M and
  recall-all@M at the search parameters against the FGSM eps;
- Fig. 6 (``fig6_perturbation.png``): histograms of ``|s_u(e_v) - s_u(e_v + delta)|`` over the
  brute-force top-M items of the users, ``delta`` random with l2 norm ``--perturb-r``, for every
  model given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from nann_tf.cli import CliError

__all__ = ["add_arguments", "run", "evaluate_brute_force", "evaluate_retrieval", "run_sweep",
           "format_table", "resolve_search_params", "ModelEntry",
           "load_model_entry"]

log = logging.getLogger(__name__)

METHODS = {"brute_force": "brute force", "beam": "beam (Beam-retrieval)",
           "beam_no_seeds": "beam, no seeds", "hnsw": "HNSW-retrieval",
           "most_popular": "most popular"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory from `nann-tf train`")
    p.add_argument("--data", required=True, help="dataset directory from `nann-tf prepare`")
    p.add_argument("--brute-force", action="store_true",
                   help="exact top-M over the whole corpus (recall-all@M) vs most popular")
    p.add_argument("--index", help="the model's index from `nann-tf build-index`: compare brute "
                                   "force, Beam-retrieval, HNSW-retrieval and most popular")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--users", type=int, default=0,
                   help="evaluate the first N held-out users only (0: all)")
    p.add_argument("--at", default=None,
                   help="comma-separated M values (default 50,200; with --index those <= k, "
                        "and k)")
    p.add_argument("--output-json", help="also write the results to this JSON file")
    g = p.add_argument_group("search parameters (default: the model config's [search] table)")
    g.add_argument("--start-level", type=int, help="Beam-retrieval start level S")
    g.add_argument("--ef", help="beam width per level, e.g. 2=100,1=200,0=400")
    g.add_argument("--T", help="max rounds per level below S, e.g. 1=2,0=4")
    g.add_argument("-k", "--k", type=int, dest="k", help="items returned per query")
    g.add_argument("--hnsw-ef", type=int, help="HNSW-retrieval's level-0 beam ef0")
    g.add_argument("--history-seeds", action=argparse.BooleanOptionalAction, default=None,
                   help="seed each query's beam search with its history items (default: the "
                        "config's search.history_seeds)")
    g.add_argument("--visited", choices=["tf", "bitmap"], default="tf",
                   help="visited set: stock TF ops or the C++ bitmap op (same results)")
    g.add_argument("--batch-size", type=int, default=16, help="queries per search call")
    s = p.add_argument_group("sweep (paper Figs. 3, 4, 6, 7a)")
    s.add_argument("--sweep", metavar="OUTDIR", help="write the figures (PNG) and CSV here")
    s.add_argument("--compare-model", help="a second model (e.g. trained without FGSM) for Fig. 4")
    s.add_argument("--compare-index", help="the second model's own index")
    s.add_argument("--eps-models", metavar="EPS:MODEL:INDEX,...",
                   help="models trained with different train.fgsm_eps, for Fig. 7a")
    s.add_argument("--sweep-scales", default="0.5,1,2",
                   help="Beam-retrieval: factors applied to every ef (default 0.5,1,2)")
    s.add_argument("--sweep-T0", default="1,2,3,5",
                   help="Beam-retrieval: T_0 values (default 1,2,3,5)")
    s.add_argument("--sweep-hnsw-ef", default=None,
                   help="HNSW-retrieval ef0 values (default k x 0.5,1,1.5,2,3 and --hnsw-ef)")
    s.add_argument("--perturb-r", type=float, default=None,
                   help="Fig. 6: l2 norm of the random perturbation (default 0.1 x the median "
                        "|e_v| of --model's index)")


def _parse_list(text: str, name: str, kind=int) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        example = "50,200" if kind is int else "0.5,1,2"
        raise CliError(f"{name} {text!r}: expected comma-separated positive numbers, "
                       f"e.g. {example}")
    return values


def _parse_at(text: str) -> list[int]:
    return _parse_list(text, "--at")


def _write_json_atomic(path: str | os.PathLike, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _held_out(ds, split: str, users: int):
    held = getattr(ds, split)
    hist, target = held.hist, held.target
    if users:
        hist, target = hist[:users], target[:users]
    return hist, target


def evaluate_brute_force(model, ds, split: str = "test", users: int = 0,
                         ms=(50, 200)) -> dict:
    """recall-all@M of the model (exact top-M) and of most-popular on a held-out split."""
    import numpy as np

    from nann_tf.evaluate import brute_force_topk, most_popular_topk
    from nann_tf.search.metrics import recall

    hist, target = _held_out(ds, split, users)
    t0 = time.perf_counter()
    ids, _ = brute_force_topk(model, hist, max(ms))
    seconds = time.perf_counter() - t0
    pop = most_popular_topk(ds.item_freq, max(ms))
    out = {"split": split, "users": int(len(target)), "num_items": int(ds.num_items),
           "brute_force_seconds": seconds, "model": {}, "most_popular": {}}
    for m in ms:
        out["model"][f"recall_all@{m}"] = recall(ids, target, m)
        out["most_popular"][f"recall_all@{m}"] = recall(
            np.broadcast_to(pop, (len(target), len(pop))), target, m)
    return out


def resolve_search_params(search_config, args: argparse.Namespace, max_level: int):
    """The model config's ``[search]`` table with the command-line overrides, validated.

    Raises:
      CliError: naming the bad option (or the config table) and what was expected.
    """
    from nann_tf.search.sweep import SearchParams, parse_level_values

    p = SearchParams.from_config(search_config)
    try:
        if args.ef is not None:
            p = p.replace(ef=parse_level_values(args.ef, "--ef"))
        if args.T is not None:
            p = p.replace(T=parse_level_values(args.T, "--T"))
    except ValueError as e:
        raise CliError(str(e)) from e
    for attr in ("start_level", "k", "hnsw_ef"):
        value = getattr(args, attr)
        if value is not None:
            p = p.replace(**{attr: int(value)})
    if getattr(args, "history_seeds", None) is not None:
        p = p.replace(history_seeds=bool(args.history_seeds))
    try:
        return p.checked(max_level)
    except ValueError as e:
        raise CliError(f"search parameters (--start-level/--ef/--T/-k/--hnsw-ef, defaults from "
                       f"the model config's [search] table): {e}") from e


def evaluate_retrieval(model, index, ds, params, split: str = "test", users: int = 0,
                       ms=(50, 200), visited: str = "tf", batch_size: int = 16,
                       retriever=None) -> tuple[dict, dict]:
    """Brute force vs Beam-retrieval vs HNSW-retrieval vs most popular on held-out users.

    Args:
      model / index / ds: the trained model, its index and the dataset.
      params: checked :class:`~nann_tf.search.sweep.SearchParams` (``k >= max(ms)``).
      split / users: which held-out users (``users = 0``: all).
      ms: the M values of the metrics.
      visited / batch_size: see :class:`~nann_tf.search.sweep.Retriever`.
      retriever: reuse this retriever (else one is built).

    Returns:
      ``(result, arrays)``: ``result`` is JSON-ready (``rows`` maps brute_force / beam / hnsw /
      most_popular to their metrics, ``ms_per_query`` and ``items_scored``); ``arrays`` holds
      the users' ``hist``, ``target``, the brute-force ids and the retriever, for further runs.
    """
    import numpy as np

    from nann_tf.evaluate import most_popular_topk
    from nann_tf.search.metrics import summarize
    from nann_tf.search.sweep import Retriever

    if params.k < max(ms):
        raise ValueError(f"k = {params.k} is smaller than M = {max(ms)}: the search returns only "
                         f"k items")
    hist, target = _held_out(ds, split, users)
    if retriever is None:
        retriever = Retriever(model, index, params.start_level, visited, batch_size)
    n = ds.num_items
    bf = retriever.brute_force(hist, max(params.k, max(ms)))
    runs = [("brute_force", bf),
            ("beam", retriever.beam(hist, params.ef, params.T, params.k, params.history_seeds))]
    if params.history_seeds:  # what the seeds add: the paper's algorithm at the same parameters
        runs.append(("beam_no_seeds", retriever.beam(hist, params.ef, params.T, params.k, False)))
    runs.append(("hnsw", retriever.hnsw(hist, params.hnsw_ef, params.k)))
    pop = np.broadcast_to(most_popular_topk(ds.item_freq, max(ms)), (len(hist), max(ms)))
    rows = {}
    for name, res in runs:
        r = summarize(res.ids, bf.ids, target, res.num_scored, n, ms)
        r.update(ms_per_query=res.ms_per_query, items_scored=float(np.mean(res.num_scored)))
        rows[name] = r
    rows["most_popular"] = summarize(pop, bf.ids, target, m=ms)
    result = {"split": split, "users": int(len(hist)), "num_items": int(n),
              "at": list(ms), "params": params.to_dict(), "visited": visited,
              "batch_size": retriever.batch_size, "rows": rows}
    arrays = {"hist": hist, "target": target, "bf_ids": bf.ids, "retriever": retriever}
    return result, arrays


def format_table(result: dict) -> str:
    """The evaluation table: one line per method."""
    ms = result["at"]
    head = [f"{'method':<22}"]
    for m in ms:
        head += [f"{'recall@' + str(m):>11}", f"{'recall-delta@' + str(m):>16}",
                 f"{'coverage@' + str(m):>13}"]
    head += [f"{'scored':>9}", f"{'ms/query':>9}"]
    lines = ["".join(head)]
    for key, label in METHODS.items():
        if key not in result["rows"]:
            continue
        r = result["rows"][key]
        cells = [f"{label:<22}"]
        for m in ms:
            rec = r.get(f"recall_retrieval@{m}", r.get(f"recall_all@{m}"))
            cells += [f"{rec:>11.4f}", f"{r[f'recall_delta@{m}']:>16.4f}",
                      f"{r[f'coverage@{m}']:>13.4f}"]
        frac = r.get("scored_fraction")
        cells += [f"{frac:>9.4f}" if frac is not None else f"{'-':>9}",
                  f"{r['ms_per_query']:>9.2f}" if "ms_per_query" in r else f"{'-':>9}"]
        lines.append("".join(cells))
    lines.append("recall@M: recall-all@M for brute force, recall-retrieval@M for the others; "
                 "scored: fraction of the corpus scored per query")
    return "\n".join(lines)


@dataclasses.dataclass
class ModelEntry:
    """A model and its index as given on the command line (for the sweep)."""

    label: str
    model_dir: str
    index_dir: str
    model: object
    cfg: object
    index: object

    @property
    def eps(self) -> float:
        return float(self.cfg.train.fgsm_eps)


def load_model_entry(model_dir: str, index_dir: str, ds, data_dir: str, model_flag: str,
                index_flag: str, label: str | None = None) -> ModelEntry:
    from nann_tf.data.dataset import DataError
    from nann_tf.index.hnsw import HnswIndexError
    from nann_tf.index.store import load_index
    from nann_tf.search.sweep import IndexMismatchError, check_index_matches
    from nann_tf.train import TrainError, load_trained_model

    try:
        model, cfg, meta = load_trained_model(model_dir)
    except (TrainError, DataError) as e:
        raise CliError(f"{model_flag}: {e}") from e
    if meta["num_items"] != ds.num_items:
        raise CliError(f"{model_flag} {model_dir} was trained on {meta['num_items']} items but "
                       f"--data {data_dir} has {ds.num_items}: not the same dataset")
    try:
        index = load_index(index_dir)
    except (HnswIndexError, OSError) as e:
        raise CliError(f"{index_flag} {index_dir}: {e}") from e
    try:
        check_index_matches(model, ds, index, index_name=f"{index_flag} {index_dir}",
                            model_name=f"{model_flag} {model_dir}", data_name=f"--data {data_dir}")
    except IndexMismatchError as e:
        raise CliError(str(e)) from e
    if label is None:
        label = f"{Path(model_dir).name} (eps={cfg.train.fgsm_eps:g})"
    return ModelEntry(label, str(model_dir), str(index_dir), model, cfg, index)


def _parse_eps_models(text: str) -> list[tuple[float, str, str]]:
    out = []
    for item in text.split(","):
        eps, sep1, rest = item.strip().partition(":")
        model, sep2, index = rest.partition(":")
        try:
            value = float(eps)
        except ValueError:
            value = -1.0
        if not (sep1 and sep2 and model and index) or value < 0:
            raise CliError(f"--eps-models entry {item!r}: expected EPS:MODEL_DIR:INDEX_DIR with "
                           f"EPS >= 0, e.g. 0.01:models/eps0.01:indexes/eps0.01")
        out.append((value, model, index))
    return out


def run_sweep(primary: ModelEntry, ds, params, outdir: str | os.PathLike, *,
              compare: ModelEntry | None = None, eps_models: list[ModelEntry] = (),
              split: str = "test", users: int = 0, ms=(50, 200), visited: str = "tf",
              batch_size: int = 16, scales=(0.5, 1.0, 2.0), t0s=(1, 2, 3, 5),
              hnsw_efs=None, perturb_r: float | None = None, primary_state: dict | None = None,
              progress=None) -> dict:
    """Runs the sweeps and writes ``sweep.csv``, ``perturbation.csv`` and the PNGs to ``outdir``.

    Args:
      primary: the model under study (Fig. 3, and the first curve of Figs. 4 and 6).
      ds: the dataset.
      params: checked search parameters (the centre of the sweep, and Fig. 7a's setting).
      outdir: output directory (created; existing files of the same names are replaced).
      compare: optional second model for Fig. 4.
      eps_models: models trained with different eps for Fig. 7a (their ``cfg.train.fgsm_eps``
        is the x axis).
      split / users / ms / visited / batch_size: as in :func:`evaluate_retrieval`.
      scales / t0s: Beam-retrieval points (:func:`~nann_tf.search.sweep.beam_settings`).
      hnsw_efs: HNSW-retrieval ef0 values (default :func:`~nann_tf.search.sweep.hnsw_settings`).
      perturb_r: Fig. 6's perturbation norm (default 0.1 x the median |e_v| of ``primary``).
      primary_state: the ``arrays`` of :func:`evaluate_retrieval` for ``primary`` (reused).
      progress: optional ``callable(str)``.

    Returns:
      ``{"curves": rows, "perturbation": rows, "perturbation_summary": {...}, "files": [...]}``.
    """
    import numpy as np

    from nann_tf import plots
    from nann_tf.search.metrics import summarize
    from nann_tf.search.sweep import (CURVE_FIELDS, PERTURBATION_FIELDS, Retriever,
                                      beam_settings, histogram_rows, hnsw_settings,
                                      metric_fields, perturbation_deltas, run_curve, write_csv)

    say = progress or (lambda msg: None)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    hist, target = _held_out(ds, split, users)
    state: dict[str, dict] = {}

    def prepared(entry: ModelEntry) -> dict:
        key = str(Path(entry.model_dir).resolve())
        if key not in state:
            if entry is primary and primary_state is not None:
                state[key] = primary_state
            else:
                r = Retriever(entry.model, entry.index, params.start_level, visited, batch_size)
                bf = r.brute_force(hist, max(params.k, max(ms)))
                state[key] = {"retriever": r, "bf_ids": bf.ids}
        return state[key]

    def base(figure: str, entry: ModelEntry, series: str) -> dict:
        return {"figure": figure, "series": series, "model": entry.model_dir,
                "fgsm_eps": entry.eps}

    b_points = beam_settings(params, scales, t0s)
    h_points = hnsw_efs or hnsw_settings(params)
    curves = []
    p_state = prepared(primary)
    say(f"Fig. 3: {len(b_points)} beam points, {len(h_points)} HNSW points")
    beam_rows = run_curve(p_state["retriever"], hist, target, p_state["bf_ids"], ms,
                          method="beam", settings=b_points, k=params.k,
                          base=base("fig3", primary, "beam"), progress=say,
                          history_seeds=params.history_seeds)
    curves += beam_rows
    if params.history_seeds:
        say("Fig. 3: beam without seeds (the paper's algorithm)")
        curves += run_curve(p_state["retriever"], hist, target, p_state["bf_ids"], ms,
                            method="beam", settings=b_points, k=params.k,
                            base=base("fig3", primary, "beam, no seeds"), progress=say,
                            history_seeds=False)
    curves += run_curve(p_state["retriever"], hist, target, p_state["bf_ids"], ms,
                        method="hnsw", settings=h_points, k=params.k,
                        base=base("fig3", primary, "hnsw"), progress=say)
    if compare is not None:
        say("Fig. 4: the comparison model")
        curves += [dict(r, figure="fig4", series=primary.label) for r in beam_rows]
        c_state = prepared(compare)
        curves += run_curve(c_state["retriever"], hist, target, c_state["bf_ids"], ms,
                            method="beam", settings=b_points, k=params.k,
                            base=base("fig4", compare, compare.label), progress=say,
                            history_seeds=params.history_seeds)
    for entry in eps_models:
        say(f"Fig. 7a: eps={entry.eps:g}")
        st = prepared(entry)
        res = st["retriever"].beam(hist, params.ef, params.T, params.k, params.history_seeds)
        summ = summarize(res.ids, st["bf_ids"], target, res.num_scored, ds.num_items, ms)
        row = dict(base("fig7a", entry, f"eps={entry.eps:g}"), method="beam",
                   start_level=params.start_level, ef=_fmt(params.ef), T=_fmt(params.T),
                   hnsw_ef="", k=params.k, users=len(hist),
                   items_scored=float(np.mean(res.num_scored)),
                   scored_fraction=summ["scored_fraction"], ms_per_query=res.ms_per_query)
        row.update({f: summ[f] for f in metric_fields(ms)})
        curves.append(row)

    # Fig. 6: every model given, on its own brute-force top M (M = the largest --at).
    entries = [primary] + ([compare] if compare is not None else []) + list(eps_models)
    seen, deltas, pbase = set(), {}, {}
    if perturb_r is None:
        norms = np.linalg.norm(primary.index.embeddings[1:], axis=1)
        perturb_r = 0.1 * float(np.median(norms))
    m_top = max(ms)
    for entry in entries:
        key = str(Path(entry.model_dir).resolve())
        if key in seen:
            continue
        seen.add(key)
        st = prepared(entry)
        deltas[entry.label] = perturbation_deltas(entry.model, entry.index.embeddings, hist,
                                                  st["bf_ids"][:, :m_top], perturb_r)
        pbase[entry.label] = {"model": entry.model_dir, "fgsm_eps": entry.eps,
                              "radius": perturb_r, "top_m": m_top}
    pert_rows = histogram_rows(deltas, pbase)
    summary = {label: {"mean": float(np.mean(v)), "median": float(np.median(v)),
                       "p90": float(np.quantile(v, 0.9)), "pairs": int(len(v))}
               for label, v in deltas.items()}

    fields = CURVE_FIELDS + metric_fields(ms)
    files = [write_csv(outdir / "sweep.csv", curves, fields),
             write_csv(outdir / "perturbation.csv", pert_rows, PERTURBATION_FIELDS)]
    files.append(plots.plot_curves([r for r in curves if r["figure"] == "fig3"], ms,
                                   outdir / "fig3_beam_vs_hnsw.png",
                                   "Beam-retrieval vs HNSW-retrieval (Fig. 3)"))
    if compare is not None:
        files.append(plots.plot_curves([r for r in curves if r["figure"] == "fig4"], ms,
                                       outdir / "fig4_fgsm.png",
                                       "Beam-retrieval with vs without FGSM (Fig. 4)"))
    if eps_models:
        files.append(plots.plot_eps([r for r in curves if r["figure"] == "fig7a"], ms,
                                    outdir / "fig7a_eps.png"))
    files.append(plots.plot_perturbation(pert_rows, outdir / "fig6_perturbation.png"))
    return {"curves": curves, "perturbation": pert_rows, "perturbation_summary": summary,
            "perturb_r": perturb_r, "files": [str(f) for f in files]}


def _fmt(values) -> str:
    from nann_tf.search.sweep import format_level_values

    return format_level_values(values)


def _default_ms(k: int) -> list[int]:
    return sorted({m for m in (50, 200) if m <= k} | {k})


def run(args: argparse.Namespace) -> int:
    from nann_tf.data.dataset import DataError, Dataset
    from nann_tf.train import TrainError, load_trained_model

    if args.index is None:
        for flag in ("sweep", "compare_model", "eps_models"):
            if getattr(args, flag):
                raise CliError(f"--{flag.replace('_', '-')} needs --index (the model's index)")
        if not args.brute_force:
            raise CliError("nothing to evaluate: pass --index INDEX_DIR (graph search vs brute "
                           "force) or --brute-force")
    if (args.compare_model is None) != (args.compare_index is None):
        raise CliError("--compare-model and --compare-index go together (the second model needs "
                       "its own index)")
    if args.users < 0:
        raise CliError(f"--users {args.users}: expected >= 0")
    if args.batch_size < 1:
        raise CliError(f"--batch-size {args.batch_size}: expected >= 1")
    try:
        ds = Dataset.load(args.data)
    except DataError as e:
        raise CliError(f"--data: {e}") from e

    if args.index is None:
        ms = _parse_at(args.at or "50,200")
        try:
            model, cfg, meta = load_trained_model(args.model)
        except TrainError as e:
            raise CliError(str(e)) from e
        if meta["num_items"] != ds.num_items:
            raise CliError(f"--model {args.model} was trained on {meta['num_items']} items but "
                           f"--data {args.data} has {ds.num_items}: not the same dataset")
        res = evaluate_brute_force(model, ds, args.split, args.users, ms)
        res["variant"] = cfg.model.variant
        print(f"{args.split} users: {res['users']}, items: {res['num_items']}, "
              f"model: {cfg.model.variant}")
        print(f"{'method':<24}" + "".join(f"{'recall-all@' + str(m):>16}" for m in ms))
        for name, row in [(f"brute force ({cfg.model.variant})", res["model"]),
                          ("most popular", res["most_popular"])]:
            print(f"{name:<24}" + "".join(f"{row[f'recall_all@{m}']:>16.4f}" for m in ms))
        if args.output_json:
            _write_json_atomic(args.output_json, res)
        return 0

    # Cheap checks of the sweep options before anything slow runs.
    scales = _parse_list(args.sweep_scales, "--sweep-scales", float)
    t0s = _parse_list(args.sweep_T0, "--sweep-T0")
    hnsw_efs = _parse_list(args.sweep_hnsw_ef, "--sweep-hnsw-ef") if args.sweep_hnsw_ef else None
    eps_list = _parse_eps_models(args.eps_models) if args.eps_models else []
    if args.perturb_r is not None and args.perturb_r <= 0:
        raise CliError(f"--perturb-r {args.perturb_r}: expected > 0")

    primary = load_model_entry(args.model, args.index, ds, args.data, "--model", "--index")
    params = resolve_search_params(primary.cfg.search, args, primary.index.graph.max_level)
    ms = _parse_at(args.at) if args.at else _default_ms(params.k)
    if max(ms) > params.k:
        raise CliError(f"--at {','.join(map(str, ms))}: M = {max(ms)} is larger than -k "
                       f"{params.k}, the number of items the search returns")
    if args.visited == "bitmap":
        from nann_tf import ops

        try:
            ops.load_library()
        except ops.OpLibraryError as e:
            raise CliError(f"--visited bitmap: {e}") from e
    compare = (load_model_entry(args.compare_model, args.compare_index, ds, args.data,
                           "--compare-model", "--compare-index")
               if args.compare_model else None)
    eps_entries = []
    for eps, mdir, idir in eps_list:
        entry = load_model_entry(mdir, idir, ds, args.data, f"--eps-models {mdir}",
                            f"--eps-models {idir}")
        if abs(entry.eps - eps) > 1e-12 * max(1.0, eps):
            raise CliError(f"--eps-models entry {eps:g}:{mdir}:{idir}: the model was trained "
                           f"with train.fgsm_eps={entry.eps:g}, not {eps:g}")
        eps_entries.append(entry)

    t0 = time.perf_counter()
    result, arrays = evaluate_retrieval(primary.model, primary.index, ds, params, args.split,
                                        args.users, ms, args.visited, args.batch_size)
    result.update(variant=primary.cfg.model.variant, model=args.model, index=args.index,
                  fgsm_eps=primary.eps)
    print(f"{args.split} users: {result['users']}, items: {result['num_items']}, model: "
          f"{primary.cfg.model.variant} (fgsm_eps={primary.eps:g}), visited: {args.visited}, "
          f"search: {params.describe()} hnsw_ef={params.hnsw_ef}")
    print(format_table(result))
    log.info("evaluation took %.1fs", time.perf_counter() - t0)

    if args.sweep:
        sweep = run_sweep(primary, ds, params, args.sweep, compare=compare,
                          eps_models=eps_entries, split=args.split, users=args.users, ms=ms,
                          visited=args.visited, batch_size=args.batch_size, scales=scales,
                          t0s=t0s, hnsw_efs=hnsw_efs, perturb_r=args.perturb_r,
                          primary_state=arrays, progress=log.info)
        result["sweep"] = {"dir": args.sweep, "files": sweep["files"],
                           "perturb_r": sweep["perturb_r"],
                           "perturbation_summary": sweep["perturbation_summary"]}
        print(f"sweep -> {args.sweep}: " + ", ".join(Path(f).name for f in sweep["files"]))
        for label, s in sweep["perturbation_summary"].items():
            print(f"  |s(e_v) - s(e_v + delta)| (r={sweep['perturb_r']:.3g}) {label}: "
                  f"mean {s['mean']:.4g}, median {s['median']:.4g}, p90 {s['p90']:.4g}")
    if args.output_json:
        _write_json_atomic(args.output_json, result)
    return 0

"""``nann-tf evaluate``: retrieval quality of a trained model on held-out users.

Two modes:

- ``--brute-force`` alone scores the whole corpus for every test user (exact top-M:
  recall-all@M) and prints it beside the most-popular baseline.
- ``--index I`` (the model's ``nann-tf build-index`` output) prints one table comparing brute
  force, Beam-retrieval, HNSW-retrieval and most popular: recall@M (recall-all for brute force,
  recall-retrieval for the rest), recall-delta@M, coverage@M against brute force, the fraction
  of the corpus scored per query and the search time per query. Search parameters default to the
  model config's ``[search]`` table; ``--start-level/--ef/--T/-k/--hnsw-ef`` override them.
- ``--index I --similar``: items-to-item instead. Seed rows from the held-out users' histories
  (the last 1, 2 or 3 items) are searched in both modes of the ``similar_items`` signatures
  (``embedding``: the config's ``[similar]`` table, ``--similar-ef/--similar-T/--similar-k``
  override it; ``model``: the ``[search]`` parameters) and compared with exact search in the same
  space: coverage@k, the fraction of the corpus scored, and how often the items found share a
  category with their seeds, beside random and most-popular items.
- ``--compare-model M2 --compare-index I2`` (with ``--index``) also evaluates a second model
  (e.g. trained with ``--set train.fgsm_eps=0``) on the same users and prints the paired
  difference, first model minus second, per method.

Every recall, recall-delta and coverage figure is printed with its 95% interval (``+/-`` half
its width; the JSON has ``<metric>_ci95: [lo, hi]`` beside each metric): a bootstrap over the
evaluated users (``--bootstrap`` resamples, ``--bootstrap-seed``). Differences between methods
or models on the same users use the paired bootstrap.

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
import logging
import time
from pathlib import Path

from nann_tf.cli import CliError
from nann_tf.cli.common import add_search_arguments, parse_positive_list, search_overrides

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)

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
    p.add_argument("--next-n", type=int, default=1, metavar="N",
                   help="with --brute-force: also score each user's next N behaviours from "
                        "the split point (the paper's target and the N-1 after it), reported "
                        "beside the paper's one-item figure: narrower intervals on small logs "
                        "(default 1: the paper's protocol only)")
    p.add_argument("--output-json", help="also write the results to this JSON file")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples over users behind the 95%% intervals "
                        "(default 1000, at least 100)")
    p.add_argument("--bootstrap-seed", type=int, default=0,
                   help="seed of the bootstrap (default 0: the same intervals on every run)")
    p.add_argument("--similar", action="store_true",
                   help="with --index: evaluate items-to-item (similar items, both modes) "
                        "against exact search instead of items-to-user")
    p.add_argument("--similar-mode", choices=["embedding", "model", "both"], default="both",
                   help="with --similar: which mode (default both)")
    p.add_argument("--similar-ef", default=None,
                   help="with --similar: the embedding mode's ef per level, LEVEL=VALUE,... "
                        "(default: the config's [similar] table)")
    p.add_argument("--similar-T", dest="similar_T", default=None,
                   help="with --similar: the embedding mode's T per level")
    p.add_argument("--similar-k", type=int, default=None,
                   help="with --similar: results per seed row in the embedding mode")
    g = p.add_argument_group("search parameters (default: the model config's [search] table)")
    add_search_arguments(g, hnsw=True)
    g.add_argument("--visited", choices=["tf", "bitmap"], default="tf",
                   help="visited set: stock TF ops or the C++ bitmap op (same results)")
    g.add_argument("--batch-size", type=int, default=16, help="queries per search call")
    s = p.add_argument_group("sweep (paper Figs. 3, 4, 6, 7a)")
    s.add_argument("--sweep", metavar="OUTDIR", help="write the figures (PNG) and CSV here")
    s.add_argument("--compare-model", help="a second model (e.g. trained without FGSM): paired "
                                           "differences on the same users, and Fig. 4")
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


def _default_ms(k: int) -> list[int]:
    return sorted({m for m in (50, 200) if m <= k} | {k})


def _run_similar(args, primary, ds, params, boot) -> int:
    from nann_tf.evaluation.similar import evaluate_similar, format_similar_table
    from nann_tf.fsutil import write_json_atomic

    for flag in ("sweep", "compare_model", "eps_models"):
        if getattr(args, flag):
            raise CliError(f"--{flag.replace('_', '-')} does not go with --similar")
    from nann_tf.search.params import similar_for_index

    max_level = primary.index.graph.max_level
    similar = similar_for_index(primary.cfg.similar, max_level).overridden(
        ef=args.similar_ef, T=args.similar_T, k=args.similar_k, prefix="similar_").checked(
        max_level, source="similar-items parameters (--similar-ef/"
        "--similar-T/--similar-k over the model config's [similar] table)")
    modes = ("embedding", "model") if args.similar_mode == "both" else (args.similar_mode,)
    try:
        res = evaluate_similar(primary.model, primary.index, ds, search=params, similar=similar,
                               split=args.split, users=args.users, modes=modes,
                               visited=args.visited, batch_size=args.batch_size, **boot)
    except ValueError as e:
        raise CliError(f"--data {args.data}: {e}") from e
    res.update(model=args.model, index=args.index, variant=primary.cfg.model.variant)
    print(f"similar items for {res['seed_rows']} seed rows from the {args.split} users' "
          f"histories (1/2/3 seeds: {res['seeds_per_row'][1:]}), items: {res['num_items']}, "
          f"visited: {args.visited}")
    print(f"embedding: -||e_v - centroid||^2, {similar.describe()}; model: the NANN score "
          f"with the seeds as the history, {params.describe()}")
    print(format_similar_table(res))
    print("+/-: half the 95% interval (bootstrap over the seed rows); coverage against exact "
          "search in the same space; shares label: the item's category is a seed's")
    if args.output_json:
        write_json_atomic(args.output_json, res, sort_keys=False)
    return 0


def run(args: argparse.Namespace) -> int:
    """One of the modes of the module docstring: brute force alone, graph search vs brute force
    (with a second model, a sweep), or similar items."""
    from nann_tf.data.dataset import DataError, Dataset

    _check_args(args)
    boot = {"resamples": args.bootstrap, "seed": args.bootstrap_seed}
    overrides = search_overrides(args)  # parses --ef/--T before anything loads
    try:
        ds = Dataset.load(args.data)
    except DataError as e:
        raise CliError(f"--data: {e}") from e
    if args.index is None:
        return _run_brute_force(args, ds, boot)
    return _run_retrieval(args, ds, overrides, boot)


def _check_args(args) -> None:
    """The option combinations and ranges, checked before anything loads."""
    if args.index is None:
        for flag in ("sweep", "compare_model", "eps_models", "similar"):
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
    if args.next_n < 1:
        raise CliError(f"--next-n {args.next_n}: expected >= 1 (1: the paper's one target)")
    if args.next_n > 1 and args.index is not None:
        raise CliError("--next-n goes with --brute-force alone (the recall of the model's "
                       "exact top-M)")
    if args.batch_size < 1:
        raise CliError(f"--batch-size {args.batch_size}: expected >= 1")
    if args.bootstrap < 100:
        raise CliError(f"--bootstrap {args.bootstrap}: expected >= 100 resamples (1000 gives "
                       f"intervals stable to about 0.005)")


def _run_brute_force(args, ds, boot) -> int:
    """``--brute-force`` alone: the model's exact top-M beside most popular."""
    from nann_tf.data.dataset import DataError
    from nann_tf.evaluation.evaluate import evaluate_brute_force, format_interval
    from nann_tf.fsutil import write_json_atomic
    from nann_tf.model.saved import load_trained_model

    ms = parse_positive_list(args.at or "50,200", "--at")
    model, cfg, meta = load_trained_model(args.model)
    if meta["num_items"] != ds.num_items:
        raise CliError(f"--model {args.model} was trained on {meta['num_items']} items but "
                       f"--data {args.data} has {ds.num_items}: not the same dataset")
    try:
        res = evaluate_brute_force(model, ds, args.split, args.users, ms, **boot,
                                   next_n=args.next_n)
    except DataError as e:
        raise CliError(f"--next-n {args.next_n}: {e}") from e
    res["variant"] = cfg.model.variant
    keys = res["metrics"]
    print(f"{args.split} users: {res['users']}, items: {res['num_items']}, "
          f"model: {cfg.model.variant}")
    print(f"{'method':<24}" + "".join(f"{k.replace('_', '-'):>28}" for k in keys))
    for name, row in [(f"brute force ({cfg.model.variant})", res["model"]),
                      ("most popular", res["most_popular"])]:
        print(f"{name:<24}" + "".join(f"{format_interval(row, k):>28}" for k in keys))
    d = res["model_minus_most_popular"]
    print(f"{'model - most popular':<24}" + "".join(
        f"{'{:+.4f} [{:+.4f}, {:+.4f}]'.format(d[k], *d[k + '_ci95']):>28}" for k in keys))
    print(f"+/-: half the 95% interval; [lo, hi]: paired 95% interval (bootstrap over the "
          f"{res['users']} users, {args.bootstrap} resamples)")
    if args.output_json:
        write_json_atomic(args.output_json, res, sort_keys=False)
    return 0


def _run_retrieval(args, ds, overrides, boot) -> int:
    """``--index``: graph search vs brute force (or ``--similar``), with ``--compare-model``
    and ``--sweep`` when given."""
    from nann_tf.evaluation.evaluate import evaluate_retrieval, format_table
    from nann_tf.evaluation.retriever import load_model_entry
    from nann_tf.fsutil import write_json_atomic

    # Cheap checks of the sweep options before anything slow runs.
    sweep_opts = {"scales": parse_positive_list(args.sweep_scales, "--sweep-scales", float),
                  "t0s": parse_positive_list(args.sweep_T0, "--sweep-T0"),
                  "hnsw_efs": (parse_positive_list(args.sweep_hnsw_ef, "--sweep-hnsw-ef")
                               if args.sweep_hnsw_ef else None)}
    eps_list = _parse_eps_models(args.eps_models) if args.eps_models else []
    if args.perturb_r is not None and args.perturb_r <= 0:
        raise CliError(f"--perturb-r {args.perturb_r}: expected > 0")

    data_name = f"--data {args.data}"
    primary = load_model_entry(args.model, args.index, ds, data_name=data_name,
                               model_flag="--model", index_flag="--index")
    params = primary.search.overridden(**overrides).checked(
        primary.index.graph.max_level, source="search parameters (--start-level/--ef/--T/-k/"
        "--hnsw-ef over the model config's [search] table)")
    ms = parse_positive_list(args.at, "--at") if args.at else _default_ms(params.k)
    if max(ms) > params.k:
        raise CliError(f"--at {','.join(map(str, ms))}: M = {max(ms)} is larger than -k "
                       f"{params.k}, the number of items the search returns")
    if args.visited == "bitmap":
        from nann_tf import ops

        ops.load_library()  # OpLibraryError names the library and how to rebuild it
    if args.similar:
        return _run_similar(args, primary, ds, params, boot)
    compare = (load_model_entry(args.compare_model, args.compare_index, ds, data_name=data_name,
                                model_flag="--compare-model", index_flag="--compare-index")
               if args.compare_model else None)
    eps_entries = _eps_entries(eps_list, ds, data_name)

    t0 = time.perf_counter()
    result, arrays = evaluate_retrieval(primary.model, primary.index, ds, params, args.split,
                                        args.users, ms, args.visited, args.batch_size, **boot)
    result.update(variant=primary.cfg.model.variant, model=args.model, index=args.index,
                  fgsm_eps=primary.eps)
    print(f"{args.split} users: {result['users']}, items: {result['num_items']}, model: "
          f"{primary.cfg.model.variant} (fgsm_eps={primary.eps:g}), visited: {args.visited}, "
          f"search: {params.describe()} hnsw_ef={params.hnsw_ef}")
    print(format_table(result))
    compare_state = None
    if compare is not None:
        result["compare"], compare_state = _compare(args, primary, compare, ds, params, ms,
                                                    arrays, boot)
    log.info("evaluation took %.1fs", time.perf_counter() - t0)
    if args.sweep:
        result["sweep"] = _sweep(args, primary, compare, eps_entries, ds, params, ms, arrays,
                                 compare_state, sweep_opts, boot)
    if args.output_json:
        write_json_atomic(args.output_json, result, sort_keys=False)
    return 0


def _eps_entries(eps_list, ds, data_name) -> list:
    """The ``--eps-models`` entries loaded, each checked to be trained with its eps."""
    from nann_tf.evaluation.retriever import load_model_entry

    entries = []
    for eps, mdir, idir in eps_list:
        entry = load_model_entry(mdir, idir, ds, data_name=data_name,
                                 model_flag=f"--eps-models {mdir}",
                                 index_flag=f"--eps-models {idir}")
        if abs(entry.eps - eps) > 1e-12 * max(1.0, eps):
            raise CliError(f"--eps-models entry {eps:g}:{mdir}:{idir}: the model was trained "
                           f"with train.fgsm_eps={entry.eps:g}, not {eps:g}")
        entries.append(entry)
    return entries


def _compare(args, primary, compare, ds, params, ms, arrays, boot) -> tuple[dict, dict]:
    """``--compare-model``: the second model on the same users and parameters, and the paired
    difference. Returns ``(its result entry, its arrays)``."""
    from nann_tf.evaluation.evaluate import (compare_models, evaluate_retrieval,
                                             format_difference, format_table)

    other, state = evaluate_retrieval(compare.model, compare.index, ds, params, args.split,
                                      args.users, ms, args.visited, args.batch_size, **boot)
    diff = compare_models(arrays, state)
    print(f"\n--compare-model {args.compare_model} (fgsm_eps={compare.eps:g}), same users "
          f"and search parameters:")
    print(format_table(other))
    print()
    print(format_difference(diff, ms, f"paired difference, --model minus --compare-model "
                                      f"(fgsm_eps {primary.eps:g} - {compare.eps:g}):"))
    return ({"model": args.compare_model, "index": args.compare_index,
             "variant": compare.cfg.model.variant, "fgsm_eps": compare.eps,
             "rows": other["rows"], "difference": diff}, state)


def _sweep(args, primary, compare, eps_entries, ds, params, ms, arrays, compare_state,
           sweep_opts, boot) -> dict:
    """``--sweep``: the paper's figures written to the directory; returns the result entry."""
    from nann_tf.evaluation.sweep import run_sweep

    sweep = run_sweep(primary, ds, params, args.sweep, compare=compare,
                      eps_models=eps_entries, split=args.split, users=args.users, ms=ms,
                      visited=args.visited, batch_size=args.batch_size,
                      perturb_r=args.perturb_r, primary_state=arrays,
                      compare_state=compare_state, progress=log.info, **sweep_opts, **boot)
    entry = {"dir": args.sweep, "files": sweep["files"], "perturb_r": sweep["perturb_r"],
             "perturbation_summary": sweep["perturbation_summary"],
             "eps_differences": sweep["eps_differences"]}
    print(f"sweep -> {args.sweep}: " + ", ".join(Path(f).name for f in sweep["files"]))
    m = ms[-1]
    for d in sweep["eps_differences"]:
        print(f"  Fig. 7a {d['series']} minus {d['vs']} (paired, 95%): " + ", ".join(
            f"{key} {d[key]:+.4f} [{d[key + '_ci95'][0]:+.4f}, {d[key + '_ci95'][1]:+.4f}]"
            for key in (f"coverage@{m}", f"recall_all@{m}")))
    for label, s in sweep["perturbation_summary"].items():
        print(f"  |s(e_v) - s(e_v + delta)| (r={sweep['perturb_r']:.3g}) {label}: "
              f"mean {s['mean']:.4g}, median {s['median']:.4g}, p90 {s['p90']:.4g}")
    return entry

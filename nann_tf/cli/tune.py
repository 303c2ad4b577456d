"""``nann-tf tune``: the cheapest Beam-retrieval parameters that reach a coverage target.

Scores every item for a sample of validation users once, replays the beam search on those scores
(C++ core) for a grid of per-level ``ef`` and ``T``, prints the Pareto frontier (items scored vs
coverage@k), picks the cheapest setting with coverage@k >= ``--target-coverage`` and checks it
once with the real TensorFlow beam search on the same users. See :mod:`nann_tf.search.tune`.
"""

from __future__ import annotations

import argparse
import logging

from nann_tf.cli import CliError
from nann_tf.cli.common import add_search_arguments, search_overrides

__all__ = ["add_arguments", "run", "format_frontier"]

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory from `nann-tf train`")
    p.add_argument("--index", required=True, help="the model's index from `nann-tf build-index`")
    p.add_argument("--data", required=True, help="dataset directory from `nann-tf prepare`")
    p.add_argument("--target-coverage", type=float, default=0.99,
                   help="coverage@k to reach, in (0, 1] (default 0.99)")
    p.add_argument("--users", type=int, default=200,
                   help="validation users to tune on (default 200; 0: all)")
    g = p.add_argument_group("the current setting, replayed and reported beside the tuned one "
                             "(default: the model config's [search] table)")
    add_search_arguments(g)
    p.add_argument("--ef-grid", default=None,
                   help="ef candidates per level, LEVEL=V1/V2/...,... e.g. 1=25/50,0=50/100/200 "
                        "(default: around k, see nann_tf.search.tune.default_grid)")
    p.add_argument("--T-grid", default=None,
                   help="T candidates per level below S, e.g. 0=1/2/3 (default 0=1/2/3/4/6/8/12, "
                        "1/2 above)")
    p.add_argument("--threads", type=int, default=0, help="replay threads (0: all cores)")
    p.add_argument("--visited", choices=["tf", "bitmap"], default="tf",
                   help="visited set of the TensorFlow check")
    p.add_argument("--output-json", help="also write the results (every setting) here")


def _fmt(values) -> str:
    from nann_tf.search.params import format_level_values

    return format_level_values(values) or "-"


def format_frontier(result: dict) -> str:
    """The Pareto frontier as a table (cheapest first); the chosen row is marked ``*``."""
    k = result["k"]
    chosen = result["chosen"]
    lines = [f"  {'ef':<22}{'T':<14}{'items scored':>14}{'scored':>10}{'coverage@' + str(k):>14}"
             f"{'95% bound':>11}"]
    for r in result["pareto"]:
        mark = "*" if chosen is not None and r["ef"] == chosen["ef"] and r["T"] == chosen["T"] \
            else " "
        lines.append(f"{mark} {_fmt(r['ef']):<22}{_fmt(r['T']):<14}{r['items_scored']:>14.1f}"
                     f"{r['scored_fraction']:>10.4f}{r['coverage']:>14.4f}"
                     f"{r['coverage_low']:>11.4f}")
    return "\n".join(lines)


# Long on purpose: one CLI mode read top to bottom: its checks before anything loads, the tuning
# run, its table and JSON.
def run(args: argparse.Namespace) -> int:
    from nann_tf import ops
    from nann_tf.data.dataset import DataError, Dataset
    from nann_tf.evaluation.retriever import load_model_entry
    from nann_tf.fsutil import write_json_atomic
    from nann_tf.search.params import parse_level_grid
    from nann_tf.search.tune import default_grid, grid_from_lists, tune

    if not 0 < args.target_coverage <= 1:
        raise CliError(f"--target-coverage {args.target_coverage}: expected a value in (0, 1]")
    if args.users < 0:
        raise CliError(f"--users {args.users}: expected >= 0")
    # Parsed before anything loads: a malformed --ef/--T or grid fails at once.
    overrides = search_overrides(args)  # parses --ef/--T before anything loads
    ef_grid = parse_level_grid(args.ef_grid, "--ef-grid", minimum=1) if args.ef_grid else None
    t_grid = parse_level_grid(args.T_grid, "--T-grid", minimum=0) if args.T_grid else None
    ops.numpy_core()  # OpLibraryError names the module and how to build it
    try:
        ds = Dataset.load(args.data)
    except DataError as e:
        raise CliError(f"--data: {e}") from e
    entry = load_model_entry(args.model, args.index, ds, data_name=f"--data {args.data}",
                             model_flag="--model", index_flag="--index")
    graph = entry.index.graph
    current = entry.search.overridden(**overrides).checked(
        graph.max_level, source="search parameters (--start-level/--ef/--T/-k over the model "
        "config's [search] table)")
    k, s = current.k, current.start_level
    if k > ds.num_items:
        raise CliError(f"-k {k}: expected k <= {ds.num_items} (the number of items)")
    ef_values, t_values = default_grid(s, k, len(graph.start_nodes(s)))
    if ef_grid:
        ef_values = ef_grid
    if t_grid:
        t_values = t_grid
    grid = grid_from_lists(s, ef_values, t_values, k)
    current_setting = (dict(current.ef), dict(current.T))
    if current_setting not in grid:
        grid.append(current_setting)
    hist = ds.val.hist[:args.users] if args.users else ds.val.hist
    if len(hist) == 0:
        raise CliError(f"--data {args.data} has no validation users to tune on")

    seeds = current.history_seeds
    res = tune(entry.model, entry.index, hist, start_level=s, k=k, target=args.target_coverage,
               grid=grid, threads=args.threads, visited_impl=args.visited, progress=log.info,
               history_seeds=seeds)
    print(f"tuned on {res['users']} validation users, {res['num_items']} items, k={k}, start "
          f"level {s}, {'history seeds' if seeds else 'no seeds'}: {len(grid)} settings replayed in {res['seconds']['replay']:.1f}s "
          f"(scores {res['seconds']['score']:.1f}s)")
    print("Pareto frontier (items scored per query vs coverage@k against brute force):")
    print(format_frontier(res))
    chk = res["check"]
    cur = next(r for r in res["rows"] if (r["ef"], r["T"]) == current_setting)
    print(f"current setting ef={_fmt(cur['ef'])} T={_fmt(cur['T'])}: coverage@{k} "
          f"{cur['coverage']:.4f}, {cur['items_scored']:.1f} items scored "
          f"({100 * cur['scored_fraction']:.2f}% of the corpus)")
    if res["chosen"] is None:
        best = max(r["coverage"] for r in res["rows"])
        print(f"no setting reaches coverage@{k} >= {args.target_coverage} with 95% confidence "
              f"(best mean {best:.4f}); "
              f"widen the grid (--ef-grid/--T-grid)")
    else:
        c = res["chosen"]
        print(f"cheapest setting with coverage@{k} >= {args.target_coverage} (95% bound "
              f"{c['coverage_low']:.4f}, mean {c['coverage']:.4f}): ef={_fmt(c['ef'])} "
              f"T={_fmt(c['T'])}: {c['items_scored']:.1f} items scored "
              f"({100 * c['scored_fraction']:.2f}% of the corpus)")
        print("  as a config [search] table:")
        print(f"    start_level = {s}\n    k = {k}\n    ef = \"{_fmt(c['ef'])}\"")
        if c["T"]:
            print(f"    T = \"{_fmt(c['T'])}\"")
        print(f"    history_seeds = {'true' if seeds else 'false'}")
    print(f"TensorFlow beam search check (ef={_fmt(chk['ef'])} T={_fmt(chk['T'])}, visited "
          f"{args.visited}): coverage@{k} {chk['tf_coverage']:.4f} (replay "
          f"{chk['replay_coverage']:.4f}), items scored {chk['tf_items_scored']:.1f} (replay "
          f"{chk['replay_items_scored']:.1f}), {chk['tf_ms_per_query']:.2f} ms/query")
    if args.output_json:
        out = dict(res, model=args.model, index=args.index, data=args.data,
                   rows=[_jsonable(r) for r in res["rows"]],
                   pareto=[_jsonable(r) for r in res["pareto"]],
                   chosen=_jsonable(res["chosen"]) if res["chosen"] else None,
                   check=_jsonable(chk))
        write_json_atomic(args.output_json, out, sort_keys=False)
    return 0 if res["chosen"] is not None else 1


def _jsonable(row: dict) -> dict:
    return {k: ({str(a): b for a, b in v.items()} if isinstance(v, dict) else v)
            for k, v in row.items()}

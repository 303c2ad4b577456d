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
    p.add_argument("--k", "-k", type=int, default=None,
                   help="items returned per query (default: the model config's [search] k)")
    p.add_argument("--start-level", type=int, default=None,
                   help="start level S (default: the model config's [search] start_level)")
    p.add_argument("--ef-grid", default=None,
                   help="ef candidates per level, e.g. '1=25,50;0=50,100,200' (default: "
                        "around k, see nann_tf.search.tune.default_grid)")
    p.add_argument("--T-grid", default=None,
                   help="T candidates per level below S, e.g. '0=1,2,3' (default 0=1,2,3,4,6,8,12; "
                        "1,2 above)")
    p.add_argument("--history-seeds", action=argparse.BooleanOptionalAction, default=None,
                   help="seed each query's beam search with its history items, as the exported "
                        "model does (default: the model config's search.history_seeds)")
    p.add_argument("--threads", type=int, default=0, help="replay threads (0: all cores)")
    p.add_argument("--visited", choices=["tf", "bitmap"], default="tf",
                   help="visited set of the TensorFlow check")
    p.add_argument("--output-json", help="also write the results (every setting) here")


def _fmt(values) -> str:
    from nann_tf.search.sweep import format_level_values

    return format_level_values(values) or "-"


def format_frontier(result: dict) -> str:
    """The Pareto frontier as a table (cheapest first); the chosen row is marked ``*``."""
    k = result["k"]
    chosen = result["chosen"]
    lines = [f"  {'ef':<22}{'T':<14}{'items scored':>14}{'scored':>10}{'coverage@' + str(k):>14}"]
    for r in result["pareto"]:
        mark = "*" if chosen is not None and r["ef"] == chosen["ef"] and r["T"] == chosen["T"] \
            else " "
        lines.append(f"{mark} {_fmt(r['ef']):<22}{_fmt(r['T']):<14}{r['items_scored']:>14.1f}"
                     f"{r['scored_fraction']:>10.4f}{r['coverage']:>14.4f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    from nann_tf import ops
    from nann_tf.evaluate_cli import load_model_entry, _write_json_atomic
    from nann_tf.data.dataset import DataError, Dataset
    from nann_tf.search.tune import default_grid, grid_from_lists, parse_grid, tune

    if not 0 < args.target_coverage <= 1:
        raise CliError(f"--target-coverage {args.target_coverage}: expected a value in (0, 1]")
    if args.users < 0:
        raise CliError(f"--users {args.users}: expected >= 0")
    try:
        ef_grid = parse_grid(args.ef_grid, "--ef-grid") if args.ef_grid else None
        t_grid = parse_grid(args.T_grid, "--T-grid") if args.T_grid else None
    except ValueError as e:
        raise CliError(str(e)) from e
    try:
        ops.numpy_core()
    except ops.OpLibraryError as e:
        raise CliError(str(e)) from e
    try:
        ds = Dataset.load(args.data)
    except DataError as e:
        raise CliError(f"--data: {e}") from e
    entry = load_model_entry(args.model, args.index, ds, args.data, "--model", "--index")
    sc = entry.cfg.search
    k = sc.k if args.k is None else args.k
    s = sc.start_level if args.start_level is None else args.start_level
    graph = entry.index.graph
    if k < 1 or k > ds.num_items:
        raise CliError(f"--k {k}: expected 1 <= k <= {ds.num_items} (the number of items)")
    if not 0 <= s <= graph.max_level:
        raise CliError(f"--start-level {s}: the index {args.index} has levels 0..{graph.max_level}")
    ef_values, t_values = default_grid(s, k, len(graph.start_nodes(s)))
    if ef_grid:
        ef_values = ef_grid
    if t_grid:
        t_values = t_grid
    try:
        grid = grid_from_lists(s, ef_values, t_values)
    except ValueError as e:
        raise CliError(f"--ef-grid/--T-grid: {e}") from e
    hist = ds.val.hist[:args.users] if args.users else ds.val.hist
    if len(hist) == 0:
        raise CliError(f"--data {args.data} has no validation users to tune on")

    seeds = sc.history_seeds if args.history_seeds is None else args.history_seeds
    res = tune(entry.model, entry.index, hist, start_level=s, k=k, target=args.target_coverage,
               grid=grid, threads=args.threads, visited_impl=args.visited, progress=log.info,
               history_seeds=seeds)
    print(f"tuned on {res['users']} validation users, {res['num_items']} items, k={k}, start "
          f"level {s}, {'history seeds' if seeds else 'no seeds'}: {len(grid)} settings replayed in {res['seconds']['replay']:.1f}s "
          f"(scores {res['seconds']['score']:.1f}s)")
    print("Pareto frontier (items scored per query vs coverage@k against brute force):")
    print(format_frontier(res))
    chk = res["check"]
    if res["chosen"] is None:
        best = max(r["coverage"] for r in res["rows"])
        print(f"no setting reaches coverage@{k} >= {args.target_coverage} (best {best:.4f}); "
              f"widen the grid (--ef-grid/--T-grid)")
    else:
        c = res["chosen"]
        print(f"cheapest setting with coverage@{k} >= {args.target_coverage}: ef={_fmt(c['ef'])} "
              f"T={_fmt(c['T'])}: {c['items_scored']:.1f} items scored "
              f"({100 * c['scored_fraction']:.2f}% of the corpus)")
        print("  as a config [search] table:")
        print(f"    start_level = {s}\n    k = {k}\n    ef = "
              f"{{ {', '.join(f'{json.dumps(str(a))} = {b}' for a, b in c['ef'].items())} }}")
        if c["T"]:
            print(f"    T = {{ {', '.join(f'{json.dumps(str(a))} = {b}' for a, b in c['T'].items())} }}")
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
        _write_json_atomic(args.output_json, out)
    return 0 if res["chosen"] is not None else 1


def _jsonable(row: dict) -> dict:
    return {k: ({str(a): b for a, b in v.items()} if isinstance(v, dict) else v)
            for k, v in row.items()}

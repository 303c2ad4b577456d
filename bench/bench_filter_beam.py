"""A walked filter's level-0 beam: how wide, chosen on validation users.

Usage (repository root; the 1M corpus's model, index and dataset, as bench_filters.py):

    python bench/bench_filter_beam.py --model M --index I --data D --name synth-1m

A walked filter searches level 0 with ``FILTER_EF_FACTOR`` (nann_tf/export/module.py) times the
row's ``ef[0]``. This measures that choice on users it was not reported on: for each factor and
each walked selectivity (filters built as in bench_filters.py: category groups holding 50% and
10% of the items, one include tag each), on ``--users`` users of ``--split`` (default: the
validation users), coverage@k against the exact filtered top-k with its 95% bootstrap interval,
its worst user, the items scored, and the B=1 p50 latency beside the unfiltered search,
interleaved. One module serves every factor (its ``max_ef`` is the widest factor's beam, the
factor is given as the request's ``ef[0]``), so the rows differ only in the beam. Writes
``bench/results/filter-beam-<name>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_filters import _exact, _timed, category_groups, dense_ids, retrieve  # noqa: E402

from nann_tf.data.dataset import Dataset  # noqa: E402
from nann_tf.evaluation.metrics import Bootstrap, per_user_coverage  # noqa: E402
from nann_tf.export import module as module_lib  # noqa: E402
from nann_tf.fsutil import write_json_atomic  # noqa: E402
from nann_tf.index.store import load_index  # noqa: E402
from nann_tf.model.saved import load_trained_model  # noqa: E402
from nann_tf.search.brute_force import ExactScorer  # noqa: E402
from nann_tf.search.filters import LabelTable  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--split", choices=("val", "test"), default="val")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--factors", default="2,2.5,3")
    ap.add_argument("--selectivities", default="0.5,0.1")
    ap.add_argument("--latency-queries", type=int, default=40)
    ap.add_argument("--visited", default="bitmap")
    ap.add_argument("--entries", type=int, default=None,
                    help="a walked filter's entry points per row (default: the export's, "
                         "FILTER_ENTRIES)")
    args = ap.parse_args()

    from nann_tf.autoconfig import search_defaults

    factors = [float(x) for x in args.factors.split(",")]
    fractions = [float(x) for x in args.selectivities.split(",")]
    ds = Dataset.load(args.data)
    model, cfg, meta = load_trained_model(args.model)
    index = load_index(args.index)
    search = search_defaults(cfg, meta, index.meta).checked(index.graph.max_level)
    ef0, k, n = int(search.ef[0]), search.k, ds.num_items
    groups = category_groups(ds, fractions)
    tags = [[] for _ in range(n + 1)]
    group_of = np.zeros((len(groups), ds.num_categories + 1), bool)
    for g, (cats, _) in enumerate(groups):
        group_of[g, cats] = True
        for i in np.flatnonzero(group_of[g][ds.item_category]):
            tags[i].append(g + 1)
    labels = LabelTable.build(index.category, ds.raw_category_id, tags, popularity=index.freq)
    # The request's ef[0] carries the factor: the module multiplies by 1.
    module_lib.FILTER_EF_FACTOR = 1
    served = module_lib.RetrievalModule(model, index, int(meta["max_len"]), search,
                                        visited_impl=args.visited, labels=labels,
                                        max_ef=int(max(factors) * ef0) + 1,
                                        filter_entries=(module_lib.FILTER_ENTRIES
                                                        if args.entries is None
                                                        else args.entries))
    split = getattr(ds, args.split)
    users = min(args.users, len(split))
    hist_dense = split.hist[:users]
    hist = np.where(hist_dense > 0, ds.raw_item_id[hist_dense], 0).astype(np.int64)
    t0 = time.perf_counter()
    full = ExactScorer(model, index.embeddings).full_scores(hist_dense)
    print(f"exact scores of {users} {args.split} users x {n} items in "
          f"{time.perf_counter() - t0:.0f}s", flush=True)
    boot = Bootstrap(users, 1000, 0)

    def call(h, e0=0, **rules):
        return retrieve(served, h, search.start_level, e0, **rules)

    def dense_of(raw):
        return dense_ids(ds.raw_item_id, raw)

    rows = []
    nq = min(args.latency_queries, users)
    for g, (frac, (cats, items)) in enumerate(zip(fractions, groups)):
        allowed = group_of[g][ds.item_category]
        allowed[0] = False
        ref = _exact(np.where(allowed[None], full, -np.inf), k)
        for f in factors:
            e0 = int(round(f * ef0))
            got, scored, path = [], [], []
            for u0 in range(0, users, 16):
                h = hist[u0:u0 + 16]
                out = call(h, e0, include_tags=[[g + 1]] * len(h))
                got.append(dense_of(out["item_ids"]))
                scored.append(out["num_scored"])
                path.append(out["search_path"])
            got, scored, path = (np.concatenate(x) for x in (got, scored, path))
            cov = per_user_coverage(got, ref, k)
            lo, hi = boot.interval(boot.means(cov))
            for u in range(nq):  # every shape compiled before the timing
                call(hist[u:u + 1], e0, include_tags=[[g + 1]])
                call(hist[u:u + 1])
            filt, plain = [], []
            for u in range(nq):
                plain.append(_timed(lambda: call(hist[u:u + 1])))
                filt.append(_timed(lambda: call(hist[u:u + 1], e0, include_tags=[[g + 1]])))
            row = {"selectivity": frac, "share": items / n, "factor": f, "ef0": e0,
                   "coverage@k": float(np.mean(cov)), "coverage@k_ci95": [lo, hi],
                   "worst_user": float(np.min(cov)),
                   "every_item_passes": bool(np.all(allowed[got[got > 0]])),
                   "walk_share": float(np.mean(path == 0)),
                   "items_scored": float(np.mean(scored)),
                   "ms_b1_p50_filtered": float(np.median(filt)),
                   "ms_b1_p50_unfiltered": float(np.median(plain)),
                   "latency_ratio": float(np.median(filt) / np.median(plain))}
            rows.append(row)
            print(row, flush=True)
    out = {"name": args.name, "model": args.model, "index": args.index, "data": args.data,
           "command": "python bench/bench_filter_beam.py " + " ".join(sys.argv[1:]),
           "split": args.split, "users": users, "num_items": n, "k": k,
           "entry_points": served.filter_entries,
           "search": search.to_dict(), "rows": rows}
    write_json_atomic(Path(__file__).resolve().parent / "results" /
                      f"filter-beam-{args.name}.json", out)
    print(f"\n{args.name}: {n} items, {users} {args.split} users, k={k}, "
          f"{served.filter_entries} entry points, 95% bootstrap intervals\n")
    print("| filter (share) | level-0 beam | coverage@k vs exact filtered | worst user | "
          "items scored | B=1 p50 filtered / unfiltered ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["coverage@k_ci95"]
        print(f"| {100 * r['share']:.1f}% | {r['factor']:g}x ef[0] ({r['ef0']}) | "
              f"{r['coverage@k']:.4f} [{lo:.4f}, {hi:.4f}] | {r['worst_user']:.3f} | "
              f"{r['items_scored']:.0f} | {r['ms_b1_p50_filtered']:.1f} / "
              f"{r['ms_b1_p50_unfiltered']:.1f} | {r['latency_ratio']:.2f} |")


if __name__ == "__main__":
    main()

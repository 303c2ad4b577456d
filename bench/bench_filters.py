"""Filtered retrieval, measured: coverage against the exact filtered answer, cost and latency.

Usage (repository root; a trained model with its index and dataset, e.g. the 1M corpus):

    python bench/bench_filters.py --model M --index I --data D --name synth-1m

Filters are built from categories: the categories, in a seeded random order, are grouped until
their items make up 50%, 10%, 1% and 0.1% of the corpus, and each group is given as one tag of
the items (an item table at export does the same), so each filter is one include label. For
each selectivity, on ``--users`` test users: coverage@k of the served graph's answer (the
module ``nann-tf export`` writes, XLA over its shape grid, the bitmap visited op) against the
exact filtered top-k (every item scored by the model, the refused ones dropped), with its 95%
bootstrap interval; the items scored; the path taken (walk or exact scan); and the B=1 latency
of the filtered and the unfiltered search, interleaved, over ``--latency-queries`` users. The
per-category cap (``max_per_category``) is checked against the exact capped top-k. The switch
point between the walk and the exact scan is measured too: both paths, forced, on tags holding
1k..32k items. Writes ``bench/results/filters-<name>.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from nann_tf.data.dataset import Dataset
from nann_tf.evaluation.metrics import Bootstrap, per_user_coverage
from nann_tf.export.module import RetrievalModule, rules_inputs
from nann_tf.fsutil import write_json_atomic
from nann_tf.index.store import load_index
from nann_tf.model.saved import load_trained_model
from nann_tf.search.brute_force import ExactScorer, topk_of_scores
from nann_tf.search.filters import LabelTable

SELECTIVITIES = (0.5, 0.1, 0.01, 0.001)
SWITCH_SIZES = (1000, 2000, 4000, 8000, 16000, 32000)


def category_groups(ds, fractions, seed: int = 0):
    """For each fraction, the categories (in a seeded random order) whose items first make up
    at least that share of the corpus: ``[(dense categories, items)]``."""
    counts = np.bincount(ds.item_category[1:], minlength=ds.num_categories + 1)
    order = np.random.default_rng(seed).permutation(np.arange(1, ds.num_categories + 1))
    cum = np.cumsum(counts[order]) / ds.num_items
    return [(order[:int(np.searchsorted(cum, f)) + 1],
             int(counts[order[:int(np.searchsorted(cum, f)) + 1]].sum())) for f in fractions]


def group_tags(ds, groups):
    """Tags of the items for the category ``groups`` (:func:`category_groups`): item ``i``
    carries tag ``g + 1`` when group ``g`` holds its category. Returns ``(tags, group_of)``:
    a list of N + 1 tag lists, and bool ``[len(groups), C + 1]`` (the categories of each)."""
    tags = [[] for _ in range(ds.num_items + 1)]
    group_of = np.zeros((len(groups), ds.num_categories + 1), bool)
    for g, (cats, _) in enumerate(groups):
        group_of[g, cats] = True
        for i in np.flatnonzero(group_of[g][ds.item_category]):
            tags[i].append(g + 1)
    return tags, group_of


def capped_topk(scores: np.ndarray, cats: np.ndarray, cap: int, k: int) -> np.ndarray:
    """The exact capped answer: the ranking of every item, at most ``cap`` per category."""
    out = np.zeros((len(scores), k), np.int64)
    for u, row in enumerate(scores):
        order = topk_of_scores(row[None], min(len(row), 50 * k))[0]
        seen: dict[int, int] = {}
        got = []
        for i in order:
            if not np.isfinite(row[i]):
                break
            c = int(cats[i])
            if seen.get(c, 0) < cap:
                seen[c] = seen.get(c, 0) + 1
                got.append(i)
                if len(got) == k:
                    break
        out[u, :len(got)] = got
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--latency-queries", type=int, default=200,
                    help="users timed, one B=1 query each (50 gave ratios 0.1-0.2 apart "
                         "between runs of the same code here)")
    ap.add_argument("--cap", type=int, default=5)
    ap.add_argument("--visited", default="bitmap")
    ap.add_argument("--no-earlier", action="store_true",
                    help="skip the earlier filtered walk (one hop, no entry points) measured "
                         "beside today's")
    args = ap.parse_args()
    import tensorflow as tf

    from nann_tf.autoconfig import search_defaults

    ds = Dataset.load(args.data)
    model, cfg, meta = load_trained_model(args.model)
    index = load_index(args.index)
    search = search_defaults(cfg, meta, index.meta).checked(index.graph.max_level)
    k = search.k
    n = ds.num_items
    groups = category_groups(ds, SELECTIVITIES)
    rng = np.random.default_rng(1)
    switch_items = [np.sort(rng.choice(np.arange(1, n + 1), size, replace=False))
                    for size in SWITCH_SIZES if size <= n // 2]
    # Tags: 1..4 the category groups, 10.. the random item sets of the switch-point study.
    tags, group_of = group_tags(ds, groups)
    for s, items in enumerate(switch_items):
        for i in items:
            tags[i].append(10 + s)
    labels = LabelTable.build(index.category, ds.raw_category_id, tags, popularity=index.freq)

    def module(exact_max_items=None, **walk):
        return RetrievalModule(model, index, int(meta["max_len"]), search,
                               visited_impl=args.visited, labels=labels,
                               exact_max_items=exact_max_items, **walk)

    served = module()
    # The walk before entry points and two hops, side by side (same exact-path bound, same
    # level-0 beam).
    earlier = None if args.no_earlier else module(filter_hops=1, filter_entries=0)
    walk_only, exact_only = module(0), module(10 ** 9)
    users = min(args.users, len(ds.test))
    hist_dense = ds.test.hist[:users]
    hist = np.where(hist_dense > 0, ds.raw_item_id[hist_dense], 0).astype(np.int64)
    # As `nann-tf export` does: the exact-path bound from what the default walk scores.
    walk_scored = float(np.mean(served.serving_default(tf.constant(hist[:64]))["num_scored"]))
    served.measured_exact_max_items(walk_scored)
    if earlier is not None:
        earlier.measured_exact_max_items(walk_scored)
    print(f"exact path at most {served.exact_max_items} items (the default walk scores "
          f"{walk_scored:.0f}); grid {served.grid.max_size}", flush=True)
    t0 = time.perf_counter()
    full = ExactScorer(model, index.embeddings).full_scores(hist_dense)
    print(f"exact scores of {users} users x {n} items in {time.perf_counter() - t0:.0f}s",
          flush=True)
    boot = Bootstrap(users, 1000, 0)

    def call(m, h, **rules):
        return retrieve(m, h, search.start_level, **rules)

    def dense_of(raw):
        return dense_ids(ds.raw_item_id, raw)

    rows = []
    nq = min(args.latency_queries, users)
    for g, (frac, (cats, items)) in enumerate(zip(SELECTIVITIES, groups)):
        tag = g + 1
        allowed = group_of[g][ds.item_category]
        allowed[0] = False
        ref = _exact(np.where(allowed[None], full, -np.inf), k)

        def quality(m):
            got, scored, path = [], [], []
            for u0 in range(0, users, 16):
                h = hist[u0:u0 + 16]
                out = call(m, h, include_tags=[[tag]] * len(h))
                got.append(dense_of(out["item_ids"]))
                scored.append(out["num_scored"])
                path.append(out["search_path"])
            got, scored, path = (np.concatenate(x) for x in (got, scored, path))
            cov = per_user_coverage(got, ref, k)
            lo, hi = boot.interval(boot.means(cov))
            return {"coverage@k": float(np.mean(cov)), "coverage@k_ci95": [lo, hi],
                    "every_item_passes": bool(np.all(allowed[got[got > 0]])),
                    "items_scored": float(np.mean(scored)),
                    "exact_path_share": float(np.mean(path == 1))}, cov

        row = {"selectivity": frac, "categories": int(len(cats)), "items": items,
               "share": items / n}
        q, cov = quality(served)
        row.update(q)
        # Interleaved B=1 latency, every query answered once first (XLA compiles a shape of
        # its grid on first use): unfiltered, filtered, earlier walk, unfiltered, ...
        models = [served] + ([earlier] if earlier is not None else [])
        for u in range(nq):
            call(served, hist[u:u + 1])
            for m in models:
                call(m, hist[u:u + 1], include_tags=[[tag]])
        plain, filt, old = [], [], []
        for u in range(nq):
            plain.append(_timed(lambda: call(served, hist[u:u + 1])))
            filt.append(_timed(lambda: call(served, hist[u:u + 1], include_tags=[[tag]])))
            if earlier is not None:
                old.append(_timed(lambda: call(earlier, hist[u:u + 1], include_tags=[[tag]])))
        row.update({"ms_b1_p50_filtered": float(np.median(filt)),
                    "ms_b1_p50_unfiltered": float(np.median(plain)),
                    "latency_ratio": float(np.median(filt) / np.median(plain))})
        if earlier is not None:
            q_old, cov_old = quality(earlier)
            diff = boot.interval(boot.means(cov - cov_old))
            row["earlier_walk"] = {**q_old, "ms_b1_p50_filtered": float(np.median(old)),
                                   "latency_ratio": float(np.median(old) / np.median(plain)),
                                   "coverage_gain_paired": float(np.mean(cov - cov_old)),
                                   "coverage_gain_ci95": list(diff)}
        rows.append(row)
        print(row, flush=True)

    # The cap against the exact capped answer (no filter).
    got = []
    for u0 in range(0, users, 16):
        h = hist[u0:u0 + 16]
        got.append(dense_of(call(served, h, max_per_category=[args.cap] * len(h))["item_ids"]))
    got = np.concatenate(got)
    ref = capped_topk(full, ds.item_category, args.cap, k)
    cov = per_user_coverage(got, ref, k)
    lo, hi = boot.interval(boot.means(cov))
    cap_counts = max(int(np.bincount(ds.item_category[r[r > 0]]).max()) for r in got)
    cap_row = {"cap": args.cap, "coverage@k": float(np.mean(cov)), "coverage@k_ci95": [lo, hi],
               "max_per_category_seen": cap_counts}
    print(cap_row, flush=True)

    # The switch point: each path forced, on random item sets of growing size.
    switch = []
    for s, items in enumerate(switch_items):
        tag = 10 + s
        w = [_timed(lambda: call(walk_only, hist[u:u + 1], include_tags=[[tag]]))
             for u in range(min(nq, 30))]
        e = [_timed(lambda: call(exact_only, hist[u:u + 1], include_tags=[[tag]]))
             for u in range(min(nq, 30))]
        allowed = np.zeros(n + 1, bool)
        allowed[items] = True
        ref = _exact(np.where(allowed[None], full[:64], -np.inf), k)
        wg = np.concatenate([dense_of(call(walk_only, hist[u0:u0 + 16],
                                           include_tags=[[tag]] * 16)["item_ids"])
                             for u0 in range(0, 64, 16)])
        entry = {"items": len(items), "walk_ms_p50": float(np.median(w[1:])),
                 "exact_ms_p50": float(np.median(e[1:])),
                 "walk_coverage@k": float(np.mean(per_user_coverage(wg, ref, k)))}
        switch.append(entry)
        print(entry, flush=True)
    out = {"name": args.name, "model": args.model, "index": args.index, "data": args.data,
           "command": "python bench/bench_filters.py " + " ".join(sys.argv[1:]),
           "num_items": n, "users": users, "k": k, "search": search.to_dict(),
           "exact_max_items": served.exact_max_items, "selectivity": rows, "cap": cap_row,
           "switch_point": switch}
    write_json_atomic(Path(__file__).resolve().parent / "results" / f"filters-{args.name}.json",
                      out)
    print(f"\n{args.name}: {n} items, {users} test users, k={k}, 95% bootstrap intervals\n")
    print("| filter (share of items) | coverage@k vs exact filtered | items scored | exact path "
          "| B=1 p50 filtered / unfiltered ms | ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["coverage@k_ci95"]
        print(f"| {100 * r['share']:.2f}% | {r['coverage@k']:.4f} [{lo:.4f}, {hi:.4f}] | "
              f"{r['items_scored']:.0f} | {100 * r['exact_path_share']:.0f}% | "
              f"{r['ms_b1_p50_filtered']:.1f} / {r['ms_b1_p50_unfiltered']:.1f} | "
              f"{r['latency_ratio']:.2f} |")
    if earlier is not None:
        print("\nThe earlier walk (one hop, no entry points; the same beam), same users:\n")
        print("| filter | coverage@k | items scored | B=1 p50 ms | ratio | gain, paired |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            e = r.get("earlier_walk")
            if e:
                lo, hi = e["coverage_gain_ci95"]
                print(f"| {100 * r['share']:.2f}% | {e['coverage@k']:.4f} | "
                      f"{e['items_scored']:.0f} | {e['ms_b1_p50_filtered']:.1f} | "
                      f"{e['latency_ratio']:.2f} | {e['coverage_gain_paired']:+.4f} "
                      f"[{lo:+.4f}, {hi:+.4f}] |")


def retrieve(m, h: np.ndarray, start_level: int, ef0: int = 0, **rules) -> dict:
    """``m.retrieve`` on raw-id histories ``h`` at the default parameters (level 0's beam
    ``ef0`` when given) with the rules ``rules`` (:func:`rules_inputs`): outputs as arrays."""
    import tensorflow as tf

    b = len(h)
    ef = np.zeros([b, start_level + 1], np.int32)
    ef[:, 0] = ef0
    inputs = {"hist_item_ids": h, "k": np.zeros([b], np.int32), "ef": ef,
              "T": np.full([b, start_level + 1], -1, np.int32),
              "exclude_item_ids": np.zeros([b, 1], np.int64), **rules_inputs(b, **rules)}
    return {a: t.numpy() for a, t in
            m.retrieve(**{a: tf.constant(v) for a, v in inputs.items()}).items()}


def dense_ids(raw_item_id: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Dense ids of raw item ids (``raw_item_id`` sorted after its padding entry; unknown and
    padding -> 0)."""
    n = len(raw_item_id) - 1
    pos = np.minimum(np.searchsorted(raw_item_id[1:], raw), n - 1)
    return np.where(raw_item_id[1:][pos] == raw, pos + 1, 0)


def _exact(scores: np.ndarray, k: int) -> np.ndarray:
    """The exact top k of a masked score matrix, refused items (-inf) as padding."""
    top = topk_of_scores(scores, k)
    return np.where(np.take_along_axis(scores, top, axis=1) > -np.inf, top, 0)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - t)


if __name__ == "__main__":
    main()

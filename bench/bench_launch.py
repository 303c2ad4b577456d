"""Launched items on the 1M corpus: cold-start quality, the daily loop's cost, warm start.

Usage (repository root; D is a prepared dataset, e.g. the synth-1m corpus):

    python bench/bench_launch.py --data D --config synth-1m [--log LOG.csv] \
        [--hold 0.01] [--retire 0.01] [--id-dropout 0.1] [--train-seconds 360] \
        [--warm-steps 600] [--users 500] [--workdir W]

1. **Hold out** a random ``--hold`` share of the items: a dataset D1 without them (their
   behaviours removed from every sequence and history; validation/test users whose target is
   one of them dropped; dense ids renumbered). D1 is "yesterday's" log, the held-out items are
   "launched today".
2. **Train** on D1 twice for the same wall time (``[train] max_seconds``, no in-training
   validation): ``[model] id_dropout`` 0 and ``--id-dropout``. Cost to the known items:
   recall-all@200 on D1's test users, paired difference with its interval.
3. **Launched items' recall**: test users of the full log who later engaged with a launched
   item (their target or a later behaviour), histories without launched items (they did not
   exist yet). recall-all@200 of those launched items in the exact top-200 over known +
   launched items, with e_v of a launched item placed three ways: ``cold`` (the model's cold
   path: category only, zero id part; what ``update-index`` does), ``random`` (e_v of a random
   known item), ``popular`` (e_v of the most frequent known item of the same category) and
   ``category_mean_id`` (the category's frequency-weighted mean id embedding through the item
   network), for both models; paired differences. The choice between update-index's two
   placements (``popular`` vs ``category``) is made the same way on *validation* users who later
   engaged with a launched item (``placement_chosen_on_validation``); the test users report it.
4. **The daily loop** (the id-dropout model): build-index (beam parameters tuned, as by
   default) and export of
   version 1, served by the in-process server; then ``update-index`` (launch the held-out items,
   retire ``--retire`` of the known ones), export of version 2 and the wait until AVAILABLE.
   The full rebuild is prepare (timed here with ``--log``) + the training box + build-index +
   export; coverage@200 of version 2's ``serving_default`` against its ``brute_force`` and the
   retired items returned (must be 0).
5. **Warm start vs fresh at equal steps** on "today's" full log (launched items included, new
   ids initialised fresh): ``--warm-steps`` steps from the id-dropout model vs from scratch;
   paired recall-all@200 on the full log's test users.
6. **The graph after retraining**: for the warm-started model, a rebuilt HNSW graph over its
   e_v vs yesterday's graph (part 4's updated index) kept with the new e_v: coverage@200
   against the exact top-200 at equal search parameters (the tuner's grid replayed on both; a
   paired interval in TensorFlow at the rebuilt graph's cheapest 0.99 setting).

Parts can be re-run alone from an earlier run's ``--workdir`` (``--placement-only``,
``--loop-only``, ``--warm-only``, ``--graph-only``); they are merged into the results file,
their commands listed under ``later_runs``.

Writes ``bench/results/launch-<config>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _right_align(hist: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Rows of ``hist`` with only the ``keep`` entries, right-aligned, left-padded with 0."""
    order = np.argsort(keep, axis=1, kind="stable")  # dropped first, kept in their order
    out = np.take_along_axis(np.where(keep, hist, 0), order, axis=1)
    return out


def hold_out_dataset(ds, held: np.ndarray, out: Path) -> np.ndarray:
    """Writes D1: ``ds`` without the items where ``held`` [N+1] is True. Returns the new dense id
    of every old one (0 for held-out items and padding)."""
    n = ds.num_items
    known = np.flatnonzero(~held[1:]) + 1
    m = len(known)
    new_id = np.zeros(n + 1, np.int32)
    new_id[known] = np.arange(1, m + 1, dtype=np.int32)
    items, splits = ds.train_items, ds.train_splits
    owner = np.repeat(np.arange(len(splits) - 1), np.diff(splits))
    keep_pos = ~held[items]
    counts = np.bincount(owner[keep_pos], minlength=len(splits) - 1)
    keep_user = counts >= 2
    keep_pos &= keep_user[owner]
    tr_items = new_id[items[keep_pos]].astype(np.int32)
    tr_splits = np.concatenate([[0], np.cumsum(counts[keep_user])]).astype(np.int64)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "train.npz", items=tr_items, splits=tr_splits,
             user=ds.train_users[keep_user])
    meta = dict(ds.meta)
    for split in ("val", "test"):
        h = getattr(ds, split)
        rows = ~held[h.target]
        keep = (h.hist > 0) & ~held[h.hist]
        hist = new_id[_right_align(h.hist, keep)][rows]
        extra = {}
        if h.later is not None:
            lo = h.later_splits
            lowner = np.repeat(np.arange(len(lo) - 1), np.diff(lo))
            lk = ~held[h.later] & rows[lowner]
            extra = {"later": new_id[h.later[lk]].astype(np.int32),
                     "later_splits": np.concatenate(
                         [[0], np.cumsum(np.bincount(lowner[lk], minlength=len(lo) - 1)[rows])]
                     ).astype(np.int64)}
        np.savez(out / f"{split}.npz", hist=hist.astype(np.int32),
                 hist_len=(hist > 0).sum(1).astype(np.int32),
                 target=new_id[h.target[rows]].astype(np.int32), user=h.user[rows], **extra)
        meta[f"num_{split}_users"] = int(rows.sum())
    sel = np.concatenate([[0], known])
    np.savez(out / "items.npz", raw_item_id=ds.raw_item_id[sel],
             category=ds.item_category[sel],
             freq=np.bincount(tr_items, minlength=m + 1).astype(np.int64),
             raw_category_id=ds.raw_category_id)
    meta.update(num_items=m, num_train_users=int(keep_user.sum()),
                num_train_samples=int(len(tr_items) - keep_user.sum()),
                rows_kept=int(len(tr_items)), held_out_items=int(n - m))
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return new_id


def launched_users(ds, held: np.ndarray, new_id: np.ndarray, users: int, split: str = "test"):
    """``split`` users of the full log who later engaged with a held-out item: ``(hist [U, L]
    in D1 ids without held-out items, ground truth: per user the held-out old ids)``."""
    t = getattr(ds, split)
    rows, gts = [], []
    for u in range(len(t)):
        later = t.later[t.later_splits[u]:t.later_splits[u + 1]] if t.later is not None else []
        gt = {int(i) for i in np.r_[t.target[u], later] if held[i]}
        hist = t.hist[u]
        if gt and ((hist > 0) & ~held[hist]).any():
            rows.append(u)
            gts.append(np.array(sorted(gt)))
        if len(rows) == users:
            break
    h = t.hist[rows]
    hist = new_id[_right_align(h, (h > 0) & ~held[h])]
    return hist.astype(np.int32), gts


def launched_recall(model, known_table, placed: dict, hist, gt_pos, k: int = 200) -> dict:
    """Per user, the share of their launched items in the exact top-k over known + launched
    items, for each placement's launched e_v table (``placed[name]`` [h + 1, d], row 0 padding;
    ``gt_pos`` per user the launched items' rows in it)."""
    from nann_tf.search.brute_force import ExactScorer

    _, top_scores = ExactScorer(model, known_table).topk(hist, k)
    out = {}
    for name, table in placed.items():
        s = ExactScorer(model, table).full_scores(hist, progress=lambda *a: None)
        rec = np.zeros(len(hist))
        for u, pos in enumerate(gt_pos):
            # A launched item is in the top k iff fewer than k items (known or launched) score
            # higher: its score beats the known k-th and the launched ones above it fit.
            hits = 0
            for p in pos:
                v = s[u, p]
                hits += ((top_scores[u] > v).sum() + (s[u, 1:] > v).sum()) < k
            rec[u] = hits / len(pos)
        out[name] = rec
    return out


def placement_on_validation(args, ds, ds1, held, models: dict, result: dict) -> None:
    """The choice between update-index's two placements (``popular``: the category's best
    seller's e_v; ``category``: the model's cold path) made on validation users who later
    engaged with a launched item, for each model; the test-user figures of part 3 report it."""
    import tensorflow as tf

    from nann_tf.evaluation.metrics import Bootstrap, paired_difference
    from nann_tf.index.update import best_sellers
    from nann_tf.model.nann import all_item_embeddings
    from nann_tf.model.saved import load_trained_model

    n = ds.num_items
    new_id = np.zeros(n + 1, np.int32)
    known = np.flatnonzero(~held[1:]) + 1
    new_id[known] = np.arange(1, len(known) + 1, dtype=np.int32)
    hist, gt_old = launched_users(ds, held, new_id, args.users, split="val")
    launched_old = np.flatnonzero(held)
    row_of = np.zeros(n + 1, np.int64)
    row_of[launched_old] = np.arange(1, len(launched_old) + 1)
    gt_pos = [row_of[g] for g in gt_old]
    cat1 = ds.item_category[launched_old]
    best = best_sellers(ds1.item_category, ds1.item_freq, ds.num_categories + 1)
    boot = Bootstrap(len(hist), seed=args.seed)
    out = {"users": int(len(hist)), "split": "val"}
    for p, mdir in models.items():
        model, _, _ = load_trained_model(mdir)
        table = all_item_embeddings(model)
        cold = model.cold_item_embedding(tf.constant(cat1)).numpy()
        rows = best[cat1]
        pop = np.where(rows[:, None] > 0, table[rows], cold)
        pad = table[:1]
        rec = launched_recall(model, table, {
            "popular": np.concatenate([pad, pop]).astype(np.float32),
            "category": np.concatenate([pad, cold]).astype(np.float32)}, hist, gt_pos)
        d = paired_difference({"recall_all@200": rec["popular"]},
                              {"recall_all@200": rec["category"]}, boot)
        out[f"id_dropout={p:g}"] = {
            "popular": float(rec["popular"].mean()), "category": float(rec["category"].mean()),
            "popular_minus_category": d,
            "chosen": "popular" if rec["popular"].mean() >= rec["category"].mean()
            else "category"}
        print(f"validation, id_dropout={p:g}:", out[f"id_dropout={p:g}"], flush=True)
    result["placement_chosen_on_validation"] = out


def _held(ds, share: float, rng) -> np.ndarray:
    """The held-out ("launched today") items: bool [N + 1], ``share`` of them at random."""
    n = ds.num_items
    held = np.zeros(n + 1, bool)
    held[rng.choice(np.arange(1, n + 1), max(1, round(share * n)), replace=False)] = True
    return held


def _ci(boot, values) -> list[float]:
    return [float(x) for x in boot.interval(boot.means(values))]


def main(argv=None) -> int:
    import tensorflow as tf

    from nann_tf.config import load_config
    from nann_tf.data.dataset import Dataset
    from nann_tf.evaluation.evaluate import evaluate_brute_force
    from nann_tf.evaluation.metrics import Bootstrap, paired_difference
    from nann_tf.fsutil import write_json_atomic
    from nann_tf.index.update import best_sellers
    from nann_tf.model.nann import all_item_embeddings
    from nann_tf.model.saved import load_trained_model
    from nann_tf.train import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the prepared full dataset")
    ap.add_argument("--config", default="synth-1m")
    ap.add_argument("--log", help="the raw log behind --data (userbehavior): prepare is timed")
    ap.add_argument("--hold", type=float, default=0.01)
    ap.add_argument("--retire", type=float, default=0.01)
    ap.add_argument("--id-dropout", type=float, default=0.1)
    ap.add_argument("--train-seconds", type=float, default=360.0)
    ap.add_argument("--warm-steps", type=int, default=600)
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--serve-users", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="default: a temporary directory")
    ap.add_argument("--skip-loop", action="store_true", help="no build-index/export/serve part")
    ap.add_argument("--warm-only", action="store_true",
                    help="only part 5, from the id-dropout model an earlier run left in "
                         "--workdir; merged into the results file")
    ap.add_argument("--loop-only", action="store_true",
                    help="only part 4, from the id-dropout model and yesterday's dataset an "
                         "earlier run left in --workdir; merged into the results file")
    ap.add_argument("--placement-only", action="store_true",
                    help="only the placement choice on validation users (part 3's choice), "
                         "from the two models an earlier run left in --workdir")
    ap.add_argument("--graph-only", action="store_true",
                    help="only part 6, from the models and index-2 an earlier run left in "
                         "--workdir; merged into the results file")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    result: dict = {"config": args.config, "machine": platform.machine(),
                    "cpu_count": os.cpu_count(), "tensorflow": tf.__version__,
                    "command": "python bench/bench_launch.py " + " ".join(sys.argv[1:])}
    out_path = Path(__file__).resolve().parent / "results" / f"launch-{args.config}.json"
    tmp = tempfile.TemporaryDirectory(prefix="nann-launch-")
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)

    def save():
        write_json_atomic(out_path, result)

    ds = Dataset.load(args.data)
    if args.warm_only or args.loop_only or args.graph_only or args.placement_only:
        command = result["command"]
        result = json.loads(out_path.read_text())
        result.setdefault("later_runs", []).append(command)  # parts re-run alone
        mdir = work / f"model-dropout{args.id_dropout:g}"
        if args.loop_only:
            held = _held(ds, args.hold, rng)  # the same draw as the full run
            result["daily_loop"] = daily_loop(
                args, ds, Dataset.load(work / "data-yesterday"), held, mdir,
                work / "data-yesterday", work, rng,
                result["train"][f"id_dropout={args.id_dropout:g}"]["seconds"])
        if args.warm_only:
            warm_start_part(args, ds, mdir, result)
        if args.graph_only:
            graph_reuse_part(args, ds, work, result)
        if args.placement_only:
            placement_on_validation(args, ds, Dataset.load(work / "data-yesterday"),
                                    _held(ds, args.hold, np.random.default_rng(args.seed)),
                                    {p: work / f"model-dropout{p:g}"
                                     for p in (0.0, args.id_dropout)}, result)
        save()
        return 0
    n = ds.num_items
    held = _held(ds, args.hold, rng)
    d1 = work / "data-yesterday"
    shutil.rmtree(d1, ignore_errors=True)
    new_id = hold_out_dataset(ds, held, d1)
    ds1 = Dataset.load(d1)
    result["items"] = n
    result["held_out_items"] = int(held.sum())
    result["yesterday"] = {"items": ds1.num_items, "train_samples": ds1.num_train_samples,
                           "test_users": len(ds1.test)}

    # --- 2. two models on yesterday's log, the same wall time --------------------------------
    models = {}
    for p in (0.0, args.id_dropout):
        cfg = load_config(args.config)
        cfg.model.id_dropout = p
        cfg.train.seed = args.seed
        cfg.train.max_seconds = args.train_seconds
        cfg.train.epochs = max(cfg.train.epochs, 1000)
        cfg.train.val_every_steps = -1
        out = work / f"model-dropout{p:g}"
        s = train(cfg, d1, out, verbose=0, overwrite=True)
        models[p] = out
        result.setdefault("train", {})[f"id_dropout={p:g}"] = {
            "seconds": s["seconds"], "steps": s["steps_run_now"],
            "examples_per_s": s["examples_per_s"]}
        print(f"trained id_dropout={p:g}: {s['steps_run_now']} steps", flush=True)
    save()

    known_pu, launched_pu = {}, {}
    hist_l, gt_old = launched_users(ds, held, new_id, args.users)
    launched_old = np.flatnonzero(held)  # launched rows 1..h in this order
    row_of = np.zeros(n + 1, np.int64)
    row_of[launched_old] = np.arange(1, len(launched_old) + 1)
    gt_pos = [row_of[g] for g in gt_old]
    cat1 = ds.item_category[launched_old]  # the category vocabulary is unchanged in D1
    # update-index's own choice (--cold-start popular): each category's best seller yesterday
    best_of_cat = best_sellers(ds1.item_category, ds1.item_freq, ds.num_categories + 1)
    boot_k = Bootstrap(min(args.users, len(ds1.test)), seed=args.seed)
    boot_l = Bootstrap(len(hist_l), seed=args.seed)
    for p, mdir in models.items():
        model, _, _ = load_trained_model(mdir)
        pu = {}
        evaluate_brute_force(model, ds1, "test", args.users, (50, 200), per_user_out=pu)
        known_pu[p] = pu["model"]
        table = all_item_embeddings(model)
        cold = model.cold_item_embedding(tf.constant(cat1)).numpy()
        rand = table[rng.integers(1, ds1.num_items + 1, len(launched_old))]
        pop_rows = best_of_cat[cat1]
        pop = np.where(pop_rows[:, None] > 0, table[pop_rows], cold)  # its fallback too
        # The category's expected id embedding (frequency-weighted mean of its known items'
        # rows) through the item network: the cold path with a better guess for the id part.
        ids_e = model.item_id_embedding.embeddings.numpy()
        w = np.maximum(ds1.item_freq, 0).astype(np.float64)
        sums = np.zeros((ds.num_categories + 1, ids_e.shape[1]))
        np.add.at(sums, ds1.item_category, ids_e * w[:, None])
        tot = np.bincount(ds1.item_category, weights=w, minlength=ds.num_categories + 1)
        mean_id = (sums / np.maximum(tot, 1e-9)[:, None]).astype(np.float32)[cat1]
        c = model.category_embedding(tf.constant(cat1))
        id_mean = model.item_network(tf.concat([tf.constant(mean_id), c], -1),
                                     training=False).numpy()
        pad = table[:1]
        placed = {name: np.concatenate([pad, t]).astype(np.float32)
                  for name, t in (("cold", cold), ("random", rand), ("popular", pop),
                                  ("category_mean_id", id_mean))}
        launched_pu[p] = launched_recall(model, table, placed, hist_l, gt_pos)
        print(f"id_dropout={p:g}: known recall-all@200 "
              f"{known_pu[p]['recall_all@200'].mean():.4f}, launched "
              + ", ".join(f"{k} {v.mean():.4f}" for k, v in launched_pu[p].items()), flush=True)
    p0, p1 = 0.0, args.id_dropout
    result["known_items"] = {
        "test_users": int(len(known_pu[p0]["recall_all@200"])),
        **{f"id_dropout={p:g}": {m: float(known_pu[p][m].mean()) for m in known_pu[p]}
           for p in models},
        "dropout_minus_none": paired_difference(known_pu[p1], known_pu[p0], boot_k)}
    launched = {"users": len(hist_l),
                "items_per_user": float(np.mean([len(g) for g in gt_old])),
                "metric": "recall-all@200 of each user's launched items (target and later "
                          "behaviours), exact top-200 over known + launched items"}
    for p in models:
        for name, v in launched_pu[p].items():
            launched[f"id_dropout={p:g}/{name}"] = {"recall_all@200": float(v.mean()),
                                                    "ci95": _ci(boot_l, v)}
    pairs = {"cold_dropout_minus_cold_none": (launched_pu[p1]["cold"], launched_pu[p0]["cold"]),
             "cold_dropout_minus_random_dropout": (launched_pu[p1]["cold"],
                                                   launched_pu[p1]["random"]),
             "cold_dropout_minus_popular_dropout": (launched_pu[p1]["cold"],
                                                    launched_pu[p1]["popular"]),
             "cold_none_minus_popular_none": (launched_pu[p0]["cold"],
                                              launched_pu[p0]["popular"]),
             "category_mean_id_minus_popular_dropout": (launched_pu[p1]["category_mean_id"],
                                                        launched_pu[p1]["popular"]),
             "category_mean_id_minus_cold_dropout": (launched_pu[p1]["category_mean_id"],
                                                     launched_pu[p1]["cold"])}
    for key, (a, b) in pairs.items():
        launched[key] = paired_difference({"recall_all@200": a}, {"recall_all@200": b}, boot_l)
    result["launched_items"] = launched
    save()
    placement_on_validation(args, ds, ds1, held, models, result)
    save()

    # --- 4. the daily loop with the id-dropout model -----------------------------------------
    if not args.skip_loop:
        result["daily_loop"] = daily_loop(args, ds, ds1, held, models[p1], d1, work, rng,
                                          result["train"][f"id_dropout={p1:g}"]["seconds"])
        save()

    warm_start_part(args, ds, models[p1], result)
    save()
    if not args.skip_loop:
        graph_reuse_part(args, ds, work, result)
        save()
    print(json.dumps(result, indent=2, default=float))
    print(f"wrote {out_path}")
    tmp.cleanup()
    return 0


def warm_start_part(args, ds, warm_dir, result) -> None:
    """Part 5: warm start from ``warm_dir`` vs fresh, ``--warm-steps`` each, on today's log."""
    from nann_tf.config import load_config
    from nann_tf.evaluation.evaluate import evaluate_brute_force
    from nann_tf.evaluation.metrics import Bootstrap, paired_difference
    from nann_tf.model.saved import load_trained_model
    from nann_tf.train import train

    work = Path(warm_dir).parent
    runs, pu_w = {}, {}
    for name, warm in (("warm", warm_dir), ("fresh", None)):
        cfg = load_config(args.config)
        cfg.model.id_dropout = args.id_dropout
        cfg.train.seed = args.seed + 1
        cfg.train.epochs, cfg.train.steps_per_epoch = 1, args.warm_steps
        cfg.train.val_every_steps = -1
        out = work / f"model-today-{name}"
        s = train(cfg, args.data, out, verbose=0, overwrite=True, warm_start_from=warm)
        model, _, _ = load_trained_model(out)
        pu = {}
        evaluate_brute_force(model, ds, "test", args.users, (50, 200), per_user_out=pu)
        pu_w[name] = pu["model"]
        runs[name] = {"steps": s["steps_run_now"], "seconds": s["seconds"],
                      "recall_all@200": float(pu["model"]["recall_all@200"].mean()),
                      "recall_all@50": float(pu["model"]["recall_all@50"].mean())}
        print(name, runs[name], flush=True)
        del model
    boot_w = Bootstrap(len(pu_w["warm"]["recall_all@200"]), seed=args.seed)
    result["warm_start"] = {"steps": args.warm_steps, **runs,
                            "warm_minus_fresh": paired_difference(pu_w["warm"], pu_w["fresh"],
                                                                  boot_w)}


def relabel_graph(graph, new_of_old: np.ndarray):
    """``graph`` with node ``o`` renamed ``new_of_old[o]`` (a permutation of ``1..N``, 0 -> 0):
    the same links, in the dense ids of another dataset."""
    from nann_tf.index.hnsw import HnswGraph

    n = graph.num_items
    old_of_new = np.zeros(n + 1, np.int64)
    old_of_new[new_of_old] = np.arange(n + 1)
    levels = []
    for values, splits in graph.levels:
        lens = np.diff(splits)[old_of_new]
        new_splits = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        starts = np.repeat(splits[old_of_new], lens)
        offset = np.arange(new_splits[-1]) - np.repeat(new_splits[:-1], lens)
        levels.append((new_of_old[values[starts + offset]].astype(np.int32), new_splits))
    return HnswGraph(levels, int(new_of_old[graph.entry_point]), graph.max_level,
                     graph.node_level[old_of_new].astype(np.int32), n, graph.M,
                     graph.ef_construction, graph.seed)


def graph_reuse_part(args, ds, work: Path, result: dict) -> None:
    """Part 6: after retraining (the warm-started model of part 5 on today's log), a rebuilt
    HNSW graph over the new e_v vs yesterday's graph (index-2 of part 4: launched items
    inserted) kept with the new e_v. Coverage@200 against the exact top-200 of the same model
    on ``--users`` test users, at the same search parameters (the default grid of the tuner,
    replayed on both graphs), and each graph's cheapest setting reaching 0.99."""
    from nann_tf.evaluation.metrics import Bootstrap, paired_difference
    from nann_tf.evaluation.retriever import Retriever
    from nann_tf.index.build import build_index
    from nann_tf.index.store import ItemIndex, load_index
    from nann_tf.model.saved import load_trained_model
    from nann_tf.search.brute_force import ExactScorer, topk_of_scores
    from nann_tf.search.tune import default_grid, grid_from_lists, replay_grid

    model_dir, old_dir = work / "model-today-warm", work / "index-2"
    rebuilt_dir = work / "index-today-rebuilt"
    shutil.rmtree(rebuilt_dir, ignore_errors=True)  # an earlier run's may hold another model's
    build_index(model_dir, args.data, rebuilt_dir, tune_coverage=0)
    rebuilt = load_index(rebuilt_dir)
    rebuild_s = rebuilt.meta["embed_seconds"] + rebuilt.meta["hnsw_build_seconds"]
    old = load_index(old_dir)
    t0 = time.perf_counter()
    dense_of_raw = {int(r): i for i, r in enumerate(ds.raw_item_id) if i}
    new_of_old = np.array([0] + [dense_of_raw[int(r)] for r in old.raw_item_id[1:]], np.int64)
    if old.num_items != ds.num_items or len(np.unique(new_of_old)) != ds.num_items + 1:
        raise SystemExit(f"{old_dir} does not hold today's catalogue")
    reused = ItemIndex(relabel_graph(old.graph, new_of_old), rebuilt.embeddings,
                       ds.raw_item_id, ds.item_category, dict(rebuilt.meta))
    reuse_s = time.perf_counter() - t0 + rebuilt.meta["embed_seconds"]
    model, cfg, _ = load_trained_model(model_dir)
    params = cfg.search.checked(min(rebuilt.graph.max_level, reused.graph.max_level))
    s, k = params.start_level, 200
    hist = ds.test.hist[:args.users]
    scores = ExactScorer(model, rebuilt.embeddings, user_batch=64).full_scores(
        hist, progress=lambda *a: None)
    exact = topk_of_scores(scores, k)
    ef_values, t_values = default_grid(s, k, len(rebuilt.graph.start_nodes(s)))
    grid = grid_from_lists(s, ef_values, t_values, k)
    seeds = np.asarray(hist, np.int64)
    rows = {name: replay_grid(idx.graph, s, scores, exact, grid, k, 0, seeds=seeds)
            for name, idx in (("rebuilt", rebuilt), ("reused", reused))}
    del scores
    cheapest = {}
    for name, rs in rows.items():
        ok = [r for r in rs if r["coverage"] >= 0.99]
        cheapest[name] = min(ok, key=lambda r: r["items_scored"]) if ok else None
    # Per user, in TensorFlow, at the rebuilt graph's cheapest setting (or the best one).
    ref = cheapest["rebuilt"] or max(rows["rebuilt"], key=lambda r: r["coverage"])
    per_user = {}
    for name, idx in (("rebuilt", rebuilt), ("reused", reused)):
        res = Retriever(model, idx, s).beam(hist, ref["ef"], ref["T"], k, True)
        per_user[name] = {"coverage@200": np.array(
            [len(set(a) & set(b)) / k for a, b in zip(res.ids.tolist(), exact.tolist())]),
            "items_scored": np.asarray(res.num_scored, np.float64)}
    boot = Bootstrap(len(hist), seed=args.seed)
    same = [(r1, r2) for r1, r2 in zip(rows["rebuilt"], rows["reused"])]
    result["graph_after_retraining"] = {
        "users": int(len(hist)), "k": k, "start_level": s,
        "rebuild_seconds": rebuild_s, "reuse_seconds": reuse_s,
        "at_setting": {"ef": {int(a): int(b) for a, b in ref["ef"].items()},
                       "T": {int(a): int(b) for a, b in ref["T"].items()},
                       **{name: {m: float(v.mean()) for m, v in pu.items()}
                          for name, pu in per_user.items()},
                       "reused_minus_rebuilt": paired_difference(
                           {"coverage@200": per_user["reused"]["coverage@200"]},
                           {"coverage@200": per_user["rebuilt"]["coverage@200"]}, boot)},
        "cheapest_at_0.99": {name: None if r is None else
                             {"coverage": r["coverage"], "items_scored": r["items_scored"]}
                             for name, r in cheapest.items()},
        "grid": [{"coverage_rebuilt": a["coverage"], "coverage_reused": b["coverage"],
                  "items_scored_rebuilt": a["items_scored"],
                  "items_scored_reused": b["items_scored"]} for a, b in same]}
    print("graph after retraining:", json.dumps(result["graph_after_retraining"]["at_setting"],
                                                default=float), flush=True)


def daily_loop(args, ds, ds1, held, model_dir, d1, work, rng, train_seconds) -> dict:
    """Build-index + export v1 (served), then update-index + export v2 until AVAILABLE."""
    from nann_tf.data.prepare import prepare_dataset
    from nann_tf.evaluation.metrics import Bootstrap
    from nann_tf.export.export import export_version
    from nann_tf.index.build import build_index
    from nann_tf.index.update import update_index
    from nann_tf.serving.loader import SessionModel
    from nann_tf.serving.model_config import ServedModelConfig, ServerOptions
    from nann_tf.serving.server import ModelServer
    from nann_tf.config import load_config

    from bench_catalogue import _wait_available  # the same wait, beside it in bench/

    times = {}
    if args.log:
        t0 = time.perf_counter()
        dc = load_config(args.config).data
        prepare_dataset(args.log, work / "prepared", "userbehavior", max_len=dc.max_len,
                        min_len=dc.min_len, val_users=dc.val_users, test_users=dc.test_users,
                        seed=dc.split_seed, overwrite=True)
        times["prepare_s"] = time.perf_counter() - t0
    times["train_s"] = train_seconds
    index1, index2, base = work / "index-1", work / "index-2", work / "models" / "nann"
    for p in (index1, index2, base.parent):
        shutil.rmtree(p, ignore_errors=True)
    t0 = time.perf_counter()
    built = build_index(model_dir, d1, index1)  # beam parameters tuned, as by default
    times["build_index_s"] = time.perf_counter() - t0
    # The tuned parameters served: the synth configs pin [search], so the export is told
    # (as `nann-tf export --ef ... --T ...` would be); update-index carries them along.
    tuned = built.get("tuned_search") or {}
    searched = {"ef": tuned.get("ef"), "T": tuned.get("T")}
    t0 = time.perf_counter()
    export_version(model_dir, index1, base, data_dir=str(d1), **searched)
    times["export_s"] = time.perf_counter() - t0
    rebuild = sum(times.values())
    launched_old = np.flatnonzero(held)
    cats = ds.raw_category_id[ds.item_category[launched_old]]
    (work / "new.csv").write_text("item,category\n" + "".join(
        f"{int(i)},{int(c)}\n" for i, c in zip(ds.raw_item_id[launched_old], cats)))
    m = ds1.num_items
    retired = rng.choice(np.arange(1, m + 1), max(1, round(args.retire * m)), replace=False)
    (work / "retired.txt").write_text("".join(f"{ds1.raw_item_id[i]}\n" for i in retired))
    server = ModelServer([ServedModelConfig("nann", str(base))],
                         ServerOptions(host="127.0.0.1", port=0,
                                       file_system_poll_wait_seconds=0.5))
    server.start()
    try:
        _wait_available(server, "nann", 1, timeout=3600.0)
        t0 = time.perf_counter()
        upd = update_index(model_dir, index1, index2, add_items=work / "new.csv",
                           columns="item=item,category=category",
                           retire_items=work / "retired.txt")
        t1 = time.perf_counter()
        info = export_version(model_dir, index2, base, data_dir=str(d1), **searched)
        t2 = time.perf_counter()
        t3 = _wait_available(server, "nann", 2, timeout=3600.0)
    finally:
        server.stop(2.0)
    update = {"update_index_s": t1 - t0, "export_s": t2 - t1, "until_available_s": t3 - t2,
              "total_s": t3 - t0}
    hist = ds.raw_items(ds.test.hist[:args.serve_users])  # today's users, launched ids included
    with SessionModel(base / "2", load_ops=info["visited"] != "tf") as sm:
        got = sm.run("serving_default", {"hist_item_ids": hist})["item_ids"]
        exact = sm.run("brute_force", {"hist_item_ids": hist})["item_ids"]
    per_user = np.array([len(set(g) & set(e)) / len(e) for g, e in zip(got, exact)])
    gone = set(ds1.raw_item_id[retired].tolist())
    boot = Bootstrap(len(per_user), seed=args.seed)
    launched_raw = set(ds.raw_item_id[launched_old].tolist())
    return {"full_rebuild": times, "full_rebuild_s": rebuild, "update": update,
            "update_over_rebuild": update["total_s"] / rebuild,
            "launched": int(len(launched_old)), "retired": int(len(retired)),
            "insert_seconds": upd.get("insert_seconds"),
            "serve_users": int(len(per_user)),
            "coverage_at_200": float(per_user.mean()), "coverage_ci95": _ci(boot, per_user),
            "retired_items_returned": int(sum(len(set(r) & gone)
                                              for r in np.r_[got, exact].tolist())),
            "launched_items_in_answers": int(sum(len(set(r) & launched_raw)
                                                 for r in got.tolist())),
            "export_info": {k: info.get(k) for k in ("launched_items", "retired_items",
                                                     "search", "stage_seconds")},
            "validation_seconds": info.get("validation", {}).get("seconds"),
            "tuned_search": tuned or None}


if __name__ == "__main__":
    sys.exit(main())

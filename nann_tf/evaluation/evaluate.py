"""Retrieval quality of a trained model on held-out users: exact search vs graph searches.

:func:`evaluate_brute_force` gives recall-all@M of the exact top-M next to the most-popular
baseline; :func:`evaluate_retrieval` compares brute force, Beam-retrieval (with and without
history seeds), HNSW-retrieval and most popular on the same users (recall, recall-delta,
coverage against brute force, corpus fraction scored, time per query); :func:`format_table`
prints that comparison. :func:`compare_models` gives the paired difference of two models on
the same users.

Every recall, recall-delta and coverage figure carries a 95% interval (``<metric>_ci95``), from
a seeded bootstrap over the evaluated users (:class:`~nann_tf.evaluation.metrics.Bootstrap`);
differences between methods or models on the same users use the paired bootstrap.
"""

from __future__ import annotations

import time

import numpy as np

from nann_tf.data.dataset import popularity_topk
from nann_tf.evaluation.metrics import (Bootstrap, paired_difference, per_user_metrics,
                                        per_user_recall, scored_fraction, summarize_per_user)

__all__ = ["BOOTSTRAP_RESAMPLES", "METHODS", "compare_models", "evaluate_brute_force",
           "recall_all_keys",
           "evaluate_retrieval", "format_difference", "format_interval", "format_table",
           "held_out"]

BOOTSTRAP_RESAMPLES = 1000

METHODS = {"brute_force": "brute force", "beam": "beam (Beam-retrieval)",
           "beam_no_seeds": "beam, no seeds", "hnsw": "HNSW-retrieval",
           "most_popular": "most popular"}


def held_out(ds, split: str, users: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(hist [U, L], target [U])`` of the ``split`` ("test" or "val") users; ``users > 0``
    keeps the first ``users``."""
    held = getattr(ds, split)
    hist, target = held.hist, held.target
    if users:
        hist, target = hist[:users], target[:users]
    return hist, target


def recall_all_keys(ms, next_n: int = 1) -> list[str]:
    """The metric names :func:`evaluate_brute_force` reports: ``recall_all@M`` (the paper's one
    ground-truth item) and, with ``next_n > 1``, ``recall_all_next{N}@M`` beside it."""
    keys = [f"recall_all@{m}" for m in ms]
    if next_n > 1:
        keys += [f"recall_all_next{next_n}@{m}" for m in ms]
    return keys


def evaluate_brute_force(model, ds, split: str = "test", users: int = 0,
                         ms=(50, 200), resamples: int = BOOTSTRAP_RESAMPLES,
                         seed: int = 0, per_user_out: dict | None = None,
                         next_n: int = 1, top_ids=None) -> dict:
    """recall-all@M of the model (exact top-M) and of most-popular on a held-out split, each
    with its 95% interval, and their paired difference (``model_minus_most_popular``).

    ``next_n > 1`` also scores each user's next ``next_n`` behaviours from the split point (the
    paper's target and the ``next_n - 1`` after it: ``recall_all_next{N}@M``, the share of them
    in the top M), reported beside the paper's figure: more ground truth per user, so narrower
    intervals on small logs. ``per_user_out``, if given, receives the per-user values
    (``"model"``, ``"most_popular"``) and the ``"bootstrap"``, for paired comparisons with other
    models on the same users. ``top_ids`` (int [U, >= max(ms)] dense ids, best first) evaluates
    those lists instead of ``model``'s exact top-M (a baseline's, e.g.)."""
    hist, target = held_out(ds, split, users)
    targets = getattr(ds, split).next_targets(next_n, users) if next_n > 1 else None
    t0 = time.perf_counter()
    if top_ids is None:
        from nann_tf.model.nann import all_item_embeddings
        from nann_tf.search.brute_force import ExactScorer

        ids, _ = ExactScorer(model, all_item_embeddings(model)).topk(hist, max(ms))
    else:
        ids = np.asarray(top_ids)[:len(target)]
    seconds = time.perf_counter() - t0
    pop = np.broadcast_to(popularity_topk(ds, max(ms)), (len(target), max(ms)))
    boot = Bootstrap(len(target), resamples, seed)

    def recall_all(top):
        out = {f"recall_all@{m}": per_user_recall(top, target, m) for m in ms}
        if targets is not None:
            out.update({f"recall_all_next{next_n}@{m}": per_user_recall(top, targets, m)
                        for m in ms})
        return out

    pu_model, pu_pop = recall_all(ids), recall_all(pop)
    if per_user_out is not None:
        per_user_out.update(model=pu_model, most_popular=pu_pop, bootstrap=boot)
    return {"split": split, "users": int(len(target)), "num_items": int(ds.num_items),
            "next_n": int(next_n), "metrics": recall_all_keys(ms, next_n),
            "brute_force_seconds": seconds, "bootstrap": _boot_info(boot),
            "model": summarize_per_user(pu_model, boot),
            "most_popular": summarize_per_user(pu_pop, boot),
            "model_minus_most_popular": paired_difference(pu_model, pu_pop, boot)}


def _boot_info(boot: Bootstrap) -> dict:
    return {"resamples": boot.resamples, "seed": boot.seed, "level": boot.level,
            "unit": "user"}


def evaluate_retrieval(model, index, ds, params, split: str = "test", users: int = 0,
                       ms=(50, 200), visited: str = "tf", batch_size: int = 16,
                       retriever=None, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> tuple[dict, dict]:
    """Brute force vs Beam-retrieval vs HNSW-retrieval vs most popular on held-out users.

    Args:
      model / index / ds: the trained model, its index and the dataset.
      params: checked :class:`~nann_tf.search.params.SearchParams` (``k >= max(ms)``).
      split / users: which held-out users (``users = 0``: all).
      ms: the M values of the metrics.
      visited / batch_size: see :class:`~nann_tf.evaluation.retriever.Retriever`.
      retriever: reuse this retriever (else one is built).
      resamples / seed: the bootstrap over users behind the ``_ci95`` intervals.

    Returns:
      ``(result, arrays)``: ``result`` is JSON-ready (``rows`` maps brute_force / beam / hnsw /
      most_popular to their metrics with ``_ci95`` intervals, ``ms_per_query`` and
      ``items_scored``); ``arrays`` holds the users' ``hist``, ``target``, the brute-force ids,
      the retriever, the ``bootstrap`` and each method's ``per_user`` metrics, for further runs
      and paired comparisons.
    """
    from nann_tf.evaluation.retriever import Retriever

    if params.k < max(ms):
        raise ValueError(f"k = {params.k} is smaller than M = {max(ms)}: the search returns only "
                         f"k items")
    hist, target = held_out(ds, split, users)
    if retriever is None:
        retriever = Retriever(model, index, params.start_level, visited, batch_size)
    n = ds.num_items
    bf = retriever.brute_force(hist, max(params.k, max(ms)))
    runs = [("brute_force", bf),
            ("beam", retriever.beam(hist, params.ef, params.T, params.k, params.history_seeds))]
    if params.history_seeds:  # what the seeds add: the paper's algorithm at the same parameters
        runs.append(("beam_no_seeds", retriever.beam(hist, params.ef, params.T, params.k, False)))
    runs.append(("hnsw", retriever.hnsw(hist, params.hnsw_ef, params.k)))
    pop = np.broadcast_to(popularity_topk(ds, max(ms)), (len(hist), max(ms)))
    runs.append(("most_popular", None))
    boot = Bootstrap(len(hist), resamples, seed)
    rows, per_user = {}, {}
    for name, res in runs:
        per_user[name] = per_user_metrics(pop if res is None else res.ids, bf.ids, target, ms)
        r = {"users": int(len(hist)), **summarize_per_user(per_user[name], boot)}
        if res is not None:
            r.update(scored_fraction=scored_fraction(res.num_scored, n),
                     ms_per_query=res.ms_per_query, items_scored=float(np.mean(res.num_scored)))
        rows[name] = r
    result = {"split": split, "users": int(len(hist)), "num_items": int(n),
              "at": list(ms), "params": params.to_dict(), "visited": visited,
              "batch_size": retriever.batch_size, "bootstrap": _boot_info(boot), "rows": rows}
    arrays = {"hist": hist, "target": target, "bf_ids": bf.ids, "retriever": retriever,
              "bootstrap": boot, "per_user": per_user}
    return result, arrays


def compare_models(arrays: dict, other_arrays: dict) -> dict:
    """Paired differences (first model minus second) per method, on the same users:
    ``{method: {"coverage@M": d, "coverage@M_ci95": [lo, hi], ...}}``. Both ``arrays`` come
    from :func:`evaluate_retrieval` on the same split and users (the first one's bootstrap is
    used for both sides)."""
    if not np.array_equal(arrays["target"], other_arrays["target"]) or \
            not np.array_equal(arrays["hist"], other_arrays["hist"]):
        raise ValueError("compare_models: the two evaluations are not on the same users")
    boot = arrays["bootstrap"]
    return {name: paired_difference(pu, other_arrays["per_user"][name], boot)
            for name, pu in arrays["per_user"].items()
            if name in other_arrays["per_user"] and name != "most_popular"}


def format_interval(row: dict, key: str, digits: int = 4) -> str:
    """``0.8850 +/-0.0190``: the value and half the width of its 95% interval (asymmetric
    intervals are given exactly in the JSON's ``_ci95``); ``-`` when missing."""
    value = row.get(key)
    if value is None:
        return "-"
    ci = row.get(f"{key}_ci95")
    if ci is None or not np.all(np.isfinite(ci)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} +/-{(ci[1] - ci[0]) / 2:.{digits}f}"


def format_table(result: dict) -> str:
    """The evaluation table: one line per method, each figure with its 95% interval
    (``value +/-half-width``)."""
    ms = result["at"]
    w = 20
    head = [f"{'method':<22}"]
    for m in ms:
        head += [f"{'recall@' + str(m):>{w}}", f"{'recall-delta@' + str(m):>{w}}",
                 f"{'coverage@' + str(m):>{w}}"]
    head += [f"{'scored':>9}", f"{'ms/query':>9}"]
    lines = ["".join(head)]
    for key, label in METHODS.items():
        if key not in result["rows"]:
            continue
        r = result["rows"][key]
        cells = [f"{label:<22}"]
        for m in ms:
            rec = f"recall_retrieval@{m}" if f"recall_retrieval@{m}" in r else f"recall_all@{m}"
            cells += [f"{format_interval(r, k):>{w}}"
                      for k in (rec, f"recall_delta@{m}", f"coverage@{m}")]
        frac = r.get("scored_fraction")
        cells += [f"{frac:>9.4f}" if frac is not None else f"{'-':>9}",
                  f"{r['ms_per_query']:>9.2f}" if "ms_per_query" in r else f"{'-':>9}"]
        lines.append("".join(cells))
    boot = result.get("bootstrap", {})
    lines.append("recall@M: recall-all@M for brute force, recall-retrieval@M for the others; "
                 "scored: fraction of the corpus scored per query; +/-: half the 95% interval "
                 f"(bootstrap over the {result['users']} users, "
                 f"{boot.get('resamples', '?')} resamples)")
    return "\n".join(lines)


def format_difference(diff: dict, ms, title: str) -> str:
    """A table of paired differences (:func:`compare_models`): one line per method, each
    difference with its 95% interval ``[lo, hi]``."""
    w = 26
    head = [f"{'method':<22}"] + [f"{name + '@' + str(m):>{w}}" for m in ms
                                   for name in ("recall", "recall-delta", "coverage")]
    lines = [title, "".join(head)]
    for key, label in METHODS.items():
        if key not in diff:
            continue
        d = diff[key]
        cells = [f"{label:<22}"]
        for m in ms:
            rec = f"recall_retrieval@{m}" if f"recall_retrieval@{m}" in d else f"recall_all@{m}"
            for k in (rec, f"recall_delta@{m}", f"coverage@{m}"):
                lo, hi = d[f"{k}_ci95"]
                cells.append(f"{f'{d[k]:+.4f} [{lo:+.4f}, {hi:+.4f}]':>{w}}")
        lines.append("".join(cells))
    lines.append("an interval that excludes 0 is a difference the users support (paired "
                 "bootstrap, 95%)")
    return "\n".join(lines)

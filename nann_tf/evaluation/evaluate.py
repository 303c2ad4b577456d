"""Retrieval quality of a trained model on held-out users: exact search vs graph searches.

:func:`evaluate_brute_force` gives recall-all@M of the exact top-M next to the most-popular
baseline; :func:`evaluate_retrieval` compares brute force, Beam-retrieval (with and without
history seeds), HNSW-retrieval and most popular on the same users (recall, recall-delta,
coverage against brute force, corpus fraction scored, time per query); :func:`format_table`
prints that comparison.
"""

from __future__ import annotations

import time

import numpy as np

from nann_tf.data.dataset import popularity_topk
from nann_tf.evaluation.metrics import recall, summarize

__all__ = ["METHODS", "evaluate_brute_force", "evaluate_retrieval", "format_table", "held_out"]

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


def evaluate_brute_force(model, ds, split: str = "test", users: int = 0,
                         ms=(50, 200)) -> dict:
    """recall-all@M of the model (exact top-M) and of most-popular on a held-out split."""
    from nann_tf.model.nann import all_item_embeddings
    from nann_tf.search.brute_force import ExactScorer

    hist, target = held_out(ds, split, users)
    t0 = time.perf_counter()
    ids, _ = ExactScorer(model, all_item_embeddings(model)).topk(hist, max(ms))
    seconds = time.perf_counter() - t0
    pop = popularity_topk(ds, max(ms))
    out = {"split": split, "users": int(len(target)), "num_items": int(ds.num_items),
           "brute_force_seconds": seconds, "model": {}, "most_popular": {}}
    for m in ms:
        out["model"][f"recall_all@{m}"] = recall(ids, target, m)
        out["most_popular"][f"recall_all@{m}"] = recall(
            np.broadcast_to(pop, (len(target), len(pop))), target, m)
    return out


def evaluate_retrieval(model, index, ds, params, split: str = "test", users: int = 0,
                       ms=(50, 200), visited: str = "tf", batch_size: int = 16,
                       retriever=None) -> tuple[dict, dict]:
    """Brute force vs Beam-retrieval vs HNSW-retrieval vs most popular on held-out users.

    Args:
      model / index / ds: the trained model, its index and the dataset.
      params: checked :class:`~nann_tf.search.params.SearchParams` (``k >= max(ms)``).
      split / users: which held-out users (``users = 0``: all).
      ms: the M values of the metrics.
      visited / batch_size: see :class:`~nann_tf.evaluation.retriever.Retriever`.
      retriever: reuse this retriever (else one is built).

    Returns:
      ``(result, arrays)``: ``result`` is JSON-ready (``rows`` maps brute_force / beam / hnsw /
      most_popular to their metrics, ``ms_per_query`` and ``items_scored``); ``arrays`` holds
      the users' ``hist``, ``target``, the brute-force ids and the retriever, for further runs.
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

"""Items-to-item evaluation: the similar-items searches against exact search in the same space,
and how often the items found share a label (category, genre) with their seeds.

Seed rows come from held-out users' histories (:func:`seed_rows`): row ``i`` takes the user's
last ``1 + i % 3`` items, so single seeds and sets of two and three are all measured.

For each mode of :mod:`nann_tf.search.similar` (``embedding``: ``-||e_v - c||^2``; ``model``: the
NANN score with the seeds as the history) :func:`evaluate_similar` reports, with 95% bootstrap
intervals over the seed rows:

- ``coverage@k``: the share of the exact top-k (every item scored in the same space, seeds
  excluded) the search returns;
- ``scored_fraction``: the share of the corpus the search scored;
- ``shares_label@k``: the share of the returned items holding a label of one of the row's seeds
  (the dataset's category by default). The same figure for ``k`` uniformly random items and for
  the ``k`` most popular items (seeds excluded) is the baseline a similar-items shelf must beat.
"""

from __future__ import annotations

import numpy as np

from nann_tf.evaluation.metrics import Bootstrap, per_user_coverage, scored_fraction

__all__ = ["baseline_ids", "evaluate_similar", "seed_rows", "shares_label", "format_similar_table"]


def seed_rows(histories: np.ndarray, max_seeds: int = 3) -> np.ndarray:
    """Seed rows from right-aligned histories ``[U, L]`` (0 = padding): row ``i`` keeps the
    last ``1 + i % max_seeds`` columns (0 elsewhere), ``[U, min(max_seeds, L)]``."""
    hist = np.asarray(histories)
    q = min(int(max_seeds), hist.shape[1])
    seeds = hist[:, hist.shape[1] - q:].copy()
    keep = np.arange(q)[None, :] >= (q - 1 - np.arange(len(hist)) % q)[:, None]
    seeds[~keep] = 0
    return seeds


def shares_label(ids: np.ndarray, seeds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row, the share of the returned items (id > 0) holding a label of one of its seeds.

    Args:
      ids: int ``[U, k]`` dense ids (0 = padding).
      seeds: int ``[U, Q]`` dense ids (0 = none).
      labels: int ``[N + 1, G]`` each item's labels (0 = none), e.g. its category as
        ``[N + 1, 1]`` or a padded genre list.

    Returns:
      float ``[U]`` (NaN for a row without results).
    """
    ids, seeds = np.asarray(ids), np.asarray(seeds)
    lab = np.asarray(labels)
    if lab.ndim == 1:
        lab = lab[:, None]
    got = lab[ids]                       # [U, k, G]
    want = lab[seeds]                    # [U, Q, G]
    want = want.reshape(len(seeds), 1, 1, -1)
    hit = ((got[..., None] == want) & (got[..., None] > 0)).any(axis=(2, 3))  # [U, k]
    real = ids > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(real.any(axis=1), (hit & real).sum(axis=1) / real.sum(axis=1), np.nan)


def baseline_ids(ds, seeds: np.ndarray, k: int, rng: np.random.Generator) -> dict:
    """What a similar-items shelf must beat, ``k`` items per seed row (dense ids ``[U, k]``):
    ``random`` (uniform over the corpus) and ``most_popular`` (the most frequent items in
    training that are not among the row's seeds)."""
    from nann_tf.data.dataset import popularity_topk

    pop = popularity_topk(ds, k + seeds.shape[1])
    return {"random": rng.integers(1, ds.num_items + 1, size=(len(seeds), k)),
            "most_popular": np.stack([pop[~np.isin(pop, s)][:k] for s in seeds])}


def _mean_ci(values: np.ndarray, boot: Bootstrap) -> tuple[float, list[float]]:
    return float(np.nanmean(values)), boot.interval(boot.means(values))


def evaluate_similar(model, index, ds, *, search, similar, split: str = "test",
                     users: int = 0, modes=("embedding", "model"), visited: str = "tf",
                     batch_size: int = 16, labels: np.ndarray | None = None,
                     resamples: int = 1000, seed: int = 0, retriever=None) -> dict:
    """Both similar-items modes against exact search, on seed rows from held-out users.

    Args:
      model / index / ds: the trained model, its index and the dataset.
      search: checked ``[search]`` parameters (the model mode's search).
      similar: checked ``[similar]`` parameters (the embedding mode's search).
      split / users: held-out users whose histories give the seed rows (``users = 0``: all
        with a history).
      modes: which modes to evaluate.
      visited / batch_size: see :class:`~nann_tf.evaluation.retriever.Retriever`.
      labels: ``[N + 1, G]`` item labels for ``shares_label`` (default: the dataset's
        category).
      resamples / seed: the bootstrap over seed rows.
      retriever: reuse this retriever (its start level must be ``search.start_level``).

    Returns:
      JSON-ready: ``rows`` per mode (``k``, ``coverage@k`` and ``shares_label@k`` with
      ``_ci95``, ``scored_fraction``, ``ms_per_query``, ``exact_ms_per_query``, ``speedup``),
      ``baselines`` (``random``, ``most_popular``: ``shares_label@k`` at the embedding mode's
      k), ``seed_rows`` and ``seeds_per_row``.
    """
    from nann_tf.evaluation.retriever import Retriever

    held = getattr(ds, split)
    hist = held.hist[held.hist_len > 0]
    if users:
        hist = hist[:users]
    seeds = seed_rows(hist).astype(np.int32)
    if len(seeds) == 0:
        raise ValueError(f"the {split} split has no user with a history to take seeds from")
    labels = ds.item_category if labels is None else labels
    if retriever is None:
        retriever = Retriever(model, index, search.start_level, visited, batch_size)
    boot = Bootstrap(len(seeds), resamples, seed)
    n = ds.num_items
    rows = {}
    for mode in modes:
        params = similar if mode == "embedding" else search
        k = params.k
        res = retriever.similar(seeds, mode, params)
        exact = retriever.similar_exact(seeds, mode, k)
        row = {"k": int(k), "params": params.to_dict()}
        row[f"coverage@{k}"], row[f"coverage@{k}_ci95"] = _mean_ci(
            per_user_coverage(res.ids, exact.ids, k), boot)
        row[f"shares_label@{k}"], row[f"shares_label@{k}_ci95"] = _mean_ci(
            shares_label(res.ids, seeds, labels), boot)
        row.update(scored_fraction=scored_fraction(res.num_scored, n),
                   items_scored=float(np.mean(res.num_scored)),
                   ms_per_query=res.ms_per_query, exact_ms_per_query=exact.ms_per_query,
                   speedup=exact.ms_per_query / max(res.ms_per_query, 1e-9))
        rows[mode] = row
    k = similar.k if "embedding" in modes else search.k
    baselines = {}
    for name, ids in baseline_ids(ds, seeds, k, np.random.default_rng(seed)).items():
        value, ci = _mean_ci(shares_label(ids, seeds, labels), boot)
        baselines[name] = {"k": int(k), f"shares_label@{k}": value,
                           f"shares_label@{k}_ci95": ci}
    return {"split": split, "seed_rows": int(len(seeds)),
            "seeds_per_row": np.bincount((seeds > 0).sum(axis=1)).tolist(),
            "num_items": int(n), "visited": visited, "rows": rows, "baselines": baselines,
            "bootstrap": {"resamples": boot.resamples, "seed": boot.seed, "level": boot.level,
                          "unit": "seed row"}}


def format_similar_table(result: dict) -> str:
    """The rows and baselines of :func:`evaluate_similar` as a text table."""
    def cell(row, key):
        lo, hi = row[f"{key}_ci95"]
        return f"{row[key]:.4f} +/-{(hi - lo) / 2:.4f}"

    lines = [f"{'similar items':<16}{'k':>5}{'coverage@k':>20}{'shares label@k':>20}"
             f"{'scored':>10}{'ms/query':>10}{'exact ms':>10}"]
    for mode, row in result["rows"].items():
        k = row["k"]
        lines.append(f"{mode:<16}{k:>5}{cell(row, f'coverage@{k}'):>20}"
                     f"{cell(row, f'shares_label@{k}'):>20}{row['scored_fraction']:>10.4%}"
                     f"{row['ms_per_query']:>10.2f}{row['exact_ms_per_query']:>10.2f}")
    for name, row in result["baselines"].items():
        k = row["k"]
        lines.append(f"{name:<16}{k:>5}{'-':>20}{cell(row, f'shares_label@{k}'):>20}")
    return "\n".join(lines)

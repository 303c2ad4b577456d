"""Items-to-item ("similar items"): quality against exact search, relevance, and B=1 latency.

Usage (from the repository root, after `bash scripts/test.sh` or `pip install -e .`):

    python bench/bench_similar.py --model M --index I --data D --name NAME \
        [--item-file ml-100k.item] [--k K] [--rows 1000] [--latency-rows 200]

For a trained model, its index and its dataset (``nann-tf prepare/train/build-index``), on seed
rows from the test users' histories (the last 1, 2 or 3 items):

1. both similar-items modes at the model config's ``[similar]`` / ``[search]`` parameters against
   exact search in the same space (:func:`nann_tf.evaluation.similar.evaluate_similar`):
   coverage@k with its 95% interval and the fraction of the corpus scored;
2. relevance, with every item (or a uniform sample) as a single seed, as a product page asks:
   the share of its similar items in its category, beside random items and the most popular
   items; with ``--item-file`` (MovieLens ``.item``: a ``class`` column of space-separated
   genres) also the share sharing a genre with it;
3. latency at B=1 (one row per search call, in process, visited bitmap op): both modes, the
   items-to-user beam search of the test users (``[search]``), and exact search of both modes.

Writes bench/results/similar-NAME.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def genre_labels(item_file: str, raw_item_id: np.ndarray) -> np.ndarray:
    """``[N + 1, G]`` genre indices (1-based, 0 = none) of the dataset's items from a MovieLens
    ``.item`` file (tab-separated, header ``item_id:token ... class:token_seq``)."""
    lines = Path(item_file).read_text(encoding="latin-1").splitlines()
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    if "item_id" not in header or "class" not in header:
        sys.exit(f"--item-file {item_file}: expected a header with item_id and class columns")
    i_id, i_cls = header.index("item_id"), header.index("class")
    genres: dict[str, int] = {}
    by_raw: dict[int, list[int]] = {}
    for line in lines[1:]:
        cols = line.split("\t")
        if len(cols) <= max(i_id, i_cls):
            continue
        by_raw[int(cols[i_id])] = [genres.setdefault(g, len(genres) + 1)
                                   for g in cols[i_cls].split()]
    width = max((len(v) for v in by_raw.values()), default=1)
    out = np.zeros((len(raw_item_id), width), np.int32)
    for dense, raw in enumerate(raw_item_id):
        g = by_raw.get(int(raw), [])
        out[dense, :len(g)] = g
    out[0] = 0
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--name", required=True, help="results go to bench/results/similar-NAME.json")
    ap.add_argument("--item-file", help="MovieLens .item file: also measure genre sharing")
    ap.add_argument("--k", type=int, default=None,
                    help="results per row in the embedding mode (default: the config's "
                         "[similar] k)")
    ap.add_argument("--rows", type=int, default=1000, help="seed rows for quality (default 1000)")
    ap.add_argument("--relevance-rows", type=int, default=5000,
                    help="single-item seeds for relevance: every item up to this many, else a "
                         "uniform sample (default 5000)")
    ap.add_argument("--latency-rows", type=int, default=200,
                    help="rows timed one at a time (default 200)")
    ap.add_argument("--exact-latency-rows", type=int, default=50,
                    help="rows of exact search timed one at a time (default 50)")
    args = ap.parse_args()

    from nann_tf.data.dataset import Dataset
    from nann_tf.evaluation.retriever import Retriever, load_model_entry
    from nann_tf.evaluation.similar import evaluate_similar, format_similar_table, seed_rows
    from nann_tf.search.params import similar_for_index

    ds = Dataset.load(args.data)
    entry = load_model_entry(args.model, args.index, ds)
    max_level = entry.index.graph.max_level
    search = entry.cfg.search.checked(max_level)
    similar = similar_for_index(entry.cfg.similar, max_level).overridden(k=args.k).checked(
        max_level)
    r = Retriever(entry.model, entry.index, search.start_level, "bitmap", batch_size=16)
    t0 = time.perf_counter()
    result = evaluate_similar(entry.model, entry.index, ds, search=search, similar=similar,
                              users=args.rows, visited="bitmap", retriever=r)
    result["seconds"] = time.perf_counter() - t0
    print(format_similar_table(result))

    # Relevance: every item (or a uniform sample) as a single seed, as a product page would ask.
    from nann_tf.evaluation.similar import baseline_ids, shares_label

    rng = np.random.default_rng(0)
    n = ds.num_items
    items = np.arange(1, n + 1) if n <= args.relevance_rows else \
        np.sort(rng.choice(np.arange(1, n + 1), args.relevance_rows, replace=False))
    single = items[:, None].astype(np.int32)
    k = similar.k
    found = {mode: r.similar(single, mode, similar if mode == "embedding" else search,
                             k=k).ids for mode in ("embedding", "model")}
    found.update(baseline_ids(ds, single, k, rng))
    labels = {"category": ds.item_category}
    if args.item_file:
        labels["genre"] = genre_labels(args.item_file, ds.raw_item_id)
    result["relevance"] = {"seeds": "every item" if len(items) == n else
                           f"{len(items)} items drawn uniformly", "rows": int(len(items)),
                           "k": int(k)}
    for label, lab in labels.items():
        result["relevance"][f"shares_{label}"] = {
            name: float(np.nanmean(shares_label(ids, single, lab))) for name, ids in found.items()}
        print(f"single seeds ({result['relevance']['seeds']}): share of the top-{k} sharing a "
              f"{label} with the seed: " + ", ".join(
                  f"{name} {v:.3f}" for name, v in result["relevance"][f"shares_{label}"].items()))

    # Latency at B=1, in process.
    held = ds.test
    hist = held.hist[held.hist_len > 0]
    seeds = seed_rows(hist[:args.latency_rows]).astype(np.int32)
    one = Retriever(entry.model, entry.index, search.start_level, "bitmap", batch_size=1)
    lat = {}
    runs = {
        "similar_items (embedding)": lambda: one.similar(seeds, "embedding", similar),
        "similar_items_model": lambda: one.similar(seeds, "model", search),
        "items-to-user beam search": lambda: one.beam(hist[:args.latency_rows], search.ef,
                                                      search.T, search.k,
                                                      search.history_seeds),
        "exact, embedding space": lambda: one.similar_exact(seeds[:args.exact_latency_rows],
                                                            "embedding", similar.k),
        "exact, model score": lambda: one.similar_exact(seeds[:args.exact_latency_rows],
                                                        "model", search.k),
    }
    for name, fn in runs.items():
        fn()  # traces and warms up outside the timing
        res = fn()
        lat[name] = {"ms_per_query": res.ms_per_query, "rows": int(len(res.ids)),
                     "items_scored": float(np.mean(res.num_scored))}
    emb = lat["similar_items (embedding)"]["ms_per_query"]
    result["latency_b1"] = lat
    result["speedup_embedding_vs_exact"] = lat["exact, embedding space"]["ms_per_query"] / emb
    result["speedup_model_vs_exact"] = (lat["exact, model score"]["ms_per_query"] /
                                        lat["similar_items_model"]["ms_per_query"])
    result.update(name=args.name, model=args.model, index=args.index, data=args.data,
                  cpu_count=os.cpu_count(), machine=platform.machine(),
                  command="python " + " ".join(sys.argv))

    print("\n| B=1, in process, visited bitmap | ms/query | items scored |")
    print("|---|---|---|")
    for name, row in lat.items():
        print(f"| {name} | {row['ms_per_query']:.2f} | {row['items_scored']:.0f} |")
    print(f"embedding mode {result['speedup_embedding_vs_exact']:.0f}x faster than exact; "
          f"model mode {result['speedup_model_vs_exact']:.0f}x")
    out = Path(__file__).resolve().parent / "results" / f"similar-{args.name}.json"
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

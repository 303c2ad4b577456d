"""Served search cost with the item side of the score precomputed per item, side by side with
the per-candidate score (today's served graph before issue 21).

Usage (repository root; a trained model with its index and dataset):

    python bench/bench_serving_split.py --model M --index I --data D --name synth-1m

Two :class:`~nann_tf.export.module.RetrievalModule` s over the same model, index and default
search (XLA over the shape grid, the bitmap visited op, as ``nann-tf export`` builds them):

* ``per_candidate``: every scored candidate runs the whole score network on the concatenated
  ``[user_vec, ctx, e_v, ctx * e_v, match]`` (attention query and first layer per candidate);
* ``item_side``: the attention query and e_v's first-layer block read from a per-item table
  stored beside e_v, the user block once per query, only the pair block per candidate.

Both answer the same test users at B=1 and B=16 (after a warm-up pass that compiles every grid
size they use), interleaved in ``--rounds`` rounds; reported: p50/p90 latency, the items
scored, the share of identical result ids, FLOPs per scored candidate (counted from the model's
shapes) and the stored tables' sizes. Writes ``bench/results/serving-split-<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def flops_per_candidate(cfg, max_len: int) -> dict:
    """Multiply-adds per scored candidate of the attention model, per candidate and with the
    item side precomputed (the user block is per query: not counted)."""
    m = cfg.model
    d, a, L = m.embedding_dim, m.attention_dim, max_len
    u = m.user_hidden[-1] if m.user_hidden else d
    hs = list(m.score_hidden) + [1]
    rest = sum(x * y for x, y in zip(hs[:-1], hs[1:]))
    pair = a * L + L * d + 2 * d * hs[0] + rest  # logits, ctx, ctx / ctx*e blocks, layers 2..
    if m.history_match:
        pair += d * L + d
    if m.dot_term:
        pair += d
    item = d * a + d * hs[0]  # attention query, e_v's block
    user = u * hs[0]
    return {"per_candidate": pair + item + user, "item_side": pair}


def main(argv=None) -> int:
    import tensorflow as tf

    from nann_tf.autoconfig import search_defaults
    from nann_tf.data.dataset import Dataset
    from nann_tf.export.module import CPU, RetrievalModule
    from nann_tf.fsutil import write_json_atomic
    from nann_tf.index.store import load_index
    from nann_tf.model.saved import load_trained_model
    from nann_tf.model.scorer import ModelScorer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-sizes", default="1,16")
    args = ap.parse_args(argv)
    ds = Dataset.load(args.data)
    index = load_index(args.index)
    modules = {}
    cfg = meta = None
    for name in ("per_candidate", "item_side"):
        model, cfg, meta = load_trained_model(args.model)
        search = search_defaults(cfg, meta, index.meta).checked(index.graph.max_level)
        if name == "per_candidate":
            model.score = model.score_concat
        m = RetrievalModule(model, index, int(meta["max_len"]), search)
        if name == "per_candidate":
            m.scorer = ModelScorer(model, m.item_table, m.grid, gather_device=CPU)
        modules[name] = m
    users = min(args.users, len(ds.test))
    dense = ds.test.hist[:users]
    hist = np.where(dense > 0, ds.raw_item_id[dense], 0).astype(np.int64)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    answers, ms = {}, {}
    for name, m in modules.items():  # warm-up: compiles the grid sizes these queries use
        t = time.perf_counter()
        for b in sizes:
            for i in range(0, users, b):
                out = m.serving_default(tf.constant(hist[i:i + b]))
                answers.setdefault((name, b), []).append(
                    {k: v.numpy() for k, v in out.items()})
        print(f"{name}: warm-up in {time.perf_counter() - t:.0f}s", flush=True)
    for r in range(args.rounds):
        for b in sizes:
            for name, m in modules.items():
                for i in range(0, users, b):
                    t = time.perf_counter()
                    m.serving_default(tf.constant(hist[i:i + b]))["item_ids"].numpy()
                    ms.setdefault((name, b), []).append((time.perf_counter() - t) * 1e3)
        print(f"round {r + 1} done", flush=True)
    rows = {}
    for b in sizes:
        for name in modules:
            lat = np.asarray(ms[(name, b)])
            scored = np.concatenate([a["num_scored"] for a in answers[(name, b)]])
            rows[f"{name} B={b}"] = {"p50_ms": float(np.percentile(lat, 50)),
                                     "p90_ms": float(np.percentile(lat, 90)),
                                     "items_scored": float(scored.mean())}
        a = np.concatenate([x["item_ids"] for x in answers[("per_candidate", b)]])
        c = np.concatenate([x["item_ids"] for x in answers[("item_side", b)]])
        rows[f"item_side B={b}"]["same_ids_as_per_candidate"] = float((a == c).mean())
        rows[f"item_side B={b}"]["speedup_p50"] = (rows[f"per_candidate B={b}"]["p50_ms"]
                                                   / rows[f"item_side B={b}"]["p50_ms"])
    m = modules["item_side"]
    result = {"model": args.model, "index": args.index, "num_items": index.num_items,
              "users": users, "rounds": args.rounds, "search": m.search.to_dict(),
              "rows": rows,
              "flops_per_candidate": flops_per_candidate(cfg, int(meta["max_len"])),
              "table_bytes": {"e_v": int(m.item_table.shape[0] * m.item_table.shape[1] * 4),
                              "item_side": int(m.item_side.shape[0] * m.item_side.shape[1] * 4)
                              if m.item_side is not None else 0}}
    f = result["flops_per_candidate"]
    result["flops_ratio"] = f["per_candidate"] / f["item_side"]
    out = Path(__file__).resolve().parent / "results" / f"serving-split-{args.name}.json"
    write_json_atomic(out, result)
    print(json.dumps(rows, indent=1))
    print(f"FLOPs per candidate {f}, ratio {result['flops_ratio']:.2f}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``nann-tf build-index``: e_v for every item with the trained item network + the HNSW graph."""

from __future__ import annotations

import argparse
import logging
import time

from nann_tf.cli import CliError

__all__ = ["add_arguments", "run", "build_index"]

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory from `nann-tf train`")
    p.add_argument("--data", required=True, help="the dataset directory it was trained on")
    p.add_argument("--output", required=True, help="index directory to write")
    p.add_argument("--M", type=int, default=None, help="HNSW links per node (config: 32)")
    p.add_argument("--ef-construction", type=int, default=None,
                   help="HNSW build beam width (config: 40)")
    p.add_argument("--threads", type=int, default=None, help="build threads (0: all cores)")


def build_index(model_dir, data_dir, output, M=None, ef_construction=None, threads=None):
    """Builds and saves the index; returns its metadata."""
    from nann_tf.data.dataset import Dataset
    from nann_tf.evaluate import all_item_embeddings
    from nann_tf.index.hnsw import build_hnsw
    from nann_tf.index.store import ItemIndex, save_index
    from nann_tf.train import load_trained_model

    ds = Dataset.load(data_dir)
    model, cfg, meta = load_trained_model(model_dir)
    if meta["num_items"] != ds.num_items:
        raise CliError(f"--model {model_dir} was trained on {meta['num_items']} items but "
                       f"--data {data_dir} has {ds.num_items}: not the same dataset")
    ic = cfg.index
    M = ic.M if M is None else M
    efc = ic.ef_construction if ef_construction is None else ef_construction
    threads = ic.num_threads if threads is None else threads
    if M < 2 or efc < 1 or threads < 0:
        raise CliError(f"need --M >= 2, --ef-construction >= 1, --threads >= 0; got {M}, "
                       f"{efc}, {threads}")
    t0 = time.perf_counter()
    emb = all_item_embeddings(model)
    t1 = time.perf_counter()
    log.info("e_v for %d items (d=%d) in %.1fs; building HNSW (M=%d, ef_construction=%d)",
             ds.num_items, emb.shape[1], t1 - t0, M, efc)
    graph = build_hnsw(emb, M=M, ef_construction=efc, num_threads=threads, seed=ic.seed)
    t2 = time.perf_counter()
    info = {"model_dir": str(model_dir), "config": cfg.to_dict(), "embed_seconds": t1 - t0,
            "hnsw_build_seconds": t2 - t1, "M": M, "ef_construction": efc,
            "max_level": graph.max_level,
            "nodes_per_level": [int((graph.node_level >= lv).sum())
                                for lv in range(graph.max_level + 1)]}
    save_index(ItemIndex(graph, emb, ds.raw_item_id, ds.item_category, info), output)
    log.info("HNSW built in %.1fs: levels %s -> %s", t2 - t1, info["nodes_per_level"], output)
    return info


def run(args: argparse.Namespace) -> int:
    from nann_tf.data.dataset import DataError
    from nann_tf.index.hnsw import HnswIndexError
    from nann_tf.train import TrainError

    try:
        info = build_index(args.model, args.data, args.output, args.M, args.ef_construction,
                           args.threads)
    except (DataError, TrainError, HnswIndexError, ValueError) as e:
        raise CliError(str(e)) from e
    print(f"index -> {args.output}: {info['nodes_per_level'][0]} items, levels "
          f"{info['nodes_per_level']}, e_v {info['embed_seconds']:.1f}s, HNSW "
          f"{info['hnsw_build_seconds']:.1f}s")
    return 0

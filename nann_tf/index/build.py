"""``build_index``: a trained model + its dataset -> an index directory (e_v + HNSW levels)."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from nann_tf.errors import arg
from nann_tf.index.hnsw import HnswIndexError, build_hnsw
from nann_tf.index.store import HNSWLIB_FILE, ItemIndex, save_index

__all__ = ["build_index"]

log = logging.getLogger(__name__)


def build_index(model_dir, data_dir, output, M=None, ef_construction=None, threads=None,
                tune_coverage: float | None = None):
    """e_v of every item with the trained item network, the HNSW graph over them, saved as an
    index directory (atomically); returns its metadata.

    ``model_dir`` is a model directory or a :class:`~nann_tf.model.saved.TrainedModel` (what
    ``load_trained_model`` returns), ``data_dir`` a dataset directory or a
    :class:`~nann_tf.data.dataset.Dataset`.

    With ``tune_coverage`` (default :data:`nann_tf.autoconfig.TUNE_COVERAGE`; 0: off), the
    cheapest beam parameters reaching that coverage@k on validation users are measured on the
    new graph and recorded (``tuned_search``); the export serves with them when the model's
    ``[search]`` table followed the data (:func:`nann_tf.autoconfig.search_defaults`).

    Raises:
      HnswIndexError: bad HNSW parameters, or a model trained on another dataset.
      ModelDirError / DataError: the model or dataset directory is missing or unreadable.
    """
    from nann_tf.data.dataset import as_dataset
    from nann_tf.model.saved import as_trained_model

    ds = as_dataset(data_dir)
    trained = as_trained_model(model_dir)
    model, cfg, meta = trained
    if meta["num_items"] != ds.num_items:
        raise HnswIndexError(f"{arg('model_dir')} {trained.name} was trained on "
                             f"{meta['num_items']} items but {arg('data_dir')} {ds.path} has "
                             f"{ds.num_items}: not the same dataset")
    ic = cfg.index
    M = ic.M if M is None else M
    efc = ic.ef_construction if ef_construction is None else ef_construction
    threads = ic.num_threads if threads is None else threads
    if M < 2 or efc < 1 or threads < 0:
        raise HnswIndexError(f"need {arg('M')} >= 2, {arg('ef_construction')} >= 1, "
                             f"{arg('threads')} >= 0; got {M}, {efc}, {threads}")
    t0 = time.perf_counter()
    emb = _item_embeddings(model)
    t1 = time.perf_counter()
    log.info("e_v for %d items (d=%d) in %.1fs; building HNSW (M=%d, ef_construction=%d)",
             ds.num_items, emb.shape[1], t1 - t0, M, efc)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.hnswlib-", dir=out.parent) as td:
        hnswlib_file = Path(td) / HNSWLIB_FILE  # kept in the index for update-index
        graph = build_hnsw(emb, M=M, ef_construction=efc, num_threads=threads, seed=ic.seed,
                           hnswlib_file=hnswlib_file)
        t2 = time.perf_counter()
        info = {"model_dir": None if trained.path is None else str(trained.path),
                "config": cfg.to_dict(), "embed_seconds": t1 - t0,
                "model_items": int(ds.num_items),
                "hnsw_build_seconds": t2 - t1, "M": M, "ef_construction": efc,
                "max_level": graph.max_level,
                "nodes_per_level": [int((graph.node_level >= lv).sum())
                                    for lv in range(graph.max_level + 1)]}
        idx = ItemIndex(graph, emb, ds.raw_item_id, ds.item_category, info,
                        raw_item_key=ds.raw_item_key, raw_category_id=ds.raw_category_id,
                        hnswlib_file=hnswlib_file, freq=ds.item_freq)
        info["tuned_search"] = _tune(model, idx, ds, cfg, tune_coverage)
        save_index(idx, output)
    log.info("HNSW built in %.1fs: levels %s -> %s", t2 - t1, info["nodes_per_level"], output)
    return info


def _tune(model, idx, ds, cfg, coverage):
    from nann_tf.autoconfig import TUNE_COVERAGE, tune_search
    from nann_tf.search.params import SearchParamsError

    coverage = TUNE_COVERAGE if coverage is None else float(coverage)
    if not coverage:
        return None
    try:
        params = cfg.search.checked(idx.graph.max_level)
    except SearchParamsError as e:
        log.info("search parameters not tuned: %s", e)
        return None
    t0 = time.perf_counter()
    tuned = tune_search(model, idx, ds, params, target=coverage, progress=log.info)
    if tuned is None:
        log.info("search parameters not tuned: no validation users, or no setting of the grid "
                 "reaches coverage@%d %.3f", params.k, coverage)
    else:
        log.info("search tuned on %d validation users in %.1fs: ef %s, T %s reach coverage@%d "
                 "%.4f (95%% bound %.4f) scoring %.2f%% of the corpus", tuned["users"],
                 time.perf_counter() - t0, tuned["ef"], tuned["T"], tuned["k"],
                 tuned["coverage"], tuned["coverage_low"], 100 * tuned["scored_fraction"])
    return tuned


def _item_embeddings(model, batch_size: int = 65536):
    """e_v for dense ids 0..N, float32 ``[N + 1, d]``: what
    :func:`nann_tf.model.nann.all_item_embeddings` computes (the same batches), written into
    one preallocated array, with progress."""
    import numpy as np
    import tensorflow as tf

    from nann_tf.progress import Progress

    n = model.num_items + 1
    fn = tf.function(model.item_embedding,
                     input_signature=[tf.TensorSpec([None], tf.int32)], reduce_retracing=True)
    out = None
    with Progress(n, "build-index: embedding the items", "items") as bar:
        for i in range(0, n, batch_size):
            e = fn(tf.range(i, min(i + batch_size, n), dtype=tf.int32)).numpy()
            if out is None:
                out = np.empty((n, e.shape[1]), np.float32)
            out[i:i + len(e)] = e
            bar.update(len(e))
    return out

"""``update_index``: a new index directory with items launched and items retired, without
training again or rebuilding the graph (``nann-tf update-index``).

- **Launched items** (an item table: raw id and raw category, mapped like ``prepare --format
  table``'s item file, ``columns="item=COL,category=COL"``) get the next dense ids. The model has
  no id embedding for them; their e_v comes from their category, one of two ways
  (``cold_start``):

  - ``"popular"`` (the default): the e_v of the category's most frequent item in training (the
    index keeps the training counts, ``freq``), i.e. a new item starts where its category's
    best seller is. Measured on the 1M corpus (``bench/bench_launch.py``), the launched items'
    recall-all@200 on users who later engaged with them was 0.55-0.58 this way, against 0.42
    for the category path with ``[model] id_dropout = 0.1`` and 0.00 without it.
  - ``"category"``: the item network on the category alone, the id part zero
    (:meth:`NANNModel.cold_item_embedding`: what ``[model] id_dropout`` trains). Also the
    fallback for a category without a trained item, and for an index without training counts
    (built before they were kept).

  A category the model has never seen is added to the index's categories (filters and caps see
  it) and embedded through the padding category's row. Launched items are inserted into the
  saved hnswlib graph (``hnswlib.bin``) with the graph's own M and ef_construction; their
  training count is 0 (a later launch in their category still copies the trained best seller).
- **Retired items** (a file of raw ids, one per line) are *masked*, not deleted: they keep
  their node and links (the graph stays connected around them, as hnswlib's own
  ``mark_deleted`` keeps them), their e_v and their raw id (a user who bought a sold-out item
  still bought it: it stays a valid history item and seed), and every signature scores them
  ``-inf``, so none returns them.

The output is written next to its destination and renamed into place; ``index_dir`` is never
changed, and a failure leaves no partial output.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from nann_tf.errors import arg
from nann_tf.index.hnsw import HnswIndexError, add_to_hnsw
from nann_tf.index.store import HNSWLIB_FILE, ItemIndex, as_index, save_index

__all__ = ["update_index", "UpdateError", "COLD_START", "best_sellers"]

#: How a launched item's e_v is chosen (see the module docstring); the first is the default.
COLD_START = ("popular", "category")

log = logging.getLogger(__name__)


class UpdateError(HnswIndexError):
    """A bad update: an input file, an item, or an index that does not belong to the model."""


def _key(text: str, string_ids: bool, path: Path, where: str):
    text = "" if text is None else str(text).strip()
    if not text:
        raise UpdateError(f"{path}: {where}: an empty item id")
    if string_ids:
        return text
    try:
        return int(text)
    except ValueError:
        raise UpdateError(f"{path}: {where}: item id {text!r} is not an integer (the index's "
                          "ids are integers)") from None


def _lookup(idx: ItemIndex) -> dict:
    from nann_tf.export.tags import raw_id_lookup

    return raw_id_lookup(idx.raw_item_id, idx.raw_item_key)


def read_new_items(path, columns, idx: ItemIndex) -> tuple[list, list]:
    """``(raw ids, raw category ids)`` of the item table's rows, checked: every id new to the
    index and given once, every category an integer."""
    from nann_tf.export.tags import parse_columns, table_rows

    path = Path(path)
    if not path.is_file():
        raise UpdateError(f"{arg('add_items')} {path}: no such file")
    cols = parse_columns(columns, ("item", "category"), arg("columns"), UpdateError) \
        if isinstance(columns, str) else dict(columns)
    known = _lookup(idx)
    string_ids = idx.raw_item_key is not None
    ids, cats, seen = [], [], {}
    for where, row in table_rows(path, cols, error=UpdateError, flag=arg("columns")):
        key = _key(row["item"], string_ids, path, where)
        if key in known:
            raise UpdateError(f"{path}: {where}: item {key!r} is already in the index (dense id "
                              f"{known[key]}): launch only new items")
        if key in seen:
            raise UpdateError(f"{path}: {where}: item {key!r} is given twice (first at "
                              f"{seen[key]})")
        seen[key] = where
        text = str(row["category"] if row["category"] is not None else "").strip()
        first = text.split("|")[0].strip()  # a multi-valued field: its first value
        try:
            cat = int(first)
        except ValueError:
            raise UpdateError(f"{path}: {where}: column {cols['category']!r}: category "
                              f"{text!r} is not an integer category id") from None
        ids.append(key)
        cats.append(cat)
    if not ids:
        raise UpdateError(f"{path}: no items (an empty file)")
    return ids, cats


def read_retired(path, idx: ItemIndex) -> np.ndarray:
    """Dense ids of the raw ids in ``path`` (one per line; blank lines skipped), checked: every
    id in the index, given once, not retired already."""
    path = Path(path)
    if not path.is_file():
        raise UpdateError(f"{arg('retire_items')} {path}: no such file")
    known = _lookup(idx)
    string_ids = idx.raw_item_key is not None
    dense, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"line {line_no}"
            key = _key(line, string_ids, path, where)
            d = known.get(key)
            if d is None:
                raise UpdateError(f"{path}: {where}: item {key!r} is not in the index")
            if key in seen:
                raise UpdateError(f"{path}: {where}: item {key!r} is given twice (first at "
                                  f"line {seen[key]})")
            if idx.retired is not None and idx.retired[d]:
                raise UpdateError(f"{path}: {where}: item {key!r} is retired already")
            seen[key] = line_no
            dense.append(d)
    if not dense:
        raise UpdateError(f"{path}: no items (an empty file)")
    return np.asarray(dense, np.int64)


def check_model_matches(model, idx: ItemIndex, model_dir, index_dir, sample: int = 64) -> None:
    """The index was built by this model: its e_v of a sample of the model's items are the
    model's own."""
    import tensorflow as tf

    n = min(int(idx.meta.get("model_items", idx.num_items)), idx.num_items)
    if n != model.num_items:
        raise UpdateError(f"{arg('index_dir')} {index_dir} was built by a model of {n} items; "
                          f"{arg('model_dir')} {model_dir} has {model.num_items}: not this "
                          "model's index")
    ids = np.unique(np.linspace(1, n, min(sample, n)).astype(np.int32))
    mine = model.item_embedding(tf.constant(ids)).numpy()
    if mine.shape[1] != idx.embeddings.shape[1] or not np.allclose(
            mine, idx.embeddings[ids], rtol=1e-4, atol=1e-5):
        raise UpdateError(f"{arg('index_dir')} {index_dir} was not built by {arg('model_dir')} "
                          f"{model_dir}: its item "
                          "embeddings differ from the model's (build the index of this model, "
                          "or update with the model that built it)")


def best_sellers(category: np.ndarray, freq: np.ndarray, num_categories: int) -> np.ndarray:
    """The most frequent item of each dense category: ``category`` and ``freq`` are the items'
    dense categories and training counts by dense id (index 0, the padding, is ignored).
    Returns int64 [num_categories]: the dense id (ties: the smaller id), 0 where no item of the
    category was seen in training."""
    items = np.flatnonzero(np.asarray(freq)[1:] > 0) + 1
    counts = np.asarray(freq)[items]
    order = np.lexsort((-items, counts))  # ascending count, ties: the smaller id written last
    best = np.zeros(num_categories, np.int64)
    best[np.asarray(category)[items[order]]] = items[order]
    return best


# Long on purpose: one transaction: every input checked, then the new index written in a
# temporary directory that becomes the output only when complete.
def update_index(model_dir, index_dir, output, add_items=None, columns=None,
                 retire_items=None, num_threads: int = 0, cold_start: str = "popular") -> dict:
    """Writes ``output``: ``index_dir`` with the items of ``add_items`` launched and those of
    ``retire_items`` retired (see the module docstring). Returns the new index's metadata.
    ``model_dir`` and ``index_dir`` may also be a ``TrainedModel`` and an ``ItemIndex`` in
    memory (the index must carry its hnswlib graph file to launch items).

    Raises:
      UpdateError: no change asked, ``output`` exists or is the input, a bad file (naming the
        file, line and id), an index without its hnswlib graph, or one another model built.
    """
    import tensorflow as tf

    from nann_tf.model.saved import as_trained_model

    t0 = time.perf_counter()
    if cold_start not in COLD_START:
        raise UpdateError(f"cold start {cold_start!r}: expected one of {', '.join(COLD_START)}")
    if add_items is None and retire_items is None:
        raise UpdateError("nothing to update: give items to add, to retire, or both")
    if (add_items is None) != (columns is None):
        raise UpdateError(f"the item table to add and its columns go together "
                          f"({arg('add_items')} FILE {arg('columns')} item=COL,category=COL)")
    output = Path(output)
    if output.exists():
        raise UpdateError(f"{arg('output')} {output}: exists (update-index writes a new index "
                          "directory; pick another path)")
    trained = as_trained_model(model_dir)
    model = trained.model
    idx = as_index(index_dir)
    check_model_matches(model, idx, trained.name, idx.name)
    n = idx.num_items
    retired = np.zeros(n + 1, bool) if idx.retired is None else idx.retired.copy()
    if retire_items is not None:
        retired[read_retired(retire_items, idx)] = True
    raw_ids, raw_cats = ([], []) if add_items is None else read_new_items(add_items, columns, idx)
    a = len(raw_ids)
    raw_cat_table = idx.raw_category_id if idx.raw_category_id is not None else \
        np.arange(int(idx.category.max()) + 1, dtype=np.int64)
    cat_of = {int(r): i for i, r in enumerate(raw_cat_table) if i}
    new_cats = sorted({c for c in raw_cats if c not in cat_of})
    for c in new_cats:  # categories no item had: new dense categories, fallback embedding
        cat_of[c] = len(raw_cat_table)
        raw_cat_table = np.append(raw_cat_table, np.int64(c))
    dense_cats = np.asarray([cat_of[c] for c in raw_cats], np.int32)
    if idx.hnswlib_file is None and a:
        raise UpdateError(f"{arg('index_dir')} {idx.name}: no {HNSWLIB_FILE} (an index written "
                          "before update-index existed): run build-index again once to launch "
                          "items")
    info = {"updated_from": idx.name, "added_items": a, "new_categories": len(new_cats),
            "retired_items": int(retired.sum()),
            "model_items": int(idx.meta.get("model_items", model.num_items))}
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.update-",
                                     dir=output.parent if output.parent.exists() else None) as td:
        graph, emb, hfile = idx.graph, idx.embeddings, idx.hnswlib_file
        if a:
            e_new = model.cold_item_embedding(tf.constant(dense_cats)).numpy().astype(np.float32)
            m = info["model_items"] + 1  # the trained items (launched ones have count 0)
            best = best_sellers(idx.category[:m], idx.freq[:m], len(raw_cat_table)) \
                if cold_start == "popular" and idx.freq is not None else None
            if best is not None:
                rows = best[dense_cats]
                e_new = np.where(rows[:, None] > 0, idx.embeddings[rows], e_new)
                info["placed_by_best_seller"] = int((rows > 0).sum())
            info["cold_start"] = cold_start if best is not None or cold_start == "category" \
                else "category (the index has no training counts: build-index again for "\
                     "'popular')"
            emb = np.concatenate([idx.embeddings, e_new], axis=0)
            hfile = Path(td) / HNSWLIB_FILE
            t1 = time.perf_counter()
            graph = add_to_hnsw(idx.hnswlib_file, e_new, n + 1, emb.shape[1], hfile,
                                num_threads=num_threads)
            graph.M, graph.ef_construction, graph.seed = (idx.graph.M, idx.graph.ef_construction,
                                                          idx.graph.seed)
            info["insert_seconds"] = time.perf_counter() - t1
        if idx.raw_item_key is not None:
            key = np.concatenate([idx.raw_item_key, np.asarray(raw_ids, dtype=str)]) \
                if a else idx.raw_item_key
            raw = np.concatenate([idx.raw_item_id, np.arange(n + 1, n + a + 1, dtype=np.int64)])
        else:
            key = None
            raw = np.concatenate([idx.raw_item_id, np.asarray(raw_ids, np.int64)])
        new = ItemIndex(graph, emb, raw, np.concatenate([idx.category, dense_cats]),
                        {**idx.meta, **info}, raw_item_key=key, raw_category_id=raw_cat_table,
                        retired=np.concatenate([retired, np.zeros(a, bool)]), hnswlib_file=hfile,
                        freq=None if idx.freq is None else np.concatenate(
                            [idx.freq, np.zeros(a, np.int64)]))
        save_index(new, output)
    info["seconds"] = time.perf_counter() - t0
    log.info("update-index: %d items launched (%d new categories), %d retired in all -> %s "
             "(%.1fs)", a, len(new_cats), info["retired_items"], output, info["seconds"])
    return info

"""Warm start: a new model's weights from a model trained on an earlier dataset
(``nann-tf train --warm-start MODEL_DIR``).

Rows of the tables that grow with the catalogue are carried over **by raw id**: the item-id
embedding row of every item both datasets know (a new id keeps its fresh initialisation; an id
that vanished is dropped), the category embedding row of every category both know. Every other
weight (item, user, attention and score networks, recency) is copied as is; its shape must be
the same (the same ``[model]`` table, ``max_len`` included). The optimizer starts fresh.
"""

from __future__ import annotations

import numpy as np

from nann_tf.errors import UserError, arg

__all__ = ["WarmStartError", "warm_start"]


class WarmStartError(UserError, ValueError):
    """The warm-start model cannot seed this one."""


def _named(model_dir) -> str:
    """The warm-start model as an error message names it (``--warm-start DIR`` in the CLI)."""
    return f"{arg('warm_start_from')} {model_dir}"


def _vocabulary(meta: dict, model_dir) -> dict:
    """The raw ids of the old model's items and categories (from its dataset directory)."""
    from nann_tf.data.dataset import DataError, Dataset

    try:
        ds = Dataset.load(meta["data_dir"])
    except (DataError, KeyError, OSError) as e:
        raise WarmStartError(f"{_named(model_dir)}: the dataset it was trained on "
                             f"({meta.get('data_dir')}) is needed to match items by raw id: "
                             f"{e}") from e
    if ds.num_items != meta["num_items"]:
        raise WarmStartError(f"{_named(model_dir)}: its dataset {meta['data_dir']} now has "
                             f"{ds.num_items} items, the model {meta['num_items']}")
    return _raw_vocabulary(ds)


def _raw_vocabulary(ds) -> dict:
    """A dataset's raw ids by dense id: ``{"items": [N + 1], "categories": [C + 1]}``."""
    return {"items": ds.raw_items(np.arange(ds.num_items + 1)),
            "categories": ds.raw_category_id}


def _match(old_raw, new_raw) -> tuple[np.ndarray, np.ndarray]:
    """``(new rows, old rows)`` of the raw ids both vocabularies hold (row 0 excluded)."""
    old_raw, new_raw = np.asarray(old_raw)[1:], np.asarray(new_raw)[1:]
    if old_raw.dtype.kind != new_raw.dtype.kind and not (
            old_raw.dtype.kind in "iu" and new_raw.dtype.kind in "iu"):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    common, new_i, old_i = np.intersect1d(new_raw, old_raw, assume_unique=True,
                                          return_indices=True)
    return new_i + 1, old_i + 1


def warm_start(model, ds, model_dir) -> dict:
    """Copies ``model_dir``'s weights into ``model`` (built, for dataset ``ds``); returns what
    was carried: ``{"items_kept", "items_new", "items_dropped", "categories_kept",
    "variables"}``.

    Raises:
      WarmStartError: another model shape, or the old model's dataset is not at hand.
    """
    from nann_tf.model.saved import load_trained_model

    old, _, meta = load_trained_model(model_dir)
    vocab = _vocabulary(meta, model_dir)
    tables = {id(model.item_id_embedding.embeddings): "items",
              id(model.category_embedding.embeddings): "categories"}
    def rel(v):  # the path below the model's own (auto-numbered) name
        return v.path.split("/", 1)[-1]

    old_vars = {rel(v): v for v in old.weights}
    new_rows = _raw_vocabulary(ds)
    report = {"variables": 0}
    skip = {id(model.item_category)}  # this dataset's own item -> category map
    for v in model.weights:
        if id(v) in skip or "seed_generator" in v.path:
            continue
        o = old_vars.get(rel(v))
        if o is None:
            raise WarmStartError(f"{_named(model_dir)}: has no weight {v.path} (another "
                                 "[model] table)")
        kind = tables.get(id(v))
        if kind is not None:
            if tuple(o.shape[1:]) != tuple(v.shape[1:]):
                raise WarmStartError(f"{_named(model_dir)}: {v.path} has width "
                                     f"{o.shape[1]}, this model {v.shape[1]} (another [model] "
                                     "table)")
            new_i, old_i = _match(vocab[kind], new_rows[kind])
            value = np.array(v.numpy())
            value[new_i] = np.asarray(o.numpy())[old_i]
            v.assign(value)
            report[f"{kind}_kept"] = int(len(new_i))
            report[f"{kind}_new"] = int(v.shape[0] - 1 - len(new_i))
            report[f"{kind}_dropped"] = int(o.shape[0] - 1 - len(old_i))
        else:
            if tuple(o.shape) != tuple(v.shape):
                raise WarmStartError(f"{_named(model_dir)}: {v.path} has shape "
                                     f"{list(o.shape)}, this model {list(v.shape)} (another "
                                     "[model] table or max_len)")
            v.assign(o.numpy())
        report["variables"] += 1
    return report

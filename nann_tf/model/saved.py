"""A trained model on disk: ``model.weights.h5`` + ``model.json``, written by ``nann-tf train``.

``model.json`` holds the config the model was trained with, the corpus sizes and the dataset
path; :func:`load_trained_model` rebuilds the Keras model from it and loads the weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from nann_tf.errors import UserError
from nann_tf.config import Config, config_from_json
from nann_tf.fsutil import atomic_path, write_json_atomic
from nann_tf.model.nann import NANNModel

__all__ = ["MODEL_META", "MODEL_WEIGHTS", "ModelDirError", "TrainedModel", "build_model",
           "save_trained_model", "load_trained_model", "as_trained_model", "is_trained_model_dir"]

MODEL_WEIGHTS = "model.weights.h5"
MODEL_META = "model.json"
META_FORMAT = "nann-tf-model"


class ModelDirError(UserError, ValueError):
    """A model directory is missing, unfinished or unreadable."""


def build_model(cfg: Config, num_items: int, num_categories: int, item_category,
                max_len: int | None = None) -> NANNModel:
    """A built (weights created) :class:`NANNModel` for ``cfg``'s ``[model]`` table; ``max_len``
    is the dataset's history length (default: the config's ``[data] max_len``)."""
    max_len = int(max_len or cfg.data.max_len)
    model = NANNModel(num_items, num_categories, item_category, cfg.model, max_len=max_len)
    model.build_all(max_len=max_len)
    return model


def save_trained_model(model: NANNModel, cfg: Config, output_dir: str | Path, *,
                       max_len: int, data_dir: str | Path, extra: dict | None = None) -> dict:
    """Writes the weights, then the metadata (each atomically; the metadata last, so a directory
    with ``model.json`` always holds a finished model). Returns the metadata."""
    out = Path(output_dir)
    with atomic_path(out / MODEL_WEIGHTS) as tmp:
        model.save_weights(tmp)
    meta = {"format": META_FORMAT, "version": 1, "config": json.loads(cfg.to_json()),
            "num_items": int(model.num_items), "num_categories": int(model.num_categories),
            "max_len": int(max_len), "data_dir": str(Path(data_dir).resolve()),
            **(extra or {})}
    write_json_atomic(out / MODEL_META, meta)
    return meta


def is_trained_model_dir(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` holds a finished model (metadata and weights)."""
    d = Path(model_dir)
    return (d / MODEL_META).is_file() and (d / MODEL_WEIGHTS).is_file()


@dataclasses.dataclass
class TrainedModel:
    """A trained model in memory: the Keras model, the config it was trained with and its
    metadata (``model.json``). Every stage that takes a model directory takes one of these too;
    it unpacks as ``model, cfg, meta = trained``.
    """

    model: NANNModel
    cfg: Config
    meta: dict
    path: Path | None = None  # the directory it was read from, if any

    def __iter__(self):
        return iter((self.model, self.cfg, self.meta))

    @property
    def name(self) -> str:
        """How messages name it: its directory, or "the model given" for one built in memory."""
        return str(self.path) if self.path is not None else "(the model given)"


def as_trained_model(model_or_dir) -> TrainedModel:
    """``model_or_dir`` as a :class:`TrainedModel`: itself, a ``(model, cfg, meta)`` tuple, or a
    model directory read with :func:`load_trained_model`."""
    if isinstance(model_or_dir, TrainedModel):
        return model_or_dir
    if isinstance(model_or_dir, tuple) and len(model_or_dir) == 3:
        return TrainedModel(*model_or_dir)
    if not isinstance(model_or_dir, (str, os.PathLike)):
        raise ModelDirError(f"expected a model directory or a TrainedModel (what "
                            f"load_trained_model returns), got {type(model_or_dir).__name__}")
    return load_trained_model(model_or_dir)


def load_trained_model(model_dir: str | Path) -> TrainedModel:
    """Reads a model written by :func:`save_trained_model`.

    Returns:
      a :class:`TrainedModel`, which unpacks as ``(model, config, meta)``.

    Raises:
      ModelDirError: the directory holds no finished model or its files are unreadable.
    """
    d = Path(model_dir)
    meta_path, weights = d / MODEL_META, d / MODEL_WEIGHTS
    if not is_trained_model_dir(d):
        raise ModelDirError(f"{d}: not a trained model directory (expected {MODEL_META} and "
                            f"{MODEL_WEIGHTS}; run `nann-tf train` first)")
    try:
        meta = json.loads(meta_path.read_text())
        cfg = config_from_json(json.dumps(meta["config"]), str(meta_path))
        n, c = int(meta["num_items"]), int(meta["num_categories"])
    except (KeyError, ValueError, TypeError) as e:
        raise ModelDirError(f"{meta_path}: unreadable model metadata: {e}") from e
    model = build_model(cfg, n, c, np.zeros(n + 1, np.int32), max_len=meta.get("max_len"))
    try:
        model.load_weights(weights)
    except Exception as e:  # h5py/keras raise several types for a damaged file
        raise ModelDirError(f"{weights}: cannot load the weights: {e}") from e
    return TrainedModel(model, cfg, meta, d)

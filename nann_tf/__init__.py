"""nann-tf: retrieval from millions of items with a full deep model, served by TF Serving.

The stages, as library calls (each writes a directory, atomically, and returns its metadata;
each takes its inputs as directories or as the objects read from them: a ``Dataset``, a
``TrainedModel``, an ``ItemIndex``; ``docs/python-api.md`` walks through them):

- ``load_config(name_or_path, overrides)`` -> ``Config``: a named config (``ci-synth``,
  ``smoke``, ``synth-1m``, ``movielens-100k``, ``userbehavior``, ...) or a TOML file.
- ``load_config_for_data(name_or_path, data_dir, overrides)``: the same, with every key the
  config does not give set by the data rules (what ``nann-tf train`` does).
- ``write_synthetic_log(path, num_users, num_items, ...)``: a generated UserBehavior-format log.
- ``prepare_dataset(log, output_dir, input_format, ...)`` -> a dataset directory, read back with
  ``Dataset.load(dir)``.
- ``train_model(cfg, data_dir, model_dir)``: trains (validation-driven early stopping) and writes the
  model; ``load_trained_model(model_dir)`` -> ``TrainedModel`` (unpacks as ``model, cfg, meta``).
- ``build_index(model_dir, data_dir, index_dir)``: e_v of every item and the HNSW graph;
  ``load_index(index_dir)`` -> ``ItemIndex``; ``update_index(...)`` launches and retires items.
- ``export_version(model_dir, index_dir, models_base)``: a validated TF Serving version.

Querying:

- ``Retriever(model, index)``: the searches in process (``beam``, ``brute_force``,
  ``similar``), used by ``nann-tf evaluate``; ``beam`` runs the search of the
  ``RetrievalModule`` an export saves (``Retriever.module``);
- ``SessionModel(version_dir)``: an exported version loaded the way TF Serving loads it,
  ``run(signature, inputs)``;
- ``ModelServer``: the local development server (TF Serving's gRPC API);
  ``RetrievalClient(address, model_name)``: a gRPC client for it or for TF Serving.

``Pipeline(workdir, config)`` runs every stage in order and reuses what is done (the demo's
engine). Every fixable error is a ``UserError`` whose message names the input.

Names are imported on first use, so ``import nann_tf`` (and ``nann-tf --help``) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> the module that defines it (or (module, name there))
_API = {
    "Config": "nann_tf.config",
    "load_config": "nann_tf.config",
    "load_config_for_data": "nann_tf.autoconfig",
    "UserError": "nann_tf.errors",
    "write_synthetic_log": "nann_tf.data.synth",
    "prepare_dataset": "nann_tf.data.prepare",
    "Dataset": "nann_tf.data.dataset",
    "train_model": ("nann_tf.train.fit", "train"),  # nann_tf.train is the subpackage
    "load_trained_model": "nann_tf.model.saved",
    "TrainedModel": "nann_tf.model.saved",
    "build_index": "nann_tf.index.build",
    "update_index": "nann_tf.index.update",
    "load_index": "nann_tf.index.store",
    "ItemIndex": "nann_tf.index.store",
    "export_version": "nann_tf.export.export",
    "Retriever": "nann_tf.evaluation.retriever",
    "evaluate_brute_force": "nann_tf.evaluation.evaluate",
    "SessionModel": "nann_tf.serving.loader",
    "ModelServer": "nann_tf.serving.server",
    "ServedModelConfig": "nann_tf.serving.model_config",
    "ServerOptions": "nann_tf.serving.model_config",
    "RetrievalClient": "nann_tf.serving.client",
    "Pipeline": "nann_tf.pipeline",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    where = _API.get(name)
    if where is None:
        raise AttributeError(f"module 'nann_tf' has no attribute {name!r}")
    module, attr = where if isinstance(where, tuple) else (where, name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))

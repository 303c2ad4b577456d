"""Training: NCE with logQ correction + the FGSM auxiliary loss, driven by ``keras.Model.fit``.

``train(config, data_dir, output_dir)`` writes into ``output_dir``:

* ``model.weights.h5`` and ``model.json`` (config, corpus sizes, dataset path): the trained
  model, written atomically at the end (:func:`nann_tf.model.saved.load_trained_model` reads
  them back);
* ``checkpoints/epoch-NNN.weights.h5`` after every epoch;
* ``backup/``: Keras ``BackupAndRestore`` state; a run interrupted mid-way resumes from it when
  started again with the same ``output_dir``;
* ``logs/``: TensorBoard logs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from nann_tf.errors import UserError
from nann_tf.config import Config
from nann_tf.data.dataset import Dataset, gather_histories
from nann_tf.fsutil import atomic_path, write_json_atomic
from nann_tf.model.nann import NANNModel
from nann_tf.model.saved import MODEL_META, build_model, save_trained_model
from nann_tf.train.noise import NoiseDistribution
from nann_tf.train.step import NANNTrainer

__all__ = ["train", "make_strategy", "TrainError", "batch_generator", "remove_training_state"]

log = logging.getLogger(__name__)


class TrainError(UserError, ValueError):
    """Bad training input (config, dataset, output directory)."""


def batch_generator(ds: Dataset, noise: NoiseDistribution, batch_size: int, num_negatives: int,
                    seed: int, epoch_offset: int = 0):
    """Yields ``(hist [b, L], pos [b], neg [b, K])`` batches forever, reshuffled every epoch."""
    pos, start = ds.train_positions()
    n = len(pos)
    epoch = epoch_offset
    while True:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            hist = gather_histories(ds.train_items, pos[idx], start[idx], ds.max_len)
            yield (hist, ds.train_items[pos[idx]].astype(np.int32),
                   noise.sample(rng, (len(idx), num_negatives)))
        epoch += 1


def make_strategy(name: str) -> tf.distribute.Strategy:
    """``default`` (one device), ``mirrored`` (all local GPUs) or ``multi_worker`` (TF_CONFIG)."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise TrainError("[train] strategy = multi_worker needs the TF_CONFIG environment "
                             "variable (cluster spec and this worker's task) on every host")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


class _EpochCheckpoint(keras.callbacks.Callback):
    def __init__(self, model: NANNModel, directory: Path):
        super().__init__()
        self._nann = model
        self._dir = directory

    def on_epoch_end(self, epoch, logs=None):
        self._dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._dir / f"epoch-{epoch + 1:03d}.weights.h5") as tmp:
            self._nann.save_weights(tmp)


def train(cfg: Config, data_dir: str | Path, output_dir: str | Path, *, verbose: int | None = None,
          overwrite: bool = False, extra_callbacks: list | None = None) -> dict:
    """Trains a model and writes it to ``output_dir`` (see module docstring).

    Args:
      cfg: the configuration (``[model]`` and ``[train]`` are used).
      data_dir: a dataset directory written by ``nann-tf prepare``.
      output_dir: where the model, checkpoints and logs go. If it holds an interrupted run of
        the same config, training resumes from its last backup.
      verbose: Keras verbosity (default: a progress bar on a terminal, one line per epoch
        otherwise).
      overwrite: replace a finished model in ``output_dir``.
      extra_callbacks: more Keras callbacks for ``fit``.

    Returns:
      A summary dict (steps, examples/s, final losses).

    Raises:
      TrainError: the output directory holds a finished model (without ``overwrite``) or a run
        of another configuration.
      nann_tf.data.dataset.DataError: the dataset directory is missing or invalid.
    """
    ds = Dataset.load(data_dir)
    out = Path(output_dir)
    tc = cfg.train
    if (out / MODEL_META).exists() and not overwrite:
        raise TrainError(f"{out}: already holds a trained model ({MODEL_META}); use --overwrite "
                         "or another --output")
    out.mkdir(parents=True, exist_ok=True)
    run_cfg = out / "run_config.json"
    if run_cfg.exists() and (out / "backup").exists():
        prev = json.loads(run_cfg.read_text())
        if prev != json.loads(cfg.to_json()):
            raise TrainError(f"{out}: holds an interrupted run of a different configuration "
                             f"({run_cfg}); use another --output or delete it")
        log.info("resuming the interrupted run in %s", out)
    write_json_atomic(run_cfg, json.loads(cfg.to_json()))

    keras.utils.set_random_seed(tc.seed)
    noise = NoiseDistribution(ds.item_freq, tc.noise_alpha)
    num_samples = int(len(ds.train_positions()[0]))
    if num_samples == 0:
        raise TrainError(f"{data_dir}: the dataset has no training samples")
    steps = tc.steps_per_epoch or math.ceil(num_samples / tc.batch_size)

    strategy = make_strategy(tc.strategy)
    with strategy.scope():
        model = build_model(cfg, ds.num_items, ds.num_categories, ds.item_category)
        trainer = NANNTrainer(model, noise.log_q, tc.num_negatives, tc.fgsm_eps, tc.fgsm_lambda,
                              fgsm_eps_mode=tc.fgsm_eps_mode)
        opt_kwargs = dict(learning_rate=tc.learning_rate)
        if tc.weight_decay > 0:
            optimizer = keras.optimizers.AdamW(weight_decay=tc.weight_decay, **opt_kwargs)
        else:
            optimizer = keras.optimizers.Adam(**opt_kwargs)
        trainer.compile(optimizer=optimizer)
        trainer({"hist": tf.ones([1, cfg.data.max_len], tf.int32),
                 "items": tf.ones([1, 2], tf.int32)})  # build (BackupAndRestore needs it)

    L, K = ds.max_len, tc.num_negatives
    dataset = tf.data.Dataset.from_generator(
        lambda: batch_generator(ds, noise, tc.batch_size, K, tc.seed),
        output_signature=(tf.TensorSpec([None, L], tf.int32), tf.TensorSpec([None], tf.int32),
                          tf.TensorSpec([None, K], tf.int32))).prefetch(4)

    callbacks = [
        keras.callbacks.BackupAndRestore(str(out / "backup")),
        _EpochCheckpoint(model, out / "checkpoints"),
        keras.callbacks.TensorBoard(str(out / "logs"), update_freq=max(1, steps // 10),
                                    write_graph=False),
    ] + list(extra_callbacks or [])
    if verbose is None:
        verbose = 1 if os.isatty(1) else 2
    log.info("training %s on %d samples (%d items): %d epochs x %d steps, batch %d, K=%d, "
             "FGSM eps=%g (%s; fgsm_step and aux in the progress line show it acting)",
             cfg.model.variant, num_samples, ds.num_items, tc.epochs, steps, tc.batch_size, K,
             tc.fgsm_eps, tc.fgsm_eps_mode)
    t0 = time.perf_counter()
    hist = trainer.fit(dataset, epochs=tc.epochs, steps_per_epoch=steps, callbacks=callbacks,
                       verbose=verbose)
    seconds = time.perf_counter() - t0

    epochs_run = len(hist.history.get("loss", []))
    summary = {
        "epochs_run_now": epochs_run,
        "steps_per_epoch": steps,
        "seconds": seconds,
        "examples_per_s": epochs_run * steps * tc.batch_size / max(seconds, 1e-9),
        "final": {k: float(v[-1]) for k, v in hist.history.items()} if epochs_run else {},
    }
    save_trained_model(model, cfg, out, max_len=ds.max_len, data_dir=data_dir,
                       extra={"train_summary": summary})
    return summary


def remove_training_state(output_dir: str | Path) -> None:
    """Deletes backup state of a finished run (kept only while a run is unfinished)."""
    shutil.rmtree(Path(output_dir) / "backup", ignore_errors=True)

"""Training: NCE with logQ correction + the FGSM auxiliary loss, driven by ``keras.Model.fit``.

``train(config, data_dir, output_dir)`` writes into ``output_dir``:

* ``model.weights.h5`` and ``model.json`` (config, corpus sizes, dataset path): the trained
  model, written atomically at the end (:func:`nann_tf.model.saved.load_trained_model` reads
  them back);
* ``checkpoints/epoch-NNN.weights.h5`` after every epoch;
* ``backup/``: Keras ``BackupAndRestore`` state; a run interrupted mid-way resumes from it when
  started again with the same ``output_dir``;
* ``logs/``: TensorBoard logs.

The input is :class:`nann_tf.train.input.InputPipeline` (``tf.data``, sharded per worker).
Under ``strategy = "multi_worker"`` every worker runs the same command with its ``TF_CONFIG``;
only the chief (task ``chief``, else ``worker`` 0) writes the files above into
``output_dir``. Every other worker writes its own (identical) copies into
``output_dir/worker-<i>.tmp/`` (its backup lives there, so an interrupted cluster resumes when
all workers are started again) and removes that directory when training ends.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import keras
import tensorflow as tf

from nann_tf.errors import UserError
from nann_tf.config import Config
from nann_tf.data.dataset import Dataset
from nann_tf.fsutil import atomic_path, write_json_atomic
from nann_tf.model.nann import NANNModel
from nann_tf.model.saved import MODEL_META, build_model, save_trained_model
from nann_tf.progress import Progress, format_count
from nann_tf.train.input import InputError, InputPipeline, TrainSamples
from nann_tf.train.noise import NoiseDistribution
from nann_tf.train.step import NANNTrainer

__all__ = ["train", "make_strategy", "worker_role", "TrainError", "remove_training_state",
           "TrainProgressLog"]

log = logging.getLogger(__name__)


class TrainError(UserError, ValueError):
    """Bad training input (config, dataset, output directory)."""


def worker_role() -> tuple[bool, int]:
    """``(is_chief, task index)`` of this process from ``TF_CONFIG`` (chief if there is no
    ``TF_CONFIG``; else the ``chief`` task, or ``worker`` 0 when the cluster has no chief)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True, 0
    try:
        tf_config = json.loads(raw)
        task = tf_config.get("task", {})
        kind, index = task.get("type", "worker"), int(task.get("index", 0))
        has_chief = bool(tf_config.get("cluster", {}).get("chief"))
    except (ValueError, TypeError, AttributeError) as e:
        raise TrainError(f"TF_CONFIG is not valid JSON with a cluster and a task: {e}") from e
    if kind == "chief":
        return True, index
    return (kind == "worker" and index == 0 and not has_chief), index


def _resume_step(work: Path, steps: int) -> int:
    """Global batches done by the run backed up in ``work/backup`` (0 if none): the data
    continues from there."""
    meta = work / "backup" / "training_metadata.json"
    try:
        return int(json.loads(meta.read_text())["epoch"]) * steps
    except (OSError, ValueError, KeyError, TypeError):
        return 0


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


class TrainProgressLog(keras.callbacks.Callback):
    """Off a terminal (where Keras writes one line per epoch), a log line every
    ``log_every_s`` seconds: steps done of the run, steps/s, examples/s, ETA and the loss."""

    def __init__(self, epochs: int, steps: int, batch_size: int, log_every_s: float = 30.0,
                 clock=time.monotonic):
        super().__init__()
        self._epochs, self._steps, self._batch = epochs, steps, batch_size
        self._every, self._clock = log_every_s, clock
        self._bar: Progress | None = None
        self._base = 0
        self._loss: float | None = None

    def _postfix(self) -> str:
        ex = format_count(self._bar.rate() * self._batch) if self._bar else "?"
        loss = "" if self._loss is None else f", loss {self._loss:.4f}"
        return f"{ex} examples/s{loss}"

    def on_epoch_begin(self, epoch, logs=None):
        if self._bar is None:  # the first epoch of this process (later ones if resumed)
            self._first_epoch = epoch
            self._bar = Progress((self._epochs - epoch) * self._steps, "train", "steps",
                                 tty=False, log_every_s=self._every, postfix=self._postfix,
                                 clock=self._clock)
        self._base = (epoch - self._first_epoch) * self._steps

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is None:
            return
        if logs and "loss" in logs and self._bar.due():
            self._loss = float(logs["loss"])
        self._bar.set(self._base + batch + 1)

    def on_train_end(self, logs=None):
        if self._bar is not None:
            self._bar.close()


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
    is_chief, task_index = worker_role() if tc.strategy == "multi_worker" else (True, 0)
    if (out / MODEL_META).exists() and not overwrite:
        raise TrainError(f"{out}: already holds a trained model ({MODEL_META}); use --overwrite "
                         "or another --output")
    created_out = not out.exists()
    # Non-chief workers write everything into a directory of their own, removed at the end.
    work = out if is_chief else out / f"worker-{task_index}.tmp"
    work.mkdir(parents=True, exist_ok=True)
    run_cfg = work / "run_config.json"
    if run_cfg.exists() and (work / "backup").exists():
        prev = json.loads(run_cfg.read_text())
        if prev != json.loads(cfg.to_json()):
            raise TrainError(f"{work}: holds an interrupted run of a different configuration "
                             f"({run_cfg}); use another --output or delete it")
        log.info("resuming the interrupted run in %s", work)
    write_json_atomic(run_cfg, json.loads(cfg.to_json()))

    strategy = make_strategy(tc.strategy)  # before other TF work (collectives need it)
    keras.utils.set_random_seed(tc.seed)
    noise = NoiseDistribution(ds.item_freq, tc.noise_alpha)
    samples = TrainSamples.from_dataset(ds)
    num_samples = len(samples)
    if num_samples == 0:
        raise TrainError(f"{data_dir}: the dataset has no training samples")
    try:
        pipeline = InputPipeline(samples, noise, batch_size=tc.batch_size,
                                 num_negatives=tc.num_negatives, negatives=tc.negatives,
                                 seed=tc.seed, pool_factor=tc.negative_pool_factor)
    except InputError as e:
        raise TrainError(str(e)) from e
    steps = tc.steps_per_epoch or pipeline.steps_per_epoch
    jit_compile = tc.jit_compile
    if jit_compile and tc.strategy == "multi_worker":
        # XLA cannot compile the step's cross-worker all-reduce (tf2xla conversion fails).
        log.info("[train] jit_compile ignored under strategy = multi_worker (XLA cannot "
                 "compile the collective all-reduce); the step runs as a plain tf.function")
        jit_compile = False

    with strategy.scope():
        model = build_model(cfg, ds.num_items, ds.num_categories, ds.item_category)
        trainer = NANNTrainer(model, noise.log_q, tc.num_negatives, tc.fgsm_eps, tc.fgsm_lambda,
                              fgsm_eps_mode=tc.fgsm_eps_mode)
        opt_kwargs = dict(learning_rate=tc.learning_rate)
        if tc.weight_decay > 0:
            optimizer = keras.optimizers.AdamW(weight_decay=tc.weight_decay, **opt_kwargs)
        else:
            optimizer = keras.optimizers.Adam(**opt_kwargs)
        trainer.compile(optimizer=optimizer, jit_compile=jit_compile)
        trainer({"hist": tf.ones([1, cfg.data.max_len], tf.int32),
                 "items": tf.ones([1, 2], tf.int32)})  # build (BackupAndRestore needs it)

    try:
        dataset = pipeline.distribute(strategy, start_step=_resume_step(work, steps))
    except InputError as e:
        raise TrainError(str(e)) from e

    callbacks = [
        keras.callbacks.BackupAndRestore(str(work / "backup")),
        _EpochCheckpoint(model, work / "checkpoints"),
        keras.callbacks.TensorBoard(str(work / "logs"), update_freq=max(1, steps // 10),
                                    write_graph=False),
    ] + list(extra_callbacks or [])
    if verbose is None:
        verbose = 1 if os.isatty(1) else 2
    if verbose != 1:  # no Keras progress bar: log lines instead
        callbacks.append(TrainProgressLog(tc.epochs, steps, tc.batch_size))
    K = tc.num_negatives
    log.info("training %s on %d samples (%d items): %d epochs x %d steps, batch %d, K=%d %s "
             "negatives, %d replica(s), XLA %s, FGSM eps=%g (%s; fgsm_step and aux in the "
             "progress line show it acting)", cfg.model.variant, num_samples, ds.num_items,
             tc.epochs, steps, tc.batch_size, K, tc.negatives.replace("_", "-"),
             strategy.num_replicas_in_sync, "on" if jit_compile else "off", tc.fgsm_eps,
             tc.fgsm_eps_mode)
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
    save_trained_model(model, cfg, work, max_len=ds.max_len, data_dir=data_dir,
                       extra={"train_summary": summary})
    if not is_chief:
        shutil.rmtree(work, ignore_errors=True)
        if created_out:
            try:
                out.rmdir()  # only if empty (this worker's host has no chief output)
            except OSError:
                pass
    return summary


def remove_training_state(output_dir: str | Path) -> None:
    """Deletes backup state of a finished run (kept only while a run is unfinished)."""
    shutil.rmtree(Path(output_dir) / "backup", ignore_errors=True)

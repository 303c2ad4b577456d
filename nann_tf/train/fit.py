"""Training: NCE with logQ correction + the FGSM auxiliary loss, driven by ``keras.Model.fit``.

``train(config, data_dir, output_dir)`` writes into ``output_dir``:

* ``model.weights.h5`` and ``model.json`` (config, corpus sizes, dataset path): the trained
  model, written atomically at the end (:func:`nann_tf.model.saved.load_trained_model` reads
  them back);
* ``checkpoints/epoch-NNN.weights.h5`` after every epoch;
* ``backup/``: the run's last backup (trainer weights with the optimizer state, and the global
  step it was taken at), written every ``train.backup_every_steps`` steps and at every epoch's
  end; a run interrupted mid-way resumes from it when started again with the same
  ``output_dir`` -- mid-epoch included: the epoch is finished from the step after the backup,
  with the data of exactly those steps -- and it is removed when the run ends;
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

from nann_tf.errors import UserError, arg
from nann_tf.config import Config
from nann_tf.data.dataset import as_dataset
from nann_tf.fsutil import atomic_path, write_json_atomic
from nann_tf.model.nann import NANNModel
from nann_tf.model.saved import MODEL_META, build_model, save_trained_model
from nann_tf.progress import Progress, format_count
from nann_tf.train.input import InputError, InputPipeline, TrainSamples
from nann_tf.train.noise import NoiseDistribution
from nann_tf.train.optim import make_optimizer
from nann_tf.train.step import NANNTrainer
from nann_tf.train.validation import ValidationState, Validator, default_val_every

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


BACKUP_STATE = "state.json"


def _backup_state(work: Path) -> dict:
    """``{"global_step": S, "weights": file, "validation": {...}}`` of the run backed up in
    ``work/backup`` (empty if none)."""
    try:
        state = json.loads((work / "backup" / BACKUP_STATE).read_text())
        return {"global_step": int(state["global_step"]), "weights": str(state["weights"]),
                "validation": dict(state.get("validation") or {})}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


class _Backup(keras.callbacks.Callback):
    """Backs the trainer up (weights + optimizer state) every ``every`` steps (0: never
    mid-epoch) and at every epoch's end. The weights go to a new file named by the step, then
    ``state.json`` (written atomically) points at it, then older files go: an interruption at
    any point leaves a consistent backup. Counts steps itself, from ``start``, so that a resumed
    partial epoch counts on from where it stopped.

    With a ``validator``, it also validates every ``val_every`` steps and after step ``total``
    (:mod:`nann_tf.train.validation`), backs up at every validation (so the early-stopping state
    in ``state.json`` always matches the backed-up weights), keeps only the best weights file
    that state names, and stops training when patience runs out."""

    def __init__(self, directory: Path, start: int, every: int, validator=None,
                 val_every: int = 0, total: int = 0, steps_per_epoch: int = 1,
                 on_validation=None, max_seconds: float = 0.0):
        super().__init__()
        # ``[train] max_seconds``: the step that ends the time box is the last one (validated
        # like the last step of the run); one box for every fit() phase of the run.
        self._max_seconds, self._t0, self.time_box_reached = float(max_seconds), None, False
        self._dir, self.step, self._every = directory, start, every
        self._validator, self._val_every, self._total = validator, val_every, total
        self._steps_per_epoch = steps_per_epoch
        self._on_validation = on_validation
        self._saved_at = -1

    def _save(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        name = f"trainer-{self.step:09d}.weights.h5"
        with atomic_path(self._dir / name) as tmp:
            self.model.save_weights(tmp)
        state = {"global_step": self.step, "weights": name}
        if self._validator is not None:
            state["validation"] = self._validator.state.to_dict()
        write_json_atomic(self._dir / BACKUP_STATE, state)
        keep = {name, state.get("validation", {}).get("best_weights")}
        for old in [*self._dir.glob("trainer-*.weights.h5"), *self._dir.glob("best-*.weights.h5")]:
            if old.name not in keep:
                old.unlink(missing_ok=True)
        self._saved_at = self.step

    def _validate_due(self) -> bool:
        return self._validator is not None and (
            self.step % self._val_every == 0 or self.step == self._total
            or self.time_box_reached)

    def on_train_begin(self, logs=None):
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self._max_seconds and time.perf_counter() - self._t0 >= self._max_seconds:
            self.time_box_reached = True
            self.model.stop_training = True
        validated = False
        if self._validate_due():
            validated = True
            epoch = (self.step - 1) // self._steps_per_epoch
            if self._validator.validate(self.model.model, self.step, epoch, self._dir):
                self.model.stop_training = True
            if self._on_validation is not None and \
                    self._on_validation(self._validator.state.history[-1]):
                self.model.stop_training = True
        if validated or (self._every and self.step % self._every == 0):
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        if self._saved_at != self.step:  # not saved at this step yet
            self._save()

    def on_train_end(self, logs=None):
        # Another callback stopped training between validations (a caller's own time limit,
        # ...): the steps since the last validation are validated too, so that they can be the
        # model (else the model written would be the last validated weights).
        v = self._validator
        if v is None or not self.model.stop_training or v.state.stopped:
            return
        if self.step == 0 or (v.state.history and v.state.history[-1]["step"] == self.step):
            return
        v.validate(self.model.model, self.step, (self.step - 1) // self._steps_per_epoch,
                   self._dir)
        self._save()


def _restore(trainer: keras.Model, work: Path) -> tuple[int, dict]:
    """Loads ``work/backup`` into the (built) trainer; returns its global step (0: none) and its
    validation state."""
    state = _backup_state(work)
    if not state.get("global_step"):
        return 0, {}
    if trainer.optimizer is not None and not trainer.optimizer.built:
        trainer.optimizer.build(trainer.trainable_variables)
    trainer.load_weights(str(work / "backup" / state["weights"]))
    return state["global_step"], state["validation"]


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
    ``log_every_s`` seconds: steps done of ``total_steps`` (this process's steps: a resumed run
    counts only what is left), steps/s, examples/s, ETA and the loss. Spans several ``fit``
    calls (a resumed partial epoch, then whole ones); the final line comes with the last
    step."""

    def __init__(self, total_steps: int, batch_size: int, log_every_s: float = 30.0,
                 clock=time.monotonic, validator=None):
        super().__init__()
        self._batch = batch_size
        self._validator = validator
        self._count = 0
        self._loss: float | None = None
        self._bar = Progress(total_steps, "train", "steps", tty=False, log_every_s=log_every_s,
                             postfix=self._postfix, clock=clock)

    def _postfix(self) -> str:
        loss = "" if self._loss is None else f", loss {self._loss:.4f}"
        val = self._validator.latest() if self._validator is not None else ""
        return (f"{format_count(self._bar.rate() * self._batch)} examples/s{loss}"
                + (f", {val}" if val else ""))

    def on_train_batch_end(self, batch, logs=None):
        self._count += 1
        if logs and "loss" in logs and (self._bar.due() or self._count >= self._bar.total):
            self._loss = float(logs["loss"])
        self._bar.set(self._count)
        if self._count >= self._bar.total:
            self._bar.close()


# Long on purpose: a training run's lifecycle (checks, resume, the strategy's scope, fit with
# validation and backups, the atomic write of the model) over state every phase shares; the
# step, the input and the validation are their own modules.
def train(cfg: Config, data_dir: str | Path, output_dir: str | Path, *, verbose: int | None = None,
          overwrite: bool = False, extra_callbacks: list | None = None,
          on_validation=None, warm_start_from: str | Path | None = None) -> dict:
    """Trains a model and writes it to ``output_dir`` (see module docstring).

    Args:
      cfg: the configuration (``[model]`` and ``[train]`` are used).
      data_dir: a dataset directory written by ``nann-tf prepare``, or the ``Dataset`` read
        from one.
      output_dir: where the model, checkpoints and logs go. If it holds an interrupted run of
        the same config, training resumes from its last backup.
      verbose: Keras verbosity (default: a progress bar on a terminal, one line per epoch
        otherwise).
      overwrite: replace a finished model in ``output_dir``.
      extra_callbacks: more Keras callbacks for ``fit``.
      on_validation: called with each validation's entry (``{"step", "epoch", "value",
        "seconds"}``); returning True stops training (the model search prunes trials so).
      warm_start_from: a model directory trained on an earlier dataset: its weights seed this
        model, item and category rows matched by raw id (:mod:`nann_tf.train.warm_start`); the
        optimizer starts fresh. An interrupted run resumes from its own backup instead.

    Returns:
      A summary dict (steps, examples/s, final losses).

    Raises:
      TrainError: the output directory holds a finished model (without ``overwrite``) or a run
        of another configuration.
      nann_tf.data.dataset.DataError: the dataset directory is missing or invalid.
    """
    ds = as_dataset(data_dir)
    out = Path(output_dir)
    tc = cfg.train
    is_chief, task_index = worker_role() if tc.strategy == "multi_worker" else (True, 0)
    if (out / MODEL_META).exists() and not overwrite:
        raise TrainError(f"{out}: already holds a trained model ({MODEL_META}); use "
                         f"{arg('overwrite')} or another {arg('output_dir')}")
    created_out = not out.exists()
    # Non-chief workers write everything into a directory of their own, removed at the end.
    work = out if is_chief else out / f"worker-{task_index}.tmp"
    work.mkdir(parents=True, exist_ok=True)
    run_cfg = work / "run_config.json"
    if run_cfg.exists() and (work / "backup").exists():
        prev = json.loads(run_cfg.read_text())
        if prev != json.loads(cfg.to_json()):
            raise TrainError(f"{work}: holds an interrupted run of a different configuration "
                             f"({run_cfg}); use another {arg('output_dir')} or delete it")
    write_json_atomic(run_cfg, json.loads(cfg.to_json()))

    strategy = make_strategy(tc.strategy)  # before other TF work (collectives need it)
    keras.utils.set_random_seed(tc.seed)
    noise = NoiseDistribution(ds.item_freq, tc.noise_alpha)
    samples = TrainSamples.from_dataset(ds)
    num_samples = len(samples)
    if num_samples == 0:
        raise TrainError(f"{ds.path}: the dataset has no training samples")
    try:
        pipeline = InputPipeline(samples, noise, batch_size=tc.batch_size,
                                 num_negatives=tc.num_negatives, negatives=tc.negatives,
                                 seed=tc.seed, pool_factor=tc.negative_pool_factor,
                                 emit_pool=True)
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
        model = build_model(cfg, ds.num_items, ds.num_categories, ds.item_category,
                            max_len=ds.max_len)
        # Sparse updates: XLA runs the forward and backward pass, the lazy optimizer beside it.
        sparse = ds.num_items >= tc.sparse_min_items
        trainer = NANNTrainer(model, noise.log_q, tc.num_negatives, tc.fgsm_eps, tc.fgsm_lambda,
                              fgsm_eps_mode=tc.fgsm_eps_mode, loss=tc.loss,
                              xla_grads=jit_compile and sparse)
        optimizer = make_optimizer(tc.learning_rate, tc.weight_decay, sparse)
        trainer.compile(optimizer=optimizer, jit_compile=jit_compile and not sparse)
        trainer({"hist": tf.ones([1, ds.max_len], tf.int32),
                 "items": tf.ones([1, 2], tf.int32)})  # build (restoring a backup needs it)
        if sparse:
            optimizer.sparse_variables(model.sparse_tables())

        warm = None
        if warm_start_from is not None:
            from nann_tf.train.warm_start import WarmStartError, warm_start

            try:
                warm = {"from": str(Path(warm_start_from).resolve()),
                        **warm_start(model, ds, warm_start_from)}
            except WarmStartError as e:
                raise TrainError(str(e)) from e
            log.info("warm start from %s: %d items kept, %d new, %d dropped; %d categories "
                     "kept", warm_start_from, warm["items_kept"], warm["items_new"],
                     warm["items_dropped"], warm["categories_kept"])
        done, val_state = _restore(trainer, work)  # an interrupted run's step (0: none)

    total = tc.epochs * steps
    validator = None
    if tc.val_every_steps >= 0:
        try:
            validator = Validator(ds, k=tc.val_k, users=tc.val_users, next_n=tc.val_next_n,
                                  patience=tc.patience, seed=tc.seed, log_dir=work / "logs")
        except UserError as e:
            raise TrainError(str(e)) from e
        validator.state = ValidationState(val_state)
        val_every = tc.val_every_steps or default_val_every(
            steps, validator.users * ds.num_items, tc.batch_size * (tc.num_negatives + 1))
        log.info("validation every %d steps: %s on %d validation users (patience %d)",
                 val_every, validator.metric, validator.users, tc.patience)
        if validator.state.stopped:
            log.info("the interrupted run had already stopped early (step %d): writing the "
                     "model", done)
            total = done
    if done >= total:
        # A run interrupted after its last step, before the model was written.
        log.info("the backup in %s holds every step (%d): writing the model", work, done)
    elif done:
        log.info("resuming the interrupted run in %s at step %d of %d (epoch %d, step %d of "
                 "%d)", work, done, total, done // steps + 1, done % steps + 1, steps)
    # fit() calls: the rest of a partly done epoch, then the whole epochs left. Each starts the
    # data at its first global step, so a resumed run reads the batches it had not trained on.
    epoch0, in_epoch = divmod(done, steps)
    phases = []
    if done < total:
        if in_epoch:
            phases.append((epoch0, epoch0 + 1, steps - in_epoch, done))
            epoch0 += 1
        if epoch0 < tc.epochs:
            phases.append((epoch0, tc.epochs, steps, epoch0 * steps))

    backup = _Backup(work / "backup", done, tc.backup_every_steps, validator,
                     val_every if validator else 0, total, steps, on_validation,
                     max_seconds=tc.max_seconds)
    callbacks = [
        backup,
        _EpochCheckpoint(model, work / "checkpoints"),
        keras.callbacks.TensorBoard(str(work / "logs"), update_freq=max(1, steps // 10),
                                    write_graph=False),
    ] + list(extra_callbacks or [])
    if verbose is None:
        verbose = 1 if os.isatty(1) else 2
    if verbose != 1 and total > done:  # no Keras progress bar: log lines instead
        callbacks.append(TrainProgressLog(total - done, tc.batch_size, validator=validator))
    K = tc.num_negatives
    log.info("training %s on %d samples (%d items): %d epochs x %d steps, batch %d, K=%d %s "
             "negatives, %d replica(s), XLA %s, item table updated %s, FGSM eps=%g (%s; "
             "fgsm_step and aux in the progress line show it acting)", cfg.model.variant,
             num_samples, ds.num_items, tc.epochs, steps, tc.batch_size, K,
             tc.negatives.replace("_", "-"), strategy.num_replicas_in_sync,
             "on" if jit_compile else "off",
             "sparsely (lazy Adam)" if sparse else "densely", tc.fgsm_eps, tc.fgsm_eps_mode)
    t0 = time.perf_counter()
    history: dict[str, list] = {}
    for first_epoch, end_epoch, phase_steps, start_step in phases:
        try:
            dataset = pipeline.distribute(strategy, start_step=start_step)
        except InputError as e:
            raise TrainError(str(e)) from e
        hist = trainer.fit(dataset, initial_epoch=first_epoch, epochs=end_epoch,
                           steps_per_epoch=phase_steps, callbacks=callbacks, verbose=verbose)
        for k, v in hist.history.items():
            history.setdefault(k, []).extend(v)
        if trainer.stop_training:  # a callback stopped training (e.g. a time limit)
            break
    seconds = time.perf_counter() - t0
    steps_run = backup.step - done
    extra = {} if warm is None else {"warm_start": warm}
    if validator is not None:
        if validator.state.best_weights:  # the model written is the best one validated
            model.load_weights(str(work / "backup" / validator.state.best_weights))
        extra["validation"] = validator.summary()
        best = validator.state.best
        if best:
            log.info("best validation %s %.4f at step %d (epoch %d)%s: those weights are the "
                     "model", validator.metric, best["value"], best["step"], best["epoch"] + 1,
                     ", stopped early" if validator.state.stopped else "")

    summary = {
        "epochs_run_now": len(history.get("loss", [])),
        "steps_run_now": steps_run,
        "resumed_at_step": done,
        "steps_per_epoch": steps,
        "seconds": seconds,
        "examples_per_s": steps_run * tc.batch_size / max(seconds, 1e-9),
        "final": {k: float(v[-1]) for k, v in history.items() if v},
        "time_box_reached": backup.time_box_reached,
    }
    if validator is not None and validator.state.best:
        summary["best_step"] = validator.state.best["step"]
        summary["val_" + validator.metric] = validator.state.best["value"]
        summary["stopped_early"] = validator.state.stopped
    if getattr(cfg, "auto", None):
        extra["auto_config"] = cfg.auto  # the keys that followed the data, and why
    save_trained_model(model, cfg, work, max_len=ds.max_len, data_dir=ds.path,
                       extra={"train_summary": summary, **extra})
    remove_training_state(work)  # the model is written: nothing to resume
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

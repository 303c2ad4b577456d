"""Validation inside training: recall-all@K on validation users, best weights, early stopping.

``prepare`` holds validation users out of training. Every ``[train] val_every_steps`` steps (and
after the last step) :class:`Validator` ranks the whole corpus for a sample of them with the
model being trained (exact top-K, :class:`~nann_tf.search.brute_force.ExactScorer`) and measures
``recall-all@K`` of their next ``val_next_n`` behaviours from the split point (the paper's
single ground-truth item when 1, or when the dataset stores no later behaviours). A better
figure than the best so far saves the model's weights (``best-<step>.weights.h5``); after
``patience`` validations without one, training stops. ``nann-tf train`` then writes the best
weights as the model, and records the validation history in ``model.json``.

How many users: all of them up to ``val_users`` (default 1,000), and on a large corpus fewer, so
that one validation scores at most ``VAL_PAIR_BUDGET`` (user, item) pairs (at least
``MIN_VAL_USERS``): a figure over n users carries a 95% interval of about
``+/-2 sqrt(r (1 - r) / n)`` (+/-0.03 at n = 1,000 and r = 0.5), while comparing the same model
at two steps on the same users is paired and finer still; at the paper's scale (4.2M items) the
budget keeps one validation to ~100 users, a few minutes on 2 cores.

The state (history, best figure and its weights file, validations since the best) is part of
the training backup (:mod:`nann_tf.train.fit`), so an interrupted run resumes its early-stopping
decisions exactly where they were.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np

__all__ = ["Validator", "ValidationState", "validation_users", "metric_name",
           "default_val_every", "VAL_PAIR_BUDGET", "MIN_VAL_USERS", "BEST_PREFIX",
           "VAL_TIME_SHARE", "VAL_PAIR_COST"]

log = logging.getLogger(__name__)

#: (user, item) pairs one validation may score: ~2 minutes on 2 CPU cores for the attention
#: model (the brute-force scan runs at ~2M pairs/s there, bench/results/retrieval-synth-1m.md).
VAL_PAIR_BUDGET = 200_000_000
#: The fewest users a validation uses (when the dataset has that many).
MIN_VAL_USERS = 100
#: The default interval keeps validation to at most this share of the training time.
VAL_TIME_SHARE = 0.1
#: The cost of one validation (user, item) pair in training candidates (one candidate of a
#: training step: forward and backward), measured at the paper's scale on 2 cores: a validation
#: of 100 users x 3.94M items took 248 s while training ran 9.9 steps/s of 512 x 101 candidates,
#: i.e. 394M pairs cost 2,460 steps x 51.7k candidates (bench/results/scale-1.json; 0.22 when
#: training ran 5.9 steps/s, before the work-once step).
VAL_PAIR_COST = 0.32
BEST_PREFIX = "best-"
#: Items per chunk when validation writes the model's item rows into its scorer's tables.
TABLE_CHUNK = 65536


def _item_rows(model):
    """``rows(ids) -> (e_v, item-side)``: the rows of the validation scorer's two tables for
    item ids (int32 ``[n]``), traced once (:func:`~nann_tf.model.nann.item_side_rows`)."""
    import tensorflow as tf

    from nann_tf.model.nann import item_side_rows

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
    def rows(ids):
        e = model.item_embedding(ids)
        return e, item_side_rows(model, e)

    return rows


def validation_users(available: int, wanted: int, num_items: int) -> int:
    """How many validation users one validation ranks the corpus for (see the module docstring).

    Args:
      available: validation users in the dataset.
      wanted: ``[train] val_users`` (the most to use).
      num_items: corpus size N.
    """
    budget = max(MIN_VAL_USERS, VAL_PAIR_BUDGET // max(num_items, 1))
    return int(max(0, min(available, wanted, budget)))


class ValidationState:
    """What early stopping knows: every validation so far and the best one.

    Attributes:
      history: ``[{"step", "epoch", "value", "seconds"}]`` in step order.
      best: the entry with the highest value (the first of equals), or None.
      best_weights: file name (in the run's directory) of the best weights, or None.
      since_best: validations since the best one.
      stopped: whether patience ran out.
    """

    def __init__(self, raw: dict | None = None):
        raw = raw or {}
        self.history: list[dict] = list(raw.get("history", []))
        self.best: dict | None = raw.get("best")
        self.best_weights: str | None = raw.get("best_weights")
        self.since_best = int(raw.get("since_best", 0))
        self.stopped = bool(raw.get("stopped", False))

    def to_dict(self) -> dict:
        return {"history": self.history, "best": self.best, "best_weights": self.best_weights,
                "since_best": self.since_best, "stopped": self.stopped}


class Validator:
    """Measures a model on validation users and keeps the early-stopping state.

    Args:
      ds: the :class:`~nann_tf.data.dataset.Dataset` (its ``val`` users).
      k: K of recall-all@K.
      users: ``[train] val_users`` (the most users; see :func:`validation_users`).
      next_n: ground truth = the next ``next_n`` behaviours from the split point (1: the
        paper's single target; datasets without later behaviours always use 1).
      patience: stop after this many validations without a better figure (0: never stop).
      min_delta: a figure must beat the best by more than this to count as better.
      seed: which users are sampled (when not all are used).

    Raises:
      ValueError: the dataset has no validation users.
    """

    def __init__(self, ds, *, k: int, users: int, next_n: int, patience: int,
                 min_delta: float = 0.0, seed: int = 0, log_dir: str | Path | None = None):
        from nann_tf.errors import UserError, arg

        held = ds.val
        if len(held) == 0:
            raise UserError(f"{ds.path}: the dataset has no validation users, which validation "
                            f"during training needs: prepare it with {arg('val_users')} N (N > 0),"
                            f" or train with {arg('set')} train.val_every_steps=-1 (no "
                            "validation, the last weights are kept)")
        n = validation_users(len(held), users, ds.num_items)
        rows = np.arange(len(held))
        if n < len(held):
            rows = np.sort(np.random.default_rng(seed).choice(len(held), n, replace=False))
        self.next_n = int(next_n) if held.has_later else 1
        targets = held.next_targets(self.next_n)
        self.hist = held.hist[rows]
        self.targets = [targets[i] for i in rows]
        self.k = int(min(k, ds.num_items))
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.metric = _metric(self.k, self.next_n)
        self.state = ValidationState()
        self._log_dir = log_dir
        self._writer = None
        self._scorer = None

    @property
    def users(self) -> int:
        return len(self.hist)

    def measure(self, model) -> float:
        """The metric of ``model`` on the sampled users (exact top-K of the whole corpus)."""
        import tensorflow as tf

        from nann_tf.evaluation.metrics import per_user_recall
        from nann_tf.search.brute_force import ExactScorer

        if self._scorer is None or self._scorer.model is not model:
            # One item table variable and one scorer for the whole run: no retracing.
            widths = model.item_side_width()
            n, d = model.num_items + 1, widths["e_v"]
            side_width = sum(w for key, w in widths.items() if key != "e_v")
            self._table = tf.Variable(tf.zeros([n, d]), trainable=False)
            self._side = tf.Variable(tf.zeros([n, side_width]), trainable=False) \
                if side_width else None
            self._scorer = ExactScorer(model, self._table, side_table=self._side)
            self._rows = _item_rows(model)
        self._fill_tables()
        ids, _ = self._scorer.topk(self.hist, self.k, progress=False)
        return float(np.nanmean(per_user_recall(ids, self.targets, self.k)))

    def _fill_tables(self) -> None:
        """The model's e_v and item-side rows written into the scorer's tables in chunks of
        :data:`TABLE_CHUNK` items, in place: a whole-table intermediate would be another copy of
        both tables (2.3 GB at 3.9M items) on top of the variables at every validation."""
        import tensorflow as tf

        n = int(self._table.shape[0])
        for first in range(0, n, TABLE_CHUNK):
            ids = tf.range(first, min(first + TABLE_CHUNK, n), dtype=tf.int32)
            e, side = self._rows(ids)
            # A row write, not a slice assignment: the scorer's gathers keep the tables in
            # copy-on-read mode, where a slice assignment copies the whole table first.
            self._table.scatter_update(tf.IndexedSlices(e, ids))
            if self._side is not None:
                self._side.scatter_update(tf.IndexedSlices(side, ids))

    def validate(self, model, step: int, epoch: int, run_dir: Path) -> bool:
        """Measures ``model`` at ``step``; on a better figure saves its weights into ``run_dir``.

        Returns:
          Whether patience has run out (training should stop).
        """
        from nann_tf.fsutil import atomic_path

        t0 = time.perf_counter()
        value = self.measure(model)
        st = self.state
        entry = {"step": int(step), "epoch": int(epoch), "value": value,
                 "seconds": round(time.perf_counter() - t0, 3)}
        st.history.append(entry)
        if st.best is None or value > st.best["value"] + self.min_delta:
            name = f"{BEST_PREFIX}{step:09d}.weights.h5"
            with atomic_path(run_dir / name) as tmp:
                model.save_weights(tmp)
            st.best, st.best_weights, st.since_best = entry, name, 0
        else:
            st.since_best += 1
        st.stopped = bool(self.patience and st.since_best >= self.patience)
        self._write_summary(step, value)
        log.info("validation at step %d (epoch %d): %s %.4f on %d users (best %.4f at step %d%s)"
                 " in %.1fs", step, epoch + 1, self.metric, value, self.users,
                 st.best["value"], st.best["step"],
                 f"; stopping: {st.since_best} validations without a better one"
                 if st.stopped else "", entry["seconds"])
        return st.stopped

    def _write_summary(self, step: int, value: float) -> None:
        """The figure as a TensorBoard scalar (``<log_dir>/validation``)."""
        if self._log_dir is None:
            return
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(Path(self._log_dir) / "validation"))
        with self._writer.as_default():
            tf.summary.scalar(f"validation/{self.metric}", value, step=step)
        self._writer.flush()

    def latest(self) -> str:
        """``recall_all@K 0.1234 (best 0.2345)`` for progress lines; empty before the first."""
        st = self.state
        if not st.history:
            return ""
        return (f"val {self.metric} {fmt_value(st.history[-1]['value'])} "
                f"(best {fmt_value(st.best['value'])})")

    def summary(self) -> dict:
        """What ``model.json`` records: the metric, users, best entry and the history."""
        st = self.state
        return {"metric": self.metric, "k": self.k, "next_n": self.next_n, "users": self.users,
                "patience": self.patience, "best": st.best, "stopped_early": st.stopped,
                "history": st.history}


def _metric(k: int, next_n: int) -> str:
    return f"recall_all@{k}" if next_n == 1 else f"recall_all_next{next_n}@{k}"


def metric_name(train_cfg, ds) -> str:
    """The name of the figure validation reports for a ``[train]`` table and a dataset."""
    next_n = train_cfg.val_next_n if ds.val.has_later else 1
    return _metric(min(train_cfg.val_k, ds.num_items), next_n)


def default_val_every(steps_per_epoch: int, val_pairs: int = 0, step_pairs: int = 1) -> int:
    """Validation interval when ``[train] val_every_steps = 0``: once per epoch, or every 5,000
    steps when an epoch is longer, but never so often that validating takes more than
    :data:`VAL_TIME_SHARE` of the time: a validation of ``val_pairs`` (user, item) pairs costs
    about ``VAL_PAIR_COST x val_pairs / step_pairs`` training steps of ``step_pairs``
    candidates each. At the paper's scale (100 users x 3.93M items, 512 x 101 candidates per
    step; an epoch is 188k steps) that is every ~22,000 steps instead of 5,000, which spent a
    quarter of the training time validating. The rule uses sizes only, so the steps at which a
    run validates are the same on any machine and when it resumes.

    Args:
      steps_per_epoch: steps in one epoch.
      val_pairs: (user, item) pairs one validation scores (users x corpus size).
      step_pairs: candidates one training step scores (batch x (negatives + 1)).
    """
    cost_steps = VAL_PAIR_COST * int(val_pairs) / max(int(step_pairs), 1)
    floor = math.ceil(cost_steps * (1.0 - VAL_TIME_SHARE) / VAL_TIME_SHARE)
    return max(1, min(int(steps_per_epoch), max(5000, floor)))


def fmt_value(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"

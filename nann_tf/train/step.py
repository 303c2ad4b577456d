"""The training step: NCE (logQ-corrected) + the FGSM auxiliary loss, as a Keras model."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from nann_tf.model.losses import (LOSSES, accidental_hit_mask, fgsm_perturb, fgsm_step_size,
                                  kl_aux_loss, nce_logits, nce_loss, sampled_softmax_loss)
from nann_tf.model.nann import NANNModel

__all__ = ["NANNTrainer", "batch_items", "history_groups", "ITEMS_GRANULE"]

#: The distinct items of a batch (:func:`batch_items`) are padded to a multiple of this many,
#: so the XLA step compiles once per size class met in a run (two or three), not per batch.
ITEMS_GRANULE = 1024


def batch_items(hist, pos, neg, granule: int = ITEMS_GRANULE) -> dict:
    """The distinct items of a batch and where each slot finds its own: ``{"ids": [U],
    "hist", "pos", "neg"}``, the last three the shapes of the inputs, each entry an index into
    ``ids``. ``ids`` is padded with the padding item 0 to a multiple of ``granule``."""
    flat = [tf.reshape(tf.cast(t, tf.int32), [-1]) for t in (hist, pos, neg)]
    ids, at = tf.unique(tf.concat(flat, axis=0))
    n = tf.size(ids)
    ids = tf.pad(ids, [[0, (n + granule - 1) // granule * granule - n]])
    parts = tf.split(at, [tf.size(f) for f in flat])
    return {"ids": ids, **{k: tf.reshape(p, tf.shape(t)) for k, p, t in
                           zip(("hist", "pos", "neg"), parts, (hist, pos, neg))}}


def history_groups(hist, hist_at=None) -> dict:
    """The batch's examples in two groups by history length (the shorter half, the rest),
    each with its histories cut to the group's longest rounded up to a quarter of L:
    ``{"rows": [2 x [b_g]], "hist": [2 x [b_g, L_g]], "at": the same cut of ``hist_at``
    (:func:`batch_items`' history indices) or None, "inverse": [B]}``, ``inverse`` putting
    the groups' examples back in the batch's order. Histories are right-aligned, so the
    columns cut hold only padding: scoring a group over its L_g columns gives the scores over
    L (masked positions weigh nothing). On the 1M corpus the shorter half's histories fill
    <= 21 of 50 positions: a quarter of the attention's work is padding saved."""
    length = int(hist.shape[1])
    granule = -(-length // 4)
    lengths = tf.reduce_sum(tf.cast(tf.not_equal(hist, 0), tf.int32), axis=1)
    order = tf.argsort(lengths, stable=True)
    half = tf.shape(hist)[0] // 2
    out = {"rows": [order[:half], order[half:]], "hist": [],
           "at": None if hist_at is None else [],
           "inverse": tf.math.invert_permutation(order)}
    for rows in out["rows"]:
        longest = tf.reduce_max(tf.concat([tf.gather(lengths, rows), [1]], axis=0))
        cut = length - tf.minimum((longest + granule - 1) // granule * granule, length)
        out["hist"].append(tf.gather(hist, rows)[:, cut:])
        if hist_at is not None:
            out["at"].append(tf.gather(hist_at, rows)[:, cut:])
    return out


def _grouped_scores(model, groups, embed, side, training):
    """The scores [B, C] of the examples of :func:`history_groups`, group by group."""
    parts = []
    for g, rows in enumerate(groups["rows"]):
        hist = groups["hist"][g]
        state = model.encode_user_from_embeddings(
            embed(hist, None if groups["at"] is None else groups["at"][g]),
            tf.not_equal(hist, 0), training=training)
        parts.append(model.score_items(state, side.rows(rows), training=training))
    return tf.gather(tf.concat(parts, axis=0), groups["inverse"])


class _Side:
    """The item-side tensors of each example's candidates ([B, C, ·] by key): given per slot
    (``first`` alone), or as the positives' [B, ·] (``first``) and the pool's draws' [P, ·]
    (``draws``) with which draws each example takes (``index`` [B, K])."""

    def __init__(self, first, draws=None, index=None):
        self.first, self.draws, self.index = first, draws, index

    def rows(self, rows=None) -> dict:
        """The tensors of the examples ``rows`` (all of them: None), in that order."""
        pick = (lambda t: t) if rows is None else (lambda t: tf.gather(t, rows))
        if self.index is None:
            return {k: pick(t) for k, t in self.first.items()}
        index = pick(self.index)
        return {k: tf.concat([pick(t)[:, None, :], tf.gather(self.draws[k], index)], axis=1)
                for k, t in self.first.items()}


class _Embedder:
    """e_v of a batch's slots: from the item network (``items`` None) or gathered from its
    output for the batch's distinct items (run once, on first use)."""

    def __init__(self, model, items, training):
        self.model, self.items, self.training = model, items, training
        self.table = None

    def __call__(self, ids, at):
        if self.items is None:
            return self.model.item_embedding(ids, training=self.training)
        if self.table is None:
            self.table = self.model.item_embedding(self.items["ids"], training=self.training)
        return tf.gather(self.table, at)


class NANNTrainer(keras.Model):
    """Wraps a :class:`NANNModel` with the NCE + FGSM training step."""

    def __init__(self, model: NANNModel, log_q: np.ndarray, num_negatives: int,
                 fgsm_eps: float, fgsm_lambda: float, fgsm_eps_mode: str = "absolute",
                 loss: str = "nce", xla_grads: bool = False, fgsm_one_pass: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        # The step's forward and backward as one XLA program (the trainer is then compiled
        # without jit_compile: see ``train_step``).
        self._xla_grads = tf.function(self._losses_and_grads, jit_compile=True) \
            if xla_grads else None
        if loss not in LOSSES:
            raise ValueError(f"[train] loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.loss_name = loss
        self.model = model
        self.num_negatives = int(num_negatives)
        self.fgsm_eps = float(fgsm_eps)
        fgsm_step_size(tf.zeros([1]), 0.0, fgsm_eps_mode)  # checks the mode
        self.fgsm_eps_mode = fgsm_eps_mode
        self.fgsm_lambda = float(fgsm_lambda)
        # FGSM's direction taken from the loss's own backward pass (``_fgsm_losses_and_grads``)
        # instead of a separate inner gradient (``compute_losses``). The same gradients, but not
        # faster under XLA, which already shares the inner gradient's work with the outer
        # backward pass: one-pass 0.95x the two-tape step at 1M items (sparse), 0.98x on
        # ci-synth (bench/results/train-step-*-fgsm.json), so off by default.
        self.fgsm_one_pass = bool(fgsm_one_pass)
        # The item network once per distinct item of a batch (``batch_items``): a batch of 512
        # at 867k items holds ~9k distinct items in 28k slots. Not when the item network is
        # random in training (dropout, id dropout: each occurrence draws its own mask).
        cfg = model.cfg
        self.dedup_items = cfg.dropout == 0 and cfg.id_dropout == 0
        # Score each batch in two groups by history length (``history_groups``; not with FGSM).
        self.group_histories = True
        self.log_q = self.add_weight(name="log_q", shape=log_q.shape, dtype="float32",
                                     trainable=False,
                                     initializer=keras.initializers.Constant(log_q))
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.nce_tracker = keras.metrics.Mean(name="nce")
        self.aux_tracker = keras.metrics.Mean(name="aux")
        self.step_tracker = keras.metrics.Mean(name="fgsm_step")  # the step FGSM takes

    @property
    def metrics(self):
        return [self.loss_tracker, self.nce_tracker, self.aux_tracker, self.step_tracker]

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras (3.x, TF backend, under a distribution strategy) builds here by taking one
        # batch from the iterator (dropping it) and MEAN-reducing it across replicas, which
        # fails under MultiWorkerMirroredStrategy ("Attempt to convert a value (PerReplica...)").
        # This trainer is built before fit (``train`` calls it once); only the optimizer's
        # variables may be missing.
        with self.distribute_strategy.scope():
            if self.optimizer is not None and not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)

    def compute_losses(self, hist, pos, neg, return_step: bool = False,
                       training: bool = False, items: dict | None = None,
                       groups: dict | None = None):
        """Returns ``(total, l_nce, l_aux)`` for one batch (differentiable); with
        ``return_step``, also the FGSM step size used. ``items`` (:func:`batch_items` of the
        batch) runs the item network once per distinct item of the batch instead of once per
        slot (history, positive, negative); ``groups`` (:func:`history_groups`) scores the
        examples in two groups by history length, each over its own histories' length instead
        of L (not with FGSM); the same losses and gradients.

        ``neg`` is one of:

        * int [B, K]: per-example negatives;
        * int [R, s] with ``s != K``: a per-batch pool of negatives (``InputPipeline`` with
          ``emit_pool``): example i's negatives are the flat pool's entries ``i*s .. i*s + K-1``
          (the same ids as the [B, K] layout the pipeline would gather);
        * int [K]: negatives shared by the batch, each scored against every example, with the
          same logQ correction and accidental-hit mask.

        Item-side work (e_v, the attention query, e_v's first-layer block) runs once per pool
        draw or shared negative, not once per (example, negative) slot, unless FGSM is on (it
        perturbs each slot's e_v)."""
        m = self.model
        per_slot = self.fgsm_eps > 0
        b = tf.shape(pos)[0]
        K = self.num_negatives
        embed = _Embedder(m, items, training)
        e_v = side = None
        if neg.shape.rank == 1 or neg.shape[1] != K:
            draws, index = self._draws(neg, b)
            draws_at = None if items is None else self._draws(items["neg"], b)[0]
            neg = tf.gather(draws, index)
            e_pos = embed(pos, None if items is None else items["pos"])  # [B, d]
            e_draws = embed(draws, draws_at)  # [P, d], once per draw
            if per_slot:
                e_v = tf.concat([e_pos[:, None, :], tf.gather(e_draws, index)], axis=1)
            else:
                side = _Side(m.item_side(e_pos), m.item_side(e_draws), index)
        else:
            e_v = embed(tf.concat([pos[:, None], neg], axis=1), None if items is None else
                        tf.concat([items["pos"][:, None], items["neg"]], axis=1))
        mask = accidental_hit_mask(pos, neg)
        log_q = tf.gather(self.log_q, tf.concat([pos[:, None], neg], axis=1))
        scores = state = None
        if groups is not None and not per_slot:
            side = side or _Side(m.item_side(e_v))
            scores = _grouped_scores(m, groups, embed, side, training)
        else:
            state = m.encode_user_from_embeddings(
                embed(hist, None if items is None else items["hist"]), tf.not_equal(hist, 0),
                training=training)
        with tf.GradientTape(watch_accessed_variables=False) as inner:
            if scores is None and side is None:
                inner.watch(e_v)
                scores = m.score(state, e_v, training=training)
            elif scores is None:
                scores = m.score_items(state, side.rows(), training=training)
            logits = nce_logits(scores, log_q, self.num_negatives)
            l_nce = (nce_loss(logits, mask) if self.loss_name == "nce"
                     else sampled_softmax_loss(logits, mask))
        if self.fgsm_eps > 0:
            grad = inner.gradient(l_nce, e_v)
            step = fgsm_step_size(e_v, self.fgsm_eps, self.fgsm_eps_mode)
            adv_scores = m.score(state, fgsm_perturb(e_v, grad, step), training=training)
            l_aux = kl_aux_loss(scores, adv_scores, mask)
        else:
            step = l_aux = tf.constant(0.0)
        out = (l_nce + self.fgsm_lambda * l_aux, l_nce, l_aux)
        return out + (step,) if return_step else out

    def _losses_and_grads(self, hist, pos, neg, items=None, groups=None):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if self.fgsm_eps > 0 and self.fgsm_one_pass:
            return self._fgsm_losses_and_grads(hist, pos, neg, replicas)
        with tf.GradientTape() as tape:
            total, l_nce, l_aux, step = self.compute_losses(
                hist, pos, neg, return_step=True, training=True, items=items, groups=groups)
            scaled = total / replicas
        grads = tape.gradient(scaled, self.model.trainable_variables)
        return grads, total, l_nce, l_aux, step

    def _fgsm_losses_and_grads(self, hist, pos, neg, replicas):
        """``_losses_and_grads`` with FGSM on, each part of the graph differentiated once.

        The FGSM direction ``dL_nce/de_v`` is a by-product of ``L_nce``'s own backward pass
        (the item network's gradient needs it anyway), and ``L_aux`` holds the clean scores
        constant; so, with ``e_v`` and the user state as the boundary: (1) one backward pass
        through the clean score graph gives its parameters' gradients and ``dL_nce/de_v``
        together; (2) one through the adversarial score graph; (3) one through the user and
        item networks, fed the sum of both passes' gradients at the boundary. The two-tape form
        (``compute_losses``) runs a second backward through the clean score graph for the FGSM
        direction alone; the gradients are the same (a test checks them)."""
        m = self.model
        variables = m.trainable_variables
        n = len(variables)
        with tf.GradientTape() as shared:  # the user network and e_v, recorded once
            if neg.shape.rank == 1 or neg.shape[1] != self.num_negatives:
                draws, index = self._draws(neg, tf.shape(pos)[0])
                neg = tf.gather(draws, index)
            items = tf.concat([pos[:, None], neg], axis=1)
            e_v = m.item_embedding(items, training=True)
            state = m.encode_user(hist, training=True)
        mask = accidental_hit_mask(pos, neg)
        log_q = tf.gather(self.log_q, items)
        leaves = [e_v] + [t for t in tf.nest.flatten(state) if t.dtype.is_floating]
        with tf.GradientTape(watch_accessed_variables=True) as clean:
            clean.watch(leaves)
            scores = m.score(state, e_v, training=True)
            logits = nce_logits(scores, log_q, self.num_negatives)
            l_nce = (nce_loss(logits, mask) if self.loss_name == "nce"
                     else sampled_softmax_loss(logits, mask))
            scaled = l_nce / replicas
        g_clean = clean.gradient(scaled, variables + leaves)
        step = fgsm_step_size(e_v, self.fgsm_eps, self.fgsm_eps_mode)
        with tf.GradientTape() as adv:
            adv.watch(leaves)
            adv_scores = m.score(state, fgsm_perturb(e_v, g_clean[n], step), training=True)
            l_aux = kl_aux_loss(scores, adv_scores, mask)
            scaled = self.fgsm_lambda * l_aux / replicas
        g_adv = adv.gradient(scaled, variables + leaves)
        upstream = [_add_grads(a, b) for a, b in zip(g_clean[n:], g_adv[n:])]
        upstream = [tf.zeros_like(t) if g is None else tf.convert_to_tensor(g)
                    for t, g in zip(leaves, upstream)]
        g_shared = shared.gradient(leaves, variables, output_gradients=upstream)
        grads = [_add_grads(_add_grads(a, b), c)
                 for a, b, c in zip(g_clean[:n], g_adv[:n], g_shared)]
        return grads, l_nce + self.fgsm_lambda * l_aux, l_nce, l_aux, step

    def _draws(self, neg, b):
        """``(draws, index)`` of shared negatives [K] or a pool [R, s] (see ``compute_losses``):
        the distinct draws, and which of them each example takes ([B, K])."""
        K = self.num_negatives
        if neg.shape.rank == 1:  # shared: every example takes the K draws
            return neg, tf.broadcast_to(tf.range(K)[None, :], [b, K])
        # a pool: example i takes the flat entries i*s .. i*s + K - 1
        return (tf.reshape(neg, [-1]),
                tf.range(b)[:, None] * neg.shape[1] + tf.range(K)[None, :])

    def train_step(self, data):
        hist, pos, neg = data
        # Forward and backward under XLA when asked (``xla_grads``), the optimizer outside it
        # (the big tables are updated sparsely). What XLA cannot compute for that program
        # (tf.unique has no XLA kernel; the history cut is a shape) is computed here, before it.
        if self._xla_grads is not None:
            items = batch_items(hist, pos, neg) if self.dedup_items else None
            groups = (history_groups(hist, None if items is None else items["hist"])
                      if self.fgsm_eps == 0 and self.group_histories else None)
            grads, total, l_nce, l_aux, step = self._xla_grads(hist, pos, neg, items, groups)
        else:
            grads, total, l_nce, l_aux, step = self._losses_and_grads(hist, pos, neg)
        self.optimizer.apply(grads, self.model.trainable_variables)
        self.loss_tracker.update_state(total)
        self.nce_tracker.update_state(l_nce)
        self.aux_tracker.update_state(l_aux)
        self.step_tracker.update_state(step)
        logs = {m.name: m.result() for m in self.metrics}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras reduces the logs of a multi-worker step with ``reduce("MEAN", v, axis=0)``,
            # which needs a dimension to reduce over.
            logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs


def _add_grads(a, b):
    """The sum of two gradients of one variable, either of which may be None or sparse."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, tf.IndexedSlices) and isinstance(b, tf.IndexedSlices):
        return tf.IndexedSlices(tf.concat([a.values, b.values], 0),
                                tf.concat([a.indices, b.indices], 0), a.dense_shape)
    return tf.convert_to_tensor(a) + tf.convert_to_tensor(b)

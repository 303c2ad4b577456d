"""The training step: NCE (logQ-corrected) + the FGSM auxiliary loss, as a Keras model."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from nann_tf.model.losses import (accidental_hit_mask, fgsm_perturb, fgsm_step_size,
                                  kl_aux_loss, nce_logits, nce_loss)
from nann_tf.model.nann import NANNModel

__all__ = ["NANNTrainer"]


class NANNTrainer(keras.Model):
    """Wraps a :class:`NANNModel` with the NCE + FGSM training step."""

    def __init__(self, model: NANNModel, log_q: np.ndarray, num_negatives: int,
                 fgsm_eps: float, fgsm_lambda: float, fgsm_eps_mode: str = "absolute",
                 **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.num_negatives = int(num_negatives)
        self.fgsm_eps = float(fgsm_eps)
        fgsm_step_size(tf.zeros([1]), 0.0, fgsm_eps_mode)  # checks the mode
        self.fgsm_eps_mode = fgsm_eps_mode
        self.fgsm_lambda = float(fgsm_lambda)
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

    def compute_losses(self, hist, pos, neg, return_step: bool = False):
        """Returns ``(total, l_nce, l_aux)`` for one batch (differentiable); with
        ``return_step``, also the FGSM step size used."""
        m = self.model
        items = tf.concat([pos[:, None], neg], axis=1)
        mask = accidental_hit_mask(pos, neg)
        log_q = tf.gather(self.log_q, items)
        state = m.encode_user(hist)
        e_v = m.item_embedding(items)
        with tf.GradientTape(watch_accessed_variables=False) as inner:
            inner.watch(e_v)
            scores = m.score(state, e_v)
            l_nce = nce_loss(nce_logits(scores, log_q, self.num_negatives), mask)
        if self.fgsm_eps > 0:
            grad = inner.gradient(l_nce, e_v)
            step = fgsm_step_size(e_v, self.fgsm_eps, self.fgsm_eps_mode)
            adv_scores = m.score(state, fgsm_perturb(e_v, grad, step))
            l_aux = kl_aux_loss(scores, adv_scores, mask)
        else:
            step = l_aux = tf.constant(0.0)
        out = (l_nce + self.fgsm_lambda * l_aux, l_nce, l_aux)
        return out + (step,) if return_step else out

    def train_step(self, data):
        hist, pos, neg = data
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            total, l_nce, l_aux, step = self.compute_losses(hist, pos, neg, return_step=True)
            scaled = total / replicas
        variables = self.model.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        self.loss_tracker.update_state(total)
        self.nce_tracker.update_state(l_nce)
        self.aux_tracker.update_state(l_aux)
        self.step_tracker.update_state(step)
        return {m.name: m.result() for m in self.metrics}

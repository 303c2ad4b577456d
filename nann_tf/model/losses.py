"""NCE with logQ correction and the FGSM adversarial auxiliary loss (paper section 3.4).

For each training example there is one positive item and K negatives drawn from the noise
distribution q(v) ∝ freq(v)^alpha. With ``s`` the raw scores ``s_u(e_v)`` of those 1+K
candidates:

* NCE: each candidate is a binary classification with the logQ-corrected logit
  ``s - log(K q(v))``; the positive has label 1, negatives label 0; a negative equal to the
  positive (an accidental hit) is masked out.
* FGSM auxiliary task: ``g = dL_nce/de_v``; ``e~ = e_v + eps * sign(g)`` (g is a constant: no
  gradient flows through the perturbation); ``L_aux = KL(softmax(stop_grad(s)) || softmax(s~))``
  over the candidates that are not masked, where ``s~`` is the score of ``e~``. It uses the raw
  score the search ranks by, not the logQ-corrected logit.
* ``L = L_nce + lambda * L_aux``; ``eps = 0`` makes ``e~ = e_v`` and ``L_aux = 0``.

The K negatives are either drawn for every example or drawn once per batch and shared by all its
examples (``[train] negatives = "shared"``); the functions below see the same [B, 1+K] candidate
layout either way (a shared negative is broadcast to every row; the mask is per row).

The model has no batch normalisation, so the adversarial forward pass changes no statistics.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["nce_logits", "nce_loss", "sampled_softmax_loss", "fgsm_perturb", "kl_aux_loss",
           "accidental_hit_mask", "LOSSES"]

#: ``[train] loss``: the binary NCE of the paper, or the sampled softmax over the same 1+K
#: candidates with the same logQ correction.
LOSSES = ("nce", "softmax")


def accidental_hit_mask(pos_ids, neg_ids):
    """float [B, 1+K]: 1 for the positive and every negative that differs from it."""
    neg_ok = tf.cast(tf.not_equal(neg_ids, pos_ids[:, None]), tf.float32)
    return tf.concat([tf.ones_like(neg_ok[:, :1]), neg_ok], axis=1)


def nce_logits(scores, log_q, num_negatives: int):
    """logQ-corrected logits ``s - log(K q(v))``; ``scores``, ``log_q``: [B, 1+K]."""
    return scores - log_q - tf.math.log(tf.cast(num_negatives, scores.dtype))


def nce_loss(logits, mask):
    """Mean over the batch of the summed binary NCE losses.

    Args:
      logits: [B, 1+K] corrected logits, column 0 the positive.
      mask: [B, 1+K] 1 for candidates that count (see :func:`accidental_hit_mask`).

    Returns:
      A scalar: ``mean_b [softplus(-l_b0) + sum_k mask_bk * softplus(l_bk)]``.
    """
    pos = tf.nn.softplus(-logits[:, 0])
    neg = tf.reduce_sum(tf.nn.softplus(logits[:, 1:]) * mask[:, 1:], axis=1)
    return tf.reduce_mean(pos + neg)


def sampled_softmax_loss(logits, mask):
    """Mean over the batch of the sampled-softmax cross-entropy of the positive.

    Args:
      logits: [B, 1+K] logQ-corrected logits (:func:`nce_logits`; the constant ``log K`` it
        subtracts does not change a softmax), column 0 the positive.
      mask: [B, 1+K] 1 for candidates that count (accidental hits are left out of the
        normaliser).

    Returns:
      A scalar: ``mean_b [-l_b0 + logsumexp_k(l_bk over unmasked k)]``.
    """
    masked = tf.where(mask > 0, logits, tf.constant(-1e9, logits.dtype))
    return tf.reduce_mean(tf.reduce_logsumexp(masked, axis=1) - logits[:, 0])


def fgsm_perturb(e_v, grad, eps):
    """``e_v + eps * sign(grad)`` with the perturbation held constant (stop_gradient)."""
    return e_v + tf.stop_gradient(eps * tf.sign(grad))


def fgsm_step_size(e_v, eps: float, mode: str = "absolute"):
    """The FGSM step: ``eps`` itself (``absolute``, the paper's parametrisation), or ``eps``
    times the root mean square of the batch's ``e_v`` coordinates (``relative``: a step of
    ``r`` moves every coordinate by ``r`` x the embeddings' own scale, whatever that scale is;
    held constant)."""
    if mode == "absolute":
        return tf.constant(eps, e_v.dtype)
    if mode == "relative":
        return eps * tf.stop_gradient(tf.sqrt(tf.reduce_mean(tf.square(e_v))))
    raise ValueError(f"fgsm eps mode must be absolute or relative, got {mode!r}")


def kl_aux_loss(scores, adv_scores, mask):
    """``mean_b KL(softmax(stop_grad(s_b)) || softmax(s~_b))`` over unmasked candidates."""
    neg_inf = tf.constant(-1e9, scores.dtype)
    s = tf.where(mask > 0, tf.stop_gradient(scores), neg_inf)
    a = tf.where(mask > 0, adv_scores, neg_inf)
    log_p = tf.nn.log_softmax(s, axis=-1)
    log_q = tf.nn.log_softmax(a, axis=-1)
    kl = tf.reduce_sum(tf.exp(log_p) * (log_p - log_q) * mask, axis=-1)
    return tf.reduce_mean(kl)

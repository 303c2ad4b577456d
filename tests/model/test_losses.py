"""NCE / FGSM / KL terms against a NumPy reference."""

import numpy as np
import pytest
import tensorflow as tf

from nann_tf.config import ModelConfig
from nann_tf.model import NANNModel
from nann_tf.model.losses import (accidental_hit_mask, fgsm_perturb, fgsm_step_size,
                                  kl_aux_loss, nce_logits, nce_loss)
from nann_tf.train import NANNTrainer, NoiseDistribution


def _softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def _log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def np_nce(scores, log_q, k, mask):
    logits = scores - log_q - np.log(k)
    per = _softplus(-logits[:, 0]) + (_softplus(logits[:, 1:]) * mask[:, 1:]).sum(1)
    return logits, per.mean()


def np_kl(s, a, mask):
    s = np.where(mask > 0, s, -1e9)
    a = np.where(mask > 0, a, -1e9)
    lp, lq = _log_softmax(s), _log_softmax(a)
    return (np.exp(lp) * (lp - lq) * mask).sum(-1).mean()


def test_nce_matches_numpy():
    rng = np.random.default_rng(0)
    b, k = 7, 5
    scores = rng.normal(size=(b, 1 + k)).astype(np.float32)
    log_q = np.log(rng.uniform(0.001, 0.1, size=(b, 1 + k))).astype(np.float32)
    pos = rng.integers(1, 6, size=b)
    neg = rng.integers(1, 6, size=(b, k))
    mask = accidental_hit_mask(tf.constant(pos), tf.constant(neg)).numpy()
    np.testing.assert_array_equal(mask[:, 0], 1)
    np.testing.assert_array_equal(mask[:, 1:], (neg != pos[:, None]).astype(np.float32))
    assert (mask[:, 1:] == 0).any(), "the draw should contain an accidental hit"
    ref_logits, ref_loss = np_nce(scores, log_q, k, mask)
    logits = nce_logits(tf.constant(scores), tf.constant(log_q), k).numpy()
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    loss = nce_loss(tf.constant(logits), tf.constant(mask)).numpy()
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)


def test_kl_matches_numpy_and_zero_when_equal():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(4, 6)).astype(np.float32)
    a = s + rng.normal(scale=0.3, size=s.shape).astype(np.float32)
    mask = np.ones_like(s)
    mask[1, 3] = 0
    got = kl_aux_loss(tf.constant(s), tf.constant(a), tf.constant(mask)).numpy()
    np.testing.assert_allclose(got, np_kl(s, a, mask), rtol=1e-4)
    assert got > 0
    assert abs(kl_aux_loss(tf.constant(s), tf.constant(s), tf.constant(mask)).numpy()) < 1e-6


def test_fgsm_is_eps_sign_grad_and_constant():
    e = tf.constant([[0.5, -1.0, 2.0]])
    g = tf.constant([[3.0, -0.1, 0.0]])
    out = fgsm_perturb(e, g, 0.01).numpy()
    np.testing.assert_allclose(out, [[0.51, -1.01, 2.0]], rtol=1e-6)
    with tf.GradientTape() as tape:
        tape.watch(g)
        y = tf.reduce_sum(fgsm_perturb(e, g, 0.01))
    assert tape.gradient(y, g) is None


def _trainer(eps, variant="attention"):
    rng = np.random.default_rng(2)
    n, c = 30, 4
    model = NANNModel(n, c, np.r_[0, rng.integers(1, c + 1, n)],
                      ModelConfig(variant=variant, item_dim=8, category_dim=4, embedding_dim=8,
                                  item_hidden=[8], user_hidden=[8], score_hidden=[16],
                                  attention_dim=8), max_len=5)
    model.build_all(5)
    noise = NoiseDistribution(rng.integers(0, 20, n + 1), 0.75)
    return NANNTrainer(model, noise.log_q, 6, eps, 1.0), rng, noise


@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_training_step_losses_match_numpy_fgsm_reference(mode):
    """The whole step: FGSM direction from the NCE gradient, KL against the perturbed scores;
    a relative eps steps by eps x the RMS of the batch's e_v coordinates."""
    eps = 0.05 if mode == "absolute" else 0.3
    trainer, rng, noise = _trainer(eps)
    trainer.fgsm_eps_mode = mode
    m = trainer.model
    hist = tf.constant(rng.integers(0, 31, size=(3, 5)), tf.int32)
    pos = tf.constant(rng.integers(1, 31, size=3), tf.int32)
    neg = tf.constant(noise.sample(rng, (3, 6)))
    total, l_nce, l_aux, step = trainer.compute_losses(hist, pos, neg, return_step=True)

    items = tf.concat([pos[:, None], neg], 1)
    state = m.encode_user(hist)
    e_v = m.item_embedding(items)
    mask = accidental_hit_mask(pos, neg).numpy()
    log_q = noise.log_q[items.numpy()]
    with tf.GradientTape() as tape:
        tape.watch(e_v)
        s = m.score(state, e_v)
        loss = nce_loss(nce_logits(s, tf.constant(log_q), 6), tf.constant(mask))
    g = tape.gradient(loss, e_v).numpy()
    assert np.abs(g).sum() > 0
    ref_step = eps if mode == "absolute" else eps * np.sqrt(np.mean(e_v.numpy() ** 2))
    np.testing.assert_allclose(float(step), ref_step, rtol=1e-5)
    e_adv = e_v.numpy() + ref_step * np.sign(g)
    s_adv = m.score(state, tf.constant(e_adv)).numpy()
    _, ref_nce = np_nce(s.numpy(), log_q, 6, mask)
    ref_aux = np_kl(s.numpy(), s_adv, mask)
    np.testing.assert_allclose(l_nce.numpy(), ref_nce, rtol=1e-4)
    np.testing.assert_allclose(l_aux.numpy(), ref_aux, rtol=1e-3, atol=1e-7)
    assert ref_aux > 0
    np.testing.assert_allclose(total.numpy(), ref_nce + ref_aux, rtol=1e-4)


@pytest.mark.parametrize("variant", ["attention", "sum_pool", "two_tower"])
def test_aux_loss_is_zero_when_eps_is_zero(variant):
    trainer, rng, noise = _trainer(0.0, variant)
    hist = tf.constant(rng.integers(0, 31, size=(4, 5)), tf.int32)
    pos = tf.constant(rng.integers(1, 31, size=4), tf.int32)
    neg = tf.constant(noise.sample(rng, (4, 6)))
    total, l_nce, l_aux = trainer.compute_losses(hist, pos, neg)
    assert float(l_aux) == 0.0
    assert float(total) == pytest.approx(float(l_nce))


def test_noise_distribution_follows_unigram_alpha():
    freq = np.array([0, 100, 10, 1, 0])
    noise = NoiseDistribution(freq, 0.5)
    want = np.sqrt(freq[1:] + 1.0)
    want /= want.sum()
    np.testing.assert_allclose(noise.probs[1:], want)
    draws = noise.sample(np.random.default_rng(0), 200000)
    assert draws.min() >= 1 and draws.max() <= 4
    emp = np.bincount(draws, minlength=5)[1:] / len(draws)
    np.testing.assert_allclose(emp, want, atol=0.01)


def test_relative_step_scales_with_the_embeddings_and_absolute_does_not():
    e = tf.constant(np.random.default_rng(0).normal(size=(4, 7, 8)).astype(np.float32))
    r = float(fgsm_step_size(e, 0.1, "relative"))
    assert r == pytest.approx(0.1 * float(tf.sqrt(tf.reduce_mean(e * e))))
    assert float(fgsm_step_size(10 * e, 0.1, "relative")) == pytest.approx(10 * r, rel=1e-5)
    assert float(fgsm_step_size(10 * e, 0.1, "absolute")) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="absolute or relative"):
        fgsm_step_size(e, 0.1, "scaled")


def test_sampled_softmax_matches_numpy_and_leaves_accidental_hits_out():
    from nann_tf.model.losses import sampled_softmax_loss

    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (4, 6)).astype(np.float32)
    mask = np.ones((4, 6), np.float32)
    mask[1, 3] = mask[2, 1] = 0.0  # accidental hits: not in the normaliser
    got = float(sampled_softmax_loss(tf.constant(logits), tf.constant(mask)))
    want = np.mean([np.log(np.exp(logits[b][mask[b] > 0]).sum()) - logits[b, 0]
                    for b in range(4)])
    assert got == pytest.approx(want, rel=1e-5)
    # A masked candidate's logit does not change the loss; an unmasked one does.
    bumped = logits.copy()
    bumped[1, 3] += 5.0
    assert float(sampled_softmax_loss(tf.constant(bumped), tf.constant(mask))) == \
        pytest.approx(got, rel=1e-6)
    bumped[1, 2] += 5.0
    assert float(sampled_softmax_loss(tf.constant(bumped), tf.constant(mask))) > got + 0.1

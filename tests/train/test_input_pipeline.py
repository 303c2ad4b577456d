"""The tf.data training input: alias sampling, pooled negatives, determinism, sharding, resume,
shared negatives."""

import numpy as np
import pytest
import tensorflow as tf

from nann_tf.config import ConfigError, load_config
from nann_tf.data.dataset import gather_histories
from nann_tf.model.saved import build_model
from nann_tf.train import NANNTrainer, NoiseDistribution
from nann_tf.train.input import InputError, InputPipeline, TrainSamples
from nann_tf.train.noise import alias_table

L = 6


def _samples(users=40, items=30, seed=0):
    rng = np.random.default_rng(seed)
    lens = rng.integers(2, 15, users)
    splits = np.concatenate([[0], np.cumsum(lens)])
    seq = rng.integers(1, items + 1, splits[-1]).astype(np.int32)
    start = np.repeat(splits[:-1], lens)
    pos = np.arange(splits[-1])
    keep = pos != start
    freq = np.bincount(seq, minlength=items + 1).astype(np.int64)
    freq[0] = 0
    return (TrainSamples.from_positions(seq, pos[keep], start[keep], L), pos[keep], start[keep],
            NoiseDistribution(freq, 0.75))


def _batches(pipe, n, **kw):
    return [tuple(x.numpy() for x in b) for b in pipe.dataset(**kw).take(n)]


def test_alias_table_is_exact_and_noise_keeps_its_definition():
    rng = np.random.default_rng(1)
    freq = np.concatenate([[0], rng.zipf(1.3, 5000)]).astype(np.int64)
    noise = NoiseDistribution(freq, 0.75)
    w = (freq[1:] + 1.0) ** 0.75  # unigram^alpha with add-one smoothing
    np.testing.assert_allclose(noise.probs[1:], w / w.sum())
    prob, alias = noise.alias_table()
    implied = prob.copy()
    np.add.at(implied, alias, 1.0 - prob)
    np.testing.assert_allclose(implied / len(prob), noise.probs[1:], rtol=1e-9, atol=1e-15)
    p = np.array([0.97, 0.01, 0.01, 0.01])  # one dominant item: every other column aliases it
    prob, alias = alias_table(p)
    implied = prob.copy()
    np.add.at(implied, alias, 1.0 - prob)
    np.testing.assert_allclose(implied / 4, p, atol=1e-12)


@pytest.mark.parametrize("mode", ["per_example", "shared"])
def test_in_graph_negatives_follow_the_noise_distribution(mode):
    samples, _, _, noise = _samples(items=8)
    pipe = InputPipeline(samples, noise, batch_size=64, num_negatives=500, negatives=mode)
    negs = np.concatenate([b[2].ravel() for b in _batches(pipe, 40 if mode == "shared" else 4)])
    assert negs.min() >= 1 and negs.max() <= 8
    freq = np.bincount(negs, minlength=9)[1:] / len(negs)
    np.testing.assert_allclose(freq, noise.probs[1:], atol=0.012)


@pytest.mark.parametrize("mode,factor", [("per_example", 1), ("per_example", 4),
                                         ("shared", 1)])
def test_batches_are_deterministic_for_a_seed_and_hold_the_right_samples(mode, factor):
    samples, pos, start, noise = _samples()
    make = lambda seed: InputPipeline(samples, noise, batch_size=32, num_negatives=5,  # noqa
                                      negatives=mode, seed=seed, pool_factor=factor)
    a, b, c = _batches(make(3), 6), _batches(make(3), 6), _batches(make(4), 6)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c)), "another seed, other data"
    assert any(not np.array_equal(x[2], y[2]) for x, y in zip(a, c)), "another seed, other negs"
    assert a[0][2].shape == ((5,) if mode == "shared" else (32, 5))
    # Each row is a real sample: its history is the numpy reference's for that target.
    ref_hist = gather_histories(samples.items, pos, start, L)
    ref_pos = samples.items[pos]
    for hist, tgt, _ in a:
        for h, t in zip(hist, tgt):
            match = np.flatnonzero((ref_pos == t) & np.all(ref_hist == h, axis=1))
            assert len(match), "a batch row is a training sample (history + target)"


def test_workers_parts_are_disjoint_and_cover_the_epoch():
    samples, _, _, noise = _samples()
    n = len(samples)
    pipe = InputPipeline(samples, noise, batch_size=40, num_negatives=3, seed=1)
    steps = pipe.steps_per_epoch

    def ids(**kw):
        return [(int(r), i.numpy()) for r, i in pipe.sample_ids(**kw).take(steps * 2 * 2)]

    one = ids(replicas_per_pipeline=1)[:steps]
    w0 = ids(num_pipelines=2, pipeline_id=0, replicas_per_pipeline=2)
    w1 = ids(num_pipelines=2, pipeline_id=1, replicas_per_pipeline=2)
    rows = set()
    for s in range(steps):  # per step: the 4 replicas' rows of the two workers = the batch
        parts = [w0[2 * s][1], w0[2 * s + 1][1], w1[2 * s][1], w1[2 * s + 1][1]]
        assert all(len(p) == 10 for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), one[s][1])
        rows |= {w0[2 * s][0], w0[2 * s + 1][0], w1[2 * s][0], w1[2 * s + 1][0]}
    assert len(rows) == 4 * steps, "every per-replica batch has its own row (negatives seed)"
    epoch = np.concatenate([i for _, i in one])
    w0_ids = np.concatenate([i for _, i in w0[:2 * steps]])
    w1_ids = np.concatenate([i for _, i in w1[:2 * steps]])
    assert set(epoch.tolist()) == set(range(n)), "an epoch covers every sample"
    assert len(epoch) - n < 40, "padded to whole batches by wrapping around only"
    wrap = epoch[n:]  # the padding repeats the epoch's first samples
    overlap = set(w0_ids.tolist()) & set(w1_ids.tolist())
    assert overlap <= set(wrap.tolist()), "the workers' parts are disjoint (but the wrap)"
    second = np.concatenate([i for _, i in ids()[steps:2 * steps]])
    assert not np.array_equal(second, epoch), "reshuffled every epoch"
    # Pooled negatives under sharding: every per-replica batch draws its own pool, seeded by its
    # row, whichever worker makes it.
    pooled = InputPipeline(samples, noise, batch_size=40, num_negatives=6, seed=1,
                           pool_factor=3)
    kw = dict(num_pipelines=2, pipeline_id=1, replicas_per_pipeline=2)
    for (row, _), (_, _, neg) in zip(pooled.sample_ids(**kw).take(3),
                                     _batches(pooled, 3, **kw)):
        assert neg.shape == (10, 6)
        np.testing.assert_array_equal(neg, _expected_pooled(pooled, row, 10))


def _expected_pooled(pipe, row, b):
    """The per-example negatives of the batch ``row`` rebuilt from its pool (numpy)."""
    rows, s = pipe.pool_shape(b)
    pool = pipe._sample_negatives(tf.constant(row, tf.int64), [rows * s]).numpy()
    return pool[pipe.pool_windows(b)]


def _tv(counts, p):
    return 0.5 * np.abs(counts / counts.sum() - p).sum()


def test_pooled_negatives_keep_the_noise_marginal():
    samples, _, _, _ = _samples()
    rng = np.random.default_rng(3)
    freq = np.concatenate([[0], rng.zipf(1.5, 12)]).astype(np.int64)  # skewed q over 12 items
    noise = NoiseDistribution(freq, 1.0)
    q = noise.probs[1:]
    pipe = InputPipeline(samples, noise, batch_size=64, num_negatives=40, pool_factor=8, seed=5)
    rows, s = pipe.pool_shape(64)
    assert (rows, s) == (64 + 8 - 1, 5) and rows * s < 64 * 40 / 7, "a pool of ~1/8 the draws"
    negs = np.concatenate([b[2].ravel() for b in _batches(pipe, 150)])
    assert negs.min() >= 1 and negs.max() <= 12
    counts = np.bincount(negs, minlength=13)[1:]
    # 150 batches x 355 pool draws = 53k independent draws (each used ~8 times): measured TV
    # 0.0033 here (seed 5; 0.0039 / 0.0083 with seeds 6 / 7), the sampling noise alone being
    # ~0.5 * sum(sqrt(2 q (1 - q) / (pi n))) = 0.0042; the bound leaves ~3x that.
    tv = _tv(counts, q)
    assert tv < 0.012, tv
    # The bound has power: the unsmoothed counts, or uniform draws, are far outside it.
    assert _tv(freq[1:].astype(float), q) > 0.012 * 3  # 0.044
    assert _tv(np.ones(12), q) > 0.012 * 10
    # Each position of a window is marginally q too (not only the batch as a whole).
    batch = np.stack([b[2] for b in _batches(pipe, 150)])  # [150, 64, 40]
    for j in (0, 39):  # 9,600 independent draws each: measured 0.009 / 0.012
        assert _tv(np.bincount(batch[:, :, j].ravel(), minlength=13)[1:], q) < 0.03


def test_pooled_negatives_come_from_the_pool():
    samples, _, _, noise = _samples(items=500)
    b, K = 32, 12
    pipe = InputPipeline(samples, noise, batch_size=b, num_negatives=K, pool_factor=4, seed=7)
    rows, s = pipe.pool_shape(b)
    assert s == 3 and rows == b + 3, "blocks of ceil(K / f), K / s blocks per sample"
    win = pipe.pool_windows(b)
    assert all(len(set(w.tolist())) == K for w in win), "K distinct pool draws per sample"
    # Sample i and i + d share K - d*s pool draws (d < K/s), none beyond.
    assert len(set(win[0]) & set(win[1])) == K - s and not set(win[0]) & set(win[4])
    uses = np.bincount(win.ravel(), minlength=rows * s)
    assert uses.max() == 4 and np.median(uses) == 4, "each pool draw serves ~f samples"
    for (row, _), (_, _, neg) in zip(pipe.sample_ids().take(4), _batches(pipe, 4)):
        np.testing.assert_array_equal(neg, _expected_pooled(pipe, row, b))
        assert len(np.unique(neg)) <= rows * s < b * K
    # pool_factor 1 is today's unpooled draw, value for value; a factor >= K: windows by one.
    flat = InputPipeline(samples, noise, batch_size=b, num_negatives=K, seed=7)
    assert flat.pool_shape(b) == (b, K)
    (row, _), = list(flat.sample_ids().take(1))
    np.testing.assert_array_equal(
        _batches(flat, 1)[0][2],
        flat._sample_negatives(tf.constant(row, tf.int64), [b, K]).numpy())
    most = InputPipeline(samples, noise, batch_size=b, num_negatives=K, pool_factor=50, seed=7)
    assert most.pool_shape(b) == (b + K - 1, 1)
    np.testing.assert_array_equal(_batches(most, 1)[0][2], _expected_pooled(most, row, b))


def test_resume_continues_the_data_where_it_stopped():
    samples, _, _, noise = _samples()
    pipe = InputPipeline(samples, noise, batch_size=40, num_negatives=3, seed=2)
    k = pipe.steps_per_epoch + 2  # crosses an epoch boundary
    full = _batches(pipe, k + 2)
    resumed = _batches(pipe, 2, start_step=k)
    for x, y in zip(full[k:], resumed):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)


def _softplus(x):
    return np.logaddexp(0.0, x)


@pytest.mark.parametrize("variant", ["attention", "two_tower"])
def test_shared_negative_loss_equals_the_reference(variant):
    cfg = load_config("ci-synth", {"model.variant": variant, "model.embedding_dim": 8,
                                   "model.item_hidden": [8], "model.user_hidden": [8],
                                   "model.score_hidden": [8], "data.max_len": L})
    n_items, K = 12, 4
    model = build_model(cfg, n_items, 3, np.arange(n_items + 1) % 3 + (np.arange(13) > 0))
    rng = np.random.default_rng(0)
    log_q = np.log(rng.dirichlet(np.ones(n_items))).astype(np.float32)
    log_q = np.concatenate([[-30.0], log_q]).astype(np.float32)
    hist = rng.integers(0, n_items + 1, (3, L)).astype(np.int32)
    pos = np.array([2, 5, 7], np.int32)
    neg = np.array([5, 1, 9, 5], np.int32)  # example 1's positive twice among the negatives
    trainer = NANNTrainer(model, log_q, K, 0.0, 1.0)
    _, l_nce, _ = trainer.compute_losses(tf.constant(hist), tf.constant(pos), tf.constant(neg))
    # Reference: every example scored on [its positive, the K shared negatives].
    items = np.concatenate([pos[:, None], np.tile(neg, (3, 1))], axis=1)
    s = model({"hist": hist, "items": items}).numpy().astype(np.float64)
    logits = s - log_q[items] - np.log(K)  # logQ correction
    keep = np.concatenate([np.ones((3, 1)), neg[None, :] != pos[:, None]], axis=1)
    assert keep.sum() == 3 * 5 - 2, "two accidental hits masked"
    ref = np.mean(_softplus(-logits[:, 0]) + np.sum(_softplus(logits[:, 1:]) * keep[:, 1:], 1))
    np.testing.assert_allclose(float(l_nce), ref, rtol=1e-5)
    unmasked = np.mean(_softplus(-logits[:, 0]) + np.sum(_softplus(logits[:, 1:]), 1))
    assert abs(ref - unmasked) > 1e-3, "the mask matters in this example"
    # Shared negatives = the same negatives given per example, FGSM included.
    fgsm = NANNTrainer(model, log_q, K, 0.05, 1.0)
    shared = fgsm.compute_losses(tf.constant(hist), tf.constant(pos), tf.constant(neg))
    tiled = fgsm.compute_losses(tf.constant(hist), tf.constant(pos),
                                tf.constant(np.tile(neg, (3, 1))))
    assert float(shared[2]) > 0, "FGSM acts"
    for a, b in zip(shared, tiled):
        np.testing.assert_allclose(float(a), float(b), rtol=1e-5)


def test_bad_train_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"\[train\] negatives"):
        load_config("ci-synth", {"train.negatives": "in_batch"})
    with pytest.raises(ConfigError, match=r"\[train\] jit_compile"):
        load_config("ci-synth", {"train.jit_compile": "yes"})
    samples, _, _, noise = _samples()
    with pytest.raises(InputError, match=r"\[train\] negatives"):
        InputPipeline(samples, noise, batch_size=8, num_negatives=2, negatives="in_batch")
    pipe = InputPipeline(samples, noise, batch_size=30, num_negatives=2)
    with pytest.raises(InputError, match=r"\[train\] batch_size = 30 must be a multiple"):
        pipe.dataset(num_pipelines=4)
    with pytest.raises(ConfigError, match=r"\[train\] negative_pool_factor must be >= 1"):
        load_config("ci-synth", {"train.negative_pool_factor": 0})
    with pytest.raises(ConfigError, match=r"\[train\] negative_pool_factor"):
        load_config("ci-synth", {"train.negative_pool_factor": 2.5})
    for bad in (0, 2.0, True):
        with pytest.raises(InputError, match=r"\[train\] negative_pool_factor"):
            InputPipeline(samples, noise, batch_size=8, num_negatives=2, pool_factor=bad)

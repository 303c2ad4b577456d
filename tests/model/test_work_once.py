"""Each piece of work once (issue 21): the item side of the score once per distinct item, the
user block once per user, sparse (lazy Adam) updates of the item table -- all the same
function as before, on the same weights."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from nann_tf.config import ModelConfig
from nann_tf.model import NANNModel
from nann_tf.model.nann import item_side_table, nearest_similarity, split_item_side
from nann_tf.model.scorer import ModelScorer
from nann_tf.train.optim import LazyAdam
from nann_tf.train.step import NANNTrainer, batch_items, history_groups

N, C, L = 60, 5, 6

OPTIONS = {
    "attention": dict(variant="attention"),
    "attention-plain": dict(variant="attention", history_match=False, dot_term=False,
                            position_bias=False),
    "attention-no-score-hidden": dict(variant="attention", score_hidden=[]),
    "attention-no-user-hidden": dict(variant="attention", user_hidden=[]),
    "sum_pool": dict(variant="sum_pool"),
    "two_tower": dict(variant="two_tower"),
}


def make(name, seed=0):
    rng = np.random.default_rng(seed)
    opts = dict(item_dim=8, category_dim=4, embedding_dim=8, item_hidden=[16],
                user_hidden=[12], score_hidden=[16, 8], attention_dim=4)
    opts.update(OPTIONS[name])
    m = NANNModel(N, C, np.r_[0, rng.integers(1, C + 1, N)], ModelConfig(**opts), max_len=L)
    m.build_all(L)
    # Trained-looking weights: every variable random (zeros would hide a missing block).
    for v in m.trainable_variables:
        v.assign(rng.normal(0, 0.5, v.shape).astype(np.float32))
    return m


def _hist():
    return tf.constant([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 9]], tf.int32)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_split_score_is_the_concatenated_first_layer(name):
    """score (item block + user block + pair block) == the score network applied to the
    concatenated [user_vec, ctx, e_v, ctx * e_v (, match)], on the same weights; and a
    precomputed item-side table gives the same scores."""
    m = make(name)
    state = m.encode_user(_hist())
    items = tf.constant(np.random.default_rng(1).integers(1, N + 1, (3, 7)), tf.int32)
    e = m.item_embedding(items)
    concat = m.score_concat(state, e).numpy()
    split = m.score(state, e).numpy()
    np.testing.assert_allclose(split, concat, rtol=1e-5, atol=1e-5)
    assert np.std(concat) > 0.1  # the scores differ between candidates
    table = np.asarray(m.item_embedding(tf.range(N + 1)))
    side = item_side_table(m, table)
    if name == "two_tower":
        assert side is None
        return
    assert side.shape == (N + 1, sum(w for k, w in m.item_side_width().items() if k != "e_v"))
    pre = m.score_items(state, split_item_side(m, tf.gather(table, items),
                                               tf.gather(side, items))).numpy()
    np.testing.assert_allclose(pre, concat, rtol=1e-5, atol=1e-5)


def test_a_model_saved_before_the_split_loads_and_scores_the_same(tmp_path):
    """The first layer's weights are one kernel, as before: a weights file whose score network
    was called on the concatenation loads into the split model and scores the same."""
    m = make("attention")
    state = m.encode_user(_hist())
    e = m.item_embedding(tf.constant([[1, 2, 3], [4, 5, 6], [7, 8, 9]]))
    want = m.score_concat(state, e).numpy()
    path = str(tmp_path / "m.weights.h5")
    m.save_weights(path)
    fresh = make("attention", seed=5)
    assert not np.allclose(fresh.score(fresh.encode_user(_hist()), e).numpy(), want)
    fresh.load_weights(path)
    np.testing.assert_allclose(fresh.score(fresh.encode_user(_hist()), e).numpy(), want,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss", ["nce", "softmax"])
def test_pool_layout_gives_the_losses_and_gradients_of_the_gathered_ids(loss):
    """compute_losses on a negatives pool [R, s] (item side once per draw) == on the [B, K]
    ids each example takes from it (item side per slot, concatenated first layer)."""
    m = make("attention")
    K, s, b = 6, 2, 3
    rows = b + (K // s) - 1
    rng = np.random.default_rng(3)
    pool = tf.constant(rng.integers(1, N + 1, (rows, s)), tf.int32)
    flat = tf.reshape(pool, [-1])
    neg = tf.gather(flat, np.arange(b)[:, None] * s + np.arange(K)[None, :])
    pos = tf.constant([3, 9, 6], tf.int32)  # 3 also among the draws: accidental hits
    log_q = np.log(np.full(N + 1, 1.0 / N, np.float32))
    tr = NANNTrainer(m, log_q, K, 0.0, 1.0, loss=loss)
    out = {}
    for name, negs in (("pool", pool), ("ids", neg)):
        with tf.GradientTape() as tape:
            total, l_nce, _ = tr.compute_losses(_hist(), pos, negs)
        out[name] = (float(total), tape.gradient(total, m.trainable_variables))
    assert out["pool"][0] == pytest.approx(out["ids"][0], rel=1e-5)
    for g1, g2 in zip(out["pool"][1], out["ids"][1]):
        np.testing.assert_allclose(tf.convert_to_tensor(g1), tf.convert_to_tensor(g2),
                                   rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,layout,mode", [("attention", "ids", "absolute"),
                                              ("attention", "pool", "relative"),
                                              ("sum_pool", "shared", "absolute")])
def test_fgsm_in_one_pass_gives_the_two_tape_gradients(name, layout, mode):
    """With FGSM on, the step that takes the FGSM direction from the loss's own backward pass
    returns the losses and gradients of the two-tape reference (an inner gradient for the
    direction, then the outer tape through everything), on the same weights and batch; for
    every layout of the negatives. Mixed rows: an accidental hit in one of them."""
    m = make(name)
    K, b = 6, 3
    rng = np.random.default_rng(5)
    pos = tf.constant([3, 9, 6], tf.int32)
    negs = {"ids": tf.constant(np.c_[rng.integers(1, N + 1, (b, K - 1)), [3, 1, 2]],
                               tf.int32),
            "pool": tf.constant(rng.integers(1, N + 1, (b + 2, 2)), tf.int32),
            "shared": tf.constant([*rng.integers(1, N + 1, K - 1), 9], tf.int32)}[layout]
    log_q = np.log(rng.dirichlet(np.ones(N + 1)).astype(np.float32) + 1e-6)
    out = {}
    for one_pass in (True, False):
        tr = NANNTrainer(m, log_q, K, 0.05, 0.7, fgsm_eps_mode=mode, fgsm_one_pass=one_pass)
        grads, total, l_nce, l_aux, step = tr._losses_and_grads(_hist(), pos, negs)
        out[one_pass] = (float(total), float(l_aux), grads)
    assert out[True][1] > 0, "the adversarial loss is live"
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-5)
    assert out[True][1] == pytest.approx(out[False][1], rel=1e-4)
    checked = 0
    for v, g1, g2 in zip(m.trainable_variables, out[True][2], out[False][2]):
        assert (g1 is None) == (g2 is None), v.path
        if g1 is not None:
            np.testing.assert_allclose(tf.convert_to_tensor(g1), tf.convert_to_tensor(g2),
                                       rtol=1e-4, atol=1e-6, err_msg=v.path)
            checked += 1
    assert checked >= len(m.trainable_variables) - 1


def test_model_scorer_with_the_side_table_scores_like_the_model():
    m = make("attention")
    table = np.asarray(m.item_embedding(tf.range(N + 1)))
    state = m.encode_user(_hist())
    rows = tf.constant([0, 0, 1, 2, 2, 2], tf.int32)
    ids = tf.constant([5, 7, 5, 1, 2, 60], tf.int32)
    plain = ModelScorer(m, tf.constant(table), gather_device=None)
    side = ModelScorer(m, tf.constant(table), gather_device=None,
                       side_table=tf.constant(item_side_table(m, table)))
    a = plain.score_pairs(state, 3, rows, ids).numpy()
    np.testing.assert_allclose(side.score_pairs(state, 3, rows, ids).numpy(), a, rtol=1e-5,
                               atol=1e-5)


# ---------------------------------------------------------------------------- lazy Adam
def _step(opt, table, dense, ids):
    with tf.GradientTape() as t:
        loss = tf.reduce_sum(tf.square(tf.reduce_sum(tf.gather(table, ids), axis=0) * dense))
    grads = t.gradient(loss, [table, dense])
    opt.apply(grads, [table, dense])
    return grads


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_lazy_adam_equals_adam_when_every_row_is_in_every_batch(weight_decay):
    rng = np.random.default_rng(0)
    t0, d0 = rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    lazy_t, lazy_d = keras.Variable(t0), keras.Variable(d0)
    ref_t, ref_d = keras.Variable(t0), keras.Variable(d0)
    lazy = LazyAdam(0.05, weight_decay=weight_decay)
    lazy.build([lazy_t, lazy_d])
    lazy.sparse_variables([lazy_t])
    ref = keras.optimizers.Adam(0.05, weight_decay=weight_decay or None)
    ref.build([ref_t, ref_d])
    ids = tf.constant([0, 1, 2, 3, 4, 5, 6, 7, 2, 2])  # every row; row 2 three times
    for _ in range(4):
        grads = _step(lazy, lazy_t, lazy_d, ids)
        assert isinstance(grads[0], tf.IndexedSlices)
        with tf.GradientTape() as t:
            loss = tf.reduce_sum(tf.square(tf.reduce_sum(tf.gather(ref_t, ids), axis=0)
                                           * ref_d))
        g = t.gradient(loss, [ref_t, ref_d])
        ref.apply([tf.convert_to_tensor(g[0]), g[1]], [ref_t, ref_d])
    np.testing.assert_allclose(lazy_t.numpy(), ref_t.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lazy_d.numpy(), ref_d.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(lazy_t.numpy(), t0)


def test_lazy_adam_leaves_rows_outside_the_batch_and_their_moments_alone():
    rng = np.random.default_rng(1)
    table = keras.Variable(rng.normal(size=(8, 3)).astype(np.float32))
    dense = keras.Variable(rng.normal(size=3).astype(np.float32))
    opt = LazyAdam(0.05, weight_decay=0.1)
    opt.build([table, dense])
    opt.sparse_variables([table])
    _step(opt, table, dense, tf.constant([0, 1, 2, 3, 4, 5, 6, 7]))  # every row has moments
    before = table.numpy().copy()
    m = [v.numpy().copy() for v in opt.variables if v.shape == (8, 3)]
    _step(opt, table, dense, tf.constant([1, 1, 6]))
    moved = np.flatnonzero(np.any(table.numpy() != before, axis=1)).tolist()
    assert moved == [1, 6]
    after = [v.numpy() for v in opt.variables if v.shape == (8, 3)]
    assert len(after) == 2  # first and second moments of the table
    for a, b in zip(m, after):
        untouched = [r for r in range(8) if r not in (1, 6)]
        np.testing.assert_array_equal(a[untouched], b[untouched])
        assert not np.allclose(a[[1, 6]], b[[1, 6]])


@pytest.mark.parametrize("fused", [False, True])
def test_lazy_adam_reads_the_table_and_its_moments_by_row_only(fused):
    """The sparse update gathers the batch's rows from the table and both moment tables
    (ResourceGather; or the fused op reads them in place) and never reads them whole: its
    scatters put them in copy-on-read mode, where every whole read (ReadVariableOp) copies the
    table (two 111 MB copies a step at 1M items before this was caught)."""
    rng = np.random.default_rng(2)
    table = keras.Variable(rng.normal(size=(8, 3)).astype(np.float32))
    dense = keras.Variable(rng.normal(size=3).astype(np.float32))
    opt = LazyAdam(0.05, weight_decay=0.1, fused=fused)
    opt.build([table, dense])
    opt.sparse_variables([table])

    @tf.function
    def fn():
        with tf.GradientTape() as t:
            loss = tf.reduce_sum(tf.gather(table.value, [1, 1, 6]) * dense)
        opt.apply(t.gradient(loss, [table, dense]), [table, dense])

    graph = fn.get_concrete_function().graph
    inner = {id(ext): int_ for ext, int_ in graph.captures}
    watched = [table] + [v for v in opt.variables if v.shape == (8, 3)]
    assert len(watched) == 3
    for var in watched:
        handle = inner[id(var.value.handle)]
        readers = {c.type for c in handle.consumers()}
        assert ("NannSparseAdam" if fused else "ResourceGather") in readers, (var.path, readers)
        assert "ReadVariableOp" not in readers, (var.path, readers)


# ------------------------------------------------- the item network once per distinct item
def _dup_hist():
    """Rows that differ: padding, an item twice in one history (a tie for the history
    match), items the candidates also hold, an empty history."""
    return tf.constant([[0, 0, 3, 4, 3, 6], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0]], tf.int32)


def _grads_equal(a, b, variables):
    checked = 0
    for v, g1, g2 in zip(variables, a, b):
        assert (g1 is None) == (g2 is None), v.path
        if g1 is not None:
            np.testing.assert_allclose(tf.convert_to_tensor(g1), tf.convert_to_tensor(g2),
                                       rtol=1e-4, atol=1e-6, err_msg=v.path)
            checked += 1
    return checked


def test_batch_items_finds_every_slots_item():
    hist, pos = _dup_hist(), tf.constant([3, 9, 6], tf.int32)
    neg = tf.constant([[9, 1], [7, 7], [2, 3]], tf.int32)
    items = batch_items(hist, pos, neg, granule=4)
    ids = items["ids"].numpy()
    assert len(ids) % 4 == 0
    real = ids[ids != 0]
    assert len(set(real.tolist())) == len(real)  # distinct, but for the padding item
    assert set(ids.tolist()) == set(np.r_[hist.numpy().ravel(), pos, neg.numpy().ravel()])
    for key, t in (("hist", hist), ("pos", pos), ("neg", neg)):
        np.testing.assert_array_equal(ids[items[key].numpy()], t.numpy())


@pytest.mark.parametrize("layout,fgsm", [("ids", 0.0), ("pool", 0.0), ("shared", 0.0),
                                         ("pool", 0.05)])
def test_item_network_once_per_distinct_item_gives_every_slots_gradients(layout, fgsm):
    """The step with :func:`batch_items` (the item network over the batch's distinct items,
    gathered per slot) returns the losses and gradients of the step that runs it per slot,
    for every layout of the negatives and with FGSM's per-slot perturbation."""
    m = make("attention")
    K, b = 6, 3
    rng = np.random.default_rng(7)
    pos = tf.constant([3, 9, 6], tf.int32)
    neg = {"ids": tf.constant(np.c_[rng.integers(1, N + 1, (b, K - 1)), [3, 1, 2]], tf.int32),
           "pool": tf.constant(rng.integers(1, N + 1, (b + 2, 2)), tf.int32),
           "shared": tf.constant([*rng.integers(1, N + 1, K - 1), 9], tf.int32)}[layout]
    log_q = np.log(rng.dirichlet(np.ones(N + 1)).astype(np.float32) + 1e-6)
    tr = NANNTrainer(m, log_q, K, fgsm, 0.7, fgsm_eps_mode="relative")
    hist = _dup_hist()
    once = tr._losses_and_grads(hist, pos, neg, batch_items(hist, pos, neg, granule=8))
    slots = tr._losses_and_grads(hist, pos, neg)
    for a, b_ in zip(once[1:4], slots[1:4]):
        assert float(a) == pytest.approx(float(b_), rel=1e-5)
    assert _grads_equal(once[0], slots[0], m.trainable_variables) >= \
        len(m.trainable_variables) - 1
    table = m.item_id_embedding.embeddings
    g = once[0][[v.path for v in m.trainable_variables].index(table.path)]
    assert isinstance(g, tf.IndexedSlices) and g.indices.shape[0] % 8 == 0


def test_nearest_similarity_gradient_is_autodiffs():
    """The history match's training gradient (the chosen position's only) equals autodiff of
    the masked max, on rows with padding, an empty history and distinct history rows."""
    rng = np.random.default_rng(4)
    e = tf.math.l2_normalize(tf.constant(rng.normal(size=(3, 5, 4)), tf.float32), axis=-1)
    h = tf.math.l2_normalize(tf.constant(rng.normal(size=(3, 6, 4)), tf.float32), axis=-1)
    mask = tf.constant([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0] * 6], tf.float32)
    up = tf.constant(rng.normal(size=(3, 5)), tf.float32)
    out = {}
    for name, fn in (("custom", nearest_similarity),
                     ("autodiff", lambda a, b, m_: _masked_max_ref(a, b, m_))):
        with tf.GradientTape() as t:
            t.watch([e, h])
            y = fn(e, h, mask)
        out[name] = (y.numpy(), *t.gradient(y, [e, h], output_gradients=up))
    for a, b in zip(out["custom"], out["autodiff"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.all(out["custom"][0][2] == -2.0)  # the empty history
    assert np.abs(out["custom"][1][0]).sum() > 0 and np.abs(out["custom"][2][1]).sum() > 0


def _masked_max_ref(e, h, mask):
    sim = tf.einsum("bcd,bld->bcl", e, h)
    m = mask[:, None, :]
    return tf.reduce_max(sim * m - 2.0 * (1.0 - m), axis=-1)


def test_training_gradient_of_the_history_match_is_autodiffs_on_a_repeated_item():
    """In training the model takes the history match's gradient from nearest_similarity; on a
    history that holds an item twice (a tie autodiff splits between the two positions) the
    gradients of every variable are still autodiff's (training=False on this model without
    dropout differs only there)."""
    m = make("attention")
    rng = np.random.default_rng(8)
    pos = tf.constant([3, 9, 6], tf.int32)
    neg = tf.constant(np.c_[rng.integers(1, N + 1, (3, 4)), [3, 4, 6]], tf.int32)
    tr = NANNTrainer(m, np.log(np.full(N + 1, 1.0 / N, np.float32)), 5, 0.0, 1.0)
    grads = {}
    for training in (True, False):
        with tf.GradientTape() as tape:
            total, _, _ = tr.compute_losses(_dup_hist(), pos, neg, training=training)
        grads[training] = tape.gradient(total, m.trainable_variables)
    assert _grads_equal(grads[True], grads[False], m.trainable_variables) >= \
        len(m.trainable_variables) - 1


def _adam_tables(rng, n=40, d=5):
    return [keras.Variable(rng.normal(size=(n, d)).astype(np.float32)) for _ in range(2)]


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_fused_sparse_adam_is_its_stock_ops_twin(weight_decay):
    """LazyAdam's one-op update (NannSparseAdam) gives the stock ops' tables and moments over
    steps whose batches repeat rows (in different orders), skip rows, and touch row 0."""
    out = {}
    for fused in (True, False):
        table, dense = _adam_tables(np.random.default_rng(6))
        small = keras.Variable(np.random.default_rng(7).normal(size=(4, 3)).astype(np.float32))
        opt = LazyAdam(0.05, weight_decay=weight_decay, fused=fused)
        opt.build([table, dense, small])
        opt.sparse_variables([table])
        batches = np.random.default_rng(8)
        for _ in range(4):
            ids = tf.constant(batches.integers(0, 40, 30), tf.int32)
            cats = tf.constant(batches.integers(0, 4, 30), tf.int32)
            with tf.GradientTape() as t:
                loss = tf.reduce_sum(tf.gather(table.value, ids)[:, :3] *
                                     tf.gather(small.value, cats) * dense[:3, 0])
                loss += tf.reduce_sum(tf.square(tf.gather(table.value, ids[:5])))
            grads = t.gradient(loss, [table, dense, small])
            assert isinstance(grads[0], tf.IndexedSlices)
            opt.apply(grads, [table, dense, small])
        out[fused] = [table.numpy(), dense.numpy(), small.numpy()] + \
            [v.numpy() for v in opt.variables if len(v.shape) == 2]
    assert len(out[True]) == len(out[False]) == 9  # 3 variables, 6 moments
    for a, b in zip(out[True], out[False]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    table0 = _adam_tables(np.random.default_rng(6))[0].numpy()
    assert not np.allclose(out[True][0], table0)


def test_fused_sparse_adam_refuses_a_bad_row_and_writes_nothing():
    from nann_tf import ops

    rng = np.random.default_rng(9)
    var, m = _adam_tables(rng)
    v = keras.Variable(np.abs(rng.normal(size=(40, 5))).astype(np.float32))
    before = [x.numpy().copy() for x in (var, m, v)]
    args = (tf.constant(0.1), tf.constant(0.9), tf.constant(0.999), tf.constant(1e-7),
            tf.constant(0.0))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"indices\[2\] = 40 is not in"):
        ops.sparse_adam(var.value, m.value, v.value, tf.constant([3, 1, 40, 2]),
                        tf.ones([4, 5]), *args)
    with pytest.raises(tf.errors.InvalidArgumentError, match="grad has 4 columns"):
        ops.sparse_adam(var.value, m.value, v.value, tf.constant([3]), tf.ones([1, 4]),
                        *args)
    with pytest.raises(tf.errors.InvalidArgumentError, match="three distinct variables"):
        ops.sparse_adam(var.value, m.value, m.value, tf.constant([3]), tf.ones([1, 5]),
                        *args)
    for a, b in zip(before, (var, m, v)):
        np.testing.assert_array_equal(a, b.numpy())


def test_fused_sparse_adam_leaves_a_value_read_before_it_alone():
    """A dense read of the table taken before the in-place update (in the same function, so
    the read's buffer is still alive) keeps the old values: the op copies a shared buffer
    before writing, and later dense reads copy (copy-on-read)."""
    from nann_tf import ops

    rng = np.random.default_rng(10)
    var, m = _adam_tables(rng)
    v = keras.Variable(np.zeros((40, 5), np.float32))
    args = (tf.constant(0.1), tf.constant(0.9), tf.constant(0.999), tf.constant(1e-7),
            tf.constant(0.0))

    @tf.function
    def read_then_update():
        before = var.value.read_value()
        with tf.control_dependencies([before]):
            ops.sparse_adam(var.value, m.value, v.value, tf.constant([1, 7]),
                            tf.ones([2, 5]), *args)
        return before

    for _ in range(2):  # the first call switches the variables to copy-on-read
        old = var.numpy().copy()
        before = read_then_update().numpy()
        np.testing.assert_array_equal(before, old)
        changed = np.flatnonzero(np.any(var.numpy() != old, axis=1)).tolist()
        assert changed == [1, 7]


@pytest.mark.parametrize("name,layout,dedup", [("attention", "pool", True),
                                               ("attention", "ids", False),
                                               ("attention", "shared", True),
                                               ("sum_pool", "pool", False)])
def test_history_groups_give_the_losses_and_gradients_of_the_whole_batch(name, layout, dedup):
    """Scoring the batch in two groups by history length, each over its histories' own length
    (history_groups), gives the losses and gradients of scoring it over L; on rows whose
    histories differ in length (one empty, one full) in an odd-sized batch."""
    m = make(name)
    K = 4
    hist = tf.constant([[0, 0, 3, 4, 3, 6], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0],
                        [0, 0, 0, 0, 0, 9], [0, 0, 0, 0, 7, 8]], tf.int32)
    b = 5
    rng = np.random.default_rng(11)
    pos = tf.constant([3, 9, 6, 1, 2], tf.int32)
    neg = {"ids": tf.constant(rng.integers(1, N + 1, (b, K)), tf.int32),
           "pool": tf.constant(rng.integers(1, N + 1, (b + 1, 2)), tf.int32),
           "shared": tf.constant([*rng.integers(1, N + 1, K - 1), 9], tf.int32)}[layout]
    log_q = np.log(rng.dirichlet(np.ones(N + 1)).astype(np.float32) + 1e-6)
    tr = NANNTrainer(m, log_q, K, 0.0, 1.0)
    items = batch_items(hist, pos, neg, granule=8) if dedup else None
    groups = history_groups(hist, None if items is None else items["hist"])
    assert [g.shape[1] for g in groups["hist"]] == [2, 6]  # the short half: 1 of 6 filled
    assert sorted(np.concatenate([r.numpy() for r in groups["rows"]]).tolist()) == \
        list(range(b))
    grouped = tr._losses_and_grads(hist, pos, neg, items, groups)
    whole = tr._losses_and_grads(hist, pos, neg, items)
    for a, b_ in zip(grouped[1:3], whole[1:3]):
        assert float(a) == pytest.approx(float(b_), rel=1e-5)
    assert _grads_equal(grouped[0], whole[0], m.trainable_variables) >= \
        len(m.trainable_variables) - 2

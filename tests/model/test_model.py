"""The model's retrieval API: encode_user once, score any number of candidates."""

import numpy as np
import pytest
import tensorflow as tf

from nann_tf.config import ModelConfig
from nann_tf.model import NANNModel

N, C = 40, 5


def make(variant, **options):
    rng = np.random.default_rng(0)
    m = NANNModel(N, C, np.r_[0, rng.integers(1, C + 1, N)],
                  ModelConfig(variant=variant, item_dim=8, category_dim=4, embedding_dim=8,
                              item_hidden=[16], user_hidden=[16], score_hidden=[16],
                              attention_dim=8, **options), max_len=6)
    m.build_all(6)
    if m.cfg.position_bias:  # trained recency logits differ by position; zeros would not
        m.recency.assign(rng.normal(0, 1, m.recency.shape).astype(np.float32))
    if m.cfg.history_match and variant == "attention":
        m.match_weight.assign(-2.0)
    return m


@pytest.mark.parametrize("variant", ["attention", "sum_pool", "two_tower"])
def test_split_api_equals_call_and_is_per_candidate(variant):
    m = make(variant)
    hist = tf.constant([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]], tf.int32)
    items = tf.constant([[1, 2, 3, 7], [9, 10, 11, 12]], tf.int32)
    full = m({"hist": hist, "items": items}).numpy()
    state = m.encode_user(hist)
    split = m.score(state, m.item_embedding(items)).numpy()
    np.testing.assert_allclose(full, split, rtol=1e-5, atol=1e-6)
    # A candidate's score does not depend on which other candidates share its row.
    one = m.score(state, m.item_embedding(items[:, 2:3])).numpy()
    np.testing.assert_allclose(one[:, 0], split[:, 2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["attention", "sum_pool", "two_tower"])
def test_padding_is_masked(variant):
    m = make(variant)
    items = tf.constant([[1, 2, 3]], tf.int32)
    a = m({"hist": tf.constant([[0, 0, 0, 7, 8, 9]]), "items": items}).numpy()
    b = m({"hist": tf.constant([[0, 7, 8, 9]]), "items": items}).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    c = m({"hist": tf.constant([[5, 7, 8, 9]]), "items": items}).numpy()
    assert not np.allclose(a, c), "a real behaviour must change the score"


def test_empty_history_gives_finite_scores():
    m = make("attention")
    s = m({"hist": tf.zeros([2, 6], tf.int32), "items": tf.constant([[1, 2], [3, 4]])}).numpy()
    assert np.isfinite(s).all()


def test_attention_is_target_dependent_and_sum_pool_is_not_in_context():
    """With attention, which behaviour matters depends on the candidate (the NANN premise)."""
    m = make("attention")
    state = m.encode_user(tf.constant([[1, 2, 3, 4, 5, 6]]))
    e = m.item_embedding(tf.constant([[7, 30]]))
    q = m.att_query(e)
    w = tf.nn.softmax(tf.einsum("bca,bla->bcl", q, state["keys"]), -1).numpy()
    assert not np.allclose(w[0, 0], w[0, 1])


def test_item_category_table_is_a_weight_and_bad_shape_is_refused():
    m = make("sum_pool")
    names = [w.name for w in m.weights]
    assert any("item_category" in n for n in names)
    with pytest.raises(ValueError, match="item_category"):
        NANNModel(N, C, np.zeros(N), ModelConfig())


@pytest.mark.parametrize("variant", ["attention", "sum_pool", "two_tower"])
def test_recency_counts_positions_from_the_most_recent_behaviour(variant):
    """The same behaviours, most recent last, get the same weights whatever the padding: a
    recency counted from the left (oldest) end would move with the history length."""
    m = make(variant)
    items = tf.constant([[1, 2, 3]], tf.int32)
    a = m({"hist": tf.constant([[0, 0, 0, 7, 8, 9]]), "items": items}).numpy()
    b = m({"hist": tf.constant([[7, 8, 9]]), "items": items}).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    c = m({"hist": tf.constant([[0, 0, 0, 9, 8, 7]]), "items": items}).numpy()
    assert not np.allclose(a, c), "the order of the behaviours matters"
    off = make(variant, position_bias=False)
    d = off({"hist": tf.constant([[0, 0, 0, 9, 8, 7]]), "items": items}).numpy()
    e = off({"hist": tf.constant([[0, 0, 0, 7, 8, 9]]), "items": items}).numpy()
    if variant != "attention":  # mean pooling: the order does not matter without recency
        np.testing.assert_allclose(d, e, rtol=1e-5, atol=1e-6)


def test_history_match_sees_the_candidates_already_in_the_history():
    """The feature is the candidate's largest cosine with a history item: 1 for an item the user
    has, and with a negative learned weight those items drop; padding never matches."""
    m = make("attention")
    hist = tf.constant([[0, 0, 0, 7, 8, 9]])
    state = m.encode_user(hist)
    e = m.item_embedding(tf.constant([[7, 9, 1, 2]]))
    unit = tf.math.l2_normalize(e, -1)
    sim = tf.einsum("bcd,bld->bcl", unit, state["values_unit"]).numpy()[0]
    best = np.where(np.arange(6) >= 3, sim, -3).max(axis=1)
    np.testing.assert_allclose(best[:2], 1.0, atol=1e-5)
    assert (best[2:] < 1.0 - 1e-4).all()
    assert "values_unit" not in make("attention", history_match=False).encode_user(hist)
    # The learned weight enters linearly: moving it by delta moves exactly the matched items by
    # delta (cos = 1) and the others by delta * their best cosine.
    s0 = m.score(state, e).numpy()[0]
    m.match_weight.assign(m.match_weight - 1.0)
    s1 = m.score(state, e).numpy()[0]
    np.testing.assert_allclose(s0 - s1, best, rtol=1e-4, atol=1e-5)


def test_dot_term_adds_the_inner_product_of_a_user_vector_and_e_v():
    m = make("attention", dot_term=True, history_match=False, position_bias=False)
    hist = tf.constant([[1, 2, 3, 4, 5, 6]])
    state = m.encode_user(hist)
    e = m.item_embedding(tf.constant([[7, 30, 11]]))
    with_dot = m.score(state, e).numpy()
    without = m.score({k: v for k, v in state.items() if k != "dot_u"}, e).numpy()
    expected = tf.einsum("bd,bcd->bc", state["dot_u"], e).numpy()
    np.testing.assert_allclose(with_dot - without, expected, rtol=1e-4, atol=1e-5)
    assert "dot_u" not in make("two_tower", dot_term=True).encode_user(hist)


def test_id_dropout_drops_whole_id_embeddings_in_training_only():
    """A dropped occurrence gets exactly the e_v of its category alone (a zero id embedding);
    about id_dropout of them are dropped; inference never drops."""
    m = make("attention", id_dropout=0.5)
    ids = tf.constant(np.arange(1, N + 1, dtype=np.int32)[None, :].repeat(50, axis=0))
    kept = m.item_embedding(ids).numpy()
    np.testing.assert_array_equal(kept, m.item_embedding(ids).numpy())  # no randomness
    train = m.item_embedding(ids, training=True).numpy()
    saved = m.item_id_embedding.embeddings.numpy().copy()
    m.item_id_embedding.embeddings.assign(np.zeros_like(saved))
    category_only = m.item_embedding(ids).numpy()
    m.item_id_embedding.embeddings.assign(saved)
    same_as_kept = np.isclose(train, kept, atol=1e-6).all(-1)
    same_as_dropped = np.isclose(train, category_only, atol=1e-6).all(-1)
    assert (same_as_kept | same_as_dropped).all()
    assert 0.4 < same_as_dropped.mean() < 0.6
    assert not make("attention").cfg.id_dropout  # off by default

"""The model scorer: flat pairs -> padded rows -> scores, with and without the XLA grid."""

import numpy as np
import pytest
import tensorflow as tf

from nann_tf.config import ModelConfig
from nann_tf.model import NANNModel
from nann_tf.model.scorer import ModelScorer, ShapeGrid

N = 60


@pytest.fixture(scope="module")
def model_and_table():
    rng = np.random.default_rng(0)
    m = NANNModel(N, 4, np.r_[0, rng.integers(1, 5, N)],
                  ModelConfig(item_dim=8, category_dim=4, embedding_dim=8, item_hidden=[8],
                              user_hidden=[8], score_hidden=[16], attention_dim=8), max_len=5)
    m.build_all(5)
    table = m.item_embedding(tf.range(N + 1)).numpy()
    return m, table


def test_grid_is_geometric_and_pads_up():
    g = ShapeGrid(max_size=1000, min_size=16, ratio=1.25)
    assert g.sizes[0] == 16 and g.sizes[-1] == 1000
    assert all(b > a for a, b in zip(g.sizes, g.sizes[1:]))
    assert all(b <= a * 1.25 + 8 for a, b in zip(g.sizes, g.sizes[1:]))
    for w in [1, 16, 17, 999, 1000]:
        p = int(g.pad(tf.constant(w)))
        assert p >= w and p == g.pad_np(w)
        assert p in g.sizes and (g.sizes.index(p) == 0 or g.sizes[g.sizes.index(p) - 1] < w)
    with pytest.raises(tf.errors.InvalidArgumentError, match="shape grid"):
        g.pad(tf.constant(1001))
    with pytest.raises(ValueError):
        ShapeGrid([5, 3])


def test_search_grid_holds_a_filtered_walks_first_call():
    """With entry points, the widths of a filtered walk's first call (start level + one history
    + all or half the entry points) are grid sizes: padded by nothing, not up to 25%."""
    from nann_tf.index.hnsw import build_hnsw

    emb = np.random.default_rng(0).normal(size=(3001, 8)).astype(np.float32)
    graph = build_hnsw(emb, M=8, ef_construction=40, num_threads=1)
    start = len(graph.start_nodes(1))
    plain = ShapeGrid.for_search(graph, 1, 40, 10)
    grid = ShapeGrid.for_search(graph, 1, 40, 10, entries=1000)
    for w in (start + 10 + 1000, start + 10 + 500):
        assert w in grid.sizes and grid.pad_np(w) == w
        assert w not in plain.sizes
    # Every request's first call (the start level and one history) fits exactly, either way.
    assert plain.pad_np(start + 10) == grid.pad_np(start + 10) == start + 10
    assert start + 10 not in ShapeGrid(max_size=plain.max_size).sizes
    # The rest is the geometric grid up to the widest call (here the first: 40 x 16 < it).
    assert grid.max_size == start + 1010
    assert set(grid.sizes) == set(ShapeGrid(max_size=start + 1010).sizes) | {start + 510,
                                                                           start + 10}


@pytest.mark.parametrize("use_grid", [False, True])
@pytest.mark.parametrize("ascending", [False, True])
def test_pairs_scored_like_the_model(model_and_table, use_grid, ascending):
    m, table = model_and_table
    rng = np.random.default_rng(1)
    b = 3
    hist = rng.integers(0, N + 1, size=(b, 5)).astype(np.int32)
    state = m.encode_user(hist)
    # Unsorted rows (or the same pairs by row: the search's rounds), a row with no candidates,
    # repeated items across rows.
    rows = np.array([2, 0, 2, 2, 0, 2], np.int32)
    ids = np.array([5, 7, 9, 5, 60, 1], np.int32)
    if ascending:
        order = np.argsort(rows, kind="stable")
        rows, ids = rows[order], ids[order]
    grid = ShapeGrid([8, 16]) if use_grid else None
    got = ModelScorer(m, tf.constant(table), grid).score_pairs(state, b, rows, ids).numpy()
    want = np.array([m.score({k: v[r:r + 1] for k, v in state.items()},
                             table[None, [i]]).numpy()[0, 0] for r, i in zip(rows, ids)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    empty = ModelScorer(m, tf.constant(table), grid).score_pairs(
        state, b, np.zeros([0], np.int32), np.zeros([0], np.int32))
    assert empty.shape == (0,)


def test_float16_table_scores_close(model_and_table):
    m, table = model_and_table
    state = m.encode_user(np.ones((2, 5), np.int32))
    rows, ids = np.array([0, 1, 1], np.int32), np.array([3, 4, 5], np.int32)
    a = ModelScorer(m, tf.constant(table)).score_pairs(state, 2, rows, ids).numpy()
    h = ModelScorer(m, tf.constant(table.astype(np.float16))).score_pairs(
        state, 2, rows, ids).numpy()
    np.testing.assert_allclose(a, h, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float16, tf.bfloat16])
def test_gather_rows_op_is_tf_gather_bit_for_bit(dtype):
    """NannGatherRows (the scorer's gather of table rows with the op library): tf.gather's rows
    for any index shape and dtype, first and last rows, repeats, enough rows to be split over
    threads; its prefetch runs past no row (a wrong bound would copy a neighbour's row)."""
    from nann_tf import ops

    rng = np.random.default_rng(2)
    n, d = 5000, 20
    table = tf.Variable(tf.cast(rng.normal(size=(n, d)), dtype))
    ids = rng.integers(0, n, size=(3, 4001)).astype(np.int32)
    ids[0, :3] = [0, n - 1, 0]
    ids[2, -2:] = [n - 1, n - 1]
    for idx in (ids, ids[1].astype(np.int64), ids[:, :0], ids[2, :13]):
        got = ops.gather_rows(table, idx)
        want = tf.gather(table, idx)
        assert got.dtype == dtype and got.shape == want.shape
        assert np.array_equal(tf.bitcast(got, tf.int16 if dtype != tf.float32 else tf.int32),
                              tf.bitcast(want, tf.int16 if dtype != tf.float32 else tf.int32))
    # In a graph the output's last dimension is the variable's (the shape function).
    spec = tf.function(lambda i: ops.gather_rows(table, i)).get_concrete_function(
        tf.TensorSpec([None, 7], tf.int32))
    assert spec.output_shapes.as_list() == [None, 7, d]


def test_gather_rows_op_refuses_a_bad_index_naming_it():
    from nann_tf import ops

    table = tf.Variable(np.arange(12, dtype=np.float32).reshape(6, 2))
    for bad, at in (([0, 3, -1, 5], "indices[2] = -1"), ([1, 6, 2], "indices[1] = 6")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"not in \[0, 6\)") as e:
            ops.gather_rows(table, np.array(bad, np.int32))
        assert at in str(e.value)
    with pytest.raises(TypeError, match="tf.Variable"):
        ops.gather_rows(tf.constant([[1.0]]), np.array([0], np.int32))
    # The table is untouched and still gathers.
    np.testing.assert_array_equal(ops.gather_rows(table, np.array([5], np.int32)), [[10, 11]])


@pytest.mark.parametrize("use_grid", [False, True])
def test_scorer_with_the_row_op_scores_the_same(model_and_table, use_grid):
    """The served scorer's gather (NannGatherRows on variable tables) gives the stock gather's
    scores exactly, the item-side table included."""
    from nann_tf import ops
    from nann_tf.model.nann import item_side_table

    m, table = model_and_table
    side = item_side_table(m, table)
    e_var, side_var = tf.Variable(table), tf.Variable(side)
    rng = np.random.default_rng(3)
    state = m.encode_user(rng.integers(0, N + 1, size=(2, 5)).astype(np.int32))
    rows = np.array([0, 0, 1, 1, 1], np.int32)
    ids = np.array([4, N, 0, 17, 4], np.int32)
    grid = ShapeGrid([8, 16]) if use_grid else None
    stock = ModelScorer(m, e_var, grid, side_table=side_var).score_pairs(state, 2, rows, ids)
    op = ModelScorer(m, e_var, grid, side_table=side_var, gather=ops.gather_rows).score_pairs(
        state, 2, rows, ids)
    np.testing.assert_array_equal(stock.numpy(), op.numpy())

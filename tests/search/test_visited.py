"""Tests of the visited filter: C++ op vs pure-TF twin vs pybind core vs a NumPy reference.

Also: bad input is an InvalidArgumentError naming the value, tf.function / tf.while_loop /
SavedModel round trips, and the pybind beam-search replay against a slow reference.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nann_tf import ops
from nann_tf.search import visited as V

core = ops.numpy_core()
IMPLS = V.IMPLS
_twin_functions = {}


def twin(fn, *args):
    """Runs the pure-TF twin as a traced graph, one trace per dtype combination: the same code
    as eager, ~10x faster per call (the random-case tests make ~1000 calls). Other tests run
    both implementations eagerly."""
    args = [np.asarray(a) for a in args]
    key = (fn.__name__,) + tuple(a.dtype.name for a in args)
    if key not in _twin_functions:
        signature = [tf.TensorSpec([None] * a.ndim, a.dtype) for a in args]
        _twin_functions[key] = tf.function(lambda *a: fn(*a, impl="tf"),
                                           input_signature=signature)
    return _twin_functions[key](*args)
HYPOTHESIS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow],
                      derandomize=True)


# --- NumPy reference ----------------------------------------------------------------------------


def reference_filter(ids, rows, bitmap):
    """The specification, written as plainly as possible: Python ints, one pair at a time."""
    bits = bitmap.dtype.itemsize * 8
    words = bitmap.view(np.uint64 if bits == 64 else np.uint32).copy()
    kept_ids, kept_rows = [], []
    for item, row in zip(np.asarray(ids).tolist(), np.asarray(rows).tolist()):
        word, bit = divmod(item, bits)
        if not (int(words[row, word]) >> bit) & 1:
            words[row, word] = words.dtype.type(int(words[row, word]) | (1 << bit))
            kept_ids.append(item)
            kept_rows.append(row)
    return np.array(kept_ids, np.int64), np.array(kept_rows, np.int64), words.view(bitmap.dtype)


def expand(frontier, frontier_rows, values, splits):
    ids = [values[j] for f in frontier for j in range(splits[f], splits[f + 1])]
    rows = [r for f, r in zip(frontier, frontier_rows) for _ in range(splits[f], splits[f + 1])]
    return np.array(ids, np.int64), np.array(rows, np.int64)


def assert_same(result, expected, label):
    for got, want, part in zip(result, expected, ("kept_ids", "kept_row_ids", "new_bitmap")):
        got = got.numpy() if tf.is_tensor(got) else got
        np.testing.assert_array_equal(got, want, err_msg=f"{label}: {part}")


# --- random cases -------------------------------------------------------------------------------
# Hypothesis draws the structure of a case (sizes, dtypes, mode, a seed); NumPy draws the values
# from the seed. Drawing every id through Hypothesis costs more than running the case.


@st.composite
def bitmap_shapes(draw):
    word_dtype = draw(st.sampled_from([np.int64, np.int32]))
    bits = np.dtype(word_dtype).itemsize * 8
    batch = draw(st.integers(0, 4))
    words = draw(st.integers(1, 3))
    return word_dtype, bits, batch, words


def edge_ids(capacity, bits):
    """0, the last id, and both sides of every word boundary."""
    return np.array(sorted({0, capacity - 1} | {b for w in range(1, capacity // bits + 1)
                                                for b in (w * bits - 1, w * bits)
                                                if b < capacity}))


def random_pairs(rng, mode, n, batch, capacity, bits):
    """(ids, rows) for a mode: random (half of the ids at the bitmap's edges), all duplicates
    of one pair, or empty."""
    if batch == 0 or mode == "empty" or n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if mode == "duplicates":
        return (np.full(n, rng.integers(capacity)), np.full(n, rng.integers(batch)))
    ids = np.where(rng.random(n) < 0.5, rng.choice(edge_ids(capacity, bits), n),
                   rng.integers(0, capacity, n))
    return ids, rng.integers(0, batch, n)


MODES = st.sampled_from(["random", "random", "random", "duplicates", "empty"])


@st.composite
def filter_cases(draw):
    word_dtype, bits, batch, words = draw(bitmap_shapes())
    capacity = words * bits
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ids, rows = random_pairs(rng, draw(MODES), draw(st.integers(1, 40)), batch, capacity, bits)
    seen = random_pairs(rng, draw(MODES), draw(st.integers(1, 30)), batch, capacity, bits)
    bitmap = reference_filter(*seen, np.zeros((batch, words), word_dtype))[2]
    id_dtype = draw(st.sampled_from([np.int64, np.int32]))
    row_dtype = draw(st.sampled_from([np.int64, np.int32]))
    return ids.astype(id_dtype), rows.astype(row_dtype), bitmap


@st.composite
def gather_cases(draw):
    word_dtype, bits, batch, words = draw(bitmap_shapes())
    capacity = words * bits
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    num_nodes = draw(st.integers(1, 12))
    degrees = rng.integers(0, draw(st.integers(1, 7)), num_nodes)
    splits = np.concatenate([[0], np.cumsum(degrees)])
    values = random_pairs(rng, "random", int(splits[-1]), 1, capacity, bits)[0]
    num_frontier = 0 if batch == 0 else draw(st.integers(0, 8))
    frontier = rng.integers(0, num_nodes, num_frontier)
    frontier_rows = rng.integers(0, max(batch, 1), num_frontier)
    seen = random_pairs(rng, draw(MODES), draw(st.integers(1, 20)), batch, capacity, bits)
    bitmap = reference_filter(*seen, np.zeros((batch, words), word_dtype))[2]
    return (frontier, frontier_rows, values.astype(draw(st.sampled_from([np.int64, np.int32]))),
            splits.astype(draw(st.sampled_from([np.int64, np.int32]))), bitmap)


# --- equality: op == twin == core == reference ------------------------------------------------


@settings(HYPOTHESIS, max_examples=600)
@given(filter_cases())
def test_filter_matches_reference(case):
    ids, rows, bitmap = case
    expected = reference_filter(ids, rows, bitmap)
    for impl in IMPLS:
        result = (twin(V.filter_unvisited, ids, rows, bitmap) if impl == "tf"
                  else V.filter_unvisited(ids, rows, bitmap, impl=impl))
        assert result[0].dtype == ids.dtype and result[1].dtype == rows.dtype
        assert_same(result, expected, impl)
    assert_same(core.filter_unvisited(ids, rows, bitmap), expected, "pybind core")
    inplace = bitmap.copy()
    core.filter_unvisited(ids, rows, inplace, inplace=True)
    np.testing.assert_array_equal(inplace, expected[2])


@settings(HYPOTHESIS, max_examples=400)
@given(gather_cases())
def test_fused_gather_matches_reference(case):
    frontier, frontier_rows, values, splits, bitmap = case
    expected = reference_filter(*expand(frontier, frontier_rows, values, splits), bitmap)
    for impl in IMPLS:
        args = (frontier, frontier_rows, values, splits, bitmap)
        result = (twin(V.gather_unvisited_neighbors, *args) if impl == "tf"
                  else V.gather_unvisited_neighbors(*args, impl=impl))
        assert result[0].dtype == values.dtype
        assert_same(result, expected, impl)
    assert_same(core.gather_unvisited_neighbors(frontier, frontier_rows, values, splits, bitmap),
                expected, "pybind core")


def test_rounds_accumulate_and_count():
    rng = np.random.default_rng(1)
    batch, num_items = 3, 1000
    states = {impl: V.new_visited(batch, num_items) for impl in IMPLS}
    assert states["bitmap"].shape == (batch, V.num_words(num_items)) == (3, 16)
    reference = np.zeros((batch, 16), np.int64)
    scored = np.zeros(batch, np.int64)
    for _ in range(6):
        ids = rng.integers(0, num_items, 300)
        rows = rng.integers(0, batch, 300)
        kept_ids, kept_rows, reference = reference_filter(ids, rows, reference)
        scored += np.bincount(kept_rows, minlength=batch)
        for impl in IMPLS:
            out = V.filter_unvisited(ids, rows, states[impl], impl=impl)
            assert_same(out, (kept_ids, kept_rows, reference), impl)
            states[impl] = out[2]
    for impl in IMPLS:
        np.testing.assert_array_equal(V.num_visited(states[impl]).numpy(), scored)
    # Every item once: nothing is left to keep.
    all_ids = np.tile(np.arange(num_items), batch)
    all_rows = np.repeat(np.arange(batch), num_items)
    for impl in IMPLS:
        full = V.filter_unvisited(all_ids, all_rows, states[impl], impl=impl)[2]
        again = V.filter_unvisited(all_ids, all_rows, full, impl=impl)
        assert again[0].shape == (0,)
        np.testing.assert_array_equal(V.num_visited(full).numpy(), [num_items] * batch)


def test_input_bitmap_is_not_modified():
    bitmap = V.new_visited(2, 100)
    before = bitmap.numpy().copy()
    for impl in IMPLS:
        V.filter_unvisited([1, 2, 99], [0, 1, 1], bitmap, impl=impl)
        V.gather_unvisited_neighbors([0], [1], [5, 6], [0, 2], bitmap, impl=impl)
    np.testing.assert_array_equal(bitmap.numpy(), before)
    array = before.copy()
    core.filter_unvisited([1, 2], [0, 1], array)
    np.testing.assert_array_equal(array, before)


# --- bad input ----------------------------------------------------------------------------------


def raises_naming(fn, *needles):
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        out = fn()
        for t in tf.nest.flatten(out):  # graph-mode errors surface when values are read
            t.numpy()
    message = info.value.message
    for needle in needles:
        assert str(needle) in message, f"{needle!r} not in {message!r}"
    return message


@st.composite
def bad_filter_inputs(draw):
    batch, words = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    capacity = 64 * words
    n = draw(st.integers(1, 10))
    ids = draw(st.lists(st.integers(0, capacity - 1), min_size=n, max_size=n))
    rows = draw(st.lists(st.integers(0, batch - 1), min_size=n, max_size=n))
    kind = draw(st.sampled_from(["negative_id", "id_past_end", "huge_id", "negative_row",
                                 "row_past_end", "huge_row"]))
    position = draw(st.integers(0, n - 1))
    bad = {"negative_id": -draw(st.integers(1, 2**40)),
           "id_past_end": capacity + draw(st.integers(0, 100)),
           "huge_id": draw(st.integers(2**40, 2**63 - 1)),
           "negative_row": -draw(st.integers(1, 2**40)),
           "row_past_end": batch + draw(st.integers(0, 100)),
           "huge_row": draw(st.integers(2**40, 2**63 - 1))}[kind]
    name = "ids" if kind.endswith("id") else "row_ids"
    (ids if name == "ids" else rows)[position] = bad
    return (np.array(ids, np.int64), np.array(rows, np.int64), np.zeros((batch, words), np.int64),
            name, bad)


@settings(HYPOTHESIS, max_examples=60)
@given(bad_filter_inputs())
def test_bad_values_raise_invalid_argument_naming_them(case):
    ids, rows, bitmap, name, bad = case
    for impl in IMPLS:
        raises_naming(lambda: V.filter_unvisited(ids, rows, bitmap, impl=impl), name, bad)
    raises_naming(lambda: ops.filter_unvisited(ids, rows, bitmap), f"{name}[", bad)
    with pytest.raises(ValueError, match=str(bad)):
        core.filter_unvisited(ids, rows, bitmap)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_shapes_raise_invalid_argument(impl):
    bitmap = np.zeros((2, 2), np.int64)
    raises_naming(lambda: V.filter_unvisited([1, 2, 3], [0, 1], bitmap, impl=impl),
                  "ids has 3 elements", "row_ids has 2")
    raises_naming(lambda: V.filter_unvisited([[1, 2]], [[0, 1]], bitmap, impl=impl),
                  "ids must be a vector", "(1, 2)")
    raises_naming(lambda: V.filter_unvisited([1], [0], np.zeros(4, np.int64), impl=impl),
                  "bitmap must be a matrix")
    raises_naming(lambda: V.filter_unvisited([1], [0], np.zeros((1, 1, 1), np.int64), impl=impl),
                  "bitmap must be a matrix")

    # Unknown static shapes: the same checks run inside the graph.
    unknown = tf.TensorSpec(None, tf.int64)
    fn = tf.function(lambda i, r, b: V.filter_unvisited(i, r, b, impl=impl),
                     input_signature=[unknown, unknown, unknown])
    raises_naming(lambda: fn([[1, 2]], [0, 1], bitmap), "must be a vector")
    raises_naming(lambda: fn([1, 2, 3], [0, 1, 1], np.zeros(2, np.int64)), "matrix")
    raises_naming(lambda: fn([1, 2, 3], [0, 1], bitmap), "same length" if impl == "tf"
                  else "ids has 3 elements")
    raises_naming(lambda: fn([1, 500], [0, 1], bitmap), "ids", 500)


def test_raw_op_checks_shapes_itself():
    bitmap = tf.zeros([2, 2], tf.int64)
    raises_naming(lambda: ops.filter_unvisited(tf.zeros([2, 2], tf.int64),
                                               tf.zeros([2, 2], tf.int64), bitmap),
                  "ids must be a vector")
    raises_naming(lambda: ops.filter_unvisited([1, 2], tf.constant([0], tf.int64), bitmap),
                  "ids has 2 elements but row_ids has 1")
    raises_naming(lambda: ops.filter_unvisited([1], tf.constant([0], tf.int64),
                                               tf.zeros([2], tf.int64)), "bitmap must be a matrix")
    raises_naming(lambda: ops.gather_unvisited_neighbors(
        [0], tf.constant([0], tf.int64), tf.constant([1], tf.int64),
        tf.zeros([0], tf.int64), bitmap), "neighbor_row_splits")


def test_shape_functions():
    spec = tf.TensorSpec
    filter_fn = tf.function(ops.filter_unvisited).get_concrete_function(
        spec([7], tf.int64), spec([None], tf.int32), spec([3, 4], tf.int64))
    kept, kept_rows, bitmap = filter_fn.structured_outputs
    assert kept.shape.as_list() == [None] and kept_rows.dtype == tf.int32
    assert bitmap.shape.as_list() == [3, 4]
    empty = tf.function(ops.filter_unvisited).get_concrete_function(
        spec([0], tf.int64), spec([0], tf.int64), spec([None, None], tf.int32))
    assert [t.shape.as_list() for t in empty.structured_outputs] == [[0], [0], [None, None]]
    gather_fn = tf.function(ops.gather_unvisited_neighbors).get_concrete_function(
        spec([None], tf.int64), spec([None], tf.int64), spec([None], tf.int32),
        spec([11], tf.int64), spec([2, 5], tf.int64))
    kept, _, bitmap = gather_fn.structured_outputs
    assert kept.dtype == tf.int32 and kept.shape.as_list() == [None]
    assert bitmap.shape.as_list() == [2, 5]
    # Static shape errors surface when the graph is built (TensorFlow reports them as
    # ValueError there); the public wrappers turn them into InvalidArgumentError first.
    with pytest.raises(ValueError, match="rank 1"):
        tf.function(ops.filter_unvisited).get_concrete_function(
            spec([2, 2], tf.int64), spec([4], tf.int64), spec([1, 1], tf.int64))
    with pytest.raises(ValueError, match="must be equal, but are 3 and 4"):
        tf.function(ops.filter_unvisited).get_concrete_function(
            spec([3], tf.int64), spec([4], tf.int64), spec([1, 1], tf.int64))
    with pytest.raises(ValueError, match="rank 2"):
        tf.function(ops.filter_unvisited).get_concrete_function(
            spec([3], tf.int64), spec([3], tf.int64), spec([4], tf.int64))


GATHER_BAD = [
    # (frontier, rows, values, splits, needles)
    ([3], [0], [1, 2], [0, 1, 2], ("frontier_ids[0] = 3",)),
    ([-1], [0], [1, 2], [0, 1, 2], ("frontier_ids[0] = -1",)),
    ([0, 1], [0, 7], [1, 2], [0, 1, 2], ("frontier_row_ids[1] = 7",)),
    ([1], [0], [1, 2], [0, 2, 1], ("neighbor_row_splits", "2", "1")),
    ([1], [0], [1, 2], [0, 1, 9], ("neighbor_row_splits", "9")),
    ([0], [0], [-4, 2], [0, 1, 2], ("neighbor_values", "-4")),
    ([1], [0], [1, 128], [0, 1, 2], ("neighbor_values", "128")),
    ([1], [0], [1, 2**62], [0, 1, 2], ("neighbor_values", str(2**62))),
]


@pytest.mark.parametrize("frontier,rows,values,splits,needles", GATHER_BAD)
def test_fused_gather_bad_input(frontier, rows, values, splits, needles):
    bitmap = np.zeros((2, 2), np.int64)
    args = [np.array(x, np.int64) for x in (frontier, rows, values, splits)]
    for impl in IMPLS:
        raises_naming(lambda: V.gather_unvisited_neighbors(*args, bitmap, impl=impl), *needles)
    with pytest.raises(ValueError, match=re.escape(needles[-1])):
        core.gather_unvisited_neighbors(*args, bitmap)


def test_new_visited_sizes():
    assert V.new_visited(4, 65).shape == (4, 2)
    assert V.new_visited(4, 65, tf.int32).shape == (4, 3)
    assert V.new_visited(0, 10).shape == (0, 1)
    raises_naming(lambda: V.new_visited(-1, 10), "batch_size = -1")
    raises_naming(lambda: V.new_visited(2, -5), "num_items = -5")
    raises_naming(lambda: V.new_visited(2**20, 2**40), "needs", "MAX_BITMAP_BYTES")
    fn = tf.function(V.new_visited, input_signature=[tf.TensorSpec([], tf.int64)] * 2)
    assert fn(tf.constant(3, tf.int64), tf.constant(130, tf.int64)).shape == (3, 3)
    raises_naming(lambda: fn(tf.constant(2**20, tf.int64), tf.constant(2**40, tf.int64)),
                  "MAX_BITMAP_BYTES")
    with pytest.raises(ValueError, match="would exceed"):
        core.new_visited(2**20, 2**40)
    with pytest.raises(TypeError, match="int32 or int64"):
        V.new_visited(1, 10, tf.float32)
    with pytest.raises(TypeError, match="int32 or int64"):
        V.filter_unvisited([1.5], [0], V.new_visited(1, 10))
    with pytest.raises(ValueError, match="impl"):
        V.filter_unvisited([1], [0], V.new_visited(1, 10), impl="sets")


def test_process_survives_bad_input_and_keeps_working():
    bitmap = V.new_visited(1, 64)
    for bad in (-1, 64, 2**63 - 1, -(2**63)):
        with pytest.raises(tf.errors.InvalidArgumentError):
            ops.filter_unvisited(tf.constant([bad], tf.int64), tf.constant([0], tf.int64), bitmap)
    kept, _, _ = V.filter_unvisited([63, 0, 63], [0, 0, 0], bitmap)
    np.testing.assert_array_equal(kept.numpy(), [63, 0])


# --- graphs: tf.function, tf.while_loop, SavedModel -------------------------------------------


def rounds_data(seed=3, batch=3, num_items=300, num_rounds=4):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, num_items, 80), rng.integers(0, batch, 80))
            for _ in range(num_rounds)], batch, num_items


def eager_rounds(rounds, batch, num_items):
    bitmap = np.zeros((batch, V.num_words(num_items)), np.int64)
    kept_all = []
    for ids, rows in rounds:
        kept, _, bitmap = reference_filter(ids, rows, bitmap)
        kept_all.append(kept)
    return np.concatenate(kept_all), bitmap


@pytest.mark.parametrize("impl", IMPLS)
def test_tf_function_and_while_loop(impl):
    rounds, batch, num_items = rounds_data()
    want_kept, want_bitmap = eager_rounds(rounds, batch, num_items)
    padded = tf.constant(np.stack([ids for ids, _ in rounds]))
    padded_rows = tf.constant(np.stack([rows for _, rows in rounds]))

    @tf.function
    def unrolled():
        bitmap = V.new_visited(batch, num_items)
        kept = []
        for ids, rows in rounds:
            k, _, bitmap = V.filter_unvisited(ids, rows, bitmap, impl=impl)
            kept.append(k)
        return tf.concat(kept, 0), bitmap

    @tf.function
    def looped(ids, rows):
        def body(r, bitmap, kept):
            k, _, bitmap = V.filter_unvisited(ids[r], rows[r], bitmap, impl=impl)
            return r + 1, bitmap, tf.concat([kept, k], 0)
        _, bitmap, kept = tf.while_loop(
            lambda r, *_: r < tf.shape(ids)[0], body,
            (tf.constant(0), V.new_visited(batch, num_items), tf.zeros([0], tf.int64)),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([batch, None]),
                              tf.TensorShape([None])))
        return kept, bitmap

    for kept, bitmap in (unrolled(), looped(padded, padded_rows)):
        np.testing.assert_array_equal(kept.numpy(), want_kept)
        np.testing.assert_array_equal(bitmap.numpy(), want_bitmap)


def test_fused_gather_in_while_loop_matches_unfused():
    rng = np.random.default_rng(5)
    num_nodes, batch = 200, 2
    degrees = rng.integers(0, 8, num_nodes)
    splits = np.concatenate([[0], np.cumsum(degrees)])
    values = rng.integers(0, num_nodes, splits[-1]).astype(np.int32)
    frontiers = tf.constant(rng.integers(0, num_nodes, (3, 10)))
    frontier_rows = tf.constant(np.tile(np.repeat(np.arange(batch), 5), (3, 1)))
    results = {}
    for impl in IMPLS:
        @tf.function
        def run(fronts, front_rows):
            def body(r, bitmap, total):
                k, _, bitmap = V.gather_unvisited_neighbors(fronts[r], front_rows[r], values,
                                                            splits, bitmap, impl=impl)
                return r + 1, bitmap, total + tf.size(k)
            return tf.while_loop(lambda r, *_: r < 3, body,
                                 (0, V.new_visited(batch, num_nodes), 0))[1:]
        results[impl] = [t.numpy() for t in run(frontiers, frontier_rows)]
    bitmap = np.zeros((batch, V.num_words(num_nodes)), np.int64)
    total = 0
    for f, fr in zip(frontiers.numpy(), frontier_rows.numpy()):
        kept, _, bitmap = reference_filter(*expand(f, fr, values, splits), bitmap)
        total += len(kept)
    for impl in IMPLS:
        np.testing.assert_array_equal(results[impl][0], bitmap)
        assert results[impl][1] == total


class VisitedModule(tf.Module):
    def __init__(self, impl):
        super().__init__()
        self.impl = impl
        spec = tf.TensorSpec([None], tf.int64)

        @tf.function(input_signature=[spec, spec, tf.TensorSpec([None, None], tf.int64)])
        def filter_fn(ids, rows, bitmap):
            return V.filter_unvisited(ids, rows, bitmap, impl=impl)

        @tf.function(input_signature=[spec] * 4 + [tf.TensorSpec([None, None], tf.int64)])
        def gather_fn(frontier, rows, values, splits, bitmap):
            return V.gather_unvisited_neighbors(frontier, rows, values, splits, bitmap, impl=impl)

        self.filter = filter_fn
        self.gather = gather_fn


def saved_op_types(path):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(f"{path}/saved_model.pb", "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    return {n.op for n in graph.node} | {n.op for fn in graph.library.function
                                         for n in fn.node_def}


@pytest.mark.parametrize("impl", IMPLS)
def test_saved_model_round_trip(impl, tmp_path):
    rounds, batch, num_items = rounds_data(seed=9)
    module = VisitedModule(impl)
    path = str(tmp_path / impl)
    tf.saved_model.save(module, path)
    loaded = tf.saved_model.load(path)
    bitmap = np.zeros((batch, V.num_words(num_items)), np.int64)
    for ids, rows in rounds:
        want = reference_filter(ids, rows, bitmap)
        assert_same(loaded.filter(ids, rows, bitmap), want, f"loaded {impl}")
        assert_same(module.filter(ids, rows, bitmap), want, f"original {impl}")
        bitmap = want[2]
    splits = np.array([0, 2, 2, 5], np.int64)
    values = np.array([4, 9, 1, 4, 299], np.int64)
    frontier, rows = np.array([2, 0, 1], np.int64), np.array([1, 1, 0], np.int64)
    want = reference_filter(*expand(frontier, rows, values, splits), bitmap)
    assert_same(loaded.gather(frontier, rows, values, splits, bitmap), want, f"loaded {impl}")
    nann_ops = {op for op in saved_op_types(path) if op.startswith("Nann")}
    if impl == "tf":
        assert not nann_ops, "the pure-TF twin must serve on the stock TF Serving image"
    else:
        assert nann_ops == {"NannFilterUnvisited", "NannGatherUnvisitedNeighbors"}


# --- pybind beam-search replay -----------------------------------------------------------------


def reference_beam_search(levels, start_nodes, scores, ef, rounds, k, seeds=None):
    """ARCHITECTURE.md's beam retrieval, slowly: sets and sorted() with key (-score, id).

    As in nann_tf.search.beam: an item scoring -inf or NaN is scored but never a result; the
    seeds (0 = none) are scored with the start level and join the first level-0 frontier, and
    those an upper level's cut dropped enter level 0's results again."""
    start_level = max(ef)
    batch = scores.shape[0]
    out_ids = np.full((batch, k), -1, np.int64)
    out_scores = np.full((batch, k), -np.inf, np.float32)
    num_scored = np.zeros(batch, np.int64)
    for q in range(batch):
        def best(items, count, s=scores[q]):
            items = [i for i in items if s[i] > -np.inf]  # False for -inf and NaN
            return sorted(items, key=lambda i: (-s[i], i))[:count]
        visited = set()
        q_seeds = [] if seeds is None else [v for v in seeds[q].tolist() if v != 0]
        results = [v for v in dict.fromkeys(start_nodes.tolist() + q_seeds)]
        visited.update(results)
        scored_seeds = [v for v in dict.fromkeys(q_seeds) if v not in set(start_nodes.tolist())]
        results = best(results, ef[start_level])
        width = min(ef[start_level], len(start_nodes) + (0 if seeds is None else seeds.shape[1]))
        for level in range(start_level - 1, -1, -1):
            values, splits = levels[level]
            width = max(width, ef[level])
            if level == 0:
                results = best(results + [v for v in scored_seeds if v not in results], width)
            frontier = list(results) + (q_seeds if level == 0 else [])
            for _ in range(rounds[level]):
                if not frontier:
                    break
                new = []
                for f in frontier:
                    for v in values[splits[f]:splits[f + 1]].tolist():
                        if v not in visited:
                            visited.add(v)
                            new.append(v)
                results = best(results + new, ef[level])
                frontier = [v for v in results if v in set(new)]
        top = best(results, k)
        out_ids[q, :len(top)] = top
        out_scores[q, :len(top)] = scores[q, top]
        num_scored[q] = len(visited)
    return out_ids, out_scores, num_scored


def random_levels(rng, num_items, num_levels, dtype):
    node_level = np.minimum(rng.geometric(0.35, num_items) - 1, num_levels)
    node_level[rng.integers(num_items)] = num_levels  # at least one start node
    levels = []
    for level in range(num_levels):
        on_level = np.flatnonzero(node_level >= level)
        degrees = np.where(node_level >= level, rng.integers(0, 7, num_items), 0)
        splits = np.concatenate([[0], np.cumsum(degrees)]).astype(dtype)
        values = rng.choice(on_level, int(splits[-1])).astype(dtype)  # may repeat, self-loops
        levels.append((values, splits))
    return levels, np.flatnonzero(node_level >= num_levels)


def test_beam_search_replay_matches_reference():
    rng = np.random.default_rng(11)
    for case in range(30):
        num_items = int(rng.integers(5, 250))
        start_level = int(rng.integers(1, 4))
        levels, start_nodes = random_levels(rng, num_items, start_level,
                                            [np.int64, np.int32][case % 2])
        batch = int(rng.integers(1, 5))
        # Few distinct values: plenty of ties, so the tie rule (smaller id first) is exercised.
        scores = rng.integers(0, 6, (batch, num_items)).astype(np.float32)
        if case % 3 == 0:
            scores = rng.standard_normal((batch, num_items)).astype(np.float32)
        if case % 4 == 1:  # masked items: -inf and NaN
            scores[rng.random(scores.shape) < 0.15] = -np.inf
            scores[rng.random(scores.shape) < 0.05] = np.nan
        ef = {level: int(rng.integers(1, 12)) for level in range(start_level + 1)}
        rounds = {level: int(rng.integers(0, 4)) for level in range(start_level)}
        k = int(rng.integers(1, 15))
        seeds = None
        if case % 2:  # seeds with padding (0), repeats and start nodes among them
            seeds = rng.integers(0, num_items, (batch, int(rng.integers(0, 6))))
            seeds[rng.random(seeds.shape) < 0.3] = 0
            if seeds.size:
                seeds[0, 0] = start_nodes[0]
        want = reference_beam_search(levels, start_nodes, scores, ef, rounds, k, seeds)
        for threads in (1, 2):
            got = core.beam_search_replay(levels, start_nodes, scores, ef, rounds, k,
                                          num_threads=threads, seeds=seeds)
            for g, w, part in zip(got, want, ("ids", "scores", "num_scored")):
                np.testing.assert_array_equal(g, w, err_msg=f"case {case}: {part}")


def test_beam_search_replay_finds_brute_force_on_a_connected_graph():
    # Complete graph on level 0 and enough rounds: the replay must equal brute force.
    num_items, batch, k = 40, 3, 5
    rng = np.random.default_rng(2)
    values = np.array([v for u in range(num_items) for v in range(num_items) if v != u])
    splits = np.arange(num_items + 1) * (num_items - 1)
    scores = rng.standard_normal((batch, num_items)).astype(np.float32)
    ids, top, scored = core.beam_search_replay([(values, splits)], np.array([0]), scores,
                                               {1: 1, 0: num_items}, {0: 2}, k)
    np.testing.assert_array_equal(ids, np.argsort(-scores, axis=1)[:, :k])
    np.testing.assert_array_equal(top, -np.sort(-scores, axis=1)[:, :k])
    np.testing.assert_array_equal(scored, [num_items] * batch)


def test_beam_search_replay_bad_input():
    levels = [(np.array([1, 0]), np.array([0, 1, 2]))]
    scores = np.zeros((1, 2), np.float32)
    ok = dict(levels=levels, start_nodes=np.array([0]), scores=scores, ef={1: 1, 0: 2},
              T={0: 1}, k=2)
    ids, _, scored = core.beam_search_replay(**ok)
    np.testing.assert_array_equal(ids, [[0, 1]])
    assert scored.tolist() == [2]
    cases = [
        (dict(levels=[(np.array([1, 0]), np.array([0, 1, 2, 2]))]), "row_splits has 4"),
        (dict(levels=[(np.array([1, 5]), np.array([0, 1, 2]))]), r"values\[1\] = 5"),
        (dict(levels=[(np.array([1, 0]), np.array([0, 2, 1]))]), "non-decreasing"),
        (dict(levels=[]), "needs the CSR levels"),
        (dict(start_nodes=np.array([2])), r"start_nodes\[0\] = 2"),
        (dict(ef={1: 1}), "ef has no entry for level 0"),
        (dict(T={}), "T has no entry for level 0"),
        (dict(ef={1: 1, 0: 0}), r"ef\[0\] = 0"),
        (dict(k=0), "k = 0"),
        (dict(seeds=np.array([[1, 2]])), r"seeds\[0, 1\] = 2 is not an item"),
        (dict(seeds=np.array([[-1]])), r"seeds\[0, 0\] = -1"),
        (dict(seeds=np.array([1, 0])), r"seeds must be a 2-D array \[batch, num_seeds\]"),
        (dict(seeds=np.zeros((2, 1), np.int64)), "batch = 1"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            core.beam_search_replay(**{**ok, **change})
    with pytest.raises(TypeError, match="floats"):
        core.beam_search_replay(**{**ok, "scores": np.zeros((1, 2), np.int64)})
    with pytest.raises(TypeError, match="seeds must hold integers"):
        core.beam_search_replay(**{**ok, "seeds": np.zeros((1, 1), np.float32)})

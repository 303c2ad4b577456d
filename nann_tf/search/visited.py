"""Per-query visited sets for the beam search: one interface, two implementations.

Every beam-search round expands the frontier of each query to its neighbours and must keep
only the items that query has not scored yet (paper section 4.1, "Mark with Bitmap"). The
state is a bitmap per query, ``int64 [B, ceil(N / 64)]`` (or ``int32 [B, ceil(N / 32)]``):
bit ``id % w`` of word ``id // w`` in row ``q`` is set once query ``q`` has visited item ``id``.
Valid ids are ``0 <= id < W * w`` (the corpus size rounded up to whole words).

Both implementations take and return this same state, so search code picks one with ``impl``
and nothing else changes:

* ``impl="bitmap"`` — the C++ op (``cc_ops/``, loaded by :mod:`nann_tf.ops` on first use).
  Fast; a model using it needs a TF Serving binary with the op linked in.
* ``impl="tf"`` — a pure-TensorFlow twin built from stock ops (``unique``, ``gather``,
  bitwise ops, ``tensor_scatter_nd_add``); a model using it runs on the stock TF Serving image.

Semantics (identical for both): the pairs ``(row_ids[i], ids[i])`` are walked in order; a pair
is kept exactly when the query has not visited the item before this call and the pair did not
occur earlier in the batch; kept pairs are marked. The output order is the input order of the
first occurrences. Invalid input (an id outside the bitmap, a row id outside the batch, wrong
ranks, mismatched lengths) raises ``tf.errors.InvalidArgumentError`` naming the offending value.

Example::

    bitmap = new_visited(batch_size, num_items)
    ids, rows, bitmap = filter_unvisited(candidate_ids, candidate_rows, bitmap, impl="tf")
"""

from __future__ import annotations

import tensorflow as tf

from nann_tf import ops

__all__ = [
    "IMPLS",
    "MAX_BITMAP_BYTES",
    "new_visited",
    "num_words",
    "filter_unvisited",
    "gather_unvisited_neighbors",
    "num_visited",
]

IMPLS = ("bitmap", "tf")
# A guard against sizes that cannot be meant (e.g. num_items passed as a byte count).
MAX_BITMAP_BYTES = 1 << 34

_WORD_BITS = {tf.int32: 32, tf.int64: 64}
_INDEX_DTYPES = (tf.int32, tf.int64)
# The public functions are plain graph-building Python: autograph must not rewrite them when
# they are called inside a tf.function (hence @do_not_convert on each).


def _invalid(message: str) -> tf.errors.InvalidArgumentError:
    return tf.errors.InvalidArgumentError(None, None, message)


def _word_bits(word_dtype) -> int:
    word_dtype = tf.as_dtype(word_dtype)
    if word_dtype not in _WORD_BITS:
        raise TypeError(f"visited bitmap words must be int32 or int64, got {word_dtype.name}")
    return _WORD_BITS[word_dtype]


def num_words(num_items: int, word_dtype=tf.int64) -> int:
    """Returns the number of words per query row that hold ``num_items`` bits.

    Args:
        num_items: corpus size N.
        word_dtype: ``tf.int64`` (64-bit words) or ``tf.int32``.
    """
    bits = _word_bits(word_dtype)
    return (int(num_items) + bits - 1) // bits


@tf.autograph.experimental.do_not_convert
def new_visited(batch_size, num_items, word_dtype=tf.int64) -> tf.Tensor:
    """Creates the all-clear visited state for a batch of queries.

    Args:
        batch_size: number of queries B (Python int or scalar integer tensor).
        num_items: corpus size N (Python int or scalar integer tensor); valid ids are
            ``0 <= id < num_words * word_bits`` (N rounded up to whole words).
        word_dtype: ``tf.int64`` (default) or ``tf.int32``.

    Returns:
        Zeros of ``word_dtype``, shape ``[B, ceil(N / word_bits)]``.

    Raises:
        InvalidArgumentError: a negative size, or a bitmap over ``MAX_BITMAP_BYTES``.
        TypeError: ``word_dtype`` is not int32/int64.
    """
    word_dtype = tf.as_dtype(word_dtype)
    bits = _word_bits(word_dtype)
    if not tf.is_tensor(batch_size) and not tf.is_tensor(num_items):
        batch_size, num_items = int(batch_size), int(num_items)
        if batch_size < 0:
            raise _invalid(f"batch_size = {batch_size}: expected >= 0")
        if num_items < 0:
            raise _invalid(f"num_items = {num_items}: expected >= 0")
        words = (num_items + bits - 1) // bits
        size = batch_size * words * word_dtype.size
        if size > MAX_BITMAP_BYTES:
            raise _invalid(
                f"a visited bitmap for batch_size = {batch_size}, num_items = {num_items} needs "
                f"{size} bytes, more than MAX_BITMAP_BYTES = {MAX_BITMAP_BYTES}")
        return tf.zeros([batch_size, words], word_dtype)
    batch = tf.cast(batch_size, tf.int64)
    items = tf.cast(num_items, tf.int64)
    words = (items + bits - 1) // bits
    checks = [
        tf.debugging.Assert(batch >= 0, ["batch_size must be >= 0, got", batch]),
        tf.debugging.Assert(items >= 0, ["num_items must be >= 0, got", items]),
        tf.debugging.Assert(
            tf.logical_or(tf.equal(batch, 0),
                          words <= MAX_BITMAP_BYTES // word_dtype.size // tf.maximum(batch, 1)),
            ["the visited bitmap would exceed MAX_BITMAP_BYTES:", "batch_size", batch,
             "num_items", items]),
    ]
    with tf.control_dependencies(checks):
        return tf.zeros(tf.stack([batch, words]), word_dtype)


@tf.autograph.experimental.do_not_convert
def num_visited(bitmap: tf.Tensor) -> tf.Tensor:
    """Returns the number of visited items per query, ``int64 [B]`` (stock ops)."""
    bitmap = tf.convert_to_tensor(bitmap)
    _word_bits(bitmap.dtype)
    counts = tf.raw_ops.PopulationCount(x=bitmap)
    return tf.reduce_sum(tf.cast(counts, tf.int64), axis=1)


def _as_index(value, name: str) -> tf.Tensor:
    # Arrays keep their dtype (dtype_hint would silently widen an int32 array); lists of Python
    # ints become int64.
    hint = None if hasattr(value, "dtype") else tf.int64
    tensor = tf.convert_to_tensor(value, dtype_hint=hint, name=name)
    if tensor.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{name} must be int32 or int64, got {tensor.dtype.name}")
    return tensor


def _check_vector(tensor: tf.Tensor, name: str) -> None:
    rank = tensor.shape.rank
    if rank is not None and rank != 1:
        raise _invalid(f"{name} must be a vector, got shape {tensor.shape}")


def _check_same_length(a: tf.Tensor, a_name: str, b: tf.Tensor, b_name: str) -> None:
    na, nb = tf.compat.dimension_value(a.shape[0]), tf.compat.dimension_value(b.shape[0])
    if na is not None and nb is not None and na != nb:
        raise _invalid(f"{a_name} has {na} elements but {b_name} has {nb}: expected one row "
                       f"id per id")


def _check_bitmap(bitmap) -> tf.Tensor:
    bitmap = tf.convert_to_tensor(bitmap, name="bitmap")
    _word_bits(bitmap.dtype)
    if bitmap.shape.rank is not None and bitmap.shape.rank != 2:
        raise _invalid(f"bitmap must be a matrix [batch, words], got shape {bitmap.shape}")
    return bitmap


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


@tf.autograph.experimental.do_not_convert
def filter_unvisited(ids, row_ids, bitmap, impl: str = "bitmap", name: str | None = None):
    """Keeps the (query, item) pairs not visited yet, in order, and marks them.

    Args:
        ids: ``[C]`` int32/int64 item ids, each in ``[0, W * word_bits)``.
        row_ids: ``[C]`` int32/int64 query row of each id, each in ``[0, B)``.
        bitmap: ``[B, W]`` visited state from :func:`new_visited` or a previous call.
        impl: ``"bitmap"`` (the C++ op) or ``"tf"`` (stock ops only).
        name: optional name scope.

    Returns:
        ``(kept_ids [K], kept_row_ids [K], new_bitmap [B, W])``: the first occurrences of the
        unvisited pairs in input order (dtypes of ``ids`` / ``row_ids``) and the state with
        them marked.

    Raises:
        InvalidArgumentError: an id or row id out of range, wrong ranks, mismatched lengths
            (statically when shapes are known, else when the graph runs).
        TypeError: non-integer inputs.
        ValueError: unknown ``impl``.
        nann_tf.ops.OpLibraryError: ``impl="bitmap"`` without a usable op library.
    """
    _check_impl(impl)
    with tf.name_scope(name or "filter_unvisited"):
        ids = _as_index(ids, "ids")
        row_ids = _as_index(row_ids, "row_ids")
        bitmap = _check_bitmap(bitmap)
        _check_vector(ids, "ids")
        _check_vector(row_ids, "row_ids")
        if ids.shape.rank == 1 and row_ids.shape.rank == 1:
            _check_same_length(ids, "ids", row_ids, "row_ids")
        if impl == "bitmap":
            return ops.filter_unvisited(ids, row_ids, bitmap)
        return _filter_tf(ids, row_ids, bitmap)


@tf.autograph.experimental.do_not_convert
def gather_unvisited_neighbors(frontier_ids, frontier_row_ids, neighbor_values,
                               neighbor_row_splits, bitmap, impl: str = "bitmap",
                               name: str | None = None):
    """Expands frontier nodes to their neighbours on a CSR level and keeps the unvisited ones.

    Equals :func:`filter_unvisited` over the concatenated neighbour lists of
    ``frontier_ids[0], frontier_ids[1], ...`` (each neighbour carrying its frontier node's row
    id), without materialising that list when ``impl="bitmap"``.

    Args:
        frontier_ids: ``[F]`` int32/int64 node ids, each in ``[0, len(neighbor_row_splits) - 1)``.
        frontier_row_ids: ``[F]`` int32/int64 query row of each frontier node.
        neighbor_values: ``[E]`` int32/int64 neighbour ids (the level's RaggedTensor values);
            ``kept_ids`` has this dtype.
        neighbor_row_splits: ``[num_nodes + 1]`` int32/int64 row splits of the level.
        bitmap: ``[B, W]`` visited state.
        impl: ``"bitmap"`` (fused C++ op) or ``"tf"`` (stock ops only).
        name: optional name scope.

    Returns:
        ``(kept_ids [K], kept_row_ids [K], new_bitmap [B, W])`` as :func:`filter_unvisited`.

    Raises:
        InvalidArgumentError: a frontier id, row id, row-splits range or neighbour id out of
            range, wrong ranks, mismatched lengths.
        TypeError: non-integer inputs.
        ValueError: unknown ``impl``.
    """
    _check_impl(impl)
    with tf.name_scope(name or "gather_unvisited_neighbors"):
        frontier_ids = _as_index(frontier_ids, "frontier_ids")
        frontier_row_ids = _as_index(frontier_row_ids, "frontier_row_ids")
        neighbor_values = _as_index(neighbor_values, "neighbor_values")
        neighbor_row_splits = _as_index(neighbor_row_splits, "neighbor_row_splits")
        bitmap = _check_bitmap(bitmap)
        for tensor, tensor_name in ((frontier_ids, "frontier_ids"),
                                    (frontier_row_ids, "frontier_row_ids"),
                                    (neighbor_values, "neighbor_values"),
                                    (neighbor_row_splits, "neighbor_row_splits")):
            _check_vector(tensor, tensor_name)
        if frontier_ids.shape.rank == 1 and frontier_row_ids.shape.rank == 1:
            _check_same_length(frontier_ids, "frontier_ids", frontier_row_ids, "frontier_row_ids")
        if neighbor_row_splits.shape.rank == 1 and neighbor_row_splits.shape[0] == 0:
            raise _invalid("neighbor_row_splits must have at least one element (num_nodes + 1), "
                           "got shape [0]")
        if impl == "bitmap":
            return ops.gather_unvisited_neighbors(frontier_ids, frontier_row_ids, neighbor_values,
                                                  neighbor_row_splits, bitmap)
        return _gather_tf(frontier_ids, frontier_row_ids, neighbor_values, neighbor_row_splits,
                          bitmap)


# --- the pure-TensorFlow twin --------------------------------------------------------------------


def _assert_valid(bad: tf.Tensor, message) -> tf.Operation:
    """Asserts that no element of ``bad`` is set; ``message(first_bad_index)`` -> string tensor.

    The message is formatted only when the check fails (in a tf.cond), so valid input pays for
    one reduction.
    """
    any_bad = tf.reduce_any(bad)
    text = tf.cond(any_bad, lambda: message(tf.reduce_min(tf.where(bad)[:, 0])),
                   lambda: tf.constant(""))
    return tf.debugging.Assert(tf.logical_not(any_bad), [text])


def _assert_in_range(values: tf.Tensor, limit: tf.Tensor, name: str, what: str) -> tf.Operation:
    """Asserts ``0 <= values < limit``; the message names the first bad value as the op does."""
    return _assert_valid(
        tf.logical_or(values < 0, values >= limit),
        lambda i: tf.strings.format("%s[{}] = {} is outside %s: expected 0 <= value < {}"
                                    % (name, what), (i, tf.gather(values, i), limit)))


def _dynamic_shape_checks(tensors, bitmap: tf.Tensor) -> list:
    """Rank / length assertions for inputs whose static shapes were unknown."""
    checks = []
    for tensor, name in tensors:
        if tensor.shape.rank is None:
            checks.append(tf.debugging.assert_rank(tensor, 1, message=f"{name} must be a vector"))
    if bitmap.shape.rank is None:
        checks.append(tf.debugging.assert_rank(bitmap, 2, message="bitmap must be a matrix "
                                                                  "[batch, words]"))
    return checks


def _filter_tf(ids, row_ids, bitmap, ids_name="ids", rows_name="row_ids"):
    bits = _WORD_BITS[bitmap.dtype]
    checks = _dynamic_shape_checks([(ids, ids_name), (row_ids, rows_name)], bitmap)
    with tf.control_dependencies(checks):
        ids64 = tf.cast(ids, tf.int64)
        rows64 = tf.cast(row_ids, tf.int64)
        shape = tf.shape(bitmap, out_type=tf.int64)
    words_per_row = shape[1]
    capacity = words_per_row * bits
    checks = [
        tf.debugging.assert_equal(
            tf.size(ids64), tf.size(rows64),
            message=f"{ids_name} and {rows_name} must have the same length"),
        _assert_in_range(ids64, capacity, ids_name,
                         "the visited bitmap (capacity = words * word_bits)"),
        _assert_in_range(rows64, shape[0], rows_name,
                         "the query rows of the visited bitmap (batch size)"),
    ]
    with tf.control_dependencies(checks):
        keys = rows64 * capacity + ids64
    # unique() returns the distinct keys in order of first occurrence: the in-batch dedupe.
    keys, _ = tf.unique(keys)
    rows = keys // capacity
    items = keys - rows * capacity
    word_index = rows * words_per_row + tf.bitwise.right_shift(items, bits.bit_length() - 1)
    masks = tf.bitwise.left_shift(tf.ones_like(items, dtype=bitmap.dtype),
                                  tf.cast(tf.bitwise.bitwise_and(items, bits - 1), bitmap.dtype))
    flat = tf.reshape(bitmap, [-1])
    fresh = tf.where(tf.equal(tf.bitwise.bitwise_and(tf.gather(flat, word_index), masks), 0))[:, 0]
    kept_ids = tf.cast(tf.gather(items, fresh), ids.dtype)
    kept_rows = tf.cast(tf.gather(rows, fresh), row_ids.dtype)
    # The kept bits are distinct and clear, so adding them to their words equals OR-ing them in
    # (no carries, also for the sign bit in two's complement).
    flat = tf.tensor_scatter_nd_add(flat, tf.gather(word_index, fresh)[:, None],
                                    tf.gather(masks, fresh))
    return kept_ids, kept_rows, tf.reshape(flat, tf.shape(bitmap))


def _gather_tf(frontier_ids, frontier_row_ids, neighbor_values, neighbor_row_splits, bitmap):
    checks = _dynamic_shape_checks([(frontier_ids, "frontier_ids"),
                                    (frontier_row_ids, "frontier_row_ids"),
                                    (neighbor_values, "neighbor_values"),
                                    (neighbor_row_splits, "neighbor_row_splits")], bitmap)
    with tf.control_dependencies(checks):
        frontier = tf.cast(frontier_ids, tf.int64)
        rows = tf.cast(frontier_row_ids, tf.int64)
        splits = tf.cast(neighbor_row_splits, tf.int64)
        batch = tf.shape(bitmap, out_type=tf.int64)[0]
    num_nodes = tf.size(splits, out_type=tf.int64) - 1
    checks = [
        tf.debugging.assert_equal(tf.size(frontier), tf.size(rows),
                                  message="frontier_ids and frontier_row_ids must have the same "
                                          "length"),
        tf.debugging.assert_non_negative(num_nodes, message="neighbor_row_splits must have at "
                                                            "least one element"),
        _assert_in_range(frontier, num_nodes, "frontier_ids",
                         "the nodes of the CSR level (len(neighbor_row_splits) - 1)"),
        _assert_in_range(rows, batch, "frontier_row_ids",
                         "the query rows of the visited bitmap (batch size)"),
    ]
    with tf.control_dependencies(checks):
        starts = tf.gather(splits, frontier)
        limits = tf.gather(splits, frontier + 1)
    num_values = tf.size(neighbor_values, out_type=tf.int64)
    range_check = _assert_valid(
        tf.logical_or(tf.logical_or(starts < 0, starts > limits), limits > num_values),
        lambda i: tf.strings.format(
            "neighbor_row_splits[{}:{}] = [{}, {}] (the row of frontier_ids[{}]) is not a valid "
            "CSR range: expected 0 <= start <= limit <= {} (len(neighbor_values))",
            (frontier[i], frontier[i] + 2, starts[i], limits[i], i, num_values)))
    with tf.control_dependencies([range_check]):
        positions = tf.ragged.range(starts, limits).flat_values
    neighbors = tf.gather(neighbor_values, positions)
    neighbor_rows = tf.repeat(frontier_row_ids, limits - starts)
    return _filter_tf(neighbors, neighbor_rows, bitmap, ids_name="neighbor_values",
                      rows_name="frontier_row_ids")

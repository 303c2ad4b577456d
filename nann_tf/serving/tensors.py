"""NumPy <-> ``TensorProto`` conversion for the gRPC API, with the checks TF Serving makes.

Requests from any client (Python, Go, Java, curl-made protos) arrive as ``TensorProto``s that
may use ``tensor_content`` or the typed ``*_val`` fields. Decoding validates the dtype and the
declared shape before touching the payload, so a malformed proto (garbage bytes, a shape that
does not match the content, a shape that would allocate terabytes) becomes a
:class:`TensorDecodeError` instead of a crash or an out-of-memory.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

__all__ = [
    "TensorDecodeError",
    "MAX_TENSOR_ELEMENTS",
    "to_tensor_proto",
    "from_tensor_proto",
    "dtype_name",
    "decode_strings",
]

# A request tensor larger than this is refused before decoding (about 512 MiB of int64).
MAX_TENSOR_ELEMENTS = 1 << 26

# Dtypes decoded from raw little-endian ``tensor_content`` bytes on the fast path.
_FAST_DTYPES = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT64: np.int64,
    types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT8: np.int8,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_UINT16: np.uint16,
    types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64,
    types_pb2.DT_HALF: np.float16,
    types_pb2.DT_BOOL: np.bool_,
}


class TensorDecodeError(ValueError):
    """A ``TensorProto`` that cannot be turned into an array (reported as INVALID_ARGUMENT)."""


def dtype_name(enum_value: int) -> str:
    """Returns the ``DT_*`` name of a ``DataType`` enum value (``DT_<n>`` when unknown)."""
    try:
        return types_pb2.DataType.Name(enum_value)
    except ValueError:
        return f"DT_{enum_value}"


def decode_strings(arr) -> np.ndarray:
    """A DT_STRING tensor's values (NumPy object array of ``bytes``, as decoded from a
    ``TensorProto`` or fetched from a session) as a str array of the same shape (UTF-8)."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "U":
        return arr
    flat = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]
    return np.array(flat, dtype=str if flat else "<U1").reshape(arr.shape)


def to_tensor_proto(value) -> tensor_pb2.TensorProto:
    """Encodes an array-like as a ``TensorProto``.

    Numeric arrays go into ``tensor_content`` (what ``tf.make_tensor_proto`` does too); other
    dtypes (strings) go through ``tf.make_tensor_proto``.

    Args:
        value: a NumPy array or anything ``np.asarray`` accepts.

    Returns:
        The ``TensorProto``.
    """
    arr = np.asarray(value)
    try:
        dt = tf.dtypes.as_dtype(arr.dtype)
    except TypeError:
        return tf.make_tensor_proto(arr)
    if dt.as_datatype_enum not in _FAST_DTYPES:
        return tf.make_tensor_proto(arr)
    proto = tensor_pb2.TensorProto(dtype=dt.as_datatype_enum)
    proto.tensor_shape.CopyFrom(_shape_proto(arr.shape))
    proto.tensor_content = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"),
                                                            copy=False).tobytes()
    return proto


def _shape_proto(shape) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in shape])


def from_tensor_proto(proto: tensor_pb2.TensorProto, name: str = "tensor",
                      max_elements: int = MAX_TENSOR_ELEMENTS) -> np.ndarray:
    """Decodes a ``TensorProto`` into a NumPy array.

    Args:
        proto: the tensor.
        name: what to call it in error messages (the input alias).
        max_elements: refuse tensors that declare more elements than this.

    Returns:
        The array (a fresh copy, writable).

    Raises:
        TensorDecodeError: unknown or invalid dtype, unknown rank, a negative dimension, too
            many elements, or a payload that does not match the declared shape.
    """
    if proto.dtype == types_pb2.DT_INVALID or proto.dtype not in types_pb2.DataType.values():
        raise TensorDecodeError(f"tensor parsing error: {name}: invalid dtype {proto.dtype}")
    if proto.tensor_shape.unknown_rank:
        raise TensorDecodeError(f"tensor parsing error: {name}: the shape has an unknown rank")
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise TensorDecodeError(
            f"tensor parsing error: {name}: negative dimension in shape {shape}")
    num = math.prod(shape)
    if num > max_elements:
        raise TensorDecodeError(
            f"tensor parsing error: {name}: shape {shape} has {num} elements, more than the "
            f"limit of {max_elements}")
    np_dtype = _FAST_DTYPES.get(proto.dtype)
    if proto.tensor_content and np_dtype is not None:
        itemsize = np.dtype(np_dtype).itemsize
        if len(proto.tensor_content) != num * itemsize:
            raise TensorDecodeError(
                f"tensor parsing error: {name}: tensor_content has {len(proto.tensor_content)} "
                f"bytes, but shape {shape} of {dtype_name(proto.dtype)} needs {num * itemsize}")
        arr = np.frombuffer(proto.tensor_content, dtype=np.dtype(np_dtype).newbyteorder("<"))
        return arr.astype(np_dtype).reshape(shape)
    try:
        arr = tf.make_ndarray(proto)
    except Exception as e:  # make_ndarray raises TypeError/ValueError/... on bad protos
        raise TensorDecodeError(f"tensor parsing error: {name}: {e}") from e
    if list(arr.shape) != shape:
        raise TensorDecodeError(
            f"tensor parsing error: {name}: decoded shape {list(arr.shape)} does not match the "
            f"declared shape {shape}")
    return np.array(arr, copy=True)

"""TF Serving warm-up records: ``<version>/assets.extra/tf_serving_warmup_requests``.

The file is a TFRecord of ``PredictionLog`` protos whose ``predict_log.request`` is a
``PredictRequest``. TF Serving replays every record before a version serves (flag
``--enable_model_warmup``, on by default) and refuses to load a version whose file holds more
than :data:`MAX_WARMUP_RECORDS` records or a record that fails. The exporter writes this file
with :func:`write_warmup_requests`; the local server and ``SessionModel`` replay it with
:func:`nann_tf.serving.loader.replay_warmup`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np

from nann_tf.errors import UserError
from nann_tf.fsutil import atomic_path

__all__ = [
    "ASSETS_EXTRA_DIR",
    "WARMUP_FILENAME",
    "MAX_WARMUP_RECORDS",
    "WarmupRecord",
    "WarmupError",
    "warmup_file_path",
    "make_predict_request",
    "write_warmup_requests",
    "read_warmup_requests",
]

ASSETS_EXTRA_DIR = "assets.extra"
WARMUP_FILENAME = "tf_serving_warmup_requests"
# TF Serving's WarmupConsts::kMaxNumRecords.
MAX_WARMUP_RECORDS = 1000


InputsOrPair = Union[Mapping[str, object], tuple[str, Mapping[str, object]]]


class WarmupError(UserError, ValueError):
    """A warm-up file that cannot be written or read as TF Serving expects."""


@dataclasses.dataclass(frozen=True)
class WarmupRecord:
    """One decoded warm-up request.

    Attributes:
        model_name: ``model_spec.name`` of the request (TF Serving does not check it).
        signature_name: ``model_spec.signature_name`` ("" means ``serving_default``).
        inputs: input alias -> array.
    """

    model_name: str
    signature_name: str
    inputs: dict[str, np.ndarray]


def warmup_file_path(version_dir: str | os.PathLike) -> str:
    """Returns ``<version_dir>/assets.extra/tf_serving_warmup_requests``."""
    return os.path.join(os.fspath(version_dir), ASSETS_EXTRA_DIR, WARMUP_FILENAME)


def make_predict_request(model_name: str, signature_name: str,
                         inputs: Mapping[str, object], version: int | None = None,
                         version_label: str | None = None):
    """Builds a ``PredictRequest``.

    Args:
        model_name: ``model_spec.name``.
        signature_name: ``model_spec.signature_name``.
        inputs: input alias -> array-like.
        version: optional ``model_spec.version``.
        version_label: optional ``model_spec.version_label`` (exclusive with ``version``).

    Returns:
        A ``tensorflow_serving.apis.predict_pb2.PredictRequest``.

    Raises:
        ValueError: empty inputs, a non-string alias, or both version and version_label.
    """
    from tensorflow_serving.apis import predict_pb2

    from nann_tf.serving.tensors import to_tensor_proto

    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError(f"inputs must be a non-empty mapping alias -> array, got {inputs!r:.80}")
    if version is not None and version_label is not None:
        raise ValueError("give version or version_label, not both")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    if version_label is not None:
        request.model_spec.version_label = version_label
    for alias, value in inputs.items():
        if not isinstance(alias, str) or not alias:
            raise ValueError(f"input names must be non-empty strings, got {alias!r}")
        try:
            arr = np.asarray(value)
        except ValueError as e:
            raise ValueError(f"input {alias!r} is not a rectangular array: {e}") from None
        if arr.dtype == object and not all(isinstance(v, (bytes, str))
                                           for v in arr.reshape(-1)):
            raise ValueError(f"input {alias!r} is not a rectangular numeric (or string) array")
        request.inputs[alias].CopyFrom(to_tensor_proto(arr))
    return request


def write_warmup_requests(path: str | os.PathLike, model_name: str, signature_name: str,
                          inputs_list: Sequence[InputsOrPair]) -> str:
    """Writes TF Serving warm-up records, atomically (temp file + rename).

    Args:
        path: the warm-up file to write, or a SavedModel version directory (an existing
            directory containing ``saved_model.pb``), in which case the file is
            ``<path>/assets.extra/tf_serving_warmup_requests``.
        model_name: ``model_spec.name`` written into every request.
        signature_name: the signature every request calls.
        inputs_list: one entry per record, at most :data:`MAX_WARMUP_RECORDS`: a mapping
            input alias -> array-like (calls ``signature_name``), or a pair
            ``(signature_name, mapping)`` to warm several signatures from one file (TF Serving
            reads a single file per version).

    Returns:
        The path of the written file.

    Raises:
        WarmupError: no records, more than 1000 records, or a bad inputs mapping.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.fspath(path)
    if os.path.isdir(path):
        if not (os.path.exists(os.path.join(path, "saved_model.pb"))
                or os.path.exists(os.path.join(path, "saved_model.pbtxt"))):
            raise WarmupError(f"{path} is a directory but not a SavedModel version directory "
                              "(no saved_model.pb); pass the warm-up file path instead")
        path = warmup_file_path(path)
    inputs_list = list(inputs_list)
    if not inputs_list:
        raise WarmupError("inputs_list is empty: a warm-up file needs at least one record")
    if len(inputs_list) > MAX_WARMUP_RECORDS:
        raise WarmupError(f"{len(inputs_list)} warm-up records; TF Serving refuses to load a "
                          f"version with more than {MAX_WARMUP_RECORDS}")
    records = []
    for i, entry in enumerate(inputs_list):
        record_signature, inputs = signature_name, entry
        if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str):
            record_signature, inputs = entry
        try:
            request = make_predict_request(model_name, record_signature, inputs)
        except ValueError as e:
            raise WarmupError(f"warm-up record {i}: {e}") from e
        log = prediction_log_pb2.PredictionLog()
        log.predict_log.request.CopyFrom(request)
        records.append(log.SerializeToString())
    # Readable by a model server running as another user.
    with atomic_path(path, suffix="", mode=0o644) as tmp:
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            for record in records:
                writer.write(record)
    return path


def read_warmup_requests(path: str | os.PathLike) -> list[WarmupRecord]:
    """Reads a warm-up file (or a version directory's) back.

    Args:
        path: the warm-up file, or a version directory.

    Returns:
        The records in file order.

    Raises:
        FileNotFoundError: no such file.
        WarmupError: not a TFRecord file, a record that is not a ``PredictionLog`` with a
            ``predict_log`` (the only kind this project writes or replays), a tensor that
            cannot be decoded, or more than 1000 records.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from nann_tf.serving.tensors import TensorDecodeError, from_tensor_proto

    path = os.fspath(path)
    if os.path.isdir(path):
        path = warmup_file_path(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no warm-up file at {path}")
    out: list[WarmupRecord] = []
    try:
        for i, raw in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            if i >= MAX_WARMUP_RECORDS:
                raise WarmupError(f"{path} holds more than {MAX_WARMUP_RECORDS} warm-up "
                                  "records; TF Serving refuses to load such a version")
            log = prediction_log_pb2.PredictionLog()
            try:
                log.ParseFromString(raw)
            except Exception as e:
                raise WarmupError(f"{path}: record {i} is not a PredictionLog: {e}") from e
            kind = log.WhichOneof("log_type")
            if kind != "predict_log":
                raise WarmupError(f"{path}: record {i} is a {kind or 'empty'} record; only "
                                  "predict_log records are supported")
            request = log.predict_log.request
            try:
                inputs = {alias: from_tensor_proto(t, alias) for alias, t in request.inputs.items()}
            except TensorDecodeError as e:
                raise WarmupError(f"{path}: record {i}: {e}") from e
            out.append(WarmupRecord(request.model_spec.name, request.model_spec.signature_name,
                                    inputs))
    except tf.errors.DataLossError as e:
        raise WarmupError(f"{path} is not a valid TFRecord file: {e.message}") from e
    return out

"""Loads a SavedModel version the way TensorFlow Serving does and runs its signatures.

TF Serving loads a version with the TF1 session loader (``LoadSavedModel``): the MetaGraph
tagged ``serve`` is imported into a fresh graph, the variables are restored and the init op
(``__saved_model_init_op``: lookup tables, ...) runs, then every request is one
``Session::Run`` on the tensor names of a ``SignatureDef``. :class:`SessionModel` does exactly
that with ``tf.compat.v1.saved_model.loader.load``, so the exporter's validation and the local
server exercise the same code path as production (graph-mode semantics, device placement with
soft placement, no Python ``tf.function`` objects).

Requests are validated against the signature first (missing/extra input, dtype, rank, static
dimensions, shared batch dimension) and refused with a :class:`RequestError` that names the
input; errors raised by the graph itself (``tf.debugging`` asserts, bad ids) propagate as their
``tf.errors.OpError`` subclass.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from nann_tf.errors import arg
from nann_tf.serving.tensors import dtype_name

__all__ = [
    "RequestError",
    "ModelLoadError",
    "TensorSpecInfo",
    "SignatureInfo",
    "SessionModel",
    "load_op_library",
    "replay_warmup",
    "PREDICT_METHOD_NAMES",
]

log = logging.getLogger(__name__)

# The method names TF Serving's Predict API accepts (predict_util.cc VerifySignature).
PREDICT_METHOD_NAMES = (
    "tensorflow/serving/predict",
    "tensorflow/serving/classify",
    "tensorflow/serving/regress",
)


class RequestError(Exception):
    """A request refused before it reaches the graph.

    Attributes:
        code: the gRPC status code name (``"INVALID_ARGUMENT"``, ``"NOT_FOUND"``,
            ``"FAILED_PRECONDITION"``, ...), i.e. a member name of ``grpc.StatusCode``.
        message: what is wrong, naming the input.
    """

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ModelLoadError(RuntimeError):
    """A SavedModel version that cannot be loaded (corrupt, missing op, failed warm-up)."""


@dataclasses.dataclass(frozen=True)
class TensorSpecInfo:
    """One input or output of a signature.

    Attributes:
        alias: the key in the signature (what requests use).
        tensor_name: the graph tensor, e.g. ``serving_default_hist_item_ids:0``.
        dtype: NumPy dtype.
        dtype_enum: the ``DataType`` enum value (``DT_INT64`` = 9, ...).
        shape: dimensions, ``None`` for unknown; ``None`` for the whole shape when the rank
            is unknown.
    """

    alias: str
    tensor_name: str
    dtype: np.dtype
    dtype_enum: int
    shape: tuple[int | None, ...] | None


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    """A signature's inputs and outputs (alias -> :class:`TensorSpecInfo`)."""

    name: str
    method_name: str
    inputs: dict[str, TensorSpecInfo]
    outputs: dict[str, TensorSpecInfo]

    @property
    def batch_inputs(self) -> list[str]:
        """Inputs whose first dimension is unknown: the batch-major inputs, which must agree."""
        return [a for a, s in self.inputs.items() if s.shape and s.shape[0] is None]


_op_library_lock = threading.Lock()
_op_library_state: dict[str, object] = {}


def load_op_library() -> str | None:
    """Registers nann-tf's custom ops with TensorFlow (``nann_tf.ops.load_library()``), once.

    Models built from stock ops load without it, so its absence is tolerated; the reason is
    returned (and kept) so that a model that does need the op fails with a clear message.

    Returns:
        ``None`` when the library is loaded, else why it is not.
    """
    with _op_library_lock:
        if "result" not in _op_library_state:
            try:
                from nann_tf import ops
            except Exception as e:  # ImportError, or a broken module
                _op_library_state["result"] = (f"nann_tf.ops is not importable "
                                               f"({type(e).__name__}: {e})")
            else:
                try:
                    ops.load_library()
                    _op_library_state["result"] = None
                except Exception as e:  # OpLibraryError: missing, or built for another TF
                    _op_library_state["result"] = f"{type(e).__name__}: {e}"
            if _op_library_state["result"] is not None:
                log.info("custom op library not loaded: %s; models that use only stock ops "
                         "still load", _op_library_state["result"])
        return _op_library_state["result"]  # type: ignore[return-value]


def _spec_from_tensor_info(alias: str, info) -> TensorSpecInfo:
    import tensorflow as tf

    if info.tensor_shape.unknown_rank:
        shape = None
    else:
        shape = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
    try:  # DT_INVALID (e.g. the __saved_model_init_op "output") has no NumPy dtype
        np_dtype = np.dtype(tf.dtypes.as_dtype(info.dtype).as_numpy_dtype)
    except TypeError:
        np_dtype = np.dtype(object)
    return TensorSpecInfo(alias=alias, tensor_name=info.name, dtype=np_dtype,
                          dtype_enum=int(info.dtype), shape=shape)


def _np_dtype_name(dtype: np.dtype) -> str:
    import tensorflow as tf

    try:
        return dtype_name(tf.dtypes.as_dtype(dtype).as_datatype_enum)
    except TypeError:
        return f"numpy {dtype}"


def _fmt_shape(shape: Sequence[int | None] | None) -> str:
    if shape is None:
        return "<unknown rank>"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


class SessionModel:
    """One SavedModel version loaded into its own graph and session (TF Serving's loader).

    ``run`` is thread-safe (``Session.run`` is); :meth:`close` must not be called while
    requests run.

    Args:
        version_dir: the version directory (holds ``saved_model.pb``).
        tags: MetaGraph tags to load (TF Serving: ``--saved_model_tags``, default ``serve``).
        session_config: a ``tf.compat.v1.ConfigProto``; ``allow_soft_placement`` is forced on
            so GPU-pinned nodes run on a CPU-only host.
        load_ops: import the custom op library first when available.

    Raises:
        ModelLoadError: the directory is not a loadable SavedModel (missing or corrupt file,
            unknown tag set, an op the binary does not have).
    """

    def __init__(self, version_dir: str | os.PathLike, tags: Sequence[str] = ("serve",),
                 session_config=None, load_ops: bool = True):
        import tensorflow as tf
        from google.protobuf import message as pb_message

        self.version_dir = os.fspath(version_dir)
        self.tags = tuple(tags)
        op_library_problem = load_op_library() if load_ops else "not requested (load_ops=False)"
        if not (os.path.isfile(os.path.join(self.version_dir, "saved_model.pb"))
                or os.path.isfile(os.path.join(self.version_dir, "saved_model.pbtxt"))):
            raise ModelLoadError(f"no SavedModel at {self.version_dir}: saved_model.pb missing")
        config = tf.compat.v1.ConfigProto()
        if session_config is not None:
            config.CopyFrom(session_config)
        config.allow_soft_placement = True
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=config)
        try:
            with self._graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(
                    self._session, list(self.tags), self.version_dir)
        except Exception as e:
            self._session.close()
            text = str(e)
            if "Op type not registered" in text:
                from nann_tf.ops import REBUILD_COMMAND

                hint = ("the model uses an op this process does not have. A model exported "
                        "with the nann custom op needs the op library (it is compiled by "
                        f"`{REBUILD_COMMAND}`) here and a "
                        "tensorflow_model_server built with the op (see serving/README.md); "
                        f"or export with stock ops only ({arg('visited')}=tf).")
                if op_library_problem:
                    hint += f" Op library status: {op_library_problem}."
                raise ModelLoadError(f"cannot load {self.version_dir}: {text.strip()} -- {hint}"
                                     ) from e
            if isinstance(e, (pb_message.DecodeError, OSError, tf.errors.OpError, RuntimeError,
                              ValueError)):
                raise ModelLoadError(f"cannot load SavedModel {self.version_dir} "
                                     f"(tags {list(self.tags)}): {type(e).__name__}: {text}"
                                     ) from e
            raise
        self.meta_graph_def = meta_graph
        self.signature_defs = dict(meta_graph.signature_def)
        self.signatures: dict[str, SignatureInfo] = {}
        for name, sd in self.signature_defs.items():
            self.signatures[name] = SignatureInfo(
                name=name, method_name=sd.method_name,
                inputs={a: _spec_from_tensor_info(a, t) for a, t in sd.inputs.items()},
                outputs={a: _spec_from_tensor_info(a, t) for a, t in sd.outputs.items()})
        self._callables: dict[tuple, object] = {}
        self._callables_lock = threading.Lock()
        self._closed = False

    def signature(self, signature_name: str = "") -> SignatureInfo:
        """Returns a servable signature (``""`` means ``serving_default``).

        Raises:
            RequestError: FAILED_PRECONDITION for an unknown signature (TF Serving's code and
                wording), and for a signature that is not a predict/classify/regress one.
        """
        name = signature_name or "serving_default"
        sig = self.signatures.get(name)
        if sig is None:
            servable = sorted(n for n, s in self.signatures.items()
                              if s.method_name in PREDICT_METHOD_NAMES)
            raise RequestError("FAILED_PRECONDITION",
                               f'Serving signature key "{name}" not found. Signatures of this '
                               f"model: {', '.join(servable) or '(none)'}")
        if sig.method_name not in PREDICT_METHOD_NAMES:
            raise RequestError("FAILED_PRECONDITION",
                               f'Signature "{name}" has method_name "{sig.method_name}", not '
                               "a predict signature")
        return sig

    def check_input_names(self, signature_name: str, names: Iterable[str]) -> None:
        """Checks that a request names exactly the signature's inputs.

        Raises:
            RequestError: INVALID_ARGUMENT naming the missing and the unexpected inputs;
                FAILED_PRECONDITION for an unknown signature.
        """
        sig = self.signature(signature_name)
        names = set(names)
        missing = sorted(set(sig.inputs) - names)
        extra = sorted(names - set(sig.inputs))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing input(s) {missing}")
            if extra:
                parts.append(f"unexpected input(s) {extra}")
            raise RequestError("INVALID_ARGUMENT",
                               f"signature \"{sig.name}\": {' and '.join(parts)}; it takes "
                               f"exactly {sorted(sig.inputs)}")

    def validate(self, signature_name: str, inputs: Mapping[str, np.ndarray],
                 max_batch_size: int | None = None, allow_empty_batch: bool = True) -> int | None:
        """Checks request inputs against a signature.

        Args:
            signature_name: the signature ("" = ``serving_default``).
            inputs: alias -> array.
            max_batch_size: refuse batches larger than this (``None``: no limit).
            allow_empty_batch: whether a batch of 0 rows is accepted.

        Returns:
            The batch size shared by the batch-major inputs (``None`` if there are none).

        Raises:
            RequestError: INVALID_ARGUMENT naming the input: missing or extra inputs, a dtype
                or rank mismatch, a static dimension mismatch (e.g. a history longer than the
                model's ``L``), inputs that disagree on the batch size, an empty or oversized
                batch; FAILED_PRECONDITION for an unknown signature.
        """
        sig = self.signature(signature_name)
        self.check_input_names(signature_name, inputs)
        batch: int | None = None
        batch_from = ""
        for alias, spec in sig.inputs.items():
            arr = inputs[alias]
            string_ok = spec.dtype == object and arr.dtype.kind in "OSU"
            if arr.dtype != spec.dtype and not string_ok:
                raise RequestError("INVALID_ARGUMENT",
                                   f"input '{alias}' has dtype {_np_dtype_name(arr.dtype)}; "
                                   f"signature \"{sig.name}\" expects "
                                   f"{dtype_name(spec.dtype_enum)}")
            if spec.shape is not None:
                if arr.ndim != len(spec.shape):
                    raise RequestError("INVALID_ARGUMENT",
                                       f"input '{alias}' has rank {arr.ndim} (shape "
                                       f"{list(arr.shape)}); signature \"{sig.name}\" expects "
                                       f"rank {len(spec.shape)} {_fmt_shape(spec.shape)}")
                for axis, (got, want) in enumerate(zip(arr.shape, spec.shape)):
                    if want is not None and got != want:
                        raise RequestError("INVALID_ARGUMENT",
                                           f"input '{alias}' has shape {list(arr.shape)}; "
                                           f"dimension {axis} must be {want} (signature "
                                           f"\"{sig.name}\" expects {_fmt_shape(spec.shape)})")
                if spec.shape and spec.shape[0] is None:
                    if batch is None:
                        batch, batch_from = int(arr.shape[0]), alias
                    elif arr.shape[0] != batch:
                        raise RequestError("INVALID_ARGUMENT",
                                           f"inputs disagree on the batch size: '{batch_from}' "
                                           f"has {batch} rows but '{alias}' has {arr.shape[0]}")
        if batch is not None:
            if batch == 0 and not allow_empty_batch:
                raise RequestError("INVALID_ARGUMENT",
                                   f"empty batch: input '{batch_from}' has 0 rows")
            if max_batch_size is not None and batch > max_batch_size:
                raise RequestError("INVALID_ARGUMENT",
                                   f"batch size {batch} of input '{batch_from}' exceeds the "
                                   f"maximum batch size {max_batch_size}")
        return batch

    def run(self, signature_name: str, inputs: Mapping[str, object],
            output_filter: Sequence[str] = (), max_batch_size: int | None = None,
            allow_empty_batch: bool = True) -> dict[str, np.ndarray]:
        """Runs a signature: validation, then one ``Session.run`` on its tensor names.

        Args:
            signature_name: the signature ("" = ``serving_default``).
            inputs: alias -> array-like (converted with ``np.asarray``; no dtype casting).
            output_filter: the output aliases to fetch (default: all).
            max_batch_size: see :meth:`validate`.
            allow_empty_batch: see :meth:`validate`.

        Returns:
            output alias -> array.

        Raises:
            RequestError: see :meth:`validate`; INVALID_ARGUMENT for an unknown or duplicate
                output alias in ``output_filter``.
            tf.errors.OpError: raised by the graph (e.g. ``InvalidArgumentError`` from an
                assert on a bad parameter).
        """
        if self._closed:
            raise RequestError("UNAVAILABLE", f"model {self.version_dir} is unloaded")
        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        self.validate(signature_name, arrays, max_batch_size=max_batch_size,
                      allow_empty_batch=allow_empty_batch)
        sig = self.signature(signature_name)
        aliases = list(output_filter) or list(sig.outputs)
        if len(set(aliases)) != len(aliases):
            raise RequestError("INVALID_ARGUMENT", f"duplicate output alias in {aliases}")
        for a in aliases:
            if a not in sig.outputs:
                raise RequestError("INVALID_ARGUMENT",
                                   f"output alias '{a}' not found in signature \"{sig.name}\"; "
                                   f"outputs are {sorted(sig.outputs)}")
        input_order = tuple(sorted(arrays))
        runner = self._callable(sig, input_order, tuple(aliases))
        values = runner(*(arrays[a] for a in input_order))
        return dict(zip(aliases, values))

    def _callable(self, sig: SignatureInfo, input_order: tuple[str, ...],
                  aliases: tuple[str, ...]):
        # Session.make_callable skips Session.run's per-call fetch/feed processing (most of
        # the Python overhead of a small request); the callable is as thread-safe as run().
        key = (sig.name, input_order, aliases)
        runner = self._callables.get(key)
        if runner is None:
            with self._callables_lock:
                runner = self._callables.get(key)
                if runner is None:
                    with self._graph.as_default():
                        runner = self._session.make_callable(
                            [self._graph.get_tensor_by_name(sig.outputs[a].tensor_name)
                             for a in aliases],
                            feed_list=[self._graph.get_tensor_by_name(sig.inputs[a].tensor_name)
                                       for a in input_order])
                    self._callables[key] = runner
        return runner

    def close(self) -> None:
        """Releases the session (and the variables' memory)."""
        if not self._closed:
            self._closed = True
            self._session.close()

    def __enter__(self) -> "SessionModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def replay_warmup(model: SessionModel, path: str | os.PathLike | None = None,
                  iterations: int = 1, on_record=None, progress: str | None = None,
                  outputs: list | None = None) -> int:
    """Replays a version's warm-up requests as TF Serving does before the version serves.

    Args:
        model: the loaded version.
        path: the warm-up file; default ``<version_dir>/assets.extra/tf_serving_warmup_requests``.
        iterations: how many times each record runs (``--num_request_iterations_for_warmup``).
        on_record: called with no argument after each record (progress).
        outputs: a list to append each record's answer to (its last iteration's), in order.
        progress: a description: show records replayed, rate and ETA
            (:class:`~nann_tf.progress.Progress`; a long warm-up shows, a short one is silent
            off a terminal).

    Returns:
        The number of records replayed (0 when there is no warm-up file: it is optional).

    Raises:
        ModelLoadError: more than 1000 records, an unreadable record, or a record whose request
            fails (TF Serving then refuses the version).
    """
    import tensorflow as tf

    from nann_tf.serving.warmup import WarmupError, read_warmup_requests, warmup_file_path

    path = os.fspath(path) if path is not None else warmup_file_path(model.version_dir)
    if not os.path.isfile(path):
        log.info("no warm-up file at %s", path)
        return 0
    try:
        records = read_warmup_requests(path)
    except WarmupError as e:
        raise ModelLoadError(f"warm-up of {model.version_dir} failed: {e}") from e
    from nann_tf.progress import Progress

    with Progress(len(records), progress or "", "records", enabled=progress is not None) as bar:
        for i, record in enumerate(records):
            for _ in range(max(1, int(iterations))):
                try:
                    answer = model.run(record.signature_name, record.inputs)
                except (RequestError, tf.errors.OpError) as e:
                    raise ModelLoadError(f"warm-up record {i} (signature "
                                         f"\"{record.signature_name or 'serving_default'}\") "
                                         f"of {model.version_dir} failed: {e}") from e
            bar.update()
            if outputs is not None:
                outputs.append(answer)
            if on_record is not None:
                on_record()
    log.info("replayed %d warm-up records from %s", len(records), path)
    return len(records)

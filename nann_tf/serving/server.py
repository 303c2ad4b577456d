"""A development gRPC server with TensorFlow Serving's API (``nann-tf serve``).

Production serving is ``tensorflow_model_server`` (see ``serving/README.md``). This server
exists for machines without Docker and for tests. It speaks the same gRPC API
(``tensorflow.serving.PredictionService``: Predict, GetModelMetadata;
``tensorflow.serving.ModelService``: GetModelStatus) over the versions a
:class:`~nann_tf.serving.manager.ModelManager` loads, swaps and unloads the way TF Serving does
(version policies, polling, hot swap, warm-up, load retries); what it serves is configured by
:mod:`nann_tf.serving.model_config`.

Errors use TF Serving's gRPC codes: unknown model or version -> NOT_FOUND ("Servable not found
for request: ..."), unknown version label -> INVALID_ARGUMENT, unknown signature ->
FAILED_PRECONDITION (as predict_util.cc), malformed tensors and inputs that do not match the
signature -> INVALID_ARGUMENT naming the input, graph errors -> the code of their
``tf.errors.OpError`` (an ``InvalidArgumentError`` from an assert -> INVALID_ARGUMENT).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent import futures

import grpc

from nann_tf.serving.loader import RequestError
from nann_tf.serving.manager import ModelManager
from nann_tf.serving.model_config import ServedModelConfig, ServerOptions

__all__ = ["ModelServer", "grpc_code_for_tf_error"]

log = logging.getLogger(__name__)

_MAX_MESSAGE_BYTES = 2**31 - 1  # TF Serving sets the gRPC message limit to INT_MAX


# ------------------------------------------------------------------------ errors -> gRPC statuses
_GRPC_CODE_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def grpc_code_for_tf_error(error_code: int) -> grpc.StatusCode:
    """Maps a ``tf.errors.OpError.error_code`` to a ``grpc.StatusCode`` (same numbering)."""
    return _GRPC_CODE_BY_VALUE.get(int(error_code), grpc.StatusCode.UNKNOWN)


def _abort(context, code: str | grpc.StatusCode, message: str):
    if isinstance(code, str):
        code = grpc.StatusCode[code]
    context.abort(code, message)


class _Handler:
    """Turns RequestError / tf errors / bugs into gRPC statuses."""

    def __init__(self, context):
        self.context = context

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            return False
        import tensorflow as tf

        if isinstance(exc, RequestError):
            _abort(self.context, exc.code, exc.message)
        if isinstance(exc, tf.errors.OpError):
            _abort(self.context, grpc_code_for_tf_error(exc.error_code), exc.message.strip())
        if isinstance(exc, Exception):
            log.error("internal error while handling a request", exc_info=exc)
            _abort(self.context, grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        return False


# ------------------------------------------------------------------------ gRPC services
class ModelServer:
    """The gRPC server: PredictionService + ModelService over a :class:`ModelManager`.

    Args:
        configs: the models to serve.
        options: server options.
    """

    def __init__(self, configs: Sequence[ServedModelConfig], options: ServerOptions | None = None):
        self.options = options or ServerOptions()
        self.manager = ModelManager(configs, self.options)
        self._grpc_server: grpc.Server | None = None
        self.port: int | None = None

    # ---------------------------------------------------------------- handlers
    def predict(self, request):
        """Handles a ``PredictRequest``; returns a ``PredictResponse``.

        Raises:
            RequestError or tf.errors.OpError: mapped to gRPC statuses by the servicer.
        """
        from tensorflow_serving.apis import predict_pb2

        from nann_tf.serving.tensors import (TensorDecodeError, dtype_name, from_tensor_proto,
                                             to_tensor_proto)

        spec = request.model_spec
        if not spec.name:
            raise RequestError("INVALID_ARGUMENT", "model_spec.name is empty")
        version = spec.version.value if spec.HasField("version") else None
        label = spec.version_label or None
        with self.manager.acquire(spec.name, version, label) as (served_version, model):
            sig = model.signature(spec.signature_name)
            model.check_input_names(sig.name, request.inputs)
            arrays = {}
            for alias, proto in request.inputs.items():
                spec_info = sig.inputs[alias]
                if proto.dtype != spec_info.dtype_enum and spec_info.dtype != object:
                    raise RequestError("INVALID_ARGUMENT",
                                       f"input '{alias}' has dtype {dtype_name(proto.dtype)}; "
                                       f"signature \"{sig.name}\" expects "
                                       f"{dtype_name(spec_info.dtype_enum)}")
                try:
                    arrays[alias] = from_tensor_proto(proto, alias,
                                                      self.options.max_tensor_elements)
                except TensorDecodeError as e:
                    raise RequestError("INVALID_ARGUMENT", str(e)) from e
            outputs = model.run(sig.name, arrays, output_filter=list(request.output_filter),
                                max_batch_size=self.options.max_batch_size,
                                allow_empty_batch=False)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = served_version
            response.model_spec.signature_name = sig.name
            for alias, arr in outputs.items():
                response.outputs[alias].CopyFrom(to_tensor_proto(arr))
            return response

    def get_model_metadata(self, request):
        """Handles a ``GetModelMetadataRequest`` (only ``signature_def``, as TF Serving)."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        if not request.HasField("model_spec") or not request.model_spec.name:
            raise RequestError("INVALID_ARGUMENT", "Missing ModelSpec")
        if not request.metadata_field:
            raise RequestError("INVALID_ARGUMENT",
                               "GetModelMetadataRequest must specify at least one "
                               "metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise RequestError("INVALID_ARGUMENT", f"Metadata field {field} is not supported")
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        with self.manager.acquire(spec.name, version, spec.version_label or None) as (v, model):
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for key, sd in model.signature_defs.items():
                sig_map.signature_def[key].CopyFrom(sd)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = v
            response.metadata["signature_def"].Pack(sig_map)
            return response

    def get_model_status(self, request):
        """Handles a ``GetModelStatusRequest``."""
        from tensorflow_serving.apis import get_model_status_pb2, status_pb2

        error_codes = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type

        if not request.HasField("model_spec") or not request.model_spec.name:
            raise RequestError("INVALID_ARGUMENT", "Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for row in self.manager.status(spec.name, version):
            out = response.model_version_status.add()
            out.version = row.version
            out.state = get_model_status_pb2.ModelVersionStatus.State.Value(row.state)
            out.status.error_code = error_codes.values_by_name[row.error_code].number
            out.status.error_message = row.error_message
        return response

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> int:
        """Loads the models, then starts serving gRPC.

        Returns:
            The bound port.

        Raises:
            ModelConfigError: see :meth:`ModelManager.start`.
            OSError: the port cannot be bound.
        """
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.manager.start()
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.options.grpc_max_threads,
                                       thread_name_prefix="grpc-worker"),
            options=[("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                     ("grpc.so_reuseport", 0)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionServicer(self), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelServicer(self), server)
        address = f"{self.options.host}:{self.options.port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as e:
            self.manager.stop()
            raise OSError(f"cannot bind gRPC port {address}: {e}") from e
        if port == 0:
            self.manager.stop()
            raise OSError(f"cannot bind gRPC port {address}")
        server.start()
        self._grpc_server = server
        self.port = port
        log.info("Running gRPC ModelServer at %s:%d ...", self.options.host, port)
        return port

    def stop(self, grace_s: float | None = 30.0) -> None:
        """Stops accepting requests, lets in-flight ones finish (up to ``grace_s``), unloads."""
        if self._grpc_server is not None:
            self._grpc_server.stop(grace_s).wait()
            self._grpc_server = None
        self.manager.stop()
        log.info("server stopped")

    def __enter__(self) -> "ModelServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _unimplemented(name: str):
    def handler(self, request, context):
        _abort(context, grpc.StatusCode.UNIMPLEMENTED,
               f"{name} is not implemented by the nann-tf development server; "
               "use TensorFlow Serving")
    return handler


def _make_servicers():
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def __init__(self, server: ModelServer):
            self._server = server

        def Predict(self, request, context):  # noqa: N802 (gRPC method name)
            with _Handler(context):
                return self._server.predict(request)

        def GetModelMetadata(self, request, context):  # noqa: N802
            with _Handler(context):
                return self._server.get_model_metadata(request)

        Classify = _unimplemented("Classify")
        Regress = _unimplemented("Regress")
        MultiInference = _unimplemented("MultiInference")

    class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
        def __init__(self, server: ModelServer):
            self._server = server

        def GetModelStatus(self, request, context):  # noqa: N802
            with _Handler(context):
                return self._server.get_model_status(request)

        HandleReloadConfigRequest = _unimplemented("HandleReloadConfigRequest")

    return PredictionServicer, ModelServicer


_PredictionServicer, _ModelServicer = _make_servicers()

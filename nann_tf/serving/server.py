"""A development gRPC server with TensorFlow Serving's API (``nann-tf serve``).

Production serving is ``tensorflow_model_server`` (see ``serving/README.md``). This server
exists for machines without Docker and for tests. It speaks the same gRPC API
(``tensorflow.serving.PredictionService``: Predict, GetModelMetadata;
``tensorflow.serving.ModelService``: GetModelStatus) and manages versions the way TF Serving
does:

- a model is a base path of numbered version directories; ``model_version_policy`` (latest N
  -- the default is the latest 1 --, all, specific) picks which are loaded; directories that
  are not numbers (an exporter's ``.tmp-*``) or have no ``saved_model.pb`` yet are ignored;
- a version is loaded with the TF1 session loader (:class:`~nann_tf.serving.loader.SessionModel`)
  and its warm-up records are replayed before it serves;
- the base path is polled every ``file_system_poll_wait_seconds``; a new version is loaded
  fully, then becomes the one "latest" requests get, and the version it replaces is unloaded
  once its in-flight requests have finished (no request fails during a swap);
- a version that fails to load (corrupt file, missing op, failed warm-up) is retried
  ``max_num_load_retries`` times, then reported in GetModelStatus with its error, while the
  versions already serving keep serving.

Errors use TF Serving's gRPC codes: unknown model or version -> NOT_FOUND ("Servable not found
for request: ..."), unknown version label -> INVALID_ARGUMENT, unknown signature ->
FAILED_PRECONDITION (as predict_util.cc), malformed tensors and inputs that do not match the
signature -> INVALID_ARGUMENT naming the input, graph errors -> the code of their
``tf.errors.OpError`` (an ``InvalidArgumentError`` from an assert -> INVALID_ARGUMENT).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent import futures

import grpc

from nann_tf.serving.loader import ModelLoadError, RequestError, SessionModel, replay_warmup

__all__ = [
    "ModelConfigError",
    "VersionPolicy",
    "ModelConfig",
    "ServerOptions",
    "VersionStatus",
    "ModelManager",
    "ModelServer",
    "parse_model_config_text",
    "load_model_config_file",
    "grpc_code_for_tf_error",
]

log = logging.getLogger(__name__)

_VERSION_DIR_RE = re.compile(r"^[0-9]+$")
_MAX_MESSAGE_BYTES = 2**31 - 1  # TF Serving sets the gRPC message limit to INT_MAX


class ModelConfigError(ValueError):
    """A model configuration (flags or ``--model_config_file``) that cannot be served."""


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which version directories of a model are loaded (``model_version_policy``).

    Attributes:
        kind: ``"latest"`` (the ``num_versions`` highest), ``"all"`` or ``"specific"``.
        num_versions: for ``latest``.
        versions: for ``specific``.
    """

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in ("latest", "all", "specific"):
            raise ModelConfigError(f"unknown version policy {self.kind!r}")
        if self.kind == "latest" and self.num_versions < 1:
            raise ModelConfigError(f"latest.num_versions must be >= 1, got {self.num_versions}")
        if self.kind == "specific" and not self.versions:
            raise ModelConfigError("a specific version policy needs at least one version")

    def select(self, on_disk: Iterable[int]) -> set[int]:
        """Returns the versions to load out of the ones on disk."""
        found = sorted(set(on_disk))
        if self.kind == "all":
            return set(found)
        if self.kind == "specific":
            return set(found) & set(self.versions)
        return set(found[-self.num_versions:])


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One served model.

    Attributes:
        name: the model name requests use (``model_spec.name``).
        base_path: the directory holding the numbered version directories.
        version_policy: see :class:`VersionPolicy`.
        version_labels: label -> version (``model_spec.version_label``).
    """

    name: str
    base_path: str
    version_policy: VersionPolicy = VersionPolicy()
    version_labels: Mapping[str, int] = dataclasses.field(default_factory=dict)


def parse_model_config_text(text: str, source: str = "<model config>") -> list[ModelConfig]:
    """Parses a text-format ``ModelServerConfig`` (TF Serving's ``--model_config_file``).

    Args:
        text: the file contents.
        source: the file name for error messages.

    Returns:
        One :class:`ModelConfig` per ``model_config_list.config``.

    Raises:
        ModelConfigError: a syntax error, ``custom_model_config``, a platform other than
            ``tensorflow``, a missing name or base path, or a duplicate name.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    proto = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as e:
        raise ModelConfigError(f"{source}: not a text-format ModelServerConfig: {e}") from e
    if proto.WhichOneof("config") == "custom_model_config":
        raise ModelConfigError(f"{source}: custom_model_config is not supported")
    out: list[ModelConfig] = []
    seen: set[str] = set()
    base_dir = os.path.dirname(os.path.abspath(source)) if os.path.exists(source) else os.getcwd()
    for i, c in enumerate(proto.model_config_list.config):
        where = f"{source}: model_config_list.config[{i}]"
        if not c.name:
            raise ModelConfigError(f"{where}: name is empty")
        if c.name in seen:
            raise ModelConfigError(f"{where}: duplicate model name {c.name!r}")
        seen.add(c.name)
        if not c.base_path:
            raise ModelConfigError(f"{where} ({c.name}): base_path is empty")
        if c.model_platform not in ("", "tensorflow"):
            raise ModelConfigError(f"{where} ({c.name}): model_platform "
                                   f"{c.model_platform!r} is not supported (only tensorflow)")
        kind = c.model_version_policy.WhichOneof("policy_choice") or "latest"
        try:
            if kind == "latest":
                policy = VersionPolicy("latest", c.model_version_policy.latest.num_versions or 1)
            elif kind == "all":
                policy = VersionPolicy("all")
            else:
                policy = VersionPolicy("specific",
                                       versions=tuple(c.model_version_policy.specific.versions))
        except ModelConfigError as e:
            raise ModelConfigError(f"{where} ({c.name}): {e}") from e
        base_path = c.base_path
        if "://" not in base_path and not os.path.isabs(base_path):
            base_path = os.path.join(base_dir, base_path)
        out.append(ModelConfig(c.name, base_path, policy, dict(c.version_labels)))
    if not out:
        raise ModelConfigError(f"{source}: model_config_list has no config entries")
    return out


def load_model_config_file(path: str | os.PathLike) -> list[ModelConfig]:
    """Reads and parses a ``--model_config_file``; see :func:`parse_model_config_text`."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ModelConfigError(f"cannot read model config file {path}: {e}") from e
    return parse_model_config_text(text, source=path)


@dataclasses.dataclass
class ServerOptions:
    """Settings of the local server (TF Serving flag names where one exists).

    Attributes:
        host: interface to bind (TF Serving binds all: ``0.0.0.0``).
        port: gRPC port (``--port``); 0 picks a free one.
        max_batch_size: larger batches are refused with INVALID_ARGUMENT (our flag).
        enable_model_warmup: replay ``assets.extra/tf_serving_warmup_requests`` before serving.
        num_request_iterations_for_warmup: times each warm-up record runs.
        file_system_poll_wait_seconds: base path polling period; 0 polls once at start.
        max_num_load_retries: retries of a version that failed to load.
        load_retry_interval_s: seconds between those retries.
        grpc_max_threads: gRPC worker threads (concurrent requests).
        saved_model_tags: MetaGraph tags to load.
        session_config: ``tf.compat.v1.ConfigProto`` for every session (soft placement is
            always on).
        max_tensor_elements: a request tensor declaring more elements is refused.
    """

    host: str = "0.0.0.0"
    port: int = 8500
    max_batch_size: int = 1024
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    file_system_poll_wait_seconds: float = 1.0
    max_num_load_retries: int = 5
    load_retry_interval_s: float = 60.0
    grpc_max_threads: int = 16
    saved_model_tags: tuple[str, ...] = ("serve",)
    session_config: object = None
    max_tensor_elements: int = 1 << 26


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """One row of GetModelStatus.

    Attributes:
        version: the version number.
        state: ``START``, ``LOADING``, ``AVAILABLE``, ``UNLOADING`` or ``END``.
        error_code: ``"OK"`` or the gRPC code name of the last load error.
        error_message: the last load error ("" when none).
    """

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


class _Version:
    """Mutable per-version bookkeeping (guarded by the manager's lock)."""

    def __init__(self, version: int, path: str):
        self.version = version
        self.path = path
        self.state = "START"
        self.error_code = "OK"
        self.error_message = ""
        self.model: SessionModel | None = None
        self.inflight = 0
        self.attempts = 0
        self.next_attempt = 0.0
        self.failed_stat: tuple | None = None  # saved_model.pb stat when it ended in error


def _saved_model_stat(path: str) -> tuple | None:
    for name in ("saved_model.pb", "saved_model.pbtxt"):
        try:
            st = os.stat(os.path.join(path, name))
            return (name, st.st_mtime_ns, st.st_size)
        except OSError:
            continue
    return None


_GRPC_CODE_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def grpc_code_for_tf_error(error_code: int) -> grpc.StatusCode:
    """Maps a ``tf.errors.OpError.error_code`` to a ``grpc.StatusCode`` (same numbering)."""
    return _GRPC_CODE_BY_VALUE.get(int(error_code), grpc.StatusCode.UNKNOWN)


class ModelManager:
    """Discovers, loads, swaps and unloads the versions of the configured models.

    Args:
        configs: the models.
        options: the server options.
    """

    def __init__(self, configs: Sequence[ModelConfig], options: ServerOptions):
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ModelConfigError(f"duplicate model names in {names}")
        self.configs = {c.name: c for c in configs}
        self.options = options
        self._cv = threading.Condition()
        self._versions: dict[str, dict[int, _Version]] = {c.name: {} for c in configs}
        self._announced_latest: dict[str, int | None] = {c.name: None for c in configs}
        self._ignored_logged: set[str] = set()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._poll_lock = threading.Lock()

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Loads the initial versions (synchronously), then polls in a background thread.

        Raises:
            ModelConfigError: a base path does not exist, or a model has versions on disk but
                none of them loaded (TF Serving also refuses to start then).
        """
        for c in self.configs.values():
            if "://" in c.base_path:
                raise ModelConfigError(f"model {c.name}: only local base paths are supported "
                                       f"by the development server, got {c.base_path}")
            if not os.path.isdir(c.base_path):
                raise ModelConfigError(f"Could not find base path {c.base_path} for servable "
                                       f"{c.name}")
        self.poll_once(initial=True)
        problem = None
        with self._cv:
            for name, versions in self._versions.items():
                available = [v for v in versions.values() if v.state == "AVAILABLE"]
                failed = [v for v in versions.values() if v.error_code != "OK"]
                if not available and failed and problem is None:
                    errors = "; ".join(f"version {v.version}: {v.error_message}" for v in failed)
                    problem = ModelConfigError(f"model {name}: no version could be loaded: "
                                               f"{errors}")
                if not versions:
                    log.warning("No versions of servable %s found under base path %s; "
                                "waiting for one to appear", name, self.configs[name].base_path)
        if problem is not None:
            self.stop()
            raise problem
        if self.options.file_system_poll_wait_seconds > 0:
            self._poller = threading.Thread(target=self._poll_loop, name="version-poller",
                                            daemon=True)
            self._poller.start()

    def stop(self) -> None:
        """Stops polling and unloads every version (waiting for their in-flight requests)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        with self._poll_lock:
            for name in list(self._versions):
                for v in list(self._versions[name].values()):
                    if v.state == "AVAILABLE":
                        self._unload(name, v)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.options.file_system_poll_wait_seconds):
            try:
                self.poll_once()
            except Exception:  # keep serving whatever is loaded
                log.exception("version polling failed")

    # ----------------------------------------------------------------- polling
    def _scan(self, config: ModelConfig) -> dict[int, str] | None:
        try:
            entries = list(os.scandir(config.base_path))
        except OSError as e:
            log.warning("cannot list base path %s of model %s: %s", config.base_path,
                        config.name, e)
            return None
        found: dict[int, str] = {}
        for entry in entries:
            if not _VERSION_DIR_RE.match(entry.name) or not entry.is_dir():
                continue
            if _saved_model_stat(entry.path) is None:
                if entry.path not in self._ignored_logged:
                    self._ignored_logged.add(entry.path)
                    log.info("ignoring %s: no saved_model.pb yet", entry.path)
                continue
            found[int(entry.name)] = entry.path
        return found

    def poll_once(self, initial: bool = False) -> None:
        """Scans every base path once and loads/unloads versions to match the policies."""
        with self._poll_lock:
            for name, config in self.configs.items():
                if self._stop.is_set() and not initial:
                    return
                found = self._scan(config)
                if found is None:
                    continue
                self._reconcile(name, config, found, initial)

    def _reconcile(self, name: str, config: ModelConfig, found: dict[int, str],
                   initial: bool) -> None:
        aspired = config.version_policy.select(found)
        now = time.monotonic()
        versions = self._versions[name]
        with self._cv:
            for num in sorted(aspired):
                v = versions.get(num)
                if v is None or (v.state == "END" and v.error_code == "OK"):
                    versions[num] = _Version(num, found[num])
                elif v.state == "END" and v.failed_stat != _saved_model_stat(found[num]):
                    # The failed version was rewritten in place: try it afresh.
                    versions[num] = _Version(num, found[num])
            for num, v in versions.items():
                if num not in aspired and v.state in ("START", "LOADING"):
                    v.state = "END"
            to_load = [v for num, v in versions.items() if num in aspired
                       and v.state in ("START", "LOADING") and v.next_attempt <= now]
        for v in sorted(to_load, key=lambda x: -x.version):
            if self._stop.is_set() and not initial:
                return
            self._load(name, v)
        with self._cv:
            any_aspired_available = any(versions[n].state == "AVAILABLE"
                                        for n in aspired if n in versions)
            to_unload = [v for num, v in versions.items() if v.state == "AVAILABLE"
                         and num not in aspired and (any_aspired_available or not aspired)]
        for v in to_unload:
            self._unload(name, v)
        self._announce_latest(name)

    def _load(self, name: str, v: _Version) -> None:
        with self._cv:
            v.state = "LOADING"
            v.attempts += 1
        log.info("Approving load for servable version {name: %s version: %d} (attempt %d)",
                 name, v.version, v.attempts)
        started = time.monotonic()
        model = None
        try:
            model = SessionModel(v.path, tags=self.options.saved_model_tags,
                                 session_config=self.options.session_config)
            records = 0
            if self.options.enable_model_warmup:
                records = replay_warmup(model,
                                        iterations=self.options.num_request_iterations_for_warmup)
        except ModelLoadError as e:
            if model is not None:
                model.close()
            self._load_failed(name, v, str(e))
            return
        except Exception as e:  # anything else a broken SavedModel can raise
            if model is not None:
                model.close()
            self._load_failed(name, v, f"{type(e).__name__}: {e}")
            return
        with self._cv:
            v.model = model
            v.state = "AVAILABLE"
            v.error_code, v.error_message = "OK", ""
        log.info("Successfully loaded servable version {name: %s version: %d} in %.2f s "
                 "(%d warm-up records)", name, v.version, time.monotonic() - started, records)

    def _load_failed(self, name: str, v: _Version, message: str) -> None:
        retries_left = self.options.max_num_load_retries - (v.attempts - 1)
        with self._cv:
            v.error_code, v.error_message = "UNKNOWN", message
            if "Op type not registered" in message:
                v.error_code = "NOT_FOUND"
            if retries_left > 0:
                v.state = "LOADING"
                v.next_attempt = time.monotonic() + self.options.load_retry_interval_s
            else:
                v.state = "END"
                v.failed_stat = _saved_model_stat(v.path)
        if retries_left > 0:
            log.error("Loading servable {name: %s version: %d} failed (%d retries left, next in "
                      "%.0f s): %s", name, v.version, retries_left,
                      self.options.load_retry_interval_s, message)
        else:
            log.error("Loading servable {name: %s version: %d} failed; giving up; versions "
                      "already serving keep serving: %s", name, v.version, message)

    def _unload(self, name: str, v: _Version) -> None:
        with self._cv:
            if v.state != "AVAILABLE":
                return
            v.state = "UNLOADING"
            log.info("Quiescing servable version {name: %s version: %d}", name, v.version)
            self._cv.wait_for(lambda: v.inflight == 0)
            model, v.model = v.model, None
        if model is not None:
            model.close()
        with self._cv:
            v.state = "END"
        log.info("Done unloading servable version {name: %s version: %d}", name, v.version)

    def _announce_latest(self, name: str) -> None:
        with self._cv:
            available = sorted(n for n, v in self._versions[name].items()
                               if v.state == "AVAILABLE")
        latest = available[-1] if available else None
        if latest != self._announced_latest[name]:
            self._announced_latest[name] = latest
            if latest is None:
                log.warning("model %s has no available version", name)
            else:
                log.info("Serving model %s version %d (loaded versions: %s)", name, latest,
                         available)

    # ----------------------------------------------------------------- requests
    @contextlib.contextmanager
    def acquire(self, name: str, version: int | None = None,
                label: str | None = None) -> Iterator[tuple[int, SessionModel]]:
        """Holds a version for the duration of a request (it cannot be unloaded meanwhile).

        Args:
            name: model name.
            version: a specific version, or ``None`` for the latest available.
            label: a version label (exclusive with ``version``).

        Yields:
            ``(version, model)``.

        Raises:
            RequestError: NOT_FOUND for an unknown model or a version that is not available;
                INVALID_ARGUMENT for an unknown version label.
        """
        with self._cv:
            if label:
                config = self.configs.get(name)
                if config is None or label not in config.version_labels:
                    raise RequestError("INVALID_ARGUMENT",
                                       f"Unrecognized servable version label: {label}")
                version = config.version_labels[label]
            versions = self._versions.get(name)
            if versions is None:
                request = f"Specific({name}, {version})" if version is not None \
                    else f"Latest({name})"
                raise RequestError("NOT_FOUND", f"Servable not found for request: {request}")
            if version is None:
                available = [v for v in versions.values() if v.state == "AVAILABLE"]
                if not available:
                    raise RequestError("NOT_FOUND",
                                       f"Servable not found for request: Latest({name})")
                chosen = max(available, key=lambda v: v.version)
            else:
                chosen = versions.get(version)
                if chosen is None or chosen.state != "AVAILABLE":
                    raise RequestError("NOT_FOUND", f"Servable not found for request: "
                                                    f"Specific({name}, {version})")
            chosen.inflight += 1
        try:
            yield chosen.version, chosen.model  # type: ignore[misc]
        finally:
            with self._cv:
                chosen.inflight -= 1
                if chosen.inflight == 0:
                    self._cv.notify_all()

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """The state of a model's versions, newest first (GetModelStatus).

        Raises:
            RequestError: NOT_FOUND when the model or the version is unknown.
        """
        with self._cv:
            versions = self._versions.get(name)
            if version is not None:
                v = (versions or {}).get(version)
                if v is None:
                    raise RequestError("NOT_FOUND",
                                       f"Could not find version {version} of model {name}")
                rows = [v]
            else:
                if not versions:
                    raise RequestError("NOT_FOUND",
                                       f"Could not find any versions of model {name}")
                rows = sorted(versions.values(), key=lambda x: -x.version)
            return [VersionStatus(v.version, v.state, v.error_code, v.error_message)
                    for v in rows]


# ------------------------------------------------------------------------ gRPC services
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


class ModelServer:
    """The gRPC server: PredictionService + ModelService over a :class:`ModelManager`.

    Args:
        configs: the models to serve.
        options: server options.
    """

    def __init__(self, configs: Sequence[ModelConfig], options: ServerOptions | None = None):
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

"""What the development server serves and how: model configs and server options.

- :class:`ServedModelConfig` -- one served model: its name, base path (numbered version
  directories), :class:`VersionPolicy` (``model_version_policy``: latest N -- the default is the
  latest 1 --, all, specific) and version labels. Not to be confused with
  :class:`nann_tf.config.ModelConfig`, the Keras model's hyper-parameters.
- :func:`parse_model_config_text` / :func:`load_model_config_file` -- TF Serving's text-format
  ``ModelServerConfig`` (``--model_config_file``) -> a list of :class:`ServedModelConfig`.
- :class:`ServerOptions` -- the server's settings (TF Serving flag names where one exists).

A configuration that cannot be served raises :class:`ModelConfigError`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping

from nann_tf.errors import UserError

__all__ = [
    "ModelConfigError",
    "VersionPolicy",
    "ServedModelConfig",
    "ServerOptions",
    "parse_model_config_text",
    "load_model_config_file",
]


class ModelConfigError(UserError, ValueError):
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
class ServedModelConfig:
    """One served model (an entry of TF Serving's ``model_config_list``).

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


def parse_model_config_text(text: str,
                            source: str = "<model config>") -> list[ServedModelConfig]:
    """Parses a text-format ``ModelServerConfig`` (TF Serving's ``--model_config_file``).

    Args:
        text: the file contents.
        source: the file name for error messages.

    Returns:
        One :class:`ServedModelConfig` per ``model_config_list.config``.

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
    out: list[ServedModelConfig] = []
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
        out.append(ServedModelConfig(c.name, base_path, policy, dict(c.version_labels)))
    if not out:
        raise ModelConfigError(f"{source}: model_config_list has no config entries")
    return out


def load_model_config_file(path: str | os.PathLike) -> list[ServedModelConfig]:
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

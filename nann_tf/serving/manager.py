"""Version management of the development server (``nann-tf serve``).

:class:`ModelManager` discovers, loads, swaps and unloads the versions of the configured models
(:class:`~nann_tf.serving.model_config.ServedModelConfig`) the way TF Serving does:

- a model is a base path of numbered version directories; its ``version_policy`` (latest N
  -- the default is the latest 1 --, all, specific) picks which are loaded; directories that
  are not numbers (an exporter's ``.tmp-*``) or have no ``saved_model.pb`` yet are ignored;
- a version is loaded with the TF1 session loader (:class:`~nann_tf.serving.loader.SessionModel`)
  and its warm-up records are replayed before it serves;
- the base path is polled every ``file_system_poll_wait_seconds``; a new version is loaded
  fully, then becomes the one "latest" requests get, and the version it replaces is unloaded
  once its in-flight requests have finished (no request fails during a swap);
- a version that fails to load (corrupt file, missing op, failed warm-up) is retried
  ``max_num_load_retries`` times, then reported by :meth:`ModelManager.status` (GetModelStatus)
  with its error, while the versions already serving keep serving.

Requests hold a version with :meth:`ModelManager.acquire`; an unknown model or version is a
:class:`~nann_tf.serving.loader.RequestError` NOT_FOUND, an unknown version label
INVALID_ARGUMENT. Nothing here speaks gRPC: :mod:`nann_tf.serving.server` does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence

from nann_tf.serving.loader import ModelLoadError, RequestError, SessionModel, replay_warmup
from nann_tf.serving.model_config import ModelConfigError, ServedModelConfig, ServerOptions

__all__ = ["VersionStatus", "ModelManager"]

log = logging.getLogger(__name__)

_VERSION_DIR_RE = re.compile(r"^[0-9]+$")


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


class ModelManager:
    """Discovers, loads, swaps and unloads the versions of the configured models.

    Args:
        configs: the models.
        options: the server options.
    """

    def __init__(self, configs: Sequence[ServedModelConfig], options: ServerOptions):
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
    def _scan(self, config: ServedModelConfig) -> dict[int, str] | None:
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

    def _reconcile(self, name: str, config: ServedModelConfig, found: dict[int, str],
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
            log.info("servable version {name: %s version: %d}: SavedModel loaded in %.2f s%s",
                     name, v.version, time.monotonic() - started,
                     "; replaying its warm-up records" if self.options.enable_model_warmup
                     else "")
            records = 0
            if self.options.enable_model_warmup:
                records = replay_warmup(model,
                                        iterations=self.options.num_request_iterations_for_warmup,
                                        progress=f"serve: warm-up of {name} version {v.version}")
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

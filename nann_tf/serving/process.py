"""``nann-tf serve`` in a subprocess, and how the package starts its own Python subprocesses.

Every Python subprocess the package starts runs :func:`python_module_command`: this Python with
``-P``, so the child imports the INSTALLED package, never a ``nann_tf/`` directory that happens to
be in the working directory (``python -m`` otherwise puts the working directory first on
``sys.path``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

from nann_tf.errors import UserError

__all__ = ["ServerProcess", "ServerStartError", "python_module_command"]

_LISTENING_RE = re.compile(r"listening on ([\w.:\[\]-]+):(\d+)")


def python_module_command(module: str) -> list[str]:
    """``[python, -P, -m, module]``: run ``module`` of the installed package in a child process."""
    return [sys.executable, "-P", "-m", module]


class ServerStartError(UserError, RuntimeError):
    """The server subprocess exited or did not become ready; the message holds its last output."""


class ServerProcess:
    """``nann-tf serve`` in a subprocess: start it, wait until the model is AVAILABLE, stop it.

    The process gets its own session, so a Ctrl-C in the terminal reaches only the parent,
    which then stops the server with one SIGTERM (the server's graceful shutdown). Use it as a
    context manager, or call :meth:`stop` in a ``finally``.

    Args:
      base_path: the model base path (numbered version directories).
      model_name: the served model name.
      port: gRPC port (0: a free one, read back from the server's output).
      host: interface to bind.
      log_path: file receiving the server's stdout and stderr (default: discarded).
      extra_args: more ``nann-tf serve`` flags, e.g. ``["--file_system_poll_wait_seconds=0.2"]``.
    """

    def __init__(self, base_path, model_name: str = "nann", port: int = 0,
                 host: str = "127.0.0.1", log_path=None, extra_args=()):
        self.base_path = os.path.abspath(os.fspath(base_path))
        self.model_name = model_name
        self.port = int(port)
        self.host = host
        self.log_path = os.fspath(log_path) if log_path is not None else None
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.address: str | None = None
        self.version: int | None = None
        self.returncode: int | None = None
        self._log = None
        self._pump: threading.Thread | None = None
        self._tail: list[str] = []

    @property
    def command(self) -> list[str]:
        """The server's command line (``nann-tf serve ...`` run with this Python)."""
        return [*python_module_command("nann_tf.cli"), "serve", f"--host={self.host}",
                f"--port={self.port}", f"--model_name={self.model_name}",
                f"--model_base_path={self.base_path}", *self.extra_args]

    def start(self, timeout_s: float = 600.0) -> str:
        """Starts the server and waits until a version of the model is AVAILABLE.

        Returns:
          The gRPC address ``host:port``.

        Raises:
          ServerStartError: the server exited, or did not become ready within ``timeout_s`` (the
            message holds the end of its output); the process is stopped first.
        """
        if self.proc is not None:
            raise RuntimeError("server already started")
        if self.log_path:
            os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
            self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     text=True, env=env, start_new_session=True)
        found = threading.Event()
        box: list[tuple[str, int]] = []

        def pump():
            for line in self.proc.stdout:
                if self._log is not None:
                    self._log.write(line)
                    self._log.flush()
                self._tail = (self._tail + [line])[-40:]
                m = _LISTENING_RE.search(line)
                if m and not box:
                    box.append((m.group(1), int(m.group(2))))
                    found.set()
            found.set()  # EOF: the process is gone

        self._pump = threading.Thread(target=pump, name="serve-output", daemon=True)
        self._pump.start()
        deadline = time.monotonic() + timeout_s
        try:
            while not found.wait(0.2):
                if time.monotonic() > deadline:
                    raise ServerStartError(self._failure(f"did not start listening within "
                                                 f"{timeout_s:g} s"))
            if not box:
                self.proc.wait(10)
                raise ServerStartError(self._failure(f"exited with status {self.proc.returncode} "
                                             "before listening"))
            host, port = box[0]
            self.port = port
            self.address = f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
            from nann_tf.serving.client import RetrievalClient

            with RetrievalClient(self.address, self.model_name, timeout_s=10) as client:
                try:
                    self.version = client.wait_until_ready(
                        timeout_s=max(1.0, deadline - time.monotonic()))
                except TimeoutError as e:
                    raise ServerStartError(self._failure(str(e))) from e
        except BaseException:
            self.stop()
            raise
        return self.address

    def _failure(self, what: str) -> str:
        tail = "".join(self._tail[-15:]).rstrip()
        where = f" (log: {self.log_path})" if self.log_path else ""
        return (f"the server `{' '.join(self.command[3:])}` {what}{where}"
                + (f"; its last output:\n{tail}" if tail else ""))

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """Sends SIGTERM and waits (SIGKILL after ``timeout_s``); returns the exit status."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.returncode = proc.returncode
        finally:
            if self._pump is not None:
                self._pump.join(5)
            if proc.stdout is not None:
                proc.stdout.close()
            if self._log is not None:
                self._log.close()
                self._log = None
        return self.returncode

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

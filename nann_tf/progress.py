"""Progress of long loops: count/total, rate and ETA, on a terminal or in a log.

One small reporter for every long stage (synth, prepare, embedding the items, HNSW insertion,
the export's warm-up, brute force)::

    with Progress(total=n_rows, desc="prepare: reading", unit="rows") as p:
        for block in blocks:
            ...
            p.update(len(block))

- On a terminal (the stream is a TTY): one line, redrawn in place at most every
  ``redraw_s`` seconds: ``prepare: reading 12.3M/100M rows (12%), 2.41M rows/s, ETA 36s``.
- Off a terminal: the same text as a log line (logger ``nann_tf.progress`` when logging is
  configured, else the stream) every ``log_every_s`` seconds (default 10), so a short loop
  writes nothing and a long one a line every few seconds; :meth:`close` then writes the final
  line (count, mean rate and elapsed time).

``NANN_TF_PROGRESS=0`` in the environment turns every reporter off; ``=tty`` / ``=log`` force
one style. No dependency beyond the standard library (tqdm is not one of ours).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable, TextIO

__all__ = ["Progress", "format_count", "format_duration"]

log = logging.getLogger(__name__)

_ENV = "NANN_TF_PROGRESS"


def format_count(x: float) -> str:
    """``1234`` -> ``1,234``; ``12_345_678`` -> ``12.3M`` (k, M, G above 100,000); one
    decimal below 100."""
    x = float(x)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e5, "k")):
        if abs(x) >= div:
            v = x / (div if suffix != "k" else 1e3)
            return f"{v:.3g}{suffix}" if suffix != "k" else f"{v:.0f}k"
    return f"{x:,.0f}" if x == int(x) or abs(x) >= 100 else f"{x:,.1f}"


def format_duration(seconds: float) -> str:
    """``42`` -> ``42s``; ``125`` -> ``2m05s``; ``3725`` -> ``1h02m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """A progress reporter (see the module docstring).

    Args:
      total: the count at completion (None: unknown; no percentage or ETA).
      desc: what is being done, e.g. ``"build-index: HNSW insertion"``.
      unit: what is counted (``rows``, ``items``, ``users``, ``records``).
      stream: where a terminal line (or, without logging, a log line) goes; default stderr.
      tty: force the terminal style (True) or the log style (False); default: whether
        ``stream`` is a TTY.
      log_every_s: seconds between log lines off a terminal.
      redraw_s: seconds between redraws on a terminal.
      clock: monotonic seconds (injectable for tests).
      enabled: False makes every call a no-op.
      postfix: called when a line is written; its text is appended (e.g. a loss).
    """

    def __init__(self, total: float | None = None, desc: str = "", unit: str = "items", *,
                 stream: TextIO | None = None, tty: bool | None = None,
                 log_every_s: float = 10.0, redraw_s: float = 0.2,
                 clock: Callable[[], float] = time.monotonic, enabled: bool = True,
                 postfix: Callable[[], str] | None = None):
        mode = os.environ.get(_ENV, "").strip().lower()
        self.enabled = enabled and mode not in ("0", "off", "false", "no")
        self.total = None if total is None else float(total)
        self.desc, self.unit = desc, unit
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            tty = {"tty": True, "log": False}.get(mode)
        if tty is None:
            try:
                tty = bool(self.stream.isatty())
            except (AttributeError, ValueError):
                tty = False
        self.tty = tty
        self.log_every_s, self.redraw_s = float(log_every_s), float(redraw_s)
        self.clock = clock
        self.postfix = postfix
        self.count = 0.0
        self.t0 = clock()
        self._last_out = self.t0
        self._wrote = False
        self._width = 0
        self._closed = False

    # ------------------------------------------------------------------ counting
    def update(self, n: float = 1) -> None:
        """Adds ``n`` to the count (and reports if it is time to)."""
        self.set(self.count + n)

    def set(self, count: float) -> None:
        """Sets the count (and reports if it is time to)."""
        self.count = float(count)
        if not self.enabled or self._closed:
            return
        now = self.clock()
        if self.tty:
            if not self._wrote or now - self._last_out >= self.redraw_s:
                self._draw(self.text(now))
                self._last_out = now
        elif now - self._last_out >= self.log_every_s:
            self._log(self.text(now))
            self._last_out = now

    def due(self) -> bool:
        """Whether a line would be written now (to fetch costly postfix input only then)."""
        if not self.enabled or self._closed:
            return False
        wait = self.redraw_s if self.tty else self.log_every_s
        return (self.tty and not self._wrote) or self.clock() - self._last_out >= wait

    def close(self) -> None:
        """Writes the final line: on a terminal always, in a log only if a line was written
        before (a loop shorter than ``log_every_s`` stays silent)."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        now = self.clock()
        if self.tty:
            self._draw(self.text(now, final=True))
            self.stream.write("\n")
            self.stream.flush()
        elif self._wrote:
            self._log(self.text(now, final=True))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ text
    def rate(self, now: float | None = None) -> float:
        """Mean count per second since the start."""
        dt = (self.clock() if now is None else now) - self.t0
        return self.count / dt if dt > 0 else 0.0

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the mean rate (None without a total or a rate)."""
        r = self.rate(now)
        if self.total is None or r <= 0:
            return None
        return max(0.0, (self.total - self.count) / r)

    def text(self, now: float | None = None, final: bool = False) -> str:
        """``desc: count/total unit (pct%), rate unit/s, ETA t`` (final: ``in t``)."""
        now = self.clock() if now is None else now
        parts = [f"{self.desc}: " if self.desc else ""]
        if self.total is not None:
            pct = 100.0 * self.count / self.total if self.total > 0 else 100.0
            parts.append(f"{format_count(self.count)}/{format_count(self.total)} {self.unit} "
                         f"({pct:.0f}%)")
        else:
            parts.append(f"{format_count(self.count)} {self.unit}")
        r = self.rate(now)
        parts.append(f", {format_count(r)} {self.unit}/s")
        if final:
            parts.append(f", in {format_duration(now - self.t0)}")
        else:
            eta = self.eta(now)
            parts.append(f", ETA {format_duration(eta)}" if eta is not None else
                         f", {format_duration(now - self.t0)} elapsed")
        if self.postfix is not None:
            extra = self.postfix()
            if extra:
                parts.append(f", {extra}")
        return "".join(parts)

    def _draw(self, text: str) -> None:
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)
        self._wrote = True

    def _log(self, text: str) -> None:
        self._wrote = True
        if logging.getLogger().handlers or log.handlers:
            log.info("%s", text)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

"""The one base class of errors a user can fix (bad input, a missing or mismatched artefact).

Every library error of that kind derives from :class:`UserError` (and from ``ValueError`` or
``ImportError`` where that is its nature), so the command line prints any of them as
``nann-tf <command>: error: <message>`` with exit status 2, while a bug still shows its
traceback. The message names the input and what was expected.

A message names an input by :func:`arg`: the library's own parameter name (``index_dir``,
``version``) when the library is called from Python, the command line's flag (``--index``,
``--version``) when the ``nann-tf`` command runs, which maps them (:func:`input_names`). The
library itself never spells a flag.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Mapping

__all__ = ["UserError", "arg", "input_names"]

_NAMES: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "nann_tf_input_names", default=None)


class UserError(Exception):
    """Bad input or a bad artefact: the message says which and what was expected."""


def arg(name: str) -> str:
    """How an error message names the input ``name`` (a library parameter name): ``name``
    itself, or what the running front end calls it (:func:`input_names`)."""
    names = _NAMES.get()
    return names.get(name, name) if names else name


@contextlib.contextmanager
def input_names(names: Mapping[str, str]) -> Iterator[None]:
    """Within this block, :func:`arg` names the inputs of ``names`` (parameter -> what the
    user typed, e.g. ``{"index_dir": "--index"}``)."""
    token = _NAMES.set(dict(names))
    try:
        yield
    finally:
        _NAMES.reset(token)

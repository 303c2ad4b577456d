"""The one base class of errors a user can fix (bad input, a missing or mismatched artefact).

Every library error of that kind derives from :class:`UserError` (and from ``ValueError`` or
``ImportError`` where that is its nature), so the command line prints any of them as
``nann-tf <command>: error: <message>`` with exit status 2, while a bug still shows its
traceback. The message names the input and what was expected.
"""

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input or a bad artefact: the message says which and what was expected."""

"""The one error type a user sees: a single line saying what, where, and what to do."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first non-empty line of a library's exception message (MLflow keeps it in .message)."""
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class MlkubeError(Exception):
    """A problem with the user's input or environment, reported as one clear line.

    Step programs turn it into a one-line message on stderr and a non-zero exit; every
    other exception is a bug and keeps its traceback.
    """

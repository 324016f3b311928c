"""The one error type a user sees: a single line saying what, where, and what to do."""

from __future__ import annotations


class MlkubeError(Exception):
    """A problem with the user's input or environment, reported as one clear line.

    Step programs turn it into a one-line message on stderr and a non-zero exit; every
    other exception is a bug and keeps its traceback.
    """

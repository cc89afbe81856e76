"""Errors that end a run with one line in the log and a non-zero exit, not a traceback."""

from __future__ import annotations


class RunStopped(RuntimeError):
    """Training stopped for a reason the user can act on (e.g. the loss became NaN); exit status 1."""

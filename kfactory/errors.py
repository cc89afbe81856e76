"""Errors that end a run with one line in the log and a non-zero exit, not a traceback."""

from __future__ import annotations


class RunStopped(RuntimeError):
    """Training stopped for a reason the user can act on (e.g. the loss became NaN); exit status 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, ``kill``), raised where the run is, so it ends as Ctrl-C does."""

"""Errors that end a run with one line in the log and a non-zero exit, not a traceback."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """A config value kfactory cannot run with: one line naming the key, the value and what is accepted."""

    def __init__(self, key: str, value: Any, accepted: str) -> None:
        self.key, self.value, self.accepted = key, value, accepted
        # One line, even when ``accepted`` quotes a multi-line library error.
        super().__init__(" ".join(f"{key}={show_value(value)} is not accepted: {accepted}".split()))


def show_value(value: Any) -> str:
    """A config value as the command line writes it: ``null``, ``true``, ``[32, 32]``."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


class RunStopped(RuntimeError):
    """Training stopped for a reason the user can act on (e.g. the loss became NaN); exit status 1.

    ``resume_with``: when the run can go on, the overrides its resume needs beside ``resume=true``
    (the log line then ends with the whole command).
    """

    def __init__(self, message: str, resume_with: list[str] | None = None) -> None:
        super().__init__(message)
        self.resume_with = resume_with


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, ``kill``), raised where the run is, so it ends as Ctrl-C does."""


CTRL_C_STATUS, SIGTERM_STATUS = 130, 143  # 128 + the signal's number, as a shell reports them


def interrupt_status(interrupt: KeyboardInterrupt) -> tuple[str, int]:
    """The word the log line uses and the exit status of an interrupted command."""
    return ("Terminated", SIGTERM_STATUS) if isinstance(interrupt, Terminated) else ("Interrupted", CTRL_C_STATUS)


@contextmanager
def interrupted_exits_at_once() -> Iterator[None]:
    """Around a command: an interrupted run's exit (130, 143) skips the interpreter's teardown.

    The interrupt can land while TensorFlow's threads still run a step, an evaluation or a save;
    tearing the interpreter down under them can abort ("terminate called without an active
    exception", status -6), which hides the status and the line that says how to continue.
    Everything worth keeping is on disk by then, so the log is flushed and the process ends.
    """
    try:
        yield
    except SystemExit as stop:
        if stop.code not in (CTRL_C_STATUS, SIGTERM_STATUS):
            raise
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(stop.code)


def check_choice(key: str, value: Any, accepted: tuple | frozenset | dict) -> None:
    """Refuse ``value`` of ``key`` unless it is one of ``accepted``."""
    if value not in accepted:
        raise ConfigError(key, value, "one of " + ", ".join(map(str, accepted)))

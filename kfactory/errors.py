"""Errors that end a run with one line in the log and a non-zero exit, not a traceback."""

from __future__ import annotations

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
    """Training stopped for a reason the user can act on (e.g. the loss became NaN); exit status 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, ``kill``), raised where the run is, so it ends as Ctrl-C does."""


def check_choice(key: str, value: Any, accepted: tuple | frozenset | dict) -> None:
    """Refuse ``value`` of ``key`` unless it is one of ``accepted``."""
    if value not in accepted:
        raise ConfigError(key, value, "one of " + ", ".join(map(str, accepted)))

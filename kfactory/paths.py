"""User paths: ``~`` and ``$VARIABLES`` expanded the same way everywhere."""

from __future__ import annotations

import os
import re
from pathlib import Path

from kfactory.errors import ConfigError


def expand_path(path: str | os.PathLike) -> Path:
    """A user path with ``~`` and environment variables expanded."""
    return Path(os.path.expandvars(os.path.expanduser(str(path))))


def unset_variables(path: str) -> list[str]:
    """The ``$NAME`` / ``${NAME}`` variables in ``path`` that the environment does not set."""
    names = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", str(path))
    return [name for name in names if name not in os.environ]


def check_variables(key: str, path: str) -> None:
    """Refuse a path whose ``$VARIABLE`` is not set, naming the variable, the same way for every task."""
    if isinstance(path, str) and (unset := unset_variables(path)):
        raise ConfigError(key, path, f"a path whose environment variables are set (${unset[0]} is not)")

"""Command-line overrides as (key, value) pairs, read the same way by every module that lists them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

PLAIN_VALUE = re.compile(r"[\w/.+\-:@]*")  # a value Hydra's override grammar reads unquoted as it is


def split_override(override: str) -> tuple[str, str]:
    """A command-line override as (key, value): ``+model.dropout=0.5`` -> ("model.dropout", "0.5")."""
    key, _, value = override.partition("=")
    return key.strip().lstrip("+~"), value.strip()


def rerun_command(overrides: list[str], drop: tuple[str, ...], extra: list[str]) -> str:
    """``python run.py`` with ``overrides`` less the ``drop`` keys and ``hydra.*`` settings, plus ``extra``.

    Each override is quoted for the shell (``shlex.quote``), so the printed command runs as it is shown.
    """
    kept = [o for o in overrides if (key := split_override(o)[0]) not in drop and not key.startswith("hydra.")]
    return shlex.join(["python", "run.py", *kept, *extra])


def override(key: str, value: str) -> str:
    """``key=value`` as Hydra's override grammar reads back ``value`` (a path with a quote or a comma, say)."""
    if PLAIN_VALUE.fullmatch(value):
        return f"{key}={value}"
    if '"' not in value:
        return f'{key}="{value}"'
    return f"{key}='" + value.replace("'", "\\'") + "'"


def task_overrides(cfg: DictConfig) -> list[str]:
    """The command-line overrides of this job (one sweep point in a multirun)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return list(OmegaConf.select(cfg, "hydra.overrides.task", default=[]) or [])


def sweep_root() -> Path | None:
    """The sweep's directory when this run is one job of a sweep, else None (a single run, or no Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir)
    return None

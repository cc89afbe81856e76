"""The public sweeper class: thin, so that Hydra's plugin discovery and ``--help`` stay fast.

Optuna and the search loop live in ``_impl.py``, imported only when a sweep runs.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from .config import KfactoryOptunaSweeperConf  # registers the config  # noqa: F401


class KfactoryOptunaSweeper(Sweeper):
    """An Optuna study whose trials are Hydra jobs, asked ``n_jobs`` at a time."""

    def __init__(self, **settings: Any) -> None:
        from ._impl import OptunaSearch

        self.search = OptunaSearch(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        self.search.sweep(arguments)

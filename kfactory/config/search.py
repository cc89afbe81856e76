"""Hydra callback for Optuna searches: the sweep root exists before the study opens.

The Optuna sweeper opens its storage (``hydra.sweeper.storage``, e.g. an SQLite
file in the sweep root) before the launcher creates the sweep directory, and
SQLite cannot create a file in a missing folder. No TensorFlow here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class MakeSweepDir(Callback):
    """Create ``hydra.sweep.dir`` when a multirun starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)

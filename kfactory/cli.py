"""The ``kfactory`` console script: the same entrypoint as ``run.py``."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from kfactory.app import kfactory

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Compose the config from the command line and run it."""
    return kfactory(cfg)

"""Run kfactory: `python run.py model=densenet169 optimizer=adam` (see README)."""

import sys

import hydra
from omegaconf import DictConfig

from kfactory.app import kfactory
from kfactory.config.plugins import require_plugins
from kfactory.errors import interrupted_exits_at_once


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Compose the config from the command line and run it."""
    return kfactory(cfg)


if __name__ == "__main__":
    require_plugins(sys.argv[1:])  # name the pip extra before Hydra fails on a missing plugin
    with interrupted_exits_at_once():
        main()

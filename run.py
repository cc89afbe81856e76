"""Run kfactory: `python run.py model=densenet169 optimizer=adam` (see README)."""

import hydra
from omegaconf import DictConfig

from kfactory.app import kfactory


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Compose the config from the command line and run it."""
    return kfactory(cfg)


if __name__ == "__main__":
    main()

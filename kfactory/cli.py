"""The ``kfactory`` console script: the same entrypoint as ``run.py``."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from kfactory.app import kfactory
from kfactory.config.plugins import require_plugins
from kfactory.errors import interrupted_exits_at_once

PACKAGE_DIR = Path(__file__).resolve().parent
# An installed wheel carries the configs as kfactory/conf; a source checkout keeps them in conf/ beside the package.
CONF_DIR = next(d for d in (PACKAGE_DIR / "conf", PACKAGE_DIR.parent / "conf") if (d / "config.yaml").is_file())


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def run(cfg: DictConfig) -> float | None:
    """Compose the config from the command line and run it."""
    return kfactory(cfg)


def main() -> None:
    """Name the pip extra of a missing Hydra plugin, then hand over to Hydra."""
    require_plugins(sys.argv[1:])
    with interrupted_exits_at_once():
        run()

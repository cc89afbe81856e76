"""Refuse a bad single run before Hydra creates or writes anything in its run directory.

Hydra makes the run directory, opens ``kfactory.log`` there and saves ``.hydra/``
before it calls the task function, so a refusal made there would leave a new
folder behind, or rewrite the config of the run already in that folder. This
callback runs the same checks first, in ``on_run_start``.
"""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from kfactory.config.validate import validate
from kfactory.errors import ConfigError
from kfactory.train.resume import check_run_dir

FORMAT = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")  # Hydra's job_logging format


class Preflight(Callback):
    """Validate the config and the run directory of a single run; exit 2 with one line on refusal."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        task_cfg = copy.deepcopy(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        try:
            validate(task_cfg)
            check_run_dir(task_cfg, Path(str(config.hydra.run.dir)).absolute(), "hydra.run.dir")
        except ConfigError as error:
            refuse(error)


def refuse(error: ConfigError) -> None:
    """The one-line refusal in the task's log format (Hydra has not set up logging yet); exit 2."""
    record = logging.LogRecord("kfactory", logging.ERROR, __file__, 0, "%s", (error,), None)
    print(FORMAT.format(record), file=sys.stderr, flush=True)
    raise SystemExit(2)

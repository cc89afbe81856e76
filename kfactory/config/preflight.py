"""Settle a single run before Hydra creates or writes anything in its run directory.

Hydra makes the run directory, opens ``kfactory.log`` there and saves ``.hydra/``
before it calls the task function, so a refusal made there would leave a new
folder behind, or rewrite the config of the run already in that folder. This
callback runs the same checks first, in ``on_run_start``: a bad config, a
directory holding a run (without resume), or one another process trains in is
refused with exit 2; ``resume=true`` on a complete run says so and exits 0.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from kfactory.config.validate import validate
from kfactory.errors import ConfigError
from kfactory.framework import check_backend
from kfactory.run import lock as run_lock
from kfactory.run.budget import parse_budget
from kfactory.run.resume import COMPLETE, METRICS_FILE, check_run_dir, complete_message, resume_mode

FORMAT = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")  # Hydra's job_logging format


class Preflight(Callback):
    """Validate the config and the run directory of a single run; exit 2 with one line on refusal."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        task_cfg = task_config(config)
        run_dir = Path(str(config.hydra.run.dir)).absolute()
        try:
            check_backend()
            task_cfg = validate(task_cfg)  # typed by the schema, as the task will see it
            resume = resume_mode(task_cfg, config.hydra.launcher.get("_target_"), list(config.hydra.overrides.task))
            state = check_run_dir(task_cfg, run_dir, "hydra.run.dir", resume)
            if task_cfg.task == "train":
                run_lock.check_free(run_dir)
        except ConfigError as error:
            refuse(error)
        if state == COMPLETE:
            say(logging.INFO, complete_message(run_dir, json.loads((run_dir / METRICS_FILE).read_text())))
            raise SystemExit(0)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A search with a time budget (experiment=auto): refuse a bad budget or base config before any trial."""
        budget = OmegaConf.select(config, "hydra.sweeper.budget", default=None)
        if budget is None:
            return
        written = OmegaConf.to_container(config.hydra.sweeper, resolve=False).get("budget")
        key = "auto.budget" if written == "${auto.budget}" else "hydra.sweeper.budget"
        try:
            parse_budget(budget, key)
            check_backend()
            validate(task_config(config))  # every trial starts from it; a refusal here would fail them all
        except ConfigError as error:
            refuse(error)


def task_config(config: DictConfig) -> DictConfig:
    """The config less ``hydra``, as the task sees it."""
    task_cfg = copy.deepcopy(config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg


def refuse(error: ConfigError) -> None:
    """The one-line refusal; exit 2."""
    say(logging.ERROR, str(error))
    raise SystemExit(2)


def say(level: int, message: str) -> None:
    """One line in the task's log format, on stderr (Hydra has not set up logging yet)."""
    record = logging.LogRecord("kfactory", level, __file__, 0, "%s", (message,), None)
    print(FORMAT.format(record), file=sys.stderr, flush=True)

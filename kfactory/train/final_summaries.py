"""After training: the final metrics as scalars and a single run's HParams experiment config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tensorflow as tf
from omegaconf import DictConfig
from tensorboard.plugins.hparams import api as hp

from kfactory.overrides import sweep_root, task_overrides
from kfactory.train.hparams import hparam_metrics, run_hparams


def write_final_summaries(cfg: DictConfig, log_dir: Path, metrics: dict[str, Any]) -> None:
    """After training: the final metrics as ``final/*`` scalars; a single run's HParams experiment config.

    A sweep's jobs write no experiment config: TensorBoard would keep one of them;
    the sweep root holds the one config for all of them (kfactory.report.sweep).
    """
    if not cfg.trainer.tensorboard.hparams:
        return
    final = {k: float(v) for k, v in metrics.items() if k.startswith(("val_", "test_", "best_"))}
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default(step=int(metrics.get("epochs_run", 1))):  # the last epoch, counted from 1
        for key, value in final.items():
            tf.summary.scalar(f"final/{key}", value)
        if sweep_root() is None:
            hparams = [hp.HParam(name) for name in run_hparams(cfg, task_overrides(cfg))]
            hp.hparams_config(hparams=hparams, metrics=hparam_metrics(cfg.trainer, list(final)))
    writer.close()

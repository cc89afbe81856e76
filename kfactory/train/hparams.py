"""The HParams dashboard: names, values, metrics and the experiment config, for one run or a whole sweep.

A run writes its hyperparameter values (a session, named after its run
directory); a fold of a cross-validation puts its session in its group's
(``cv/...``), so the dashboard shows a group as one row holding the mean of its
folds' metrics (TensorBoard's default aggregation), with ``data.fold`` left out
of the hyperparameters. A sweep writes one experiment config at its root before the jobs
start, with every varied key as a hyperparameter with its domain, marked as
differing so the dashboard shows it. TensorBoard keeps only one experiment
config per logdir, so a sweep's jobs do not write their own.

No TensorFlow here (TensorBoard's protobufs and its pure-Python event writer):
the sweep's part runs in the launcher.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from kfactory.config.resolvers import FOLD_KEY, fold_group
from kfactory.overrides import split_override, sweep_root, task_overrides
from kfactory.registry import input_size, metric_log_name

# Overridden keys that are already logged under a shorter name.
ALIASES = {
    "model": "model",
    "model.weights": "weights",
    "optimizer": "optimizer",
    "optimizer.learning_rate": "learning_rate",
    "loss": "loss",
    "data.batch_size": "batch_size",
    "model.input_size": "input_size",
    "model.dropout": "dropout",
}
NOT_HPARAMS = ("hydra.", "trainer.verbose", "trainer.tensorboard.")  # keys that do not change what a run learns
AGGREGATED = FOLD_KEY  # a cross-validation group's sessions differ only in it: not a column, averaged over


def hparam_name(key: str) -> str:
    """The dashboard's name for an overridden config key."""
    return ALIASES.get(key, key)


def hparam_value(value: Any) -> bool | float | str:
    """Numbers as floats (so 0 and 0.5 share a type across runs), other values as text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return "null" if value is None else str(value)


def run_hparams(cfg: DictConfig, overrides: Iterable[str]) -> dict[str, bool | float | str]:
    """A run's hyperparameters: the main ones under short names, then every other overridden key."""
    height, width = input_size(cfg.model)
    values: dict[str, bool | float | str] = {
        "model": cfg.model._target_ or cfg.model.name,
        "weights": hparam_value(cfg.model.weights),
        "optimizer": cfg.optimizer._target_ or cfg.optimizer.name,
        "learning_rate": float(cfg.optimizer.learning_rate),
        "loss": cfg.loss._target_ or cfg.loss.name,
        "batch_size": float(cfg.data.batch_size),
        "input_size": f"{height}x{width}",
        "dropout": float(cfg.model.dropout),
    }
    for override in overrides:
        key, given = split_override(override)
        if key.startswith(NOT_HPARAMS) or key == AGGREGATED or hparam_name(key) in values:
            continue
        value = OmegaConf.select(cfg, key, default=given)
        values[key] = hparam_value(given if isinstance(value, (DictConfig, ListConfig)) else value)
    return values


def session_group(cfg: DictConfig, run_dir: Path) -> str:
    """The HParams session group of the run in ``run_dir``: its own name, or its cross-validation group's.

    The folds ``hparams_search.cv_folds`` trains in ``<run>/fold_<i>`` group as ``cv/<run>``; a
    ``data.fold`` run groups with the runs whose overrides differ only in it (kfactory.config.resolvers.fold_group).
    """
    if cfg.hparams_search.cv_folds:
        return f"cv/{run_dir.parent.name}"
    if not cfg.data.folds:
        return run_dir.name
    from hydra.core.hydra_config import HydraConfig

    exclude = list(HydraConfig.get().job.config.override_dirname.exclude_keys) if HydraConfig.initialized() else []
    sweep_dir = sweep_root() or run_dir  # a single run's own directory holds no varied keys: every override names it
    return fold_group(task_overrides(cfg), exclude, sweep_dir)


def metric_names(trainer: DictConfig) -> list[str]:
    """The names Keras logs the loss and each ``trainer.metrics`` entry under."""
    return ["loss", *(metric_log_name(m) for m in trainer.metrics)]


def hparam_metrics(trainer: DictConfig, final_keys: Iterable[str]) -> list:
    """The dashboard's metric columns, each with its own display name: ``validation/loss``, ``final/test_loss``."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    names = metric_names(trainer)
    metrics = [hp.Metric(f"epoch_{n}", group="validation", display_name=f"validation/{n}") for n in names]
    metrics += [hp.Metric(f"epoch_{n}", group="train", display_name=f"train/{n}") for n in names]
    return metrics + [hp.Metric(f"final/{key}", display_name=f"final/{key}") for key in final_keys]


def expected_final_keys(cfg: DictConfig) -> list[str]:
    """The ``final/*`` scalars a training run of ``cfg`` will write (before it has run)."""
    names = metric_names(cfg.trainer)
    splits = ["val", *(["test"] if cfg.data.test_split else [])]
    return [f"{split}_{n}" for split in splits for n in names] + [f"best_{cfg.trainer.monitor}"]


def sweep_domains(config: DictConfig) -> dict[str, list | tuple[float, float]]:
    """Each varied key's values (a list) or interval (low, high), from the command line and Optuna's params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    written = [*(f"{k}={v}" for k, v in params.items()), *config.hydra.overrides.task]  # the command line wins
    domains: dict[str, list | tuple[float, float]] = {}
    for override in OverridesParser.create().parse_overrides(list(written)):
        if not override.is_sweep_override():
            domains.pop(override.key_or_group, None)  # a fixed value on the command line wins over a search
            continue
        sweep = override.value()
        if isinstance(sweep, IntervalSweep):
            domains[override.key_or_group] = (float(sweep.start), float(sweep.end))
        else:
            domains[override.key_or_group] = [hparam_value(v) for v in override.sweep_iterator()]
    return domains


def sweep_experiment(config: DictConfig) -> Any:
    """The sweep's experiment config summary: fixed hyperparameters, then the varied ones with their domains."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    varied = sweep_domains(config).items()
    domains = {hparam_name(k): d for k, d in varied if not k.startswith(NOT_HPARAMS) and k != AGGREGATED}
    fixed = ["model", "weights", "optimizer", "learning_rate", "loss", "batch_size", "input_size", "dropout"]
    hparams = [hp.HParam(name, _domain(domains[name])) for name in domains]
    hparams += [hp.HParam(name) for name in fixed if name not in domains]
    task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    summary = hp.hparams_config_pb(hparams=hparams, metrics=hparam_metrics(config.trainer, expected_final_keys(task)))
    return mark_differing(summary, set(domains))


def _domain(values: list | tuple[float, float]) -> Any:
    from tensorboard.plugins.hparams import summary_v2 as hp

    if isinstance(values, tuple):
        return hp.RealInterval(*values)
    if len({type(v) for v in values}) > 1:  # a domain has one type: 0.5 and "null" both become text
        values = [str(v) for v in values]
    return hp.Discrete(values)


def mark_differing(summary: Any, names: set[str]) -> Any:
    """Set ``differs`` on the named hyperparameters: the dashboard shows those columns by default."""
    from tensorboard.plugins.hparams import metadata

    value = summary.value[0]
    experiment = metadata.parse_experiment_plugin_data(value.metadata.plugin_data.content)
    for info in experiment.hparam_infos:
        info.differs = info.name in names
    data = metadata.create_summary_metadata(_plugin_data(experiment))
    value.metadata.CopyFrom(data)
    return summary


def _plugin_data(experiment: Any) -> Any:
    from tensorboard.plugins.hparams import plugin_data_pb2

    return plugin_data_pb2.HParamsPluginData(experiment=experiment)


def write_summary(log_dir: Path, summary: Any) -> Path:
    """Write one summary protobuf to a new event file in ``log_dir``; return its path.

    TensorBoard's ``RecordWriter`` frames the records without TensorFlow (its
    ``EventFileWriter`` would import TensorFlow when it is installed), and this runs
    in the launcher, before any job.
    """
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    now = time.time()
    events = [
        event_pb2.Event(wall_time=now, file_version="brain.Event:2"),
        event_pb2.Event(wall_time=now, summary=summary),
    ]
    path = Path(log_dir) / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.kfactory"
    writer = RecordWriter(path.open("wb"))
    try:
        for event in events:
            writer.write(event.SerializeToString())
    finally:
        writer.close()
    return path

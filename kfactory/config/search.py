"""What an Optuna search and its trials share: the study's storage, the pruner, the trial link.

The kfactory Optuna sweeper (``hydra_plugins/kfactory_optuna_sweeper``) creates
the study; each trial's job, in whatever process a launcher runs it, opens the
same study through its storage to report its epochs and ask whether to stop.
The sweeper tells a job which trial it is through two environment variables,
set for that job only (``hydra.job.env_set``); the storage and the pruner come
from the job's own ``hydra.sweeper`` config, so both sides build them alike.
No TensorFlow here; Optuna is imported inside the functions that use it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kfactory.errors import ConfigError

JOURNAL_FILE = "optuna.journal"  # the default storage, in the sweep root
TRIAL_ENV = "KFACTORY_OPTUNA_TRIAL"  # the running job's trial id in the study's storage
STUDY_ENV = "KFACTORY_OPTUNA_STUDY"  # the study's name
PRUNED_ATTR = "pruned_epoch"  # trial user attribute a pruned job sets: the epoch it stopped after (its step)
JOB_ATTR = "job"  # trial user attribute the sweeper sets: the job number (its directory's prefix)

# hydra.sweeper.pruner -> optuna.pruners class
PRUNERS = {
    "none": "NopPruner",
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "threshold": "ThresholdPruner",  # pruner_args={upper: ...} or {lower: ...}: a trial past a bound, e.g. diverging
}


def open_storage(storage: str | None, sweep_dir: str | Path) -> Any:
    """The study's storage: an RDB URL as given, or by default a journal file in the sweep root.

    The journal file needs no server and takes appends from parallel processes
    on one file system (it locks with a symlink, which NFS honours too).
    """
    if storage:
        return str(storage)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(str(sweep_dir)).absolute() / JOURNAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def make_pruner(name: str, args: Mapping[str, Any] | None = None) -> Any:
    """An Optuna pruner from ``hydra.sweeper.pruner`` and ``hydra.sweeper.pruner_args``."""
    if name not in PRUNERS:
        raise ConfigError("hydra.sweeper.pruner", name, "one of " + ", ".join(PRUNERS))
    import optuna

    cls = getattr(optuna.pruners, PRUNERS[name])
    kwargs = OmegaConf.to_container(args) if isinstance(args, DictConfig) else dict(args or {})
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            "hydra.sweeper.pruner_args", kwargs, f"arguments of optuna.pruners.{cls.__name__}: {error}"
        ) from error


def trial_link(trial_id: int, study_name: str) -> list[str]:
    """The per-job Hydra overrides that tell a job which trial it runs as."""
    return [f"++hydra.job.env_set.{TRIAL_ENV}={trial_id}", f"++hydra.job.env_set.{STUDY_ENV}='{study_name}'"]


def open_trial() -> Any:
    """The Optuna trial this job runs as, when a pruning sweeper launched it; else None."""
    trial_id = os.environ.get(TRIAL_ENV)
    if not trial_id:
        return None
    import optuna
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.sweeper
    study = optuna.load_study(
        study_name=os.environ[STUDY_ENV],
        storage=open_storage(sweeper.storage, hydra_cfg.sweep.dir),  # the sweeper's schema has every key
        pruner=make_pruner(sweeper.pruner, sweeper.pruner_args),
        sampler=optuna.samplers.RandomSampler(),  # the job samples nothing; this one costs nothing to build
    )
    return optuna.trial.Trial(study, int(trial_id))

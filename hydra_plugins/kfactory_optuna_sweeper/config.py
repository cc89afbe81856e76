"""The sweeper's schema, registered as ``hydra/sweeper=kfactory_optuna`` (``hparams_search=optuna`` selects it).

No ``from __future__ import annotations`` here: Hydra's plugin scan runs this
module outside ``sys.modules``, where a dataclass cannot resolve string annotations.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

SAMPLERS = ("tpe", "random", "cmaes", "grid", "nsga2")


@dataclass
class KfactoryOptunaSweeperConf:
    _target_: str = "hydra_plugins.kfactory_optuna_sweeper.kfactory_optuna_sweeper.KfactoryOptunaSweeper"

    # The search space in Hydra's override grammar: choice(...), range(...), interval(...),
    # tag(log, interval(...)). A command-line value for the same key replaces its entry.
    params: dict[str, Any] | None = None
    sampler: str = "tpe"  # tpe | random | cmaes | grid | nsga2
    seed: int | None = None  # the sampler's seed; a continued study adds its trial count
    sampler_args: Any = None  # more arguments of the Optuna sampler
    pruner: str = "none"  # none | median | percentile | successive_halving | hyperband | threshold
    pruner_args: Any = None  # arguments of the Optuna pruner
    direction: str = "maximize"  # minimize | maximize: one objective, the job's return value
    directions: list[str] | None = None  # several objectives (hparams_search.objectives), e.g. [maximize, minimize]
    study_name: str = "kfactory"
    storage: str | None = None  # null: a journal file in the sweep root; or an RDB URL (sqlite:///...)
    n_trials: int = 20  # trials this call adds to the study
    n_jobs: int = 1  # trials asked per batch and launched together
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # parameter sets to run first
    # A time budget for the whole command (experiment=auto sets it from auto.budget): 90s, 30m, 1h30m.
    # No trial starts once it is spent, and each job stops training in time to finish by it; the same
    # command on the same sweep dir continues with the time left (budget.json). null: n_trials only.
    budget: Any = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="kfactory_optuna", node=KfactoryOptunaSweeperConf, provider="kfactory"
)

"""The search loop: Hydra's override grammar as Optuna distributions, batches of trials as Hydra jobs.

Imported only when a sweep runs (Hydra's plugin discovery skips ``_`` modules).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from kfactory.config.search import JOB_ATTR, PRUNED_ATTR, make_pruner, open_storage, trial_link
from kfactory.errors import ConfigError, interrupt_status, show_value
from kfactory.model.checkpoint import MODEL_FILE, write_json_atomic
from kfactory.overrides import override, rerun_command, split_override
from kfactory.report.folds import is_number
from kfactory.report.sweep import TIE_BREAK, read_metrics
from kfactory.run.budget import (
    END_RESERVE_S,
    IMPORTED_AT,
    BudgetLedger,
    deadline_link,
    format_duration,
    parse_budget,
)

from .config import SAMPLERS

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"
METRICS_FILE = "metrics.json"  # where a job's objectives are read from (hparams_search.objectives)
FIXED_ATTR = "fixed"  # trial user attribute: the command-line values the trial ran with besides its params
DIRECTIONS = ("minimize", "maximize")
MIN_START_S = 30.0  # with a budget: no trial starts with less time left (a small model's build, trace and epoch)
FAILED_START = 3  # with a budget: the search stops when its first trials all failed (a bad config or data)
DIR_ATTR = "dir"  # trial user attribute: the job's run directory


# The search space ---------------------------------------------------------------------------------


def search_space(overrides: Sequence[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """(searched key -> distribution, fixed key -> value) from overrides; a later one for a key wins."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for parsed in OverridesParser.create().parse_overrides(list(overrides)):
        key = parsed.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if parsed.is_sweep_override():
            space[key] = distribution(parsed)
        else:
            fixed[key] = parsed.get_value_element_as_str()
    return space, fixed


def distribution(override: Override) -> BaseDistribution:
    """An Optuna distribution for ``choice``, ``range`` or ``interval``, log-scaled with ``tag(log, ...)``."""
    value = override.value()
    key, text = override.get_key_element(), override.input_line or str(value)
    use_log = "log" in getattr(value, "tags", set())
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_interval_sweep():
        return FloatDistribution(float(value.start), float(value.end), log=use_log)
    if override.is_range_sweep():
        values = list(override.sweep_iterator())  # stop excluded, as Hydra's range counts
        if not values:
            raise ConfigError(key, text, "a range with at least one value")
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            if use_log and value.step != 1:
                raise ConfigError(key, text, "a log-scaled range with step 1")
            return IntDistribution(values[0], values[-1], log=use_log, step=value.step)
        if use_log:
            raise ConfigError(key, text, "tag(log, interval(...)) for a log-scaled float")
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    raise ConfigError(key, text, "choice(...), range(...), interval(...) or tag(log, interval(...))")


def contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is one of ``dist``'s values."""
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


def grid_values(key: str, dist: BaseDistribution) -> list[Any]:
    """Every value of a discrete distribution, for the grid sampler."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution):
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        count = round((dist.high - dist.low) / dist.step) + 1
        return [round(dist.low + i * dist.step, 12) for i in range(count)]
    raise ConfigError(key, "interval(...)", "choice(...) or range(...) with sampler=grid")


def make_sampler(name: str, seed: int | None, args: dict[str, Any], space: dict[str, BaseDistribution]) -> Any:
    """The Optuna sampler ``name``, seeded."""
    if name == "grid":
        grid = {key: grid_values(key, dist) for key, dist in space.items()}
        return optuna.samplers.GridSampler(grid, seed=seed, **args)
    samplers = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
    }
    try:
        return samplers[name](seed=seed, **args)
    except TypeError as error:
        raise ConfigError("hydra.sweeper.sampler_args", args, f"arguments of the {name} sampler: {error}") from error


# The sweeper --------------------------------------------------------------------------------------


class OptunaSearch:
    """Ask ``n_jobs`` trials, launch them as one batch of jobs, tell their results; ``n_trials`` in all."""

    def __init__(
        self,
        params: DictConfig | None,
        sampler: str,
        seed: int | None,
        sampler_args: DictConfig,
        pruner: str,
        pruner_args: DictConfig,
        direction: str,
        directions: Sequence[str] | None,
        study_name: str,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        enqueue: Sequence[DictConfig],
        budget: Any = None,
    ) -> None:
        if sampler not in SAMPLERS:
            raise ConfigError("hydra.sweeper.sampler", sampler, "one of " + ", ".join(SAMPLERS))
        self.directions = [str(d) for d in (directions or [direction])]
        for value in self.directions:
            if value not in DIRECTIONS:
                raise ConfigError("hydra.sweeper.directions", self.directions, "minimize or maximize each")
        self.params = {str(k): v for k, v in (params or {}).items()}
        self.sampler_name, self.seed, self.sampler_args = sampler, seed, to_dict(sampler_args)
        self.pruner = make_pruner(pruner, to_dict(pruner_args))
        self.pruning = pruner != "none" and len(self.directions) == 1  # Optuna prunes single objectives only
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs = n_trials, max(int(n_jobs), 1)
        self.enqueue = [to_dict(entry) for entry in enqueue or []]
        self.budget_s = None if budget is None else parse_budget(budget, "hydra.sweeper.budget")
        self.ledger: BudgetLedger | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        objectives = config.hparams_search.objectives  # kfactory's schema: null unless set
        self.objectives = [str(o) for o in objectives] if objectives else None
        if self.objectives and len(self.objectives) != len(self.directions):
            accepted = f"one objective per direction in hydra.sweeper.directions ({len(self.directions)})"
            raise ConfigError("hparams_search.objectives", self.objectives, accepted)
        if len(self.directions) > 1 and not self.objectives:
            accepted = "a metrics.json key per direction, e.g. [val_accuracy, params]"
            raise ConfigError("hparams_search.objectives", None, accepted)

    def sweep(self, arguments: list[str]) -> None:
        space, fixed = search_space(param_overrides(self.params) + list(arguments))
        study = self.open_study(space)
        self.enqueue_starts(study, space, fixed)
        job = next_job_number(self.sweep_dir, study.get_trials(deepcopy=False))
        remaining = self.trials_to_run(study, space, fixed)
        so_far = len(study.trials)
        log.info("Study %s: %d trials so far, %d to run, first job %d", study.study_name, so_far, remaining, job)
        if self.budget_s is not None:
            self.ledger = BudgetLedger(self.sweep_dir, self.budget_s, started=IMPORTED_AT)  # the command's start
            self.ledger.start()
            log.info("Budget: %s, %s left", format_duration(self.budget_s), format_duration(self.ledger.left_s))
        try:
            if self.ledger is not None:
                self.resume_cut_trials(study, fixed)
            while remaining > 0 and self.time_for_a_trial():
                batch = [study.ask(fixed_distributions=space) for _ in range(min(self.n_jobs, remaining))]
                remaining -= len(batch)
                for trial in batch:
                    trial.set_user_attr(FIXED_ATTR, fixed)
                new = [trial for trial in batch if not answer_from_earlier(study, trial, fixed)]
                for number, trial in enumerate(new, start=job):
                    trial.set_user_attr(JOB_ATTR, number)
                if not new:
                    continue
                returns = self.launcher.launch([self.job_overrides(study, t, fixed) for t in new], initial_job_idx=job)
                job += len(returns)
                for trial, ret in zip(new, returns, strict=True):
                    self.record(study, trial, ret)
                if self.ledger is not None and not self.report_progress(study):
                    break
        except KeyboardInterrupt as interrupt:
            if self.ledger is None:
                raise
            again = self.continue_command(arguments)
            what, status = interrupt_status(interrupt)
            log.error("%s. Finished trials are kept; continue with the time left: %s", what, again)
            raise SystemExit(status) from None  # the line above, not a traceback
        finally:
            if self.ledger is not None:
                self.ledger.close()
        if self.ledger is not None:
            ran = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
            spent = self.ledger.spent_s
            rate = ran * 3600 / max(spent, 1)
            log.info("Budget: %d trials in %s, %.0f an hour%s", ran, format_duration(spent), rate, fixed_cost(study))
        write_results(study, self.sweep_dir, self.objectives, winner=self.ledger is not None)

    def continue_command(self, arguments: list[str]) -> str:
        """The command that continues this search: its overrides, its Hydra ones (a launcher, say), its sweep dir."""
        hydra_overrides = [str(o) for o in self.config.hydra.overrides.hydra]
        kept = [o for o in hydra_overrides if split_override(o)[0] != "hydra.sweep.dir"]
        return f"{rerun_command(arguments, (), [])} {shlex.join([*kept, f'hydra.sweep.dir={self.sweep_dir}'])}"

    def resume_cut_trials(self, study: optuna.Study, fixed: dict[str, str]) -> None:
        """Run again, in their own directories from their last finished epoch, the trials a kill cut short.

        With time for a trial's start, or while any time is left when no trial has a result yet: a
        resumed trial stops at its deadline after one batch if it must, and ends as a complete run with
        its best epoch, so the search never ends without a model. With too little time and a result
        already, a cut trial counts as stopped early (PRUNED) instead: its start would overrun the budget.
        """
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            job = frozen.user_attrs.get(JOB_ATTR)
            if job is None or self.ledger.left_s <= 0:
                continue
            left = self.ledger.left_s - END_RESERVE_S  # as time_for_a_trial counts it
            if left < MIN_START_S and study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                log.info(
                    "Trial %d (job %s) was cut short by a kill and %s left is too little to finish it: "
                    "it counts as stopped early, and the search keeps its complete trials",
                    frozen.number,
                    job,
                    format_duration(max(left, 0)),
                )
                tell(study, optuna.trial.Trial(study, frozen._trial_id), state=TrialState.PRUNED)
                record_cut(self.sweep_dir, int(job), max(frozen.intermediate_values, default=0))
                continue
            log.info(
                "Trial %d (job %s) was cut short by a kill: it continues from its last finished epoch",
                frozen.number,
                job,
            )
            trial = optuna.trial.Trial(study, frozen._trial_id)
            ran_with = frozen.user_attrs.get(FIXED_ATTR, fixed)  # the values it started with, not this command's
            overrides = [*self.job_overrides(study, trial, ran_with), "resume=auto"]
            (ret,) = self.launcher.launch([overrides], initial_job_idx=int(job))
            self.record(study, trial, ret)

    def time_for_a_trial(self) -> bool:
        """Without a budget always; with one, while the time left covers the start of a trial."""
        if self.ledger is None:
            return True
        left = self.ledger.left_s - END_RESERVE_S
        if left >= MIN_START_S:
            return True
        log.info("Budget: %s left, too little for another trial; the search ends", format_duration(max(left, 0)))
        return False

    def report_progress(self, study: optuna.Study) -> bool:
        """One line after each batch: trials run, the best so far, the time left. False: stop (all failed so far)."""
        trials = study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state.is_finished()]
        complete = [t for t in finished if t.state == TrialState.COMPLETE]
        if not complete and len(finished) >= FAILED_START and all(t.state == TrialState.FAIL for t in finished):
            log.error(
                "Error: the first %d trials all failed, so the search stops; each job's error.txt in %s says why",
                len(finished),
                self.sweep_dir,
            )
            return False
        best = ""
        if complete and len(study.directions) == 1:
            top = study.best_trial
            best = f", best {top.value:.4f} (job {top.user_attrs.get(JOB_ATTR)})"
        left = format_duration(max(self.ledger.left_s, 0))
        log.info("Budget: %d trials finished (%d complete)%s; %s left", len(finished), len(complete), best, left)
        return True

    def open_study(self, space: dict[str, BaseDistribution]) -> optuna.Study:
        """Create the study, or load it with its trials; seed the sampler past the trials it already has."""
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=open_storage(self.storage, self.sweep_dir),
            directions=self.directions,
            pruner=self.pruner,
            load_if_exists=True,
        )
        # The same seed again would propose the first run's parameters again
        seed = None if self.seed is None else self.seed + len(study.trials)
        study.sampler = make_sampler(self.sampler_name, seed, self.sampler_args, space)
        return study

    def enqueue_starts(self, study: optuna.Study, space: dict[str, BaseDistribution], fixed: dict[str, str]) -> None:
        """Queue the known-good starting points (``hydra.sweeper.enqueue``) unless a trial already ran them.

        A key fixed on the command line keeps its fixed value; a value the command line's range
        leaves out is left to the sampler.
        """
        for entry in self.enqueue:
            entry = {key: value for key, value in entry.items() if key not in fixed}
            if any(key not in space for key in entry):
                raise ConfigError("hydra.sweeper.enqueue", entry, "keys of the search space: " + ", ".join(space))
            outside = {key: value for key, value in entry.items() if not contains(space[key], value)}
            if outside:
                log.info("Enqueued start %s: %s outside the search space, so sampled", entry, outside)
            study.enqueue_trial({k: v for k, v in entry.items() if k not in outside}, skip_if_exists=True)

    def trials_to_run(self, study: optuna.Study, space: dict[str, BaseDistribution], fixed: dict[str, str]) -> int:
        """``n_trials``, or fewer when a grid has fewer points left; one when the command line fixed every key
        and no trial ran with these values yet (every later trial would only repeat it), else none."""
        trials = study.get_trials(deepcopy=False)
        if not space:
            answered = (TrialState.COMPLETE, TrialState.PRUNED)  # answer_from_earlier repeats these; a failure reruns
            ran = any(t.state in answered and t.user_attrs.get(FIXED_ATTR) == fixed for t in trials)
            return 0 if ran else min(self.n_trials, 1)
        if self.sampler_name != "grid":
            return self.n_trials
        points = math.prod(len(grid_values(key, dist)) for key, dist in space.items())
        done = sum(t.state.is_finished() for t in trials)
        return max(min(self.n_trials, points - done), 0)

    def job_overrides(self, study: optuna.Study, trial: optuna.Trial, fixed: dict[str, str]) -> list[str]:
        """The job's command line: the trial's parameters, the fixed values, and its trial link if pruning."""
        overrides = [f"{key}={value}" for key, value in trial.params.items()]
        overrides += [f"{key}={value}" for key, value in fixed.items()]
        if self.ledger is not None:
            overrides += deadline_link(self.ledger.deadline - END_RESERVE_S)
        return overrides + (trial_link(trial._trial_id, study.study_name) if self.pruning else [])

    def record(self, study: optuna.Study, trial: optuna.Trial, ret: JobReturn) -> None:
        """Tell the study how the trial's job ended: COMPLETE, PRUNED (the job stopped early) or FAIL."""
        job = trial.user_attrs.get(JOB_ATTR)
        output_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg else None
        if output_dir:
            study._storage.set_trial_user_attr(trial._trial_id, DIR_ATTR, str(Path(output_dir).absolute()))
        try:
            values = job_values(ret, self.objectives)
        except Exception as error:  # noqa: BLE001 - any failure of the job is the trial's FAIL
            log.warning("Trial %d (job %s) failed: %s", trial.number, job, error)
            tell(study, trial, state=TrialState.FAIL)
            return
        stored = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        if PRUNED_ATTR in stored.user_attrs:
            log.info("Trial %d (job %s) pruned after epoch %d", trial.number, job, stored.user_attrs[PRUNED_ATTR])
            tell(study, trial, state=TrialState.PRUNED)
        else:
            tell(study, trial, values=values)


def record_cut(sweep_dir: Path, job: int, epochs: int) -> None:
    """Write a cut trial's metrics.json as a pruned run's, so the leaderboard lists it as pruned, not failed."""
    run_dir = next(sweep_dir.glob(f"{job}_*"), None)  # a job's directory: <job>_<its settings>
    if run_dir is None or (run_dir / METRICS_FILE).exists():
        return
    stopped = "cut short by a kill, with too little of the budget left to finish"
    write_json_atomic(run_dir / METRICS_FILE, {"pruned": True, "pruned_epoch": epochs, "stopped": stopped})


def param_overrides(params: dict[str, Any]) -> list[str]:
    """``hydra.sweeper.params`` (resolved) as overrides, each value as the command line writes it: a
    resolved null must reach the job as ``null``, not as the string ``None``."""
    return [f"{key}={show_value(value)}" for key, value in params.items()]


def to_dict(node: Any) -> dict[str, Any]:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node or {})


def next_job_number(sweep_dir: Path, trials: Iterable[FrozenTrial]) -> int:
    """One past the highest job number in the sweep directory or the study, so no folder is reused."""
    numbers = [int(m.group(1)) for p in sweep_dir.iterdir() if (m := re.match(r"(\d+)(_|$)", p.name))]
    numbers += [int(t.user_attrs[JOB_ATTR]) for t in trials if JOB_ATTR in t.user_attrs]
    return max(numbers, default=-1) + 1


def answer_from_earlier(study: optuna.Study, trial: optuna.Trial, fixed: dict[str, str]) -> bool:
    """Tell ``trial`` the result of an earlier finished trial with the same values, if there is one."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    params = trial.params
    earlier = next((t for t in finished if t.params == params and t.user_attrs.get(FIXED_ATTR) == fixed), None)
    if earlier is None:
        return False
    log.info(
        "Trial %d repeats trial %d (job %s): its result, not a new run",
        trial.number,
        earlier.number,
        earlier.user_attrs.get(JOB_ATTR),
    )
    trial.set_user_attr("same_as_trial", earlier.number)
    if earlier.state == TrialState.PRUNED:
        tell(study, trial, state=TrialState.PRUNED)
    else:
        tell(study, trial, values=earlier.values)
    return True


def job_values(ret: JobReturn, objectives: list[str] | None) -> list[float]:
    """The objective values of a finished job; raises when the job failed or has no finite value."""
    if ret.status == JobStatus.FAILED:
        raise ret._return_value  # the job's own exception (Hydra keeps it there)
    if ret.return_value is None:
        raise ValueError("the job returned no value (see error.txt in its directory)")
    if not objectives:
        values = [float(ret.return_value)]
    else:
        metrics = json.loads((Path(ret.hydra_cfg.hydra.runtime.output_dir) / METRICS_FILE).read_text())
        missing = [name for name in objectives if name not in metrics]
        if missing:
            raise ValueError(f"{METRICS_FILE} has no {', '.join(missing)}; it has {', '.join(metrics)}")
        values = [float(metrics[name]) for name in objectives]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"the job's value is not finite: {values}")
    return values


def tell(study: optuna.Study, trial: optuna.Trial, **kwargs: Any) -> None:
    try:
        study.tell(trial, **kwargs)
    except RuntimeError as error:  # the grid sampler stops the study once every point ran; nothing to stop here
        if "Study.stop" not in str(error):
            raise


def fixed_cost(study: optuna.Study) -> str:
    """What every trial paid besides training, as medians over the trials that trained: '' when none did."""
    costs = []
    for trial in study.get_trials(deepcopy=False):
        metrics = trial_metrics(trial)
        if "setup_s" in metrics and "finish_s" in metrics:
            costs.append((metrics["setup_s"], metrics["finish_s"]))
    if not costs:
        return ""
    setup, finish = (statistics.median(column) for column in zip(*costs, strict=True))
    return f"; a trial's fixed cost (median): {setup:.1f} s to its first step, {finish:.1f} s after its last"


def write_results(study: optuna.Study, sweep_dir: Path, objectives: list[str] | None, winner: bool = False) -> None:
    """optimization_results.yaml: the best trial, or the Pareto-optimal ones; one error line if there is none.

    ``winner`` (a search with a budget): also the best run's directory and the command that trains it without
    the search; when no trial completed, the best of those stopped early that saved a model.
    """
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState if state.is_finished()}
    one_objective = len(study.directions) == 1
    stopped = best_stopped_early(study) if winner and one_objective and not counts.get("complete") else None
    if not counts.get("complete") and stopped is None:
        log.error("Error: none of the study's %d trials completed (%s); no best trial", len(trials), counts)
        return
    results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "trials": counts}
    if not one_objective:
        results["objectives"] = objectives
        results["directions"] = [d.name.lower() for d in study.directions]
        results["solutions"] = [
            {"job": t.user_attrs.get(JOB_ATTR), "params": t.params, "values": list(t.values)}
            for t in sorted(study.best_trials, key=lambda t: t.number)
        ]
        log.info("Pareto-optimal trials: %s", ", ".join(str(t.number) for t in study.best_trials))
        OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)
        return
    if stopped is not None:
        best, value = stopped
        results["stopped_early"] = True
        log.warning(
            "No trial ran to its end (%s); the search ends with trial %d (job %s), stopped early, whose best "
            "epoch scored %s; a larger auto.budget lets trials finish",
            ", ".join(f"{n} {state}" for state, n in counts.items() if n),
            best.number,
            best.user_attrs.get(JOB_ATTR),
            f"{value:.4g}",
        )
    else:
        best = winner_of(study) if winner else study.best_trial
        value = best.value
        said = "The search ends with trial" if winner else "Best trial"
        log.info("%s %d (job %s): %s = %s", said, best.number, best.user_attrs.get(JOB_ATTR), best.params, value)
    results.update(best_job=best.user_attrs.get(JOB_ATTR), best_params=best.params, best_value=value)
    run_dir = best.user_attrs.get(DIR_ATTR)
    if winner and run_dir and Path(run_dir).is_dir():
        results.update(best_dir=run_dir, command=reproduce_command(Path(run_dir)))
        log.info("Best run: %s; without the search: %s", run_dir, results["command"])
    OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)


def best_stopped_early(study: optuna.Study) -> tuple[FrozenTrial, float] | None:
    """Of the pruned trials whose run saved a model, the one with the best reported value, and that value
    (its best epoch's, the epoch its saved model holds); None if none did.

    A search with a budget must not end with nothing when no trial ran to its end. A k-fold trial keeps
    its models in its folds' directories, not its own, and does not count.
    """
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    saved = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        run_dir, values = trial.user_attrs.get(DIR_ATTR), list(trial.intermediate_values.values())
        finite = [v for v in values if math.isfinite(v)]
        if run_dir and finite and (Path(run_dir) / MODEL_FILE).is_file():
            saved.append((trial, pick(finite)))
    if not saved:
        return None
    best = pick(value for _, value in saved)
    return next((trial, value) for trial, value in saved if value == best)  # the first of tied trials


def winner_of(study: optuna.Study) -> FrozenTrial:
    """The trial a search with a budget ends with: of the completed trials its validation split cannot tell
    from the best, the smallest model (fewest ``params``), then the lowest ``TIE_BREAK``, then the first.

    "Cannot tell from the best": the same value; for single-label validation accuracies on the same
    ``validation_size`` images, also a value within one standard error of the difference (``accuracy_margin``).
    On a small split the best of many trials is partly luck (one image is 0.006 of 179), and of models
    the split cannot tell apart the smallest is the safer and faster choice (the one-standard-error rule).
    A trial without metrics (one that repeated an earlier trial's settings, or whose run is gone) counts
    on its value alone.
    """
    best = study.best_trial
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    metrics = {t.number: trial_metrics(t) for t in complete}
    measured = [t for t in complete if metrics[t.number]]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    images = accuracy_images(measured, metrics) if maximize else None

    def close(trial: FrozenTrial) -> bool:
        if trial.value == best.value:
            return True
        if images is None or not metrics[trial.number]:
            return False
        return best.value - trial.value <= accuracy_margin(best.value, trial.value, images)

    def key(trial: FrozenTrial) -> tuple[float, float, int]:
        values = metrics[trial.number]
        return number_or_inf(values.get("params")), number_or_inf(values.get(TIE_BREAK)), trial.number

    candidates = [t for t in complete if close(t)]
    chosen = min(candidates, key=key)
    if len(candidates) > 1:
        reason = why_chosen(chosen, candidates, key)
        log.info("Trials %s; trial %d has %s", weighed(candidates, best, images), chosen.number, reason)
    return chosen


def weighed(candidates: list[FrozenTrial], best: FrozenTrial, images: int | None) -> str:
    """'0, 1 tie at 0.9944 ...' or '0, 1 are within one standard error of the best (...)'."""
    numbers = ", ".join(str(t.number) for t in candidates)
    if all(t.value == best.value for t in candidates):
        return f"{numbers} tie at {best.value:.4f}" + (f" on {images} validation images" if images else "")
    return f"{numbers} are within one standard error of the best ({best.value:.4f} on {images} validation images)"


def why_chosen(chosen: FrozenTrial, candidates: list[FrozenTrial], key: Any) -> str:
    """What set ``chosen`` apart from the other ``candidates``: its size, its ``TIE_BREAK``, or neither."""
    params, tie_break, _ = key(chosen)
    smallest = [t for t in candidates if key(t)[0] == params]
    said = [] if len(smallest) == len(candidates) else [f"the fewest parameters ({int(params):,})"]
    if len(smallest) > 1 and math.isfinite(tie_break):
        said.append(f"the lowest {TIE_BREAK} ({tie_break:.4g})")
    return " and ".join(said) or "the lowest trial number"


def trial_metrics(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's run's metrics.json; empty when it has none (or it is not JSON, or holds no mapping)."""
    run_dir = trial.user_attrs.get(DIR_ATTR)
    try:
        metrics = read_metrics(Path(run_dir)) if run_dir and Path(run_dir).is_dir() else None
    except ValueError:  # not JSON: counts as a run without metrics
        metrics = None
    return metrics if isinstance(metrics, dict) else {}


def accuracy_images(trials: list[FrozenTrial], metrics: dict[int, dict[str, Any]]) -> int | None:
    """The validation images behind the trials' values when every value is a single-label ``val_accuracy``
    on the same number of images (its run recorded ``validation_size``); else None."""
    counts = {metrics[t.number].get("validation_size") for t in trials}
    if len(counts) != 1 or not all(metrics[t.number].get("val_accuracy") == t.value for t in trials):
        return None
    images = counts.pop()
    return images if is_number(images) and images == int(images) and images > 0 else None


def accuracy_margin(first: float, second: float, images: int) -> float:
    """One standard error of the difference between two accuracies on ``images`` images, each taken as
    (correct + 1) / (images + 2): Laplace's rule, so that 179 of 179 correct still has an error bar."""

    def variance(accuracy: float) -> float:
        rate = (round(accuracy * images) + 1) / (images + 2)
        return rate * (1 - rate) / images

    return math.sqrt(variance(first) + variance(second))


def number_or_inf(value: Any) -> float:
    """``value`` as a float when it is a finite number, else infinity (last in an ascending order)."""
    return float(value) if is_number(value) else math.inf


def reproduce_command(run_dir: Path) -> str:
    """The ``python run.py ...`` that trains ``run_dir``'s settings without the search.

    The job's own overrides less the search's keys (``experiment=auto``, ``auto.*``,
    ``hydra.*``); a run that its budget or its pruner stopped early gets the epochs it ran.
    """
    overrides = [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
    kept = [o for o in overrides if split_override(o) != ("experiment", "auto") and not o.startswith("auto.")]
    metrics_file = run_dir / METRICS_FILE
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    kept += resolved_weights(kept, metrics, run_dir / ".hydra" / "config.yaml")
    cut = metrics.get("deadline_epoch") or metrics.get("pruned_epoch")
    drop = ("resume", "trainer.epochs") if cut else ("resume",)  # a trial resumed after a kill ran with resume=auto
    if not cut:
        return rerun_command(kept, drop, [])
    config = run_dir / ".hydra" / "config.yaml"
    warmup = (
        OmegaConf.select(OmegaConf.load(config), "optimizer.schedule.warmup_epochs", default=0)
        if config.is_file()
        else 0
    )
    return rerun_command(kept, drop, [f"trainer.epochs={max(int(cut), int(warmup or 0) + 1)}"])  # warm-up < epochs


def resolved_weights(overrides: list[str], metrics: dict[str, Any], config_file: Path) -> list[str]:
    """``model.weights=<value>`` as the run resolved experiment=auto's ``${kf_imagenet_or_null:}`` (ImageNet
    weights for a model that has them, when they download), unless the command line set it.

    The run's metrics.json records the value it trained with; a run from before that resolves its
    config again (which asks the network now).
    """
    if any(split_override(o)[0].lstrip("+~") == "model.weights" for o in overrides):
        return []
    if "weights" in metrics:
        weights = metrics["weights"]
    elif config_file.is_file():
        weights = OmegaConf.select(OmegaConf.load(config_file), "model.weights", default=None)
    else:
        return []
    return [override("model.weights", show_value(weights))]

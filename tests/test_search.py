"""Optuna search and the parallel launchers, run through the real command line."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from tests.conftest import hparams_session_groups, run_cli

# One step of VGG16 at 32 px (few layers, so little graph tracing): a few seconds of work per job.
SWEEP_TINY = [
    "model=vgg16",
    "optimizer=adam",
    "data.batch_size=8",
    "trainer=fast",
    "trainer.verbose=0",
    "trainer.epochs=1",
    "trainer.steps_per_epoch=1",
    "trainer.validation_steps=1",
]
# What every job directory holds, whatever ran it (a plain run writes the same).
RUN_LAYOUT = {".hydra", "kfactory.log", "metrics.json", "history.csv", "model.keras", "tensorboard"}


def job_dirs(sweep_dir: Path) -> list[Path]:
    """A sweep's job directories, in job order."""
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    return sorted(jobs, key=lambda p: int(p.name.split("_")[0]))


def writer_pids(job: Path) -> set[str]:
    """The process ids in a job's TensorBoard event file names (events.out.tfevents.TIME.HOST.PID.N.v2)."""
    return {p.name.split(".")[-3] for p in (job / "tensorboard").rglob("events.out.tfevents.*")}


def assert_run_layout(job: Path) -> None:
    assert {p.name for p in job.iterdir()} >= RUN_LAYOUT, sorted(p.name for p in job.iterdir())
    assert list((job / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert math.isfinite(json.loads((job / "metrics.json").read_text())["val_loss"])


@pytest.mark.parametrize(("n_jobs", "expected"), [(2, 4), (3, 2), (-1, 1), (-3, 1), (16, 1)])
def test_joblib_jobs_share_the_cores(cfg_factory, tmp_path, monkeypatch, n_jobs, expected):
    from hydra.core.hydra_config import HydraConfig

    from kfactory.train.compute import launcher_thread_budget

    cfg = cfg_factory(["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"], run_dir=tmp_path)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # restored after the test
    assert launcher_thread_budget() is None  # outside Hydra: TensorFlow's own default
    HydraConfig.instance().set_config(cfg)
    assert launcher_thread_budget() == expected


def test_the_basic_launcher_leaves_threads_alone(cfg_factory, tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig

    from kfactory.train.compute import launcher_thread_budget

    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    HydraConfig.instance().set_config(cfg_factory([], run_dir=tmp_path))
    assert launcher_thread_budget() is None


SEARCH = ["-m", "hparams_search=optuna", "model.dropout=choice(0.0,0.1)", "optimizer.learning_rate=0.001"]


def search(sweep_dir: Path, *args: str):
    """Run a small Optuna search into ``sweep_dir``; returns the finished process."""
    return run_cli([*SEARCH, *SWEEP_TINY, *args, f"hydra.sweep.dir={sweep_dir}"])


def load_study(sweep_dir: Path):
    import optuna

    from kfactory.config.search import open_storage

    return optuna.load_study(study_name="kfactory", storage=open_storage(None, sweep_dir))


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_pruned_trials_are_complete_runs(sweep_dir: Path, output: str) -> None:
    states = {t.user_attrs["job"]: t.state.name for t in load_study(sweep_dir).trials}
    pruned = [job for job in job_dirs(sweep_dir) if states[int(job.name.split("_")[0])] == "PRUNED"]
    assert pruned, "no trial was pruned\n" + output
    for job in pruned:
        assert_run_layout(job)  # best model, metrics.json, TensorBoard: a complete run
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["pruned"] is True and metrics["pruned_epoch"] == metrics["epochs_run"] < 4
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert sorted(summary.loc[summary["status"] == "pruned", "job"]) == sorted(
        int(j.name.split("_")[0]) for j in pruned
    )


PRUNING = [
    "trainer.epochs=4",
    "trainer.monitor=val_loss",
    "hydra.sweeper.direction=minimize",
    # A loss is never below 0, so every trial is pruned at its first report, whatever the seed or the CPU's
    # kernels: the test is about what kfactory does with a pruned trial, not about which trial a pruner picks.
    "hydra.sweeper.pruner=threshold",
    "hydra.sweeper.pruner_args={upper: 0.0}",
    "optimizer.learning_rate=tag(log,interval(1e-5,1e-1))",
]


@pytest.mark.slow
def test_a_pruned_trial_stops_early_as_a_complete_run(tmp_path: Path):
    sweep_dir = tmp_path / "search"
    result = search(sweep_dir, "hydra.sweeper.n_trials=3", *PRUNING)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_pruned_trials_are_complete_runs(sweep_dir, result.stdout[-3000:] + result.stderr[-3000:])


@pytest.mark.slow
def test_pruning_reaches_trials_in_joblib_workers(tmp_path: Path):
    sweep_dir = tmp_path / "search"
    parallel = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2"]
    result = search(sweep_dir, "hydra.sweeper.n_trials=4", *PRUNING, *parallel)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_pruned_trials_are_complete_runs(sweep_dir, result.stdout[-3000:] + result.stderr[-3000:])


@pytest.mark.slow
def test_submitit_jobs_report_their_epochs_to_their_trials(tmp_path: Path):
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401  (the dev extra: a broken install fails)

    sweep_dir = tmp_path / "search"
    launcher = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "trainer.threads=1"]
    args = ["hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "trainer.epochs=2", "hydra.sweeper.pruner=median"]
    result = search(sweep_dir, *args, *launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load_study(sweep_dir).trials
    # Each job, in its own submitit process, found its trial through the journal file and reported every epoch
    assert [sorted(t.intermediate_values) for t in trials] == [[1, 2], [1, 2]]


@pytest.mark.slow
def test_a_failed_trial_is_recorded_and_the_search_goes_on(tmp_path: Path):
    sweep_dir = tmp_path / "search"
    # The enqueued starting points run first: one refused by validation (dropout must be < 1), one good.
    enqueue = "hydra.sweeper.enqueue=[{model.dropout: 1.5}, {model.dropout: 0.0}]"
    result = search(sweep_dir, "hydra.sweeper.n_trials=2", "model.dropout=choice(0.0,1.5)", enqueue)
    assert result.returncode == 1  # as for any sweep with a failed job
    jobs = job_dirs(sweep_dir)
    assert [j.name.split("_")[0] for j in jobs] == ["0", "1"]
    assert (jobs[0] / "error.txt").exists() and "model.dropout=1.5" in jobs[0].name
    assert_run_layout(jobs[1])
    assert [t.state.name for t in load_study(sweep_dir).trials] == ["FAIL", "COMPLETE"]
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.best_params["model.dropout"] == 0.0 and best.best_job == 1
    best_value = json.loads((jobs[1] / "metrics.json").read_text())[
        "val_accuracy"
    ]  # what a run returns: the saved model on the whole split
    assert best.best_value == pytest.approx(best_value)
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert list(summary["status"]) == ["ok", "failed"]


@pytest.mark.slow
def test_a_search_whose_trials_all_fail_writes_its_summary_and_exits_nonzero(tmp_path: Path):
    sweep_dir = tmp_path / "search"
    result = search(sweep_dir, "hydra.sweeper.n_trials=2", "model.dropout=choice(1.5,2.0)")
    assert result.returncode == 1
    assert "Error: none of the study's 2 trials completed" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert list(summary["status"]) == ["failed", "failed"]
    assert not (sweep_dir / "optimization_results.yaml").exists()


@pytest.mark.slow
@pytest.mark.parametrize("storage", [None, "sqlite:///${hydra.sweep.dir}/optuna.db"])
def test_the_same_command_continues_the_study_in_new_folders(tmp_path: Path, storage):
    sweep_dir = tmp_path / "search"
    extra = [] if storage is None else [f"hydra.sweeper.storage={storage}"]
    first = search(sweep_dir, "hydra.sweeper.n_trials=1", "model.dropout=0.0", *extra)
    assert first.returncode == 0, first.stderr[-3000:]
    (job0,) = job_dirs(sweep_dir)
    before = tree_bytes(job0)
    # The same command again adds one trial; a refused one keeps it cheap and shows FAIL joins the study.
    second = search(sweep_dir, "hydra.sweeper.n_trials=1", "model.dropout=1.5", *extra)
    assert second.returncode == 1
    jobs = job_dirs(sweep_dir)
    assert [j.name.split("_")[0] for j in jobs] == ["0", "1"]
    assert tree_bytes(job0) == before  # the first run's folder is untouched
    if storage is None:
        assert [t.state.name for t in load_study(sweep_dir).trials] == ["COMPLETE", "FAIL"]
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.best_job == 0 and best.trials.complete == 1 and best.trials.fail == 1


@pytest.mark.slow
def test_several_objectives_list_the_pareto_front(tmp_path: Path):
    sweep_dir = tmp_path / "search"
    objectives = ["hparams_search.objectives=[val_accuracy,params]", "hydra.sweeper.directions=[maximize,minimize]"]
    result = search(sweep_dir, "hydra.sweeper.n_trials=2", "model.dropout=choice(0.0,0.2)", *objectives)
    assert result.returncode == 0, result.stderr[-3000:]
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.objectives == ["val_accuracy", "params"]
    front = {s.job for s in results.solutions}
    assert front and all(len(s["values"]) == 2 for s in results.solutions)
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert set(summary.loc[summary["pareto"], "job"]) == front


@pytest.mark.slow
def test_joblib_runs_jobs_in_separate_processes_with_a_thread_budget(tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model.dropout=0.0,0.1"]
    result = run_cli([*args, *SWEEP_TINY, f"hydra.sweep.dir={sweep_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_dirs(sweep_dir)
    assert len(jobs) == 2
    pids = [writer_pids(job) for job in jobs]
    assert all(len(p) == 1 for p in pids) and pids[0] != pids[1]
    for job in jobs:
        assert_run_layout(job)
        log = (job / "kfactory.log").read_text()
        assert re.search(r"TensorFlow threads: \d+ \(\d+ cores shared by 2 parallel jobs\)", log), log


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_sweep(tmp_path: Path):
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401  (the dev extra: a broken install fails)

    sweep_dir = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "model.dropout=0.0,0.1"]
    result = run_cli([*args, *SWEEP_TINY, "trainer.threads=1", f"hydra.sweep.dir={sweep_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_dirs(sweep_dir)
    assert len(jobs) == 2
    for job in jobs:
        assert_run_layout(job)
    assert list((sweep_dir / ".submitit").rglob("*_log.out"))  # submitit's own per-job logs


@pytest.mark.slow
def test_a_cv_folds_trial_trains_its_folds_and_is_their_mean(tmp_path: Path):
    sweep_dir = tmp_path / "search"
    pruner = ["hydra.sweeper.pruner=median", "hydra.sweeper.pruner_args={n_startup_trials: 5}"]  # reports, never prunes
    result = search(sweep_dir, "hydra.sweeper.n_trials=1", "hparams_search.cv_folds=2", *pruner)
    assert result.returncode == 0, result.stderr[-3000:]
    (job,) = job_dirs(sweep_dir)
    folds = [json.loads((job / f"fold_{i}" / "metrics.json").read_text()) for i in range(2)]
    for i in range(2):  # a complete run each; their log is the trial's kfactory.log
        assert {p.name for p in (job / f"fold_{i}").iterdir()} >= RUN_LAYOUT - {"kfactory.log"}
        assert list((job / f"fold_{i}" / "tensorboard" / "train").glob("events.out.tfevents.*"))
    mean = (folds[0]["val_accuracy"] + folds[1]["val_accuracy"]) / 2
    assert "weights" in folds[0] and json.loads((job / "metrics.json").read_text())["weights"] == folds[0]["weights"]
    (trial,) = load_study(sweep_dir).trials
    assert trial.state.name == "COMPLETE" and trial.value == pytest.approx(mean)
    assert sorted(trial.intermediate_values) == [1, 2]  # fold 0's epoch, then fold 1's: steps count on
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert summary.loc[0, "status"] == "ok" and summary.loc[0, "val_accuracy"] == pytest.approx(mean)
    assert summary.loc[0, "folds"] == 2 and "val_accuracy_std" in summary.columns
    (group,) = hparams_session_groups(sweep_dir)
    assert group.name == f"cv/{job.name}" and len(group.sessions) == 2

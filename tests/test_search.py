"""Optuna search and the parallel launchers, run through the real command line."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import run_cli

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


@pytest.mark.slow
def test_optuna_search_records_failed_trials_and_returns_the_best_value(tmp_path: Path):
    sweep_dir = tmp_path / "search"
    # With seed=0 the seeded TPE sampler draws dropout 0.0, 1.5, 1.5: one trial trains, and
    # two are refused by validation (dropout must be < 1), return None and must not stop the search.
    args = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "seed=0", "model.dropout=choice(0.0,1.5)"]
    result = run_cli([*args, *SWEEP_TINY, f"hydra.sweep.dir={sweep_dir}"])
    output = result.stdout + result.stderr

    jobs = job_dirs(sweep_dir)
    assert len(jobs) == 3, output[-3000:]
    failed = [job for job in jobs if (job / "error.txt").exists()]
    assert failed and len(failed) < 3, "the seed no longer mixes good and bad trials; pick another"
    assert all("model.dropout=1.5" in (job / ".hydra" / "overrides.yaml").read_text() for job in failed)
    assert output.count("Failed experiment: Return value must be float-castable") == len(failed)  # told as FAIL

    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.best_params["model.dropout"] == 0.0
    trained = [job for job in jobs if job not in failed]
    best_values = [json.loads((job / "metrics.json").read_text())["best_val_accuracy"] for job in trained]
    assert best.best_value == pytest.approx(max(best_values))
    for job in trained:
        assert_run_layout(job)
    assert (sweep_dir / "summary.csv").exists()  # the sweep summary ranks the trials too


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Deprecated API features detected")  # optuna 2.x on SQLAlchemy 1.4
def test_optuna_search_continues_from_its_sqlite_storage(tmp_path: Path):
    import optuna
    import sqlalchemy

    # The sweep extra pins SQLAlchemy<2 (optuna 2.x's RDB storage fails on 2.x): another version is a broken install.
    assert int(sqlalchemy.__version__.split(".")[0]) < 2, (
        f"SQLAlchemy {sqlalchemy.__version__}: pip install -e '.[dev]'"
    )

    sweep_dir = tmp_path / "search"
    storage = "sqlite:///${hydra.sweep.dir}/optuna.db"  # as the README shows: in the sweep root
    common = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=1", f"hydra.sweeper.storage={storage}"]
    common += [*SWEEP_TINY, f"hydra.sweep.dir={sweep_dir}"]
    first = run_cli([*common, "model.dropout=0.0"])
    results = sweep_dir / "optimization_results.yaml"
    assert results.exists(), first.stdout[-3000:] + first.stderr[-3000:]
    best_first = OmegaConf.load(results).best_value
    # The same command again adds one (refused, so cheap) trial to the stored study; its best stays the first.
    run_cli([*common, "model.dropout=1.5"])
    study = optuna.load_study(study_name="kfactory", storage=f"sqlite:///{sweep_dir}/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]
    assert OmegaConf.load(results).best_value == pytest.approx(best_first)


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
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401  (the slurm extra, part of dev: absent is a broken install)

    sweep_dir = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "model.dropout=0.0,0.1"]
    result = run_cli([*args, *SWEEP_TINY, "trainer.threads=1", f"hydra.sweep.dir={sweep_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_dirs(sweep_dir)
    assert len(jobs) == 2
    for job in jobs:
        assert_run_layout(job)
    assert list((sweep_dir / ".submitit").rglob("*_log.out"))  # submitit's own per-job logs

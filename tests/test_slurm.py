"""Sweeps on a real single-node Slurm (tests/slurm.py): jobs land in their directories, and a
requeued or preempted job continues its run to exactly trainer.epochs epochs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from kfactory.run.resume import BACKUP_METADATA
from tests.conftest import ROOT, write_image_folder

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]  # one cluster, one worker

SMALL = ["trainer=fast", "trainer.verbose=0", "model.input_size=[32,32]", "model.weights=null", "trainer.threads=1"]


def slurm_sweep(cluster, sweep_dir: Path, args: list[str]) -> subprocess.Popen:
    """Start ``run.py -m hydra/launcher=submitit_slurm`` on the test cluster; it waits for its jobs."""
    command = [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=submitit_slurm",
               f"hydra.launcher.partition={cluster.partition}", "hydra.launcher.cpus_per_task=1",
               "hydra.launcher.timeout_min=30", f"hydra.sweep.dir={sweep_dir}", *SMALL, *args]  # fmt: skip
    env = {**os.environ, "SLURM_CONF": str(cluster.conf), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def history_epochs(job_dir: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in (job_dir / "history.csv").read_text().splitlines()[1:]]


def test_a_slurm_sweep_runs_each_job_in_its_directory_and_sums_them_up(slurm_cluster, tmp_path):
    sweep = slurm_sweep(slurm_cluster, tmp_path, ["model.dropout=0.0,0.5"])
    output, _ = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, output[-4000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0_model.dropout=0.0", "1_model.dropout=0.5"]
    for job in jobs:
        assert history_epochs(job) == [1, 2]
        assert json.loads((job / "metrics.json").read_text())["epochs_run"] == 2
    table = pd.read_csv(tmp_path / "summary.csv")
    assert sorted(table["job"]) == [0, 1] and set(table["status"]) == {"ok"}
    assert list((tmp_path / ".submitit").glob("*/*_log.out"))  # submitit's own logs


def test_two_slurm_jobs_on_one_folder_decode_it_once_into_one_cache_entry(slurm_cluster, tmp_path):
    from kfactory.data.pipeline import DECODE_CACHE_KEY

    photos = write_image_folder(tmp_path / "photos", {"cats": 300, "dogs": 300}, size=64, fmt="jpg")
    cache = tmp_path / "cache"
    data = ["data=folder", f"data.path={photos}", f"data.cache_dir={cache}"]
    sweep = slurm_sweep(slurm_cluster, tmp_path / "sweep", [*data, "model.dropout=0.0,0.5"])
    output, _ = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, output[-4000:]
    entries = [p.name for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and not [p for p in cache.iterdir() if p.name.startswith(".") and p.is_dir()]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith("."))
    logs = [(job / "kfactory.log").read_text() for job in jobs]
    assert sum("Decoding 600 images once" in log for log in logs) == 1, logs  # one job built it
    assert sum("Decode cache: 600 images at" in log for log in logs) == 1, logs  # the other read it
    for job in jobs:
        assert json.loads((job / "splits.json").read_text())[DECODE_CACHE_KEY] == entries[0]


def job_id(cluster) -> str:
    """The id of the one job of the sweep (an array task, e.g. 12_0), once it runs."""
    listed = cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i").stdout.split()
    assert len(listed) == 1, listed
    return listed[0]


def wait_for_epoch(sweep_dir: Path, sweep: subprocess.Popen, timeout: float = 600) -> Path:
    """The directory of the sweep's job 0, once its first epoch is backed up."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for metadata in sweep_dir.glob(f"0_*/backup/{BACKUP_METADATA}"):
            return metadata.parent.parent
        assert sweep.poll() is None, sweep.stdout.read()[-4000:]
        time.sleep(0.5)
    raise TimeoutError("no epoch finished in time")


def start_requeued_job_now(cluster, job: str, timeout: float = 120) -> None:
    """Slurm holds a requeued batch job for about two minutes (its begin time); lift that."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if "Reason=BeginTime" in cluster.run("scontrol", "show", "job", job).stdout:
            cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
            return
        time.sleep(0.5)
    raise TimeoutError(f"job {job} was not requeued")


@pytest.mark.parametrize(
    "stop",
    [
        ["scontrol", "requeue"],  # what an admin or a requeue script does: SIGTERM, SIGKILL, start again
        ["scancel", "--signal=USR2"],  # Slurm's signal before the time limit, or on preemption (submitit requeues)
    ],
)
def test_a_job_stopped_mid_run_is_requeued_and_continues_to_exactly_its_epochs(slurm_cluster, tmp_path, stop):
    # 40 steps an epoch: the 4 epochs left after the stop must outlast Slurm's KillWait (5 s), or a fast
    # machine finishes the run in that grace (submitit ignores SIGTERM) and the requeued job has nothing to resume
    sweep = slurm_sweep(slurm_cluster, tmp_path, ["trainer.epochs=5", "trainer.steps_per_epoch=40"])
    try:
        job_dir = wait_for_epoch(tmp_path, sweep)
        job = job_id(slurm_cluster)
        stopped = slurm_cluster.run(*stop, job)
        assert stopped.returncode == 0, stopped.stderr
        start_requeued_job_now(slurm_cluster, job)
        output, _ = sweep.communicate(timeout=1200)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, output[-4000:]
    assert history_epochs(job_dir) == [1, 2, 3, 4, 5]  # one continuous history
    assert json.loads((job_dir / "metrics.json").read_text())["epochs_run"] == 5
    log = (job_dir / "kfactory.log").read_text()
    assert "Resuming" in log
    if "--signal=USR2" in stop:  # held until the epoch's backup, then passed on to submitit, which requeued
        assert "SIGUSR2: the job is requeued once this epoch is backed up" in log and "Passing SIGUSR2 on" in log
        assert "Taking over the lock" not in log  # the job exited cleanly, releasing it
    else:  # SIGKILLed: the requeued start of the same Slurm job takes its lock over
        assert "Taking over the lock" in log
    runs = sorted(p.name for p in (job_dir / "tensorboard").iterdir() if p.is_dir())
    assert runs == ["train", "validation"]  # one TensorBoard run, continued
    assert "Restarts=1" in slurm_cluster.run("scontrol", "show", "job", job.split("_")[0]).stdout


def test_a_budgeted_search_on_slurm_shares_its_deadline_and_ends_with_a_model(slurm_cluster, tmp_path):
    budget_s = 100
    command = [sys.executable, str(ROOT / "run.py"), "experiment=auto", f"auto.budget={budget_s}s",
               "hydra/launcher=submitit_slurm", f"hydra.launcher.partition={slurm_cluster.partition}",
               "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=30", "hydra.sweeper.n_jobs=2",
               "model=mobilenet_v3_small", "model.input_size=64", "trainer.threads=1", "trainer.verbose=0",
               f"hydra.sweep.dir={tmp_path}"]  # fmt: skip
    env = {**os.environ, "SLURM_CONF": str(slurm_cluster.conf), "TF_CPP_MIN_LOG_LEVEL": "2", "KFACTORY_OFFLINE": "1"}
    started = time.time()
    output = subprocess.run(command, cwd=ROOT, env=env, text=True, capture_output=True, timeout=600)
    wall_s = time.time() - started
    assert output.returncode == 0, (output.stdout + output.stderr)[-4000:]
    assert wall_s <= budget_s + 30, wall_s  # the promise: within max(2 %, 30 s) of the budget
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) >= 2  # the first batch: two trials at once, each its own Slurm job
    metrics = [json.loads((job / "metrics.json").read_text()) for job in jobs]
    # 30 epochs at 64 px on one thread take several times the budget, even on a much faster CPU: both were cut
    assert all(m.get("deadline_epoch") for m in metrics[:2]), metrics
    results = (tmp_path / "optimization_results.yaml").read_text()
    assert "best_dir:" in results and "command: python run.py" in results
    assert list((tmp_path / ".submitit").glob("*/*_log.out"))  # they ran as Slurm jobs

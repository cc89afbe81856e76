"""One writer per run directory: a kernel lock names its holder, and a dead holder's lock is taken over."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kfactory.errors import ConfigError
from kfactory.run import lock as run_lock
from tests.conftest import ROOT, TINY, run_cli

# Takes the lock of argv[1] once the file argv[2] exists (all racers start together), says whether it trains,
# and holds a lock it took until the file argv[3] exists, as a training run holds it until its end.
RACER = """
import pathlib, sys, time
from kfactory.errors import ConfigError
from kfactory.run import lock as run_lock
run_dir, start, done = (pathlib.Path(a) for a in sys.argv[1:4])
print("ready", flush=True)
while not start.exists():
    time.sleep(0.001)
try:
    run_lock.acquire(run_dir)
except ConfigError:
    print("refused", flush=True)
    sys.exit(0)
print("trains", flush=True)
while not done.exists():
    time.sleep(0.01)
"""


def write_lock(run_dir, **holder) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "since": "2026-01-01 00:00:00", "slurm_job_id": None, **holder}
    (run_dir / run_lock.LOCK_FILE).write_text(json.dumps(record))


def live_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def holding_process(run_dir: Path) -> subprocess.Popen:
    """A process that holds the lock of ``run_dir`` (as a training run does) until it is killed."""
    script = "import pathlib, sys, time; from kfactory.run import lock as run_lock; "
    script += "run_lock.acquire(pathlib.Path(sys.argv[1])); print('held', flush=True); time.sleep(60)"
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "held"
    return process


def test_the_lock_is_taken_and_released(tmp_path):
    path = run_lock.acquire(tmp_path)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    run_lock.release(path)
    assert not path.exists()


def test_a_second_process_is_refused_in_one_line_naming_the_holder(tmp_path):
    other = holding_process(tmp_path)
    try:
        with pytest.raises(ConfigError) as refused:
            run_lock.acquire(tmp_path)
        before = (tmp_path / run_lock.LOCK_FILE).read_text()
        with pytest.raises(ConfigError):
            run_lock.check_free(tmp_path)
        assert (tmp_path / run_lock.LOCK_FILE).read_text() == before  # a refusal changes no file
    finally:
        other.kill()
        other.wait()
    message = str(refused.value)
    assert "\n" not in message
    assert f"pid {other.pid} on {socket.gethostname()}" in message and run_lock.LOCK_FILE in message
    assert re.search(r"if that process is gone, delete (\S+)\)", message)[1] == str(tmp_path / run_lock.LOCK_FILE)
    path = run_lock.acquire(tmp_path)  # the kernel let go of the killed holder's lock
    assert json.loads(path.read_text())["pid"] == os.getpid()
    run_lock.release(path)


def test_a_lock_held_in_this_process_is_not_taken_by_another(tmp_path):
    path = run_lock.acquire(tmp_path)
    try:
        script = "import pathlib, sys; from kfactory.run import lock; lock.acquire(pathlib.Path(sys.argv[1]))"
        other = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
        assert other.returncode == 1 and f"pid {os.getpid()} on" in other.stderr
        run_lock.check_free(tmp_path)  # this process's own lock does not block its own preflight
    finally:
        run_lock.release(path)
    assert not path.exists()


def test_racers_on_a_stale_lock_train_one_at_a_time(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run_dir, start, done = tmp_path / "run", tmp_path / "start", tmp_path / "done"
    write_lock(run_dir, pid=int(gone.stdout), started="1")
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(run_dir), str(start), str(done)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    try:
        assert all(racer.stdout.readline().strip() == "ready" for racer in racers)
        start.touch()
        answers = [racer.stdout.readline().strip() for racer in racers]
        done.touch()
    finally:
        done.touch()
        for racer in racers:
            racer.wait(timeout=60)
    assert sorted(answers) == ["refused"] * 5 + ["trains"]


def test_the_lock_of_a_process_that_is_gone_is_taken_over_with_a_warning(tmp_path, caplog):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_lock(tmp_path, pid=int(gone.stdout), started="1")
    path = run_lock.acquire(tmp_path)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "its process ended" in caplog.text


def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path):
    other = live_process()  # alive, but not the process that wrote the lock: another start time
    try:
        write_lock(tmp_path, pid=other.pid, started="1")
        run_lock.acquire(tmp_path)
    finally:
        other.kill()
        other.wait()


def test_a_requeued_slurm_job_takes_over_its_own_lock_from_another_host(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    write_lock(tmp_path, host="node-that-died", pid=1, slurm_job_id="4242")
    run_lock.acquire(tmp_path)
    write_lock(tmp_path / "other", host="node-that-died", pid=1, slurm_job_id="17")
    with pytest.raises(ConfigError, match=r"Slurm job 17"):
        run_lock.acquire(tmp_path / "other")


def test_a_training_run_refuses_a_directory_another_process_trains_in(tmp_path):
    other = holding_process(tmp_path)
    try:
        result = run_cli(["model=vgg16", *TINY, f"hydra.run.dir={tmp_path}"], timeout=120)
    finally:
        other.kill()
        other.wait()
    assert result.returncode == 2
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"pid {other.pid}" in errors[0]

"""One writer per run directory: the lock names its holder, and a dead holder's lock is taken over."""

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
from tests.conftest import TINY, run_cli


def write_lock(run_dir, **holder) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "since": "2026-01-01 00:00:00", "slurm_job_id": None, **holder}
    (run_dir / run_lock.LOCK_FILE).write_text(json.dumps(record))


def live_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_the_lock_is_taken_and_released(tmp_path):
    path = run_lock.acquire(tmp_path)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    run_lock.release(path)
    assert not path.exists()


def test_a_second_process_is_refused_in_one_line_naming_the_holder(tmp_path):
    other = live_process()
    try:
        write_lock(tmp_path, pid=other.pid, started=run_lock.process_start(other.pid))
        with pytest.raises(ConfigError) as refused:
            run_lock.acquire(tmp_path)
    finally:
        other.kill()
        other.wait()
    message = str(refused.value)
    assert "\n" not in message
    assert f"pid {other.pid} on {socket.gethostname()}" in message and run_lock.LOCK_FILE in message
    suggested = re.search(r"if that process is gone, delete (\S+)\)", message)[1]  # do what it says: it works
    Path(suggested).unlink()
    run_lock.acquire(tmp_path)


def test_the_lock_of_a_process_that_is_gone_is_taken_over_with_a_warning(tmp_path, caplog):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_lock(tmp_path, pid=int(gone.stdout), started="1")
    path = run_lock.acquire(tmp_path)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "is gone" in caplog.text


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
    other = live_process()
    try:
        write_lock(tmp_path, pid=other.pid, started=run_lock.process_start(other.pid))
        result = run_cli(["model=vgg16", *TINY, f"hydra.run.dir={tmp_path}"], timeout=120)
    finally:
        other.kill()
        other.wait()
    assert result.returncode == 2
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"pid {other.pid}" in errors[0]

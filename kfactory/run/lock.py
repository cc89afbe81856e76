"""One writer per run directory: a lock file naming the host and process that trains there.

``<run dir>/.kfactory.lock`` is created exclusively when a training run starts
and removed when it ends. A second process refuses in one line naming the
holder. A lock left by a process that is gone is taken over with a warning:
on this host when its process no longer exists (the process start time guards
against a reused pid), on any host when it was written by an earlier start of
this same Slurm job (a requeued job may land on another node).

No TensorFlow here.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from kfactory.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = ".kfactory.lock"


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), None if unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in parentheses may hold spaces


def process_alive(pid: int, started: str | None) -> bool:
    """Whether process ``pid`` of this host exists and (if known) is the one that started at ``started``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    now = process_start(pid)
    return started is None or now is None or now == started


def this_holder() -> dict[str, Any]:
    """Who this process is, as a lock records it."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": process_start(os.getpid()),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def stale_reason(holder: dict[str, Any]) -> str | None:
    """Why the lock of ``holder`` may be taken over, or None if its process may still be running."""
    me = this_holder()
    if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
        return "this process holds it already"
    if holder.get("slurm_job_id") and holder["slurm_job_id"] == me["slurm_job_id"]:
        return f"it was written by an earlier start of this Slurm job ({me['slurm_job_id']}, requeued)"
    if holder.get("host") == me["host"] and not process_alive(int(holder.get("pid", 0)), holder.get("started")):
        return f"its process {holder.get('pid')} on {me['host']} is gone"
    return None


def read_holder(path: Path) -> dict[str, Any]:
    """The lock's record; a lock cut short while being written reads as an unknown holder."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def acquire(run_dir: Path, dir_key: str = "hydra.run.dir") -> Path:
    """Take the lock of ``run_dir`` or raise ConfigError naming the process that holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    for _ in range(3):  # another process may take over the same stale lock at the same time
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_holder(path)
            reason = stale_reason(holder) if holder else None
            if reason is None:
                raise ConfigError(dir_key, str(run_dir), refusal(holder, path)) from None
            pid, host = holder.get("pid"), holder.get("host")
            log.warning("Taking over the lock %s of pid %s on %s: %s", path, pid, host, reason)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(this_holder(), handle)
        return path
    raise ConfigError(dir_key, str(run_dir), refusal(read_holder(path), path))


def check_free(run_dir: Path, dir_key: str = "hydra.run.dir") -> None:
    """Raise ConfigError if a live process holds the lock of ``run_dir`` (nothing is written either way)."""
    path = run_dir / LOCK_FILE
    if path.exists() and stale_reason(holder := read_holder(path)) is None:
        raise ConfigError(dir_key, str(run_dir), refusal(holder, path))


def refusal(holder: dict[str, Any], path: Path) -> str:
    """What the refusal says: who trains in the directory, and what to do."""
    if not holder:
        who = "another process (its lock is being written)"
    else:
        who = f"pid {holder.get('pid')} on {holder.get('host')}"
        if holder.get("slurm_job_id"):
            who += f" (Slurm job {holder['slurm_job_id']})"
        who += f" since {holder.get('since')}"
    return (
        f"a directory no other process trains in: {who} holds {path}; wait for it to end or choose another "
        f"directory (if that process is gone, delete {path})"
    )


def release(path: Path) -> None:
    """Remove the lock if this process still holds it."""
    holder = read_holder(path)
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)

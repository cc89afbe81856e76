"""One writer per run directory: a kernel lock on a file naming the host and process that trains there.

``<run dir>/.kfactory.lock`` is locked with ``fcntl.flock`` when a training run
starts; the kernel releases that lock when the process ends, however it ends, so
two processes can never both hold it, and a dead holder's lock is free at once.
The file also records the holder (host, pid, Slurm job) for the refusal, which
names it in one line. A record written on another host is trusted where the
kernel lock cannot see across hosts: it is taken over only by a later start of
the same Slurm job (a requeued job may land on another node), after waiting up to
``REQUEUE_WAIT_S`` for a shared file system to drop the dead node's lock.

No TensorFlow here.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from kfactory.errors import ConfigError
from kfactory.paths import fsync_directory

log = logging.getLogger(__name__)

LOCK_FILE = ".kfactory.lock"
REQUEUE_WAIT_S = 120.0  # an NFSv4 server keeps a dead client's locks for its lease (90 s by default)

_held: dict[Path, int] = {}  # lock path -> the open file whose kernel lock this process holds


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
    if path in _held:
        return path
    deadline = time.monotonic() + REQUEUE_WAIT_S
    while (fd := _lock(path)) is None:
        holder = read_holder(path)
        if not _requeued(holder) or time.monotonic() > deadline:
            raise ConfigError(dir_key, str(run_dir), refusal(holder, path))
        time.sleep(1.0)
    holder = read_holder(path)  # the record of a holder that ended without removing it, if any
    reason = "its process ended (the kernel released its lock)" if holder else None
    if holder and holder.get("host") != socket.gethostname():  # a lock the kernel here cannot see
        reason = stale_reason(holder)
        if reason is None:
            _unlock(fd)
            raise ConfigError(dir_key, str(run_dir), refusal(holder, path))
    if reason:
        log.warning("Taking over the lock %s of pid %s on %s: %s", path, holder.get("pid"), holder.get("host"), reason)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(this_holder()).encode())
    os.fsync(fd)
    fsync_directory(run_dir)
    _held[path] = fd
    return path


def _lock(path: Path) -> int | None:
    """An open file of ``path`` whose kernel lock this process now holds, or None if another process holds it.

    A holder that ends removes the file; a lock taken on a file so removed is
    let go and taken again on the file now at ``path``.
    """
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        _unlock(fd)


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _requeued(holder: dict[str, Any]) -> bool:
    """Whether ``holder`` is an earlier start of this Slurm job, whose lock a shared file system may still keep."""
    me = os.environ.get("SLURM_JOB_ID")
    return bool(me) and holder.get("slurm_job_id") == me and holder.get("host") != socket.gethostname()


def check_free(run_dir: Path, dir_key: str = "hydra.run.dir") -> None:
    """Raise ConfigError if a live process holds the lock of ``run_dir`` (nothing is written either way)."""
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        held = path in _held
    except BlockingIOError:
        held = True
    finally:
        os.close(fd)
    holder = read_holder(path)
    on_other_host = holder and holder.get("host") != socket.gethostname() and stale_reason(holder) is None
    if (held and path not in _held) or on_other_host:
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
    """Remove the lock file and let go of its kernel lock, if this process holds it."""
    fd = _held.pop(path, None)
    if fd is None:
        return
    path.unlink(missing_ok=True)  # while still locked: a process waiting on this file then takes the next one
    _unlock(fd)

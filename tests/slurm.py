"""A real single-node Slurm for the cluster tests (``slurm_cluster``, session-scoped, slow tests only).

On a machine without Slurm it installs ``slurm-wlm`` and ``munge`` with apt (as
root), starts ``munged`` as the munge user (unless one runs), writes a
``slurm.conf`` naming this host (``hostname -s``, 2 CPUs, one partition) in a
temporary folder, starts ``slurmctld`` and ``slurmd`` on free ports, waits
until ``srun hostname`` answers, and stops what it started, by pid, at the end.
``SLURM_CONF`` points every Slurm command of the session (and of the jobs) at
that file; /etc/slurm is left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PARTITION = "kfactory"


@dataclass
class SlurmCluster:
    """The running test cluster: its config file, partition and node."""

    conf: Path
    partition: str
    node: str
    folder: Path

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a Slurm command (``squeue``, ``scontrol``, …) against this cluster."""
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env)


def install_slurm() -> None:
    """apt-get install slurm-wlm and munge, or skip the test where that cannot be done."""
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Slurm is not installed and cannot be (needs root and apt-get): apt-get install slurm-wlm munge")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"], check=True, capture_output=True,
                   env=env, timeout=1200)  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def start_munge(folder: Path) -> int | None:
    """Start munged as the munge user unless one answers; return the pid started, or None."""
    if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        return None
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "--create"], check=True)
        shutil.chown(key, "munge", "munge")
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    pid_file = run_dir / "munged.pid"
    subprocess.run(["runuser", "-u", "munge", "--", "munged", "--force"], check=True, timeout=30)
    wait_for(lambda: subprocess.run(["munge", "-n"], capture_output=True).returncode == 0, "munged", 30)
    return int(pid_file.read_text()) if pid_file.exists() else None


def write_conf(folder: Path, node: str) -> Path:
    """A slurm.conf for one node with 2 CPUs, root as SlurmUser, no cgroups, everything under ``folder``."""
    (folder / "state").mkdir(parents=True)
    (folder / "spool").mkdir()
    conf = folder / "slurm.conf"
    conf.write_text(
        f"""ClusterName=kfactorytest
SlurmctldHost={node}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=600
SchedulerParameters=defer_batch
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
NodeName={node} CPUs=2 State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


def wait_for(ready, what: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not come up in {timeout:.0f} s")


def stop(pid_files: list[Path], pids: list[int]) -> None:
    """SIGTERM each daemon this fixture started, by pid."""
    for pid in [*(int(p.read_text()) for p in pid_files if p.exists()), *pids]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    """A single-node Slurm on this machine, for the session; SLURM_CONF is set while it runs."""
    install_slurm()
    folder = tmp_path_factory.mktemp("slurm")
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    munged = start_munge(folder)
    conf = write_conf(folder, node)
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    cluster = SlurmCluster(conf, PARTITION, node, folder)
    pid_files = [folder / "slurmctld.pid", folder / "slurmd.pid"]
    try:
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, timeout=60)
        subprocess.run(["slurmd", "-f", str(conf), "-N", node], check=True, timeout=60)
        wait_for(lambda: cluster.run("srun", "-t", "1", "hostname", timeout=30).stdout.strip() == node, "srun", 90)
        yield cluster
        # A sweep returns once its jobs' results are written, while Slurm may still be ending their steps;
        # stopping the daemons then would leave those steps' srun processes behind.
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not cluster.run("squeue", "-h").stdout.strip(), "an empty queue", 60)
    finally:
        stop(pid_files, [munged] if munged else [])
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before

"""One GPU per parallel job: a sweep's jobs on one machine (joblib, submitit_local) share out its GPUs.

Without this every parallel job would see every GPU and TensorFlow would put
them all on the first one (submitit_local's ``gpus_per_node=k`` gives every job
GPUs 0..k-1). Job ``n`` of the sweep gets slot ``n mod (GPUs // per job)``:
``CUDA_VISIBLE_DEVICES`` is set before TensorFlow is imported. The GPUs shared
out are those in ``CUDA_VISIBLE_DEVICES`` when the sweep started (joblib), else
every GPU ``nvidia-smi`` lists. A joblib worker runs several jobs in one process;
TensorFlow keeps the GPU of its first job, so with ``n_jobs`` <= GPUs the
workers still use distinct GPUs.

No TensorFlow here.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from typing import Any

log = logging.getLogger(__name__)

SWEEP_GPUS = "KFACTORY_SWEEP_GPUS"  # the GPUs being shared out, kept in a joblib worker between its jobs
PARALLEL_LAUNCHERS = ("JoblibLauncher", "LocalLauncher")  # hydra-joblib-launcher, submitit_local


def machine_gpus() -> list[str]:
    """The GPU indices ``nvidia-smi`` lists, [] without one."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()] if listed.returncode == 0 else []


def gpus_for_job(job_num: int, devices: list[str], per_job: int = 1) -> list[str]:
    """The ``per_job`` devices of job ``job_num``, round robin over ``len(devices) // per_job`` slots."""
    slots = len(devices) // max(per_job, 1)
    if slots <= 1:
        return devices
    slot = job_num % slots
    return devices[slot * per_job : (slot + 1) * per_job]


def assign_job_gpus(launcher: Any, job_num: int) -> None:
    """Set CUDA_VISIBLE_DEVICES for sweep job ``job_num`` under a launcher that runs jobs side by side here."""
    target = str(launcher.get("_target_", ""))
    if not target.endswith(PARALLEL_LAUNCHERS):
        return
    submitit = target.endswith("LocalLauncher")
    per_job = int(launcher.get("gpus_per_node") or 1)
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    # submitit_local has already set the variable to 0..gpus_per_node-1 for every job: share out them all.
    # A joblib worker's later job finds its earlier job's choice there: the sweep's list is kept aside.
    listed = os.environ.get(SWEEP_GPUS) or (given if given and not submitit else ",".join(machine_gpus()))
    devices = [d.strip() for d in listed.split(",") if d.strip()]
    if len(devices) <= per_job:
        return
    chosen = ",".join(gpus_for_job(job_num, devices, per_job))
    if "tensorflow" in sys.modules:  # a joblib worker's earlier job started TensorFlow: its GPU stays
        log.info("GPU: job %d keeps this worker's CUDA_VISIBLE_DEVICES=%s", job_num, given)
        return
    os.environ[SWEEP_GPUS] = ",".join(devices)
    os.environ["CUDA_VISIBLE_DEVICES"] = chosen
    log.info("GPU: job %d gets CUDA_VISIBLE_DEVICES=%s (of %s)", job_num, chosen, ",".join(devices))

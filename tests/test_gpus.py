"""One GPU per parallel job: the device list is faked (a stand-in nvidia-smi, or CUDA_VISIBLE_DEVICES)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kfactory.run.gpus import gpus_for_job
from tests.conftest import run_cli


def test_jobs_take_the_gpus_round_robin():
    devices = ["0", "1", "2", "3"]
    assert [gpus_for_job(n, devices) for n in range(5)] == [["0"], ["1"], ["2"], ["3"], ["0"]]
    assert [gpus_for_job(n, devices, per_job=2) for n in range(3)] == [["0", "1"], ["2", "3"], ["0", "1"]]
    assert gpus_for_job(3, ["0"]) == ["0"]


def fake_nvidia_smi(folder: Path, count: int) -> Path:
    """A directory holding an ``nvidia-smi`` that lists ``count`` GPUs, as ``--query-gpu=index`` does."""
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + "".join(f"echo {i}\n" for i in range(count)))
    script.chmod(0o755)
    return folder


@pytest.mark.slow  # a sweep of two jobs through run.py per launcher
@pytest.mark.parametrize(
    ("launcher", "expected"),
    [
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ["2", "5", "2", "5"]),  # CUDA_VISIBLE_DEVICES=2,5
        (["hydra/launcher=submitit_local", "hydra.launcher.gpus_per_node=2"], ["0,1", "2,3", "0,1", "2,3"]),
    ],
)
def test_each_parallel_job_sees_its_own_gpus(tmp_path, launcher, expected):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", 4)
    env = {"PATH": f"{bin_dir}:{__import__('os').environ['PATH']}", "CUDA_VISIBLE_DEVICES": "2,5"}
    # Jobs refused before TensorFlow (a missing weights file): only the GPU choice is of interest.
    weights = ",".join(f"/nonexistent/{i}.h5" for i in range(4))
    args = ["-m", *launcher, f"hydra.sweep.dir={tmp_path / 'sweep'}", f"model.weights={weights}"]
    result = run_cli(args, timeout=300, env=env)
    chosen = {}
    for log in (tmp_path / "sweep").glob("*/kfactory.log"):
        found = re.search(r"GPU: job (\d+) gets CUDA_VISIBLE_DEVICES=([\d,]+)", log.read_text())
        assert found, log.read_text() + result.stderr[-2000:]
        chosen[int(found[1])] = found[2]
    assert [chosen[n] for n in range(4)] == expected

"""A sweep on a local Ray head (hydra/launcher=ray), started on 127.0.0.1 for the test.

hydra-ray-launcher pins cloudpickle<3 and joblib (hydra-joblib-launcher) needs
cloudpickle>=3, so the Ray launcher lives in its own environment
(docs/guides/clusters.md); run this test with that environment's Python:
``/path/to/venv-ray/bin/python -m pytest -m ray tests/test_ray.py``. It carries the ``ray`` marker,
which the other runs leave out (``pytest -m "slow and not ray"``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import TINY, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """``ray start --head --block`` on 127.0.0.1; stopped through its own process group at the end."""
    import hydra_plugins.hydra_ray_launcher  # noqa: F401  (this environment must have it: a missing one fails)

    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    port = free_port()
    temp = tmp_path_factory.mktemp("ray")
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 120
    while subprocess.run([ray, "status", f"--address={address}"], capture_output=True).returncode != 0:
        assert head.poll() is None and time.time() < deadline, "the Ray head did not start"
        time.sleep(1)
    yield address
    os.killpg(head.pid, signal.SIGTERM)  # --block: the head stops the processes it started
    head.wait(timeout=60)


def test_a_ray_sweep_runs_on_a_local_head(ray_head, tmp_path):
    args = ["-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={ray_head}", f"hydra.sweep.dir={tmp_path}"]
    args += ["+hydra.launcher.ray.init.object_store_memory=null"]  # the plugin's default is refused by an existing head
    args += [*TINY, "model.input_size=[32,32]", "model.weights=null", "trainer.threads=1", "model.dropout=0.0,0.5"]
    result = run_cli(args, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0_model.dropout=0.0", "1_model.dropout=0.5"]
    for job in jobs:
        assert json.loads((tmp_path / job / "metrics.json").read_text())["epochs_run"] == 2
    assert set(pd.read_csv(tmp_path / "summary.csv")["status"]) == {"ok"}

"""A refused single run changes nothing on disk: no new folder, no byte of an existing run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import run_cli


def snapshot(root: Path) -> dict[str, str]:
    """Every file below ``root`` with the hash of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture
def finished_run(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "mobilenet"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("model:\n  name: mobilenet_v2\n")
    (run / "history.csv").write_text("epoch,loss\n0,1.0\n")
    (run / "model.keras").write_bytes(b"weights")
    (run / "kfactory.log").write_text("[kfactory][INFO] - trained\n")
    return run


@pytest.mark.parametrize(
    "args",
    [
        ["trainer=fast", "optimizer=sgd", "model=resnet50"],  # refused: the folder holds a run
        ["trainer.epochs=0"],  # refused: a bad value
    ],
)
def test_a_refused_command_leaves_an_existing_run_byte_for_byte_identical(finished_run, tmp_path, args):
    before = snapshot(tmp_path)
    result = run_cli([*args, f"hydra.run.dir={finished_run}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "is not accepted" in result.stderr
    assert snapshot(tmp_path) == before


def test_a_refused_command_leaves_no_new_folder(tmp_path):
    result = run_cli(["data.batch_size=0"], cwd=tmp_path)  # default run dir: outputs/runs/<time> under cwd
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "[kfactory][ERROR] - data.batch_size=0 is not accepted: an integer >= 1" in result.stderr
    assert list(tmp_path.iterdir()) == []

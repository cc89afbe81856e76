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


@pytest.mark.parametrize(
    ("arg", "refusal"),
    [
        ("data.batch_size=0", "data.batch_size=0 is not accepted: an integer >= 1"),  # a check of validate's
        ("data.batch_size=true", "data.batch_size=true is not accepted: an integer"),  # the schema's type
        ("resume=yes", "resume=yes is not accepted: true, false or auto"),
    ],
)
def test_a_refused_command_leaves_no_new_folder(tmp_path, arg, refusal):
    result = run_cli([arg], cwd=tmp_path)  # default run dir: outputs/runs/<time> under cwd
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"[kfactory][ERROR] - {refusal}" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_resume_on_a_complete_run_says_so_in_one_line_and_changes_nothing(finished_run, tmp_path):
    (finished_run / "metrics.json").write_text('{"epochs_run": 2}\n')
    before = snapshot(tmp_path)
    result = run_cli(["resume=true", f"hydra.run.dir={finished_run}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.strip().endswith(f"{finished_run} is complete (2 epochs, metrics.json); nothing to resume")
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


def test_a_run_directory_another_process_trains_in_is_refused_untouched(tmp_path):
    from tests.test_run_lock import holding_process

    run = tmp_path / "busy"
    run.mkdir()
    holder = holding_process(run)
    try:
        before = snapshot(tmp_path)
        result = run_cli([f"hydra.run.dir={run}"], cwd=tmp_path)
    finally:
        holder.kill()
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"pid {holder.pid}" in result.stderr
    assert snapshot(tmp_path) == before

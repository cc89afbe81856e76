"""The ``kfactory`` console script (kfactory.cli:main): run from any directory, the same config as run.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kfactory import cli
from kfactory.config import plugins
from tests.conftest import ROOT, run_cli

# What the installed script runs; PYTHONPATH makes it this checkout's code, whatever pip installed.
SCRIPT = "from kfactory.cli import main; main()"


def run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``kfactory ARGS`` from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


def test_the_console_script_is_kfactory_cli_main():
    section = (ROOT / "pyproject.toml").read_text().split("[project.scripts]\n")[1].split("\n[")[0]
    scripts = dict(line.replace('"', "").split(" = ") for line in section.strip().splitlines())  # no tomllib on 3.10
    module, _, function = scripts["kfactory"].partition(":")
    assert (module, function) == ("kfactory.cli", "main")
    assert callable(getattr(cli, function))


def test_help_lists_the_config_groups_from_outside_the_repo(tmp_path):
    result = run_script(["--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    listing = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    groups = dict(line.split(": ", 1) for line in listing.splitlines() if ": " in line)
    assert "vgg16" in groups["model"].split(", ") and "folder" in groups["data"].split(", ")
    assert not any(tmp_path.iterdir())  # --help writes no run directory


def test_cfg_job_prints_the_same_config_as_run_py(tmp_path):
    args = ["--cfg", "job", "model=vgg16", "optimizer=sgd", "trainer.epochs=3"]
    script = run_script(args, cwd=tmp_path)
    assert script.returncode == 0, script.stderr[-2000:]
    cfg = yaml.safe_load(script.stdout)
    assert (cfg["model"]["name"], cfg["optimizer"]["name"], cfg["trainer"]["epochs"]) == ("vgg16", "sgd", 3)
    assert script.stdout == run_cli(args, cwd=tmp_path, timeout=120).stdout
    assert not any(tmp_path.iterdir())


def test_a_refused_value_exits_2_in_one_line_from_outside_the_repo(tmp_path):
    result = run_script(["trainer.epochs=0"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert "trainer.epochs=0 is not accepted" in output and "Traceback" not in output


def test_a_missing_plugin_is_named_before_hydra_starts(monkeypatch, capsys):
    monkeypatch.setattr(plugins, "_installed", lambda module: False)
    monkeypatch.setattr(sys, "argv", ["kfactory", "-m", "hydra/launcher=joblib", "model.dropout=0.0,0.1"])
    monkeypatch.setattr(cli, "run", lambda: pytest.fail("Hydra ran despite the missing plugin"))
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 2
    assert "pip install -e '.[sweep]'" in capsys.readouterr().err


def test_main_hands_the_command_line_to_hydra(monkeypatch):
    ran = []
    monkeypatch.setattr(sys, "argv", ["kfactory", "model=vgg16"])
    monkeypatch.setattr(cli, "run", lambda: ran.append(True))
    cli.main()
    assert ran == [True]

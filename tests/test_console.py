"""The console shows kfactory's lines and Keras's progress, not TensorFlow's start-up chatter."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY, run_cli

KFACTORY_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\[kfactory[.\w]*\]\[\w+\] - ")
PROGRESS_LINE = re.compile(r"^(Epoch \d+/\d+|\d+/\d+ .*step.*)$")  # Keras's progress, verbose=1 or 2


def import_tensorflow_in_a_subprocess(env: dict[str, str]) -> str:
    code = "from kfactory.console import import_tensorflow; import_tensorflow()"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env}, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


@pytest.mark.slow  # two processes that import TensorFlow
def test_tensorflow_start_up_lines_are_kept_off_the_console_unless_asked_for():
    assert import_tensorflow_in_a_subprocess({"KFACTORY_TF_LOG": "0"}) == ""
    # The same lines come through with the switch: the quiet run hid something real.
    assert import_tensorflow_in_a_subprocess({"KFACTORY_TF_LOG": "1"}).strip() != ""


@pytest.mark.slow
def test_a_smoke_run_prints_only_kfactory_lines_and_keras_progress(tmp_path):
    overrides = [o for o in TINY if not o.startswith("trainer.verbose")] + ["trainer.epochs=1"]
    result = run_cli([*overrides, f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    foreign = [line for line in lines if line.strip() and not (KFACTORY_LINE.match(line) or PROGRESS_LINE.match(line))]
    assert foreign == []
    assert any(PROGRESS_LINE.match(line) for line in lines)

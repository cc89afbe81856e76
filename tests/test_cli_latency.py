"""The CLI answers --help, --cfg, --info and config errors without importing TensorFlow or Keras."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

HEAVY = re.compile(r"\|\s+(tensorflow|keras|tf_keras)(\.|\s*$)", re.MULTILINE)


def imported_heavy(stderr: str) -> list[str]:
    """Top-level heavy packages named in ``-X importtime`` output."""
    return sorted({match.group(1) for match in HEAVY.finditer(stderr)})


@pytest.mark.parametrize(
    ("args", "expected_rc"),
    [
        (["--help"], 0),
        (["--cfg", "job"], 0),
        (["--info"], 0),
        (["model=nonexistent"], 1),  # Hydra refuses the unknown option
        (["model.dropout=2"], 2),  # kfactory.config.validate refuses the value
    ],
    ids=["help", "cfg-job", "info", "unknown-model", "bad-dropout"],
)
def test_cli_answers_without_tensorflow(args: list[str], expected_rc: int, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "run.py"), f"hydra.run.dir={tmp_path}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == expected_rc, result.stderr[-2000:]
    assert "import time:" in result.stderr  # the probe itself works
    assert imported_heavy(result.stderr) == []


def test_probe_sees_a_heavy_import() -> None:
    """The pattern matches importtime lines for tensorflow and keras, and not lookalikes."""
    sample = (
        "import time:       120 |        120 |   keras\n"
        "import time:        90 |         90 |     tensorflow.python\n"
        "import time:        10 |         10 | kfactory.keras_names\n"
    )
    assert imported_heavy(sample) == ["keras", "tensorflow"]

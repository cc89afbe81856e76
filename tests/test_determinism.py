"""seed + trainer.deterministic=true: two runs give identical metrics on CPU."""

from __future__ import annotations

import json

import pytest

from kfactory.train.clock import TIMING_KEYS
from tests.conftest import TINY, run_cli


@pytest.mark.slow
def test_two_runs_with_the_same_seed_give_identical_metrics(tmp_path):
    metrics = []
    for name in ("first", "second"):
        args = ["model=vgg16", *TINY, "seed=7", "trainer.deterministic=true", f"hydra.run.dir={tmp_path / name}"]
        result = run_cli(args)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        values = json.loads((tmp_path / name / "metrics.json").read_text())
        for timing in TIMING_KEYS:  # seconds, not results
            values.pop(timing)
        metrics.append(values)
    assert metrics[0] == metrics[1]
    assert (tmp_path / "first" / "history.csv").read_text() == (tmp_path / "second" / "history.csv").read_text()

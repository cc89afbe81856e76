"""``trainer=fast`` / ``debug=fast`` cap a run whatever the experiment sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import compose_config, run_cli

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parent.parent / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("switch", ["trainer=fast", "debug=fast"])
def test_a_smoke_switch_caps_any_experiment(experiment, switch):
    full = compose_config([f"experiment={experiment}"])
    smoke = compose_config([f"experiment={experiment}", switch])
    assert (smoke.trainer.epochs, smoke.trainer.steps_per_epoch, smoke.trainer.validation_steps) == (2, 5, 2)
    assert smoke.finetune.head_epochs == 0
    assert full.trainer.epochs > 2  # the experiment alone trains longer: the cap did something
    assert smoke.model == full.model and smoke.optimizer == full.optimizer  # the recipe itself stays


def test_without_a_smoke_switch_nothing_is_capped():
    cfg = compose_config(["experiment=from_scratch_small"])
    assert (cfg.trainer.epochs, cfg.trainer.steps_per_epoch) == (30, None)


@pytest.mark.slow
def test_an_experiment_smoke_run_trains_two_epochs(tmp_path):
    result = run_cli(["experiment=from_scratch_small", "trainer=fast", f"hydra.run.dir={tmp_path}"], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len((tmp_path / "history.csv").read_text().strip().splitlines()) == 1 + 2

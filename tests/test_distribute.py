"""trainer.strategy: validation without TensorFlow, and MirroredStrategy on two logical CPUs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from kfactory.config.validate import validate
from kfactory.errors import ConfigError
from tests.conftest import run_cli


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [
        (["trainer.strategy=multi_worker"], "trainer.strategy", "hydra/launcher=submitit_slurm"),
        (["trainer.strategy=horovod"], "trainer.strategy", "default, mirrored, tpu"),
        (["trainer.devices=[/gpu:0]"], "trainer.devices", "trainer.strategy=mirrored"),
        (["trainer.strategy=mirrored", "trainer.devices=[]"], "trainer.devices", "a list like"),
        (["trainer.strategy=mirrored", "trainer.cpu_devices=0"], "trainer.cpu_devices", "integer >= 1"),
    ],
)
def test_bad_strategy_is_refused_before_tensorflow(cfg_factory, overrides, key, hint):
    with pytest.raises(ConfigError) as caught:
        validate(cfg_factory(overrides))
    assert caught.value.key == key
    assert hint in str(caught.value)


def test_multi_worker_refusal_explains_why(cfg_factory):
    with pytest.raises(ConfigError) as caught:
        validate(cfg_factory(["trainer.strategy=multi_worker"]))
    message = str(caught.value)  # what the user reads: why, and what to use instead
    assert "MultiWorkerMirroredStrategy" in message and "pip install -e '.[slurm]'" in message


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_trains_and_saves_a_model_for_one_device(tmp_path: Path):
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            "model=vgg16",
            "trainer=fast",
            "trainer.verbose=0",
            "trainer.epochs=1",
            "trainer.steps_per_epoch=2",
            "trainer.validation_steps=1",
            "data.batch_size=8",  # the global batch: 4 per replica
            "trainer.strategy=mirrored",
            "trainer.cpu_devices=2",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run_dir / "kfactory.log").read_text()
    assert re.search(r"MirroredStrategy: 2 replicas on \[.*CPU:0.*CPU:1", log), log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.isfinite(metrics["val_loss"])

    import tensorflow as tf

    from kfactory.model.checkpoint import load_model

    assert len(tf.config.list_logical_devices("CPU")) == 1  # this process was never split
    model = load_model(run_dir / "model.keras")
    probabilities = model.predict(np.zeros((3, 32, 32, 3), "float32"), verbose=0)
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)

"""XLA choice (a pure rule, no TensorFlow) and the TensorFlow runtime settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kfactory.train.compute import XLA_MEASURE_MIN_STEPS, XLA_MIN_STEPS, XlaChoice, choose_jit_compile, xla_rule

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("model", "side", "steps", "gpu", "expected"),
    [
        ("resnet50", 32, 1000, False, "measure"),  # 2.4x on one 2-core CPU, 0.5x on another
        ("densenet121", 64, XLA_MEASURE_MIN_STEPS, False, "measure"),
        ("resnet50", 32, XLA_MEASURE_MIN_STEPS - 1, False, "off"),  # too short to repay timing
        ("resnet50", 224, 1000, False, "off"),  # measured 0.62x
        ("mobilenet_v2", 96, 1000, False, "off"),  # measured 8x slower
        ("efficientnet_b0", 64, 1000, False, "off"),  # measured 8x slower
        ("mobilenet_v2", 224, 1000, True, "on"),  # GPU: XLA fuses kernels
        ("resnet50", 224, XLA_MIN_STEPS - 1, True, "off"),  # compile time not repaid
        ("resnet50", 224, XLA_MIN_STEPS, True, "on"),
    ],
)
def test_auto_rule_follows_the_measurements(model: str, side: int, steps: int, gpu: bool, expected: str) -> None:
    choice = xla_rule(model, side, steps, gpu)
    assert ("measure" if choice.measure else "on" if choice.jit else "off") == expected
    assert not (choice.measure and choice.jit)  # a timed run starts without XLA
    assert choice.why.startswith("auto: ")


def test_a_deterministic_or_distributed_run_is_not_timed() -> None:
    assert xla_rule("resnet50", 32, 1000, False, deterministic=True) == XlaChoice(
        False, "auto: deterministic ops (trainer.deterministic), and a timed choice would not be reproducible"
    )
    assert not xla_rule("resnet50", 32, 1000, False, distributed=True).measure


@pytest.mark.parametrize(("setting", "gpu", "on"), [(True, True, True), (False, False, False), ("auto", False, True),
                                                    ("auto", True, False)])  # fmt: skip
def test_deterministic_auto_turns_the_ops_on_only_without_a_gpu(monkeypatch, setting, gpu, on) -> None:
    from kfactory.train import compute

    monkeypatch.setattr(compute, "has_gpu", lambda: gpu)
    assert compute.deterministic_ops(setting) is on


def test_reasons_name_what_decided() -> None:
    assert "mobilenet_v2" in xla_rule("mobilenet_v2", 32, 1000, False).why
    assert "224 px" in xla_rule("resnet50", 224, 1000, False).why
    assert "12 steps" in xla_rule("resnet50", 32, 12, True).why
    assert f"< {XLA_MEASURE_MIN_STEPS}" in xla_rule("resnet50", 32, 12, False).why


@pytest.mark.parametrize("setting", [True, False])
def test_explicit_setting_wins_without_asking_tensorflow(setting: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # importing it would fail
    assert choose_jit_compile(setting, "mobilenet_v2", 224, 5) == XlaChoice(
        setting, f"trainer.jit_compile={str(setting).lower()}"
    )
    assert choose_jit_compile("auto", "resnet50", 32, 100, gpu=False).jit is False
    assert choose_jit_compile("auto", "resnet50", 32, 100, gpu=True).jit is True


def test_configure_tensorflow_sets_precision() -> None:
    import keras

    from kfactory.schema import TrainerConfig
    from kfactory.train.compute import configure_tensorflow

    trainer = OmegaConf.structured(TrainerConfig(precision="mixed_bfloat16"))
    try:
        configure_tensorflow(trainer, seed=0)
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


THREADS_SCRIPT = """
import tensorflow as tf
from omegaconf import OmegaConf
from kfactory.schema import TrainerConfig
from kfactory.train.compute import configure_tensorflow
trainer = OmegaConf.structured(TrainerConfig(threads=1))
configure_tensorflow(trainer, seed=0)
tf.constant(1.0) + 1.0  # the runtime starts: threads are fixed from here on
configure_tensorflow(OmegaConf.merge(trainer, {"threads": 2}), seed=0)  # a later sweep job: warns, no error
print(tf.config.threading.get_intra_op_parallelism_threads(), tf.config.threading.get_inter_op_parallelism_threads())
"""


@pytest.mark.slow  # a process that imports TensorFlow
def test_threads_are_set_once_and_a_later_job_does_not_fail() -> None:
    """Fresh process: TensorFlow refuses thread changes once its runtime has started."""
    result = subprocess.run(
        [sys.executable, "-c", THREADS_SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1", "1"]
    assert "trainer.threads=2 ignored" in result.stderr


def traced_graphs() -> int:
    import gc

    return sum(1 for obj in gc.get_objects() if type(obj).__name__ == "FuncGraph")


def test_release_finished_job_frees_the_traced_train_step() -> None:
    """After a fit, the job's graphs (which hold its weights) must not outlive the job."""
    import keras
    import numpy as np

    from kfactory.train.compute import release_finished_job

    release_finished_job()
    before = traced_graphs()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(np.zeros((8, 4), "float32"), np.eye(3)[np.zeros(8, int)], batch_size=4, verbose=0)
    del model
    assert traced_graphs() > before  # the probe sees what a fit leaves behind
    release_finished_job()
    assert traced_graphs() <= before


@pytest.mark.parametrize("built_before", [False, True])
def test_each_step_is_traced_once_when_its_variables_exist_before_fit(built_before: bool, tmp_path: Path) -> None:
    """Adam's slots, the metrics' totals and the validation tap exist before fit: no step is traced twice."""
    import keras
    import numpy as np
    import tensorflow as tf

    from kfactory.train.compute import build_before_fit
    from kfactory.train.tensorboard import ValidationSummaries
    from tests.conftest import TINY, compose_config

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (24, 8, 8, 3)).astype(np.float32)
    labels = np.eye(3, dtype=np.float32)[np.arange(24) % 3]
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(3, "softmax")])
    traces = {"train": 0, "test": 0}

    def counted(kind: str, step):  # Python runs a step's body only while TensorFlow traces it
        def step_fn(batch):
            traces[kind] += 1
            return step(batch)

        return step_fn

    object.__setattr__(model, "train_step", counted("train", model.train_step))
    object.__setattr__(model, "test_step", counted("test", model.test_step))
    cfg = compose_config([*TINY, "trainer.tensorboard.max_samples=8"], run_dir=tmp_path)
    extras = ValidationSummaries(tmp_path / "tensorboard", data, ["a", "b", "c"], cfg)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    if built_before:
        build_before_fit(model, data.element_spec)
    # shuffle=False: the dataset sets its own order (Keras warns that shuffle=True is ignored)
    history = model.fit(data, validation_data=data, epochs=2, shuffle=False, verbose=0, callbacks=[extras])
    assert extras.tap is not None and extras.tap.read()[1].shape == (8, 3)  # the tap still records
    assert np.isfinite(history.history["val_accuracy"]).all()
    expected = {"train": 1, "test": 1} if built_before else {"train": 2, "test": 1}  # Keras alone traces twice
    assert traces == expected

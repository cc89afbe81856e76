"""XlaProbe times training steps without and with XLA and keeps the faster (a fake clock decides)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from kfactory.train.xla_probe import XlaProbe

STEPS = 10  # 1 + 2 plain steps, 1 + 2 with XLA, then 4 with the choice


class StepClock:
    """A clock for which one training step takes ``seconds[model.jit_compile]``."""

    def __init__(self, plain: float, xla: float) -> None:
        self.seconds = {False: plain, True: xla}
        self.now = 0.0
        self.probe: XlaProbe | None = None

    def __call__(self) -> float:
        self.now += self.seconds[bool(self.probe.model.jit_compile)] / 2  # called at a step's start and end
        return self.now


def probed_fit(
    plain: float, xla: float, epoch_steps: int | None = None, extra: list | None = None, **probe_args
) -> tuple[keras.Model, XlaProbe, keras.callbacks.History]:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.Flatten()])
    model.add(keras.layers.Dense(2, activation="softmax"))
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=False)
    clock = StepClock(plain, xla)
    probe = XlaProbe(steps=2, clock=clock, **probe_args)
    clock.probe = probe
    x = np.random.default_rng(0).random((4 * STEPS, 8, 8, 3)).astype("float32")
    y = np.arange(4 * STEPS) % 2
    if epoch_steps is None:
        history = model.fit(x, y, batch_size=4, epochs=1, callbacks=[probe], verbose=0)
    else:  # the same steps in short epochs, each followed by a validation
        data = tf_batches(x, y).repeat()
        history = model.fit(
            data, epochs=STEPS // epoch_steps + 1, steps_per_epoch=epoch_steps, validation_data=tf_batches(x, y),
            callbacks=[probe, *(extra or [])], shuffle=False, verbose=0,  # a dataset keeps its own order
        )  # fmt: skip
    return model, probe, history


def tf_batches(x: np.ndarray, y: np.ndarray):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4)


def test_xla_stays_on_when_its_steps_are_faster() -> None:
    model, probe, history = probed_fit(plain=1.0, xla=0.5)
    assert probe.decided is True and model.jit_compile is True
    assert model.train_function is not probe.plain_function  # the remaining steps ran the XLA function
    assert probe.times == {False: [0.5, 0.5], True: [0.25, 0.25]}  # the tracing steps are not counted
    assert len(history.history["loss"]) == 1 and np.isfinite(history.history["loss"][0])


def test_the_plain_function_comes_back_when_xla_is_not_faster_enough() -> None:
    model, probe, _ = probed_fit(plain=1.0, xla=0.95)  # faster, but by less than MIN_GAIN
    assert probe.decided is False and model.jit_compile is False
    assert model.train_function is probe.plain_function  # restored, not traced again


def test_a_validation_during_the_xla_steps_does_not_keep_xla_once_it_lost() -> None:
    seen = []  # the test function each validation ran: epoch 1's was built while XLA was on (step 4)
    spy = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(spy.model.test_function))
    model, probe, history = probed_fit(plain=1.0, xla=2.0, epoch_steps=4, extra=[spy])
    assert probe.decided is False and model.jit_compile is False
    assert seen[0] is not seen[-1]  # rebuilt, without XLA, after the probe went back
    assert len(history.history["val_loss"]) == 3


@pytest.mark.slow  # two fine-tuning phases
def test_a_decided_probe_leaves_a_later_phase_alone() -> None:
    model, probe, _ = probed_fit(plain=1.0, xla=0.5)
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=probe.decided)  # as compile_phase does
    x = np.zeros((8, 8, 8, 3), "float32")
    model.fit(x, np.arange(8) % 2, batch_size=4, epochs=1, callbacks=[probe], verbose=0)
    assert probe.decided is True and model.jit_compile is True
    assert probe.times[True] == [0.25, 0.25]  # nothing more was timed


@pytest.mark.parametrize(("plain", "xla"), [(1.0, 0.5), (0.5, 1.0)])
def test_a_sweeps_later_jobs_take_the_first_timing_instead_of_timing_again(tmp_path, plain, xla) -> None:
    from kfactory.train.xla_probe import timed_before

    record = tmp_path / "xla_timed.json"
    record.write_text('{"resnet50 64px batch 32 on some cpu x2": {"xla": true, "speedup": 1.4}}')
    _, probe, _ = probed_fit(plain=plain, xla=xla, record=record, key="small_cnn 32px batch 64 on some cpu x2")
    answer = timed_before(record, "small_cnn 32px batch 64 on some cpu x2")
    assert answer is not None and answer.jit is probe.decided is (xla < plain) and not answer.measure
    assert f"timed by an earlier job of this sweep, {plain / xla:.2f}x with XLA" in answer.why
    assert timed_before(record, "resnet50 64px batch 32 on some cpu x2").jit is True  # the other key is kept
    assert timed_before(record, "small_cnn 32px batch 64 on another cpu x2") is None  # another kind of machine


def test_a_timing_that_cannot_be_recorded_leaves_the_job_running(tmp_path, caplog) -> None:
    import logging

    from kfactory.train.xla_probe import record_timing

    with caplog.at_level(logging.INFO):
        record_timing(tmp_path / "gone" / "xla_timed.json", "k", True, 1.5)  # its directory is not there
    assert "XLA timing not recorded for the sweep's later jobs" in caplog.text


def test_a_timing_record_without_a_number_still_gives_its_answer(tmp_path) -> None:
    from kfactory.train.xla_probe import timed_before

    record = tmp_path / "xla_timed.json"
    record.write_text('{"k": {"xla": false, "speedup": "fast"}}')
    answer = timed_before(record, "k")
    assert answer.jit is False and "the faster way kept (k)" in answer.why


@pytest.mark.parametrize("text", [None, "{not json", "[1, 2]", '{"k": {"xla": "yes"}}'])
def test_a_missing_or_unreadable_timing_record_means_timing_again(tmp_path, text) -> None:
    from kfactory.train.xla_probe import timed_before

    record = tmp_path / "xla_timed.json"
    if text is not None:
        record.write_text(text)
    assert timed_before(record, "k") is None


def test_a_sweep_job_plans_xla_from_an_earlier_jobs_timing(tmp_path, monkeypatch, caplog) -> None:
    import logging

    from kfactory.train import compute, loop
    from kfactory.train.xla_probe import TIMED_FILE, record_timing
    from tests.conftest import TINY, compose_config

    monkeypatch.setattr(compute, "XLA_MEASURE_MIN_STEPS", 10)
    monkeypatch.setattr(compute, "has_gpu", lambda: False)  # the CPU rule, on any machine
    cfg = compose_config(["model=vgg16", "model.weights=null", "model.input_size=[32,32]", *TINY], run_dir=tmp_path)
    monkeypatch.setattr(loop, "sweep_root", lambda: tmp_path)
    xla, probe = loop.plan_xla(cfg, total_steps=100, distributed=False)
    assert xla.measure and probe is not None and probe.record == tmp_path / TIMED_FILE  # the first job times
    record_timing(tmp_path / TIMED_FILE, probe.key, False, 0.59)  # its answer, under the key it timed for
    with caplog.at_level(logging.INFO):
        xla, probe = loop.plan_xla(cfg, total_steps=100, distributed=False)
    assert probe is None and xla.jit is False
    assert "XLA off (auto: timed by an earlier job of this sweep, 0.59x with XLA (vgg16 32px batch" in caplog.text
    monkeypatch.setattr(loop, "sweep_root", lambda: None)  # a single run times for itself and keeps no record
    _, probe = loop.plan_xla(cfg, total_steps=100, distributed=False)
    assert probe is not None and probe.record is None


@pytest.mark.slow
def test_a_long_cpu_run_times_xla_then_trains_on_with_the_faster_way(tmp_path, monkeypatch, caplog):
    import json
    import logging
    import re

    from kfactory.train import compute
    from kfactory.train.loop import train
    from tests.conftest import TINY, compose_config

    monkeypatch.setattr(compute, "XLA_MEASURE_MIN_STEPS", 10)  # 5 epochs of 2 steps count as a long run
    overrides = ["model=vgg16", "model.weights=null", "model.input_size=[32,32]", *TINY, "trainer.epochs=6"]
    cfg = compose_config(overrides, run_dir=tmp_path)
    with caplog.at_level(logging.INFO):
        train(cfg, tmp_path)
    assert "XLA timed both ways (auto: on CPU XLA gains or loses by machine" in caplog.text
    decided = re.search(r"XLA (on|off) \(auto, timed 4 steps each way: [\d.]+ s a step with XLA", caplog.text)
    assert decided, caplog.text[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    numbers = [value for key, value in metrics.items() if key != "weights"]  # weights: what training started from
    assert metrics["epochs_run"] == 6 and all(map(math.isfinite, numbers)) and metrics["weights"] is None

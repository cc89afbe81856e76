"""Choose XLA by timing: the first training steps run without it, the next with it, and the faster stays.

Used by ``trainer.jit_compile=auto`` on CPU for long runs (``kfactory.train.compute.xla_rule``),
where XLA made the same model and input size faster on one machine and slower on
another. The timed steps are ordinary training steps, so nothing is trained twice;
what the probe costs is one XLA compile, and a few slow steps when XLA loses. In a
sweep the first job to time a model, input size and batch on a kind of machine writes
its answer to the sweep's ``xla_timed.json``; later jobs read it instead of timing.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import keras

from kfactory.model.checkpoint import write_json_atomic
from kfactory.train.compute import XlaChoice

log = logging.getLogger(__name__)

PROBE_STEPS = 4  # timed steps each way, after the step that traces (and compiles)
MIN_GAIN = 1.1  # XLA stays only if its median step is at least this much faster
TIMED_FILE = "xla_timed.json"  # in a sweep's directory: each timing's answer, for the sweep's later jobs


def timing_key(model_name: str, side: int, batch_size: int, variant: str = "") -> str:
    """What a timing answers for: the model, input size and batch (and ``variant``: what else changes a step's
    cost, such as the frozen layers and the precision), on this kind of machine (CPU and TensorFlow's threads)."""
    import tensorflow as tf

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = tf.config.threading.get_intra_op_parallelism_threads() or cores  # 0: TensorFlow's default, all
    return f"{model_name} {side}px batch {batch_size}{variant} on {cpu_name()}, {threads} threads"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform says."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def timed_before(record: Path, key: str) -> XlaChoice | None:
    """The answer an earlier job of the sweep recorded for ``key``; None if none did (or the file is unreadable)."""
    try:
        answer = json.loads(record.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(answer, dict) or not isinstance(answer.get("xla"), bool):
        return None
    speedup = answer.get("speedup")
    measured = f"{speedup:.2f}x with XLA" if isinstance(speedup, (int, float)) else "the faster way kept"
    why = f"auto: timed by an earlier job of this sweep, {measured} ({key})"
    return XlaChoice(answer["xla"], why)


def record_timing(record: Path, key: str, xla: bool, speedup: float) -> None:
    """Add this job's answer for ``key`` to the sweep's ``record``, if it can: a parallel job writing at the
    same moment, or a directory that refuses the file, only means that a later job times again."""
    try:
        answers = json.loads(record.read_text()) if record.exists() else {}
        answers = answers if isinstance(answers, dict) else {}
        answers[key] = {"xla": xla, "speedup": round(speedup, 3)}
        write_json_atomic(record, answers)
    except (OSError, ValueError) as error:
        log.info("XLA timing not recorded for the sweep's later jobs (%s): they time again", error)


class XlaProbe(keras.callbacks.Callback):
    """Times ``steps`` training steps each way, then keeps XLA only if it is ``MIN_GAIN`` times faster.

    ``decided`` is None until then, and afterwards whether XLA stays on; a later
    fine-tuning phase compiles with it. A phase that ends before the probe
    does starts it again, since compiling resets the train function.
    """

    def __init__(
        self,
        steps: int = PROBE_STEPS,
        clock: Callable[[], float] = time.perf_counter,
        record: Path | None = None,
        key: str = "",
    ) -> None:
        super().__init__()
        self.steps, self.clock = steps, clock
        self.record, self.key = record, key  # where the answer is kept for a sweep's later jobs, and under what
        self.decided: bool | None = None
        self._reset()

    def _reset(self) -> None:
        self.times: dict[bool, list[float]] = {False: [], True: []}
        self.first: dict[bool, float] = {}
        self.plain_function = self.plain_test_function = None

    def on_train_begin(self, logs=None) -> None:
        if self.decided is None:
            self._reset()

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        self.started = self.clock()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if self.decided is not None:
            return
        elapsed, jit = self.clock() - self.started, bool(self.model.jit_compile)
        if jit not in self.first:
            self.first[jit] = elapsed  # tracing, and with XLA compiling
            return
        self.times[jit].append(elapsed)
        if len(self.times[jit]) < self.steps:
            return
        if not jit:
            self._switch_to_xla()
        else:
            self._decide()

    def _switch_to_xla(self) -> None:
        self.plain_function = self.model.train_function  # kept, so going back costs no new trace
        self.plain_test_function = self.model.test_function  # None until the first validation
        self.model.jit_compile = True
        if not self.model.jit_compile:  # Keras found a layer XLA cannot compile, and warned
            self.decided = False
            log.info("XLA off (auto: this model cannot be compiled with XLA)")
            return
        self.model.make_train_function(force=True)

    def _decide(self) -> None:
        plain, xla = statistics.median(self.times[False]), statistics.median(self.times[True])
        self.decided = xla * MIN_GAIN <= plain
        if not self.decided:  # and a validation run while XLA was on must not keep its XLA function
            self.model.jit_compile = False
            self.model.train_function = self.plain_function
            self.model.test_function = self.plain_test_function
        log.info(
            "XLA %s (auto, timed %d steps each way: %.3f s a step with XLA, %.3f s without, %.2fx; compiling: %.1f s)",
            "on" if self.decided else "off",
            self.steps,
            xla,
            plain,
            plain / xla,
            self.first[True],
        )
        if self.record is not None:
            record_timing(self.record, self.key, self.decided, plain / xla)

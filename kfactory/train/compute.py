"""TensorFlow runtime settings: seeds, threads, determinism, precision, the rule that sets XLA, and tracing once."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from kfactory.framework import drop_custom_gradients, symbolic_build
from kfactory.train.distribute import split_cpu

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

# XLA on CPU (TensorFlow 2.21 / Keras 3.15; training images/s with
# jit_compile=True over False). Measured on one 2-core CPU: ResNet50 2.4x at 32 px
# and 0.62x at 224 px, DenseNet121 1.9x at 64 px, and MobileNetV2 (96 px) and
# EfficientNetB0 (64 px) 8x slower. On the 2-core AVX-512 machine of
# benchmarks/RESULTS.md, ResNet50 at 32 px was 0.43-0.52x and ResNet50 and
# DenseNet121 at 96 px 0.62x and 0.70x. The same model and size gain or lose by
# machine, so on CPU `auto` times both ways during a long run's first steps
# (kfactory.train.xla_probe.XlaProbe), except where every measurement agrees that XLA loses.
XLA_CPU_SLOW_FAMILIES = ("mobilenet", "efficientnet", "nasnet", "xception", "convnext")  # depthwise convs
XLA_CPU_MAX_SIDE = 128  # at 224 px XLA made ResNet50 0.62x as fast
XLA_MIN_STEPS = 40  # GPU: compiling cost about 16 ordinary steps; repay it well
XLA_MEASURE_MIN_STEPS = 500  # CPU: measuring costs one XLA compile, tens of seconds for ResNet50


@dataclass(frozen=True)
class XlaChoice:
    """Whether to compile with XLA, why, and whether to time both ways at the start of training instead."""

    jit: bool
    why: str
    measure: bool = False


def configure_tensorflow(trainer: DictConfig, seed: int) -> None:
    """Seeds, thread counts, determinism and mixed precision, before any model exists."""
    import keras
    import tensorflow as tf

    split_cpu(trainer.cpu_devices)  # device and thread settings must precede TensorFlow's start
    threads = trainer.threads or launcher_thread_budget()
    if threads:
        set_threads(int(threads))
    keras.utils.set_random_seed(seed)
    if deterministic_ops(trainer.deterministic):
        tf.config.experimental.enable_op_determinism()
    if trainer.precision != "float32" and not has_gpu():
        log.warning("trainer.precision=%s on a CPU is usually slower than float32", trainer.precision)
    # The output Dense layer is built with dtype float32, so logits stay float32.
    keras.mixed_precision.set_global_policy(trainer.precision)


def set_threads(threads: int) -> None:
    """Intra/inter-op threads; TensorFlow fixes them once its runtime has started."""
    import tensorflow as tf

    threading = tf.config.threading
    inter = min(2, threads)
    current = (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads())
    if current == (threads, inter):
        return
    try:
        threading.set_intra_op_parallelism_threads(threads)
        threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # a later job of a sweep in the same process
        log.warning("trainer.threads=%d ignored: this process already runs TensorFlow with %s", threads, current)


def launcher_thread_budget() -> int | None:
    """Under hydra/launcher=joblib, the cores shared out between its parallel jobs.

    TensorFlow's own thread pools ignore OMP_NUM_THREADS, which is all joblib
    limits, so without this n_jobs parallel jobs would each use every core.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().get("launcher") or {}
    n_jobs = launcher.get("n_jobs") if "joblib" in str(launcher.get("_target_", "")) else None
    if not n_jobs:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib: -1 = all cores, -2 = all but one
    budget = max(1, cores // workers)
    log.info("TensorFlow threads: %d (%d cores shared by %d parallel jobs)", budget, cores, workers)
    return budget


def build_before_fit(model: keras.Model, element_spec: Any) -> None:
    """Create the optimizer's and the compiled metrics' variables before ``fit`` traces its first step.

    Without a distribution strategy Keras creates them while tracing the first
    training step, and a variable created during a trace makes TensorFlow trace
    the step again: for ResNet50 at 32 px on two cores the first step takes 20.0 s
    instead of 11.2 s (benchmarks/first_step.py). This is Keras's own symbolic build (what ``fit`` runs under a
    strategy), from the shapes of ``element_spec``; where it fails (a model of your
    own that cannot run symbolically), Keras builds as it would have.
    """
    try:
        symbolic_build(model, element_spec)
    except Exception as error:  # the step traces twice, as in plain Keras
        log.debug("Variables left to the first trace (%s: %s)", type(error).__name__, error)


def deterministic_ops(setting: bool | str) -> bool:
    """Whether ``trainer.deterministic`` turns TensorFlow's deterministic ops on: true, or auto without a GPU."""
    return setting is True or (setting == "auto" and not has_gpu())


def has_gpu() -> bool:
    """Whether TensorFlow sees a GPU."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def choose_jit_compile(
    setting: bool | str,
    model_name: str,
    side: int,
    total_steps: int,
    gpu: bool | None = None,
    deterministic: bool = False,
    distributed: bool = False,
) -> XlaChoice:
    """How to set XLA for this run (``setting`` may be ``auto``).

    ``gpu`` defaults to asking TensorFlow, which is needed only for ``auto``.
    """
    if setting != "auto":
        return XlaChoice(bool(setting), f"trainer.jit_compile={str(setting).lower()}")
    return xla_rule(model_name, side, total_steps, has_gpu() if gpu is None else gpu, deterministic, distributed)


def xla_rule(
    model_name: str, side: int, total_steps: int, gpu: bool, deterministic: bool = False, distributed: bool = False
) -> XlaChoice:
    """The ``auto`` rule, from the measurements above."""
    if gpu:
        if total_steps < XLA_MIN_STEPS:
            return XlaChoice(
                False, f"auto: {total_steps} steps are too few to repay XLA's compile time (< {XLA_MIN_STEPS})"
            )
        return XlaChoice(True, f"auto: a GPU is present and XLA fuses its kernels ({total_steps} steps)")
    if model_name.startswith(XLA_CPU_SLOW_FAMILIES):
        return XlaChoice(False, f"auto: XLA's CPU depthwise convolutions are several times slower for {model_name}")
    if side > XLA_CPU_MAX_SIDE:
        return XlaChoice(False, f"auto: on CPU XLA trained slower at {side} px (ResNet50 at 224 px 0.62x)")
    if deterministic:
        return XlaChoice(
            False, "auto: deterministic ops (trainer.deterministic), and a timed choice would not be reproducible"
        )
    if distributed:
        return XlaChoice(False, "auto: off on CPU under a distribution strategy")
    if total_steps < XLA_MEASURE_MIN_STEPS:
        why = f"{total_steps} steps are too few to repay timing XLA on CPU (< {XLA_MEASURE_MIN_STEPS})"
        return XlaChoice(False, f"auto: {why}, so off for {model_name} at {side} px")
    return XlaChoice(False, f"auto: on CPU XLA gains or loses by machine; timing both ways for {model_name}", True)


def release_finished_job() -> None:
    """Free what a finished job left in this process, so the next sweep job starts flat.

    Hydra's basic launcher runs sweep jobs one after another in one process.
    ``clear_session`` drops Keras' global state, but in graph mode TensorFlow
    registers every ``tf.custom_gradient`` it traces globally (as
    ``CustomGradient-<n>``) and never removes it; those closures keep each
    traced train step, and through it the model's weights and optimizer slots,
    alive (tensorflow/tensorflow#61791). A finished job's graphs need none of them.
    """
    import gc

    import keras

    keras.backend.clear_session(free_memory=False)
    drop_custom_gradients()
    gc.collect()

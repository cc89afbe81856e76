"""TensorFlow runtime settings: seeds, threads, determinism, precision and XLA."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

log = logging.getLogger(__name__)

# Families whose depthwise or squeeze-excite convolutions ran several times
# slower under XLA on CPU (MobileNetV2 at 96 px and EfficientNetB0 at 64 px were
# 8x slower); dense residual stacks gained at small sizes (ResNet50 2.4x at 32 px)
# and lost at 224 px (0.62x).
XLA_CPU_SLOW_FAMILIES = ("mobilenet", "efficientnet", "nasnet", "xception", "convnext")
XLA_CPU_MAX_SIDE = 64  # above this the dense families also ran slower on CPU
XLA_MIN_STEPS = 40  # compiling cost about 16 ordinary steps; repay it well


def configure_tensorflow(trainer: DictConfig, seed: int) -> None:
    """Seeds, thread counts, determinism and mixed precision, before any model exists."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if trainer.get("threads"):
        tf.config.threading.set_intra_op_parallelism_threads(trainer.threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, trainer.threads))
    if trainer.get("deterministic"):
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(trainer.precision)


def choose_jit_compile(setting: bool | str, model_name: str, side: int, total_steps: int) -> tuple[bool, str]:
    """Whether to compile with XLA, and why (``setting`` may be ``auto``)."""
    if setting != "auto":
        return bool(setting), f"trainer.jit_compile={str(setting).lower()}"
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return True, "auto: a GPU is present and XLA fuses its kernels"
    if model_name.startswith(XLA_CPU_SLOW_FAMILIES):
        return False, f"auto: XLA's CPU depthwise convolutions are slow for {model_name}"
    if side > XLA_CPU_MAX_SIDE:
        return False, f"auto: on CPU XLA is slower above {XLA_CPU_MAX_SIDE} px (input {side} px)"
    if total_steps < XLA_MIN_STEPS:
        return False, f"auto: {total_steps} steps are too few to repay XLA's compile time"
    return True, f"auto: on CPU XLA is faster for {model_name} at {side} px"

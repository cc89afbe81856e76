"""Learning-rate schedules (``optimizer.schedule``) and logging the rate every epoch.

Schedules are Keras ``LearningRateSchedule`` objects counted in optimizer steps,
built per training phase from epochs and steps per epoch; ``plateau`` is the
``ReduceLROnPlateau`` callback on a constant rate. The checks run before
TensorFlow is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from kfactory.errors import ConfigError
from kfactory.schema import SCHEDULES

if TYPE_CHECKING:
    import keras


def schedule_of(optimizer: DictConfig) -> dict[str, Any]:
    """``optimizer.schedule`` as a plain dict."""
    return dict(optimizer.schedule)


def check_schedule(schedule: DictConfig, epochs: int) -> None:
    """Refuse an unknown schedule or values out of range (the schema has typed each schedule's keys)."""
    if schedule.name not in SCHEDULES:
        raise ConfigError("optimizer.schedule.name", schedule.name, "one of " + ", ".join(SCHEDULES))
    lows = {"warmup_epochs": 0, "step_epochs": 1, "patience": 0, "alpha": 0, "min_lr": 0}
    for key, low in lows.items():
        if key in schedule and schedule[key] < low:
            raise ConfigError(f"optimizer.schedule.{key}", schedule[key], f"a number >= {low}")
    for key in ("factor", "decay_rate"):
        if key in schedule and not 0 < schedule[key] < 1:
            raise ConfigError(f"optimizer.schedule.{key}", schedule[key], "a number in (0, 1)")
    if schedule.name == "cosine" and schedule.warmup_epochs >= epochs:
        raise ConfigError("optimizer.schedule.warmup_epochs", schedule.warmup_epochs, "fewer than trainer.epochs")


def make_learning_rate(
    schedule: dict[str, Any], learning_rate: float, epochs: int, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The optimizer's ``learning_rate`` for a phase of ``epochs`` epochs starting at ``learning_rate``."""
    import keras

    name = schedule["name"]
    if name in ("constant", "plateau"):
        return float(learning_rate)
    decays = keras.optimizers.schedules
    if name == "cosine":
        warmup = min(schedule["warmup_epochs"], epochs - 1) * steps_per_epoch
        return decays.CosineDecay(
            initial_learning_rate=0.0 if warmup else learning_rate,
            decay_steps=max(1, epochs * steps_per_epoch - warmup),
            alpha=schedule["alpha"],
            warmup_target=learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    if name == "step":
        every = schedule["step_epochs"] * steps_per_epoch
        return decays.ExponentialDecay(learning_rate, every, schedule["factor"], staircase=True)
    return decays.ExponentialDecay(learning_rate, steps_per_epoch, schedule["decay_rate"])


def schedule_callbacks(schedule: dict[str, Any], monitor: str, mode: str) -> list[keras.callbacks.Callback]:
    """``ReduceLROnPlateau`` for the plateau schedule; nothing for the others."""
    import keras

    if schedule["name"] != "plateau":
        return []
    return [
        keras.callbacks.ReduceLROnPlateau(
            monitor=monitor,
            mode=mode,
            factor=schedule["factor"],
            patience=schedule["patience"],
            min_lr=schedule["min_lr"],
            verbose=1,
        )
    ]


def learning_rate_logger() -> keras.callbacks.Callback:
    """Puts the optimizer's current learning rate in the epoch logs, so history.csv has it.

    TensorBoard already logs ``learning_rate`` (at epoch end); CSVLogger does not.
    Place this before CSVLogger: both log the rate at the end of each epoch.
    """
    import keras

    class LearningRateLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if logs is not None:
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    return LearningRateLogger()

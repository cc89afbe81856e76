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

if TYPE_CHECKING:
    import keras

# name -> the keys it takes besides ``name``
SCHEDULES: dict[str, tuple[str, ...]] = {
    "constant": (),
    "cosine": ("warmup_epochs", "alpha"),
    "step": ("step_epochs", "factor"),
    "exponential": ("decay_rate",),
    "plateau": ("factor", "patience", "min_lr"),
}


def schedule_of(optimizer: DictConfig) -> dict[str, Any]:
    """``optimizer.schedule`` as a dict; absent means constant."""
    schedule = optimizer.get("schedule")
    return {"name": "constant"} if schedule is None else dict(schedule)


def check_schedule(cfg: DictConfig) -> None:
    """Refuse an unknown schedule, unknown keys, or values out of range."""
    schedule = schedule_of(cfg.optimizer)
    name = schedule.get("name")
    if name not in SCHEDULES:
        raise ConfigError("optimizer.schedule.name", name, "one of " + ", ".join(SCHEDULES))
    for key, value in schedule.items():
        if key != "name" and key not in SCHEDULES[name]:
            raise ConfigError(f"optimizer.schedule.{key}", value, f"a key of the {name} schedule: {SCHEDULES[name]}")
    positive_int = {"warmup_epochs": 0, "step_epochs": 1, "patience": 0}
    for key, low in positive_int.items():
        value = schedule.get(key, low)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"optimizer.schedule.{key}", value, f"an integer >= {low}")
    for key in ("factor", "decay_rate"):
        value = schedule.get(key, 0.5)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
            raise ConfigError(f"optimizer.schedule.{key}", value, "a number in (0, 1)")
    for key in ("alpha", "min_lr"):
        value = schedule.get(key, 0.0)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"optimizer.schedule.{key}", value, "a number >= 0")
    if name == "cosine" and schedule.get("warmup_epochs", 0) >= cfg.trainer.epochs:
        raise ConfigError("optimizer.schedule.warmup_epochs", schedule["warmup_epochs"], "fewer than trainer.epochs")


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
        warmup = min(schedule.get("warmup_epochs", 0), epochs - 1) * steps_per_epoch
        return decays.CosineDecay(
            initial_learning_rate=0.0 if warmup else learning_rate,
            decay_steps=max(1, epochs * steps_per_epoch - warmup),
            alpha=schedule.get("alpha", 0.0),
            warmup_target=learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    if name == "step":
        every = schedule.get("step_epochs", 10) * steps_per_epoch
        return decays.ExponentialDecay(learning_rate, every, schedule.get("factor", 0.1), staircase=True)
    return decays.ExponentialDecay(learning_rate, steps_per_epoch, schedule.get("decay_rate", 0.9))


def schedule_callbacks(schedule: dict[str, Any], monitor: str, mode: str) -> list[keras.callbacks.Callback]:
    """``ReduceLROnPlateau`` for the plateau schedule; nothing for the others."""
    import keras

    if schedule["name"] != "plateau":
        return []
    return [
        keras.callbacks.ReduceLROnPlateau(
            monitor=monitor,
            mode=mode,
            factor=schedule.get("factor", 0.1),
            patience=schedule.get("patience", 3),
            min_lr=schedule.get("min_lr", 0.0),
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

"""Fit in phases: a new head on a frozen base, then part of the base at a lower rate.

``model.freeze`` says which layers of the base (the application, never the
preprocessing layers or the head) train: ``all`` (none of them: feature
extraction), ``none`` (all), an integer N (the top N layers) or a layer name
(that layer and those above it). With ``finetune.head_epochs`` > 0, phase 1
trains the head alone for that many epochs, then phase 2 applies ``model.freeze``
and continues at ``learning_rate * finetune.learning_rate_factor`` up to
``trainer.epochs``. Both phases share the callbacks, so the run has one
history.csv, one TensorBoard run with continuous epoch numbers and one best model.

A base trained from scratch (``model.weights=null``) always trains in full.
BatchNormalization of a pretrained base stays frozen, so in inference mode, in
every phase unless ``model.bn_trainable`` (see ``apply_freeze``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from kfactory.errors import ConfigError
from kfactory.framework import set_initial_epoch
from kfactory.registry import monitor_mode
from kfactory.targets import is_custom_model

if TYPE_CHECKING:
    import keras

    from kfactory.data.pipeline import Splits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase:
    """Epochs ``[initial_epoch, epochs)`` trained with ``freeze`` at ``learning_rate``."""

    name: str
    freeze: Any
    initial_epoch: int
    epochs: int
    learning_rate: float


def check_finetune(model: DictConfig, finetune: DictConfig, epochs: int) -> None:
    """Refuse ``model.freeze`` and ``finetune`` values a run cannot use (no TensorFlow); ``epochs``: trainer.epochs."""
    freeze = model.freeze  # typed Any by the schema: a keyword, a count or a layer name
    if isinstance(freeze, bool) or not isinstance(freeze, (int, str)) or (isinstance(freeze, int) and freeze < 0):
        raise ConfigError("model.freeze", freeze, "all, none, N >= 0 (the top N layers train) or a layer name")
    head = finetune.head_epochs
    if head < 0 or (head and head >= epochs):
        raise ConfigError("finetune.head_epochs", head, "an integer >= 0 and below trainer.epochs")
    if finetune.learning_rate_factor <= 0:
        raise ConfigError("finetune.learning_rate_factor", finetune.learning_rate_factor, "a number > 0")
    if head and model.weights is None:
        raise ConfigError(
            "finetune.head_epochs", head, "0 when model.weights=null: a base trained from scratch has nothing to keep"
        )


def plan_phases(finetune: DictConfig, freeze: Any, learning_rate: float, epochs: int) -> list[Phase]:
    """One phase, or head-then-base when ``finetune.head_epochs`` > 0; ``freeze``: model.freeze."""
    lr = float(learning_rate)
    head = finetune.head_epochs
    if not head:
        return [Phase("train", freeze, 0, epochs, lr)]
    return [
        Phase("head", "all", 0, head, lr),
        Phase("finetune", freeze, head, epochs, lr * float(finetune.learning_rate_factor)),
    ]


def find_base(model: keras.Model) -> keras.Model:
    """The application inside a built model (its only nested model)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise ValueError(f"{model.name} has no nested base model")


def apply_freeze(base: keras.Model, freeze: Any, pretrained: bool = True, bn_trainable: bool = False) -> None:
    """Set which layers of ``base`` train; the outer model's own layers are left alone.

    Never set the outer model's ``trainable``: it would recurse into the fixed
    preprocessing layers (e.g. the caffe-mode Conv2D) and make them train.
    A pretrained base's BatchNormalization layers stay frozen unless
    ``bn_trainable``: in Keras 3, ``fit`` calls nested models with
    ``training=True`` even where the graph says ``training=False``
    (keras-team/keras#20285), and only a non-trainable BatchNormalization is
    sure to run in inference mode (the keras.io EfficientNet fine-tuning recipe).
    """
    import keras

    layers = [layer for layer in base.layers if layer.__class__.__name__ != "InputLayer"]
    if not pretrained or freeze == "none":
        start = 0
    elif freeze == "all":
        start = len(layers)
    elif isinstance(freeze, int):
        start = max(0, len(layers) - freeze)
    else:
        names = [layer.name for layer in layers]
        if freeze not in names:
            examples = ", ".join(names[-4:])
            raise ConfigError("model.freeze", freeze, f"all, none, N, or a layer of {base.name}, e.g. {examples}")
        start = names.index(freeze)
    base.trainable = start < len(layers)
    # base.trainable set every layer; now set each one for a partial freeze and frozen BatchNormalization.
    for index, layer in enumerate(layers):
        keep_bn = pretrained and not bn_trainable and isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = index >= start and not keep_bn


def parameter_counts(model: keras.Model) -> tuple[int, int]:
    """(trainable, frozen) parameter counts; frozen includes BN moving statistics."""
    import numpy as np

    def count(weights: list) -> int:
        return int(sum(np.prod(w.shape) for w in weights))

    return count(model.trainable_weights), count(model.non_trainable_weights)


def describe_phase(model: keras.Model, phase: Phase, number: int, total: int, pretrained: bool) -> str:
    """One line: the phase, its epochs, rate and trainable / frozen parameter counts."""
    trainable, frozen = parameter_counts(model)
    freeze = phase.freeze if pretrained else "none (from scratch)"
    return (
        f"Phase {number}/{total} ({phase.name}): epochs {phase.initial_epoch + 1}-{phase.epochs}, "
        f"learning rate {phase.learning_rate:g}, model.freeze={freeze}: "
        f"{trainable:,} trainable, {frozen:,} frozen parameters"
    )


def fit_in_phases(
    model: keras.Model,
    cfg: DictConfig,
    splits: Splits,
    steps_per_epoch: int,
    callbacks: list[keras.callbacks.Callback],
    compile_phase: Callable[[Any], None],
    class_weight: dict[int, float] | None = None,
) -> keras.callbacks.History:
    """Fit every phase of ``cfg`` on ``splits``; ``compile_phase(learning_rate)`` recompiles.

    Returns the last phase's History with the epochs and logs of all phases.
    """
    from kfactory.data.pipeline import epoch_inputs, epoch_steps
    from kfactory.train.schedules import learning_rate_logger, make_learning_rate, schedule_callbacks, schedule_of

    schedule = schedule_of(cfg.optimizer)
    mode = monitor_mode(cfg.trainer.monitor, cfg.trainer.monitor_mode, cfg.trainer.metrics)
    before = [learning_rate_logger(), *_ema_callbacks(cfg.trainer.ema)]  # before CSVLogger and the checkpoint
    after = schedule_callbacks(schedule, cfg.trainer.monitor, mode)
    phases = plan_phases(cfg.finetune, cfg.model.freeze, cfg.optimizer.learning_rate, cfg.trainer.epochs)
    pretrained = cfg.model.weights is not None
    base = None if is_custom_model(cfg.model) else find_base(model)  # your own model trains as you built it
    epochs, logs, history = [], {}, None
    first = _resumed_phase(callbacks, len(phases))
    fit_steps = epoch_steps(cfg.trainer, len(splits.indices["train"]), cfg.data.batch_size)
    train, val = epoch_inputs(splits, fit_steps, cfg.trainer.validation_steps)
    for number, phase in enumerate(phases, start=1):
        if number < first:
            continue
        if base is not None:
            apply_freeze(base, phase.freeze, pretrained, cfg.model.bn_trainable)
        epochs_in_phase = phase.epochs - phase.initial_epoch
        compile_phase(make_learning_rate(schedule, phase.learning_rate, epochs_in_phase, steps_per_epoch))
        log.info("%s", describe_phase(model, phase, number, len(phases), pretrained))
        set_initial_epoch(model, None)  # a BackupAndRestore of an earlier phase must not move this phase's start
        history = model.fit(
            train,
            validation_data=val,
            initial_epoch=phase.initial_epoch,
            epochs=phase.epochs,
            steps_per_epoch=fit_steps,
            callbacks=[*before, *_for_phase(callbacks, number, len(phases), phase.initial_epoch), *after],
            class_weight=class_weight,
            verbose=cfg.trainer.verbose,
            shuffle=False,  # the pipeline shuffles
        )
        epochs += history.epoch
        for key, values in history.history.items():
            logs.setdefault(key, []).extend(values)
        if not all(math.isfinite(v) for v in history.history.get("loss", [])):
            break  # StopOnNaN stopped it; a later phase would start from diverged weights
        if any(getattr(c, "pruned_epoch", None) for c in callbacks):
            break  # the Optuna trial was pruned: the run ends here (kfactory.train.pruning)
        if any(getattr(c, "deadline_epoch", None) for c in callbacks):
            break  # the search's budget is spent: the run ends here (kfactory.train.deadline)
    history.epoch, history.history = epochs, logs
    return history


def _ema_callbacks(ema: float | None) -> list[keras.callbacks.Callback]:
    """With ``trainer.ema``, validate and checkpoint the averaged weights."""
    import keras

    return [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if ema else []


def _for_phase(callbacks: list, number: int, total: int, first_epoch: int) -> list:
    """The run's callbacks, with any BackupAndRestore given a directory per phase, early stopping the phase start."""
    import keras

    from kfactory.train.callbacks import ResumableEarlyStopping

    if total == 1:
        return callbacks
    adapted = []
    for callback in callbacks:
        if isinstance(callback, ResumableEarlyStopping):
            callback.phase_start = first_epoch
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            callback = type(callback)(
                os.path.join(callback.backup_dir, f"phase{number}"),
                save_freq=callback.save_freq,
                delete_checkpoint=callback.delete_checkpoint,
                double_checkpoint=callback.double_checkpoint,
            )
        adapted.append(callback)
    return adapted


def _resumed_phase(callbacks: list, total: int) -> int:
    """The latest phase with a BackupAndRestore backup: a resumed run starts there."""
    import keras

    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore) and total > 1:
            for number in range(total, 1, -1):
                if os.path.isdir(os.path.join(callback.backup_dir, f"phase{number}")):
                    return number
    return 1

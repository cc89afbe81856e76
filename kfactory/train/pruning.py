"""Report each epoch to the running Optuna trial and stop when its pruner says so.

Active only in a job the kfactory Optuna sweeper launched with a pruner
(kfactory.config.search.open_trial finds the trial through the study's
storage). A pruned run stops after the epoch that was judged and ends as a
complete run: best model, metrics.json (``pruned: true``, ``pruned_epoch``),
TensorBoard; the sweeper then records the trial as PRUNED.

A trial whose validation accuracy has stayed at chance for its first ``CHANCE_EPOCHS`` epochs while
its training accuracy left chance is pruned too, whatever the pruner says: a Hyperband bracket with no
peers yet lets it run on (MobileNetV2 from scratch at 128 px spent 23 epochs, 41 % of a 15-minute
search, at exactly chance). Training need only leave the band that counts as chance for validation
(``AT_CHANCE``), not reach the diagnosis's ``LEARNED``: on the digits the same model's training
accuracy rose from 0.10 to 0.45 in 8 epochs while validation stayed at 0.10, and needing 0.55 let it
run 13 epochs, 39 % of another 15-minute search; every trial that went on to learn had left chance
by its third epoch. The run's end names the likely cause (kfactory.train.diagnosis).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras

from kfactory.config.search import PRUNED_ATTR, open_trial
from kfactory.train.diagnosis import AT_CHANCE, stuck_at_chance

log = logging.getLogger(__name__)

CHANCE_EPOCHS = 5  # epochs a trial may stay at chance while training learns before it is pruned


class TrialPruning(keras.callbacks.Callback):
    """After each epoch: report ``monitor`` as the trial's value at step ``first_step + epoch + 1``; stop if pruned,
    or if stuck at chance (``classes``: the single-label classes; 0 for label sets, whose chance differs)."""

    def __init__(self, trial: Any, monitor: str, first_step: int = 0, classes: int = 0) -> None:
        super().__init__()
        self.trial, self.monitor, self.first_step, self.classes = trial, monitor, first_step, classes
        self.pruned_epoch: int | None = None
        self.at_chance = False  # pruned because validation stayed at chance
        self.best_val_accuracy, self.epochs_seen = 0.0, 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return  # StopOnNaN ends a diverged run; the trial fails
        self.trial.report(float(value), step=self.first_step + epoch + 1)
        at_chance = self.stuck_at_chance(logs)
        if at_chance or self.trial.should_prune():
            self.pruned_epoch = epoch + 1
            self.trial.set_user_attr(PRUNED_ATTR, self.first_step + self.pruned_epoch)
            self.model.stop_training = True
            if at_chance:
                self.at_chance = True
                log.info(
                    "Pruned after epoch %d: validation accuracy still at chance (best %.2f, chance %.2f) while "
                    "training accuracy reached %.2f",
                    self.pruned_epoch,
                    self.best_val_accuracy,
                    1 / self.classes,
                    float(logs["accuracy"]),
                )

    def stuck_at_chance(self, logs: dict) -> bool:
        """Whether validation accuracy has stayed at chance for ``CHANCE_EPOCHS`` epochs or more of this fit
        while training accuracy left chance."""
        train, val = logs.get("accuracy"), logs.get("val_accuracy")
        if self.classes < 2 or train is None or val is None:
            return False
        self.best_val_accuracy = max(self.best_val_accuracy, float(val))
        self.epochs_seen += 1
        if self.epochs_seen < CHANCE_EPOCHS:
            return False
        return stuck_at_chance(float(train), self.best_val_accuracy, self.classes, learned=AT_CHANCE)


def trial_pruning(monitor: str, first_step: int = 0, classes: int = 0) -> list[TrialPruning]:
    """The pruning callback when this job runs as a pruned Optuna trial, else none."""
    trial = open_trial()
    return [] if trial is None else [TrialPruning(trial, monitor, first_step, classes)]


def pruned_at_chance(callbacks: list[keras.callbacks.Callback]) -> bool:
    """Whether the trial was pruned because its validation accuracy stayed at chance."""
    return any(isinstance(c, TrialPruning) and c.at_chance for c in callbacks)


def pruned_epoch(callbacks: list[keras.callbacks.Callback]) -> int | None:
    """The epoch after which the trial was pruned, if it was."""
    return next((c.pruned_epoch for c in callbacks if isinstance(c, TrialPruning) and c.pruned_epoch), None)

"""Report each epoch to the running Optuna trial and stop when its pruner says so.

Active only in a job the kfactory Optuna sweeper launched with a pruner
(kfactory.config.search.open_trial finds the trial through the study's
storage). A pruned run stops after the epoch that was judged and ends as a
complete run: best model, metrics.json (``pruned: true``, ``pruned_epoch``),
TensorBoard; the sweeper then records the trial as PRUNED.
"""

from __future__ import annotations

import math
from typing import Any

import keras

from kfactory.config.search import PRUNED_ATTR, open_trial


class TrialPruning(keras.callbacks.Callback):
    """After each epoch: report ``monitor`` as the trial's value at step ``first_step + epoch + 1``; stop if pruned."""

    def __init__(self, trial: Any, monitor: str, first_step: int = 0) -> None:
        super().__init__()
        self.trial, self.monitor, self.first_step = trial, monitor, first_step
        self.pruned_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return  # StopOnNaN ends a diverged run; the trial fails
        self.trial.report(float(value), step=self.first_step + epoch + 1)
        if self.trial.should_prune():
            self.pruned_epoch = epoch + 1
            self.trial.set_user_attr(PRUNED_ATTR, self.first_step + self.pruned_epoch)
            self.model.stop_training = True


def trial_pruning(monitor: str, first_step: int = 0) -> list[TrialPruning]:
    """The pruning callback when this job runs as a pruned Optuna trial, else none."""
    trial = open_trial()
    return [] if trial is None else [TrialPruning(trial, monitor, first_step)]


def pruned_epoch(callbacks: list[keras.callbacks.Callback]) -> int | None:
    """The epoch after which the trial was pruned, if it was."""
    return next((c.pruned_epoch for c in callbacks if isinstance(c, TrialPruning) and c.pruned_epoch), None)

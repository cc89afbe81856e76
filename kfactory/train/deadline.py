"""Stop training in time for a search's budget: the job ends by its deadline with its best epoch kept.

Active only in a job a budgeted search launched (``kfactory.run.budget.job_deadline``).
After each batch it asks whether the time left still covers what comes after
training: validating the epoch cut short (Keras validates it, and the best-model
checkpoint keeps it if it is the best), then the run's final evaluation and
reports. When it does not, training stops there and the run ends as a complete
run, with ``deadline_epoch`` in its metrics.json.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import keras

from kfactory.run.budget import format_duration, job_deadline

log = logging.getLogger(__name__)

AFTER_EPOCH_S = 2.0  # an epoch's end: the best model and the backup written
AFTER_FIT_S = 8.0  # loading the best model, its final evaluation, summaries and the model card, beyond validations
AFTER_FIT_VALIDATIONS = 2.5  # ... plus this many validation passes (validation and test split, predictions)
VALIDATION_STEP_SHARE = 0.5  # before one is measured: a validation step costs this share of a training step
FIRST_VALIDATION_SHARE = 0.25  # ... and without its number of batches, a validation this share of the epoch's training


class Deadline(keras.callbacks.Callback):
    """Set ``stop_training`` after the batch past which the run could not finish by ``deadline``."""

    def __init__(
        self, deadline: float, clock: Callable[[], float] = time.time, validation_batches: int | None = None
    ) -> None:
        super().__init__()
        self.deadline, self.clock, self.validation_batches = deadline, clock, validation_batches
        self.deadline_epoch: int | None = None  # the epoch (from 1) training stopped in
        self.validation_s: float | None = None  # the last validation's seconds
        self.batch_s: float | None = None  # a training step's seconds, from steps after an epoch's first
        self._epoch, self._batch_end, self._test_start = 0, 0.0, 0.0

    def reserve_s(self) -> float:
        """Seconds kept for what follows the batch that is ending: a validation and the run's end."""
        validation = self.validation_s
        if validation is None and self.validation_batches is not None:
            validation = VALIDATION_STEP_SHARE * (self.batch_s or 0.0) * self.validation_batches
        elif validation is None:
            steps = (self.params or {}).get("steps") or 0
            validation = FIRST_VALIDATION_SHARE * (self.batch_s or 0.0) * steps
        return AFTER_FIT_S + (1 + AFTER_FIT_VALIDATIONS) * validation

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch, self._batch_end = epoch, 0.0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = self.clock()
        if self._batch_end:  # an epoch's first step also waits for its input pipeline to start
            step = now - self._batch_end
            self.batch_s = step if self.batch_s is None else 0.8 * self.batch_s + 0.2 * step
        self._batch_end = now
        reserve = self.reserve_s()
        if batch + 1 == (self.params or {}).get("steps"):  # not stopped now, the next check is in the next epoch
            reserve += AFTER_EPOCH_S + (self.batch_s or 0.0)
        if self.deadline_epoch is None and now + reserve >= self.deadline:
            self.deadline_epoch = epoch = self._epoch + 1
            self.model.stop_training = True
            left = format_duration(self.deadline - now)
            log.info("Budget: training stops in epoch %d, batch %d; %s left to finish", epoch, batch + 1, left)

    def on_test_begin(self, logs: dict | None = None) -> None:
        self._test_start = self.clock()

    def on_test_end(self, logs: dict | None = None) -> None:
        self.validation_s = self.clock() - self._test_start


def deadline_callbacks(validation_batches: int | None = None) -> list[Deadline]:
    """The deadline callback when a budgeted search launched this job, else none.

    ``validation_batches``: the batches of one validation, when known; until a
    validation is timed, its cost is estimated from them.
    """
    deadline = job_deadline()
    return [] if deadline is None else [Deadline(deadline, validation_batches=validation_batches)]


def deadline_epoch(callbacks: list[keras.callbacks.Callback]) -> int | None:
    """The epoch training stopped in for the deadline, if it did."""
    return next((c.deadline_epoch for c in callbacks if isinstance(c, Deadline) and c.deadline_epoch), None)

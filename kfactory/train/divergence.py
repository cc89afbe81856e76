"""Notice a loss that became NaN or infinite, and stop the epoch there."""

from __future__ import annotations

import math

import keras


def finite_loss(logs: dict | None) -> bool:
    """Whether the training loss in ``logs`` (if any) is a finite number."""
    loss = (logs or {}).get("loss")
    return loss is None or math.isfinite(float(loss))


class StopOnNaN(keras.callbacks.Callback):
    """Stop training at the first batch whose loss is NaN or infinite, and remember where."""

    def __init__(self) -> None:
        super().__init__()
        self.current_epoch = 0
        self.stopped: tuple[int, int] | None = None  # (epoch, batch), counted from 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.current_epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.stopped is None and not finite_loss(logs):
            self.stopped = (self.current_epoch, batch)
            self.model.stop_training = True

"""Keep the model of the best epoch so far: a Keras callback that saves it as model.keras."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kfactory.model.checkpoint import save_model
from kfactory.registry import TIE_BREAK, monitor_mode
from kfactory.train.divergence import finite_loss


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the model (atomically, with metadata) whenever ``monitor`` improves, or ties with a lower
    ``TIE_BREAK`` (val_loss): a validation accuracy that stays at its best for the last epochs of a
    schedule keeps the epoch that fits best, not the first to reach it.

    The best epoch's weights and logs are also kept in memory, so the run can
    evaluate its best model without loading the file again; after a resume whose
    best epoch came before the restart, only the file has them (both None).
    """

    def __init__(self, path: Path, monitor: str, metadata: dict[str, Any], mode: str = "auto") -> None:
        super().__init__()
        self.path, self.monitor, self.metadata = path, monitor, metadata
        self.mode = monitor_mode(monitor, mode)
        self.best: float | None = None
        self.best_tie_break: float | None = None  # the best epoch's TIE_BREAK, when logged
        self.best_epoch: int | None = None
        self.best_weights: list[np.ndarray] | None = None
        self.best_logs: dict[str, float] | None = None

    def improved(self, value: float, tie_break: float | None = None) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if value == self.best and self.monitor != TIE_BREAK:
            return tie_break is not None and (self.best_tie_break is None or tie_break < self.best_tie_break)
        return value < self.best if self.mode == "min" else value > self.best

    def replay(self, past_epochs: list[dict[str, float]]) -> None:
        """Take the best value of a resumed run's finished epochs (history.csv rows) as the best so far."""
        for row in past_epochs:
            value, tie_break = row.get(self.monitor), row.get(TIE_BREAK)
            if value is not None and self.improved(value, tie_break):
                self.best, self.best_tie_break, self.best_epoch = value, tie_break, int(row["epoch"])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not finite_loss(logs):  # weights that gave a NaN loss are never "best"
            return
        value, tie_break = float(value), (logs or {}).get(TIE_BREAK)
        tie_break = None if tie_break is None else float(tie_break)
        if self.improved(value, tie_break):
            self.best, self.best_tie_break, self.best_epoch = value, tie_break, epoch
            save_model(self.model, self.path, {**self.metadata, "best_epoch": epoch + 1, self.monitor: value})
            self.best_weights = self.model.get_weights()  # copies: later epochs do not change them
            self.best_logs = {key: float(logged) for key, logged in (logs or {}).items()}

"""Callbacks a run trains with: best checkpoint, history, TensorBoard, stopping."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
from omegaconf import DictConfig

from kfactory.checkpoint import save_model

if TYPE_CHECKING:
    from kfactory.data import Splits


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the model (atomically, with metadata) whenever ``monitor`` improves."""

    def __init__(self, path: Path, monitor: str, metadata: dict[str, Any]) -> None:
        super().__init__()
        self.path, self.monitor, self.metadata = path, monitor, metadata
        self.mode = "min" if "loss" in monitor else "max"
        self.best: float | None = None
        self.best_epoch: int | None = None

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        value = float(value)
        if self.improved(value):
            self.best, self.best_epoch = value, epoch
            save_model(self.model, self.path, {**self.metadata, "best_epoch": epoch + 1, self.monitor: value})


def make_callbacks(
    cfg: DictConfig, run_dir: Path, checkpoint: BestModelCheckpoint, splits: Splits | None = None
) -> list[keras.callbacks.Callback]:
    """The callbacks of one training run, all writing under ``run_dir``."""
    board = cfg.trainer.get("tensorboard") or {}
    callbacks: list[keras.callbacks.Callback] = [
        checkpoint,
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(
            log_dir=str(run_dir / "tensorboard"),
            histogram_freq=board.get("histogram_freq", 1),
            write_graph=board.get("write_graph", True),
            update_freq="epoch",
        ),
        keras.callbacks.TerminateOnNaN(),
    ]
    if board and splits is not None:
        from kfactory.tensorboard_extras import ValidationSummaries  # matplotlib, TensorBoard plugins

        callbacks.append(ValidationSummaries(run_dir / "tensorboard", splits.val, splits.class_names, cfg))
    if cfg.trainer.early_stopping:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=cfg.trainer.monitor,
                mode=checkpoint.mode,
                patience=cfg.trainer.early_stopping,
                restore_best_weights=False,
            )
        )
    return callbacks

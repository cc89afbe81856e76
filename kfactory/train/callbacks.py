"""Callbacks a run trains with: best checkpoint, history, TensorBoard, stopping."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
from omegaconf import DictConfig

from kfactory.errors import RunStopped
from kfactory.model.checkpoint import save_model
from kfactory.registry import monitor_mode
from kfactory.train.pruning import trial_pruning
from kfactory.train.resume import backup_dir

if TYPE_CHECKING:
    from kfactory.data.pipeline import Splits


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the model (atomically, with metadata) whenever ``monitor`` improves."""

    def __init__(self, path: Path, monitor: str, metadata: dict[str, Any]) -> None:
        super().__init__()
        self.path, self.monitor, self.metadata = path, monitor, metadata
        self.mode = monitor_mode(monitor)
        self.best: float | None = None
        self.best_epoch: int | None = None

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def replay(self, past_epochs: list[dict[str, float]]) -> None:
        """Take the best value of a resumed run's finished epochs (history.csv rows) as the best so far."""
        for row in past_epochs:
            value = row.get(self.monitor)
            if value is not None and self.improved(value):
                self.best, self.best_epoch = value, int(row["epoch"])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not finite_loss(logs):  # weights that gave a NaN loss are never "best"
            return
        value = float(value)
        if self.improved(value):
            self.best, self.best_epoch = value, epoch
            save_model(self.model, self.path, {**self.metadata, "best_epoch": epoch + 1, self.monitor: value})


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


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that, in a resumed run, replays the finished epochs to restore its patience count.

    Patience counts within one fine-tuning phase: ``phase_start`` is the first
    epoch of the phase being fit, and only finished epochs from there are replayed.
    """

    def __init__(self, past_epochs: list[dict[str, float]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.past_epochs = past_epochs
        self.phase_start = 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        for row in self.past_epochs:
            if int(row["epoch"]) >= self.phase_start:
                super().on_epoch_end(int(row["epoch"]), row)


def stop_if_diverged(
    callbacks: list[keras.callbacks.Callback], cfg: DictConfig, checkpoint: BestModelCheckpoint
) -> None:
    """Raise RunStopped, naming the epoch and the learning rate, if the loss became NaN."""
    guard = next((c for c in callbacks if isinstance(c, StopOnNaN)), None)
    if guard is None or guard.stopped is None:
        return
    epoch, batch = guard.stopped
    lr = cfg.optimizer.learning_rate
    if checkpoint.best_epoch is None:
        kept = "no epoch finished with a finite loss, so no model was saved"
    else:
        kept = f"{checkpoint.path} keeps the best model so far (epoch {checkpoint.best_epoch + 1})"
    raise RunStopped(
        f"Training loss became NaN or infinite in epoch {epoch + 1} (batch {batch + 1}); training stopped and "
        f"{kept}. Hint: lower optimizer.learning_rate (now {lr:g}), e.g. optimizer.learning_rate={lr / 10:g}"
    )


def make_callbacks(
    cfg: DictConfig,
    run_dir: Path,
    checkpoint: BestModelCheckpoint,
    splits: Splits | None = None,
    past_epochs: list[dict[str, float]] | None = None,
) -> list[keras.callbacks.Callback]:
    """The callbacks of one training run, all writing under ``run_dir``.

    ``past_epochs``: in a resumed run, the finished epochs' history rows, so
    early stopping carries on where it was.
    """
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
        StopOnNaN(),
        *trial_pruning(cfg.trainer.monitor),  # only in a trial of a pruning Optuna search
    ]
    if board and splits is not None:
        from kfactory.train.tensorboard import ValidationSummaries  # matplotlib, TensorBoard plugins

        callbacks.append(ValidationSummaries(run_dir / "tensorboard", splits.val, splits.class_names, cfg))
    if cfg.trainer.early_stopping:
        callbacks.append(
            ResumableEarlyStopping(
                past_epochs or [],
                monitor=cfg.trainer.monitor,
                mode=checkpoint.mode,
                patience=cfg.trainer.early_stopping,
                restore_best_weights=False,
            )
        )
    # Last, so an epoch counts as done only once history.csv and model.keras have it.
    callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir(run_dir))))
    return callbacks

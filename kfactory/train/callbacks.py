"""The callbacks a run trains with, in their order, and the check after fit that the loss stayed finite."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
from omegaconf import DictConfig

from kfactory.errors import RunStopped
from kfactory.overrides import rerun_command, task_overrides
from kfactory.run.requeue import RequeueAtEpochEnd, requeue_hold_s
from kfactory.run.resume import backup_dir
from kfactory.targets import build
from kfactory.train.backup import AtomicBackupAndRestore
from kfactory.train.best_model import BestModelCheckpoint
from kfactory.train.deadline import deadline_callbacks
from kfactory.train.divergence import StopOnNaN
from kfactory.train.histograms import EpochTensorBoard
from kfactory.train.pruning import trial_pruning

if TYPE_CHECKING:
    from kfactory.data.pipeline import Splits


class HistoryCSV(keras.callbacks.CSVLogger):
    """history.csv with epochs counted from 1, as the progress bar, the logs and ``best_epoch`` count them."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_end(epoch + 1, logs)


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
    retry = rerun_command(
        task_overrides(cfg),
        ("hydra.run.dir", "resume", "optimizer.learning_rate"),
        [f"optimizer.learning_rate={lr / 10:g}"],
    )
    raise RunStopped(
        f"Training loss became NaN or infinite in epoch {epoch + 1} (batch {batch + 1}); training stopped and "
        f"{kept}. Hint: lower optimizer.learning_rate (now {lr:g}) and start over in a new run directory: {retry}"
    )


def user_callbacks(trainer: DictConfig) -> list[keras.callbacks.Callback]:
    """Your own callbacks, from the ``_target_`` entries of ``trainer.callbacks``."""
    return [
        build(f"trainer.callbacks[{index}]", entry, keras.callbacks.Callback, "a keras.callbacks.Callback")
        for index, entry in enumerate(trainer.callbacks)
    ]


def validation_batches(cfg: DictConfig, splits: Splits | None) -> int | None:
    """The batches one validation runs (``trainer.validation_steps`` at most); None when not known."""
    if splits is None or splits.val is None:
        return None
    batches = math.ceil(len(splits.indices["val"]) / cfg.data.batch_size)
    return min(batches, cfg.trainer.validation_steps) if cfg.trainer.validation_steps else batches


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
    board = cfg.trainer.tensorboard
    callbacks: list[keras.callbacks.Callback] = [
        checkpoint,
        HistoryCSV(str(run_dir / "history.csv"), append=True),
        EpochTensorBoard(
            log_dir=str(run_dir / "tensorboard"),
            histogram_freq=board.histogram_freq,
            write_graph=board.write_graph,
            update_freq="epoch",
        ),
        StopOnNaN(),
        # only in a trial of a pruning Optuna search; with cv_folds its steps count on across the folds
        *trial_pruning(
            cfg.trainer.monitor,
            cfg.data.fold * cfg.trainer.epochs if cfg.hparams_search.cv_folds else 0,
            len(splits.class_names) if splits is not None and cfg.data.task != "multilabel" else 0,
        ),
        *deadline_callbacks(validation_batches(cfg, splits)),  # only in a job of a budgeted search (experiment=auto)
    ]
    if splits is not None:
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
    callbacks += user_callbacks(cfg.trainer)
    # Last, so an epoch counts as done only once history.csv and model.keras have it. Kept after training
    # (delete_checkpoint=False) until metrics.json is written: a kill in between still resumes.
    callbacks.append(AtomicBackupAndRestore(str(backup_dir(run_dir)), delete_checkpoint=False))
    callbacks.append(RequeueAtEpochEnd(requeue_hold_s()))  # after the backup: the epoch is kept
    return callbacks

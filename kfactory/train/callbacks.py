"""Callbacks a run trains with: best checkpoint, history, TensorBoard, stopping."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from omegaconf import DictConfig

from kfactory.errors import RunStopped
from kfactory.framework import (
    backup_metadata_path,
    backup_position,
    checked_overrides,
    set_initial_epoch,
    train_writer,
)
from kfactory.model.checkpoint import save_model, write_json_atomic
from kfactory.overrides import rerun_command
from kfactory.paths import replace_durably
from kfactory.registry import monitor_mode
from kfactory.targets import build
from kfactory.train.deferred import Deferred
from kfactory.train.hparams import task_overrides
from kfactory.train.pruning import trial_pruning
from kfactory.train.resume import BACKUP_METADATA, backup_dir, read_backup_metadata

if TYPE_CHECKING:
    from kfactory.data.pipeline import Splits

log = logging.getLogger(__name__)


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the model (atomically, with metadata) whenever ``monitor`` improves.

    The best epoch's weights and logs are also kept in memory, so the run can
    evaluate its best model without loading the file again; after a resume whose
    best epoch came before the restart, only the file has them (both None).
    """

    def __init__(self, path: Path, monitor: str, metadata: dict[str, Any], mode: str = "auto") -> None:
        super().__init__()
        self.path, self.monitor, self.metadata = path, monitor, metadata
        self.mode = monitor_mode(monitor, mode)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_weights: list[np.ndarray] | None = None
        self.best_logs: dict[str, float] | None = None

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
            self.best_weights = self.model.get_weights()  # copies: later epochs do not change them
            self.best_logs = {key: float(logged) for key, logged in (logs or {}).items()}


class HistoryCSV(keras.callbacks.CSVLogger):
    """history.csv with epochs counted from 1, as the progress bar, the logs and ``best_epoch`` count them."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_end(epoch + 1, logs)


@checked_overrides
class EpochTensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback with epochs counted from 1 as steps (``histogram_freq=N``: epochs N, 2N, …).

    Weight histograms are bucketed in NumPy and written as one summary each: the
    same tags and buckets as Keras's, at a fifteenth of the cost (Keras runs a
    dozen eager TensorFlow ops per weight, 4 s an epoch for ResNet50's 320). The
    weights are copied at the epoch's end and bucketed on a thread of their own
    once the next epoch starts (``kfactory.train.deferred``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.histograms = Deferred("histograms", self._write_histograms)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_end(epoch + 1, logs)

    def _log_weights(self, epoch: int) -> None:
        weights = [
            (f"{weight.path.replace(':', '_')}/histogram", weight.numpy())  # copies, as the epoch left them
            for layer in self.model.layers
            for weight in layer.weights
        ]
        self.histograms.defer(weights, epoch)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_begin(epoch, logs)
        self.histograms.start()

    def _write_histograms(self, weights: list[tuple[str, np.ndarray]], epoch: int) -> None:
        from tensorboard.plugins.histogram.metadata import create_summary_metadata

        try:
            metadata = create_summary_metadata(display_name=None, description=None)
            with train_writer(self).as_default():
                for tag, values in weights:
                    self.summary.write(tag, histogram_buckets(values), step=epoch, metadata=metadata)
            train_writer(self).flush()
        except Exception as error:  # a histogram is not worth a run
            log.warning("Weight histograms of epoch %d not written: %s: %s", epoch, type(error).__name__, error)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.histograms.finish()  # the last epoch's, before Keras closes the writers
        super().on_train_end(logs)


def histogram_buckets(data: np.ndarray, count: int = 30) -> np.ndarray:
    """TensorBoard's histogram tensor for ``data``: ``count`` rows of (left edge, right edge, count).

    Equal-width buckets from the minimum to the maximum, as ``tf.summary.histogram``
    makes them; all values equal: every edge at that value, all counted in the last.
    NaN and infinite values (a diverged epoch) are left out.
    """
    values = data.ravel()
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not (math.isfinite(low) and math.isfinite(high)):  # a diverged weight: count the finite values only
        values = values[np.isfinite(values)]
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if values.size == 0:
        return np.zeros((count, 3))
    counts = np.zeros(count)
    if high == low:
        counts[-1] = values.size
        return np.stack([np.full(count, low), np.full(count, low), counts], axis=1)
    index = np.minimum(((values - low) * (count / (high - low))).astype(np.int64), count - 1)
    counts[:] = np.bincount(index, minlength=count)
    edges = np.linspace(low, high, count + 1)
    return np.stack([edges[:-1], edges[1:], counts], axis=1)


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
        *trial_pruning(cfg.trainer.monitor, cfg.data.fold * cfg.trainer.epochs if cfg.hparams_search.cv_folds else 0),
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


def requeue_hold_s() -> float:
    """How long a requeue signal may wait for the epoch's end: half the launcher's ``signal_delay_s``."""
    from hydra.core.hydra_config import HydraConfig

    delay = HydraConfig.get().launcher.get("signal_delay_s") if HydraConfig.initialized() else None
    return (delay or 120) / 2


class RequeueAtEpochEnd(keras.callbacks.Callback):
    """Hold a Slurm job's requeue signal (SIGUSR2: time limit near, or preemption) until the epoch is backed up.

    submitit answers SIGUSR2 by requeueing the job and exiting at once, so the
    epoch in progress would be trained again. Held, the signal is passed on to
    submitit's handler once this epoch's backup is written, or after ``hold_s``
    seconds wherever training is (an epoch too long to wait for), so the job is
    always requeued before Slurm's kill. Only where a handler (submitit's) is installed.
    """

    def __init__(self, hold_s: float) -> None:
        super().__init__()
        self.hold_s = hold_s
        self.handler: Any = None
        self.since: float | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        handler = signal.getsignal(signal.SIGUSR2)
        if callable(handler) and threading.current_thread() is threading.main_thread():
            self.handler = handler
            signal.signal(signal.SIGUSR2, self._hold)

    def _hold(self, signum: int, frame: Any) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning(
                "SIGUSR2: the job is requeued once this epoch is backed up (at most %.0f s from now)", self.hold_s
            )

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.since is not None and time.monotonic() - self.since > self.hold_s:
            self._pass_on()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.since is not None:
            self._pass_on()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.since is not None:  # the signal came in the last epoch's end: still requeue (evaluation is left)
            self._pass_on()
        elif self.handler is not None:
            signal.signal(signal.SIGUSR2, self.handler)

    def _pass_on(self) -> None:
        handler, self.since = self.handler, None
        signal.signal(signal.SIGUSR2, handler)
        log.warning("Passing SIGUSR2 on: requeueing the job")
        handler(signal.SIGUSR2, None)  # submitit: checkpoint, scontrol requeue, exit


@checked_overrides
class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose backup is never half-written, whenever the process is killed.

    Keras writes the weights and then the epoch counter in place, so a kill
    during the write leaves a corrupt weights file or a counter that does not
    match the weights. Here each epoch's weights go to their own file, renamed
    into place once whole; the metadata, renamed into place last, names that
    file. A kill at any instant leaves the previous epoch's backup intact.
    """

    def _save_model(self) -> None:
        os.makedirs(self.backup_dir, exist_ok=True)
        epoch, batch = backup_position(self)
        name = f"epoch{epoch}.weights.h5"
        tmp = os.path.join(self.backup_dir, f"partial-{name}")
        self.model.save_weights(tmp, overwrite=True)
        replace_durably(tmp, os.path.join(self.backup_dir, name))
        metadata = {"epoch": epoch, "batch": batch, "weights": name}
        write_json_atomic(Path(backup_metadata_path(self)), metadata)
        for other in os.listdir(self.backup_dir):  # the earlier epochs' weights
            if other.endswith(".weights.h5") and other != name:
                os.remove(os.path.join(self.backup_dir, other))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if finite_loss(logs):  # an epoch StopOnNaN cut short is not backed up: a resume starts before it
            super().on_epoch_end(epoch, logs)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.restore_backup()

    def restore_backup(self) -> None:
        metadata = read_backup_metadata(Path(self.backup_dir) / BACKUP_METADATA)
        if metadata is None:  # no epoch backed up yet: start at the phase's first epoch
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)  # its state is in the backup too
        self.model.load_weights(os.path.join(self.backup_dir, metadata.get("weights", "latest.weights.h5")))
        set_initial_epoch(self.model, metadata["epoch"])

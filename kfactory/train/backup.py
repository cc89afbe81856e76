"""The per-epoch backup a run resumes from, written so a kill at any instant leaves a whole one."""

from __future__ import annotations

import os
from pathlib import Path

import keras

from kfactory.framework import backup_metadata_path, backup_position, checked_overrides, set_initial_epoch
from kfactory.model.checkpoint import write_json_atomic
from kfactory.paths import replace_durably
from kfactory.run.resume import BACKUP_METADATA, read_backup_metadata
from kfactory.train.divergence import finite_loss


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

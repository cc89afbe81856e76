"""Continue an interrupted training run in its own directory (``resume=true|auto``).

``AtomicBackupAndRestore`` (kfactory.train.backup) keeps the weights, the
optimizer state and the epoch counter in ``<run dir>/backup`` after every
epoch, each file written whole and renamed into place, and the backup stays
until ``metrics.json`` is written. The rest of a run's state is rebuilt from
the epochs that finished, as ``history.csv`` records them: the best-so-far
metric (``BestModelCheckpoint``) and early stopping's patience count are
replayed from its rows. Rows written for an epoch the backup does not include
(the process died between the two writes) are dropped, so every epoch is
listed once.

A run killed at any instant can be resumed: with a backup it continues after
the backup's last epoch; without one (killed in its first epoch, or before the
first backup was complete) it starts again at epoch 1 with a warning; a
finished run (``metrics.json``) is reported complete and exits 0.

No TensorFlow here: the run directory is checked before any heavy import.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kfactory.errors import ConfigError
from kfactory.paths import replace_durably

log = logging.getLogger(__name__)

BACKUP_DIR = "backup"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"  # written last: the run is complete
TENSORBOARD_DIR = "tensorboard"
BACKUP_METADATA = "training_metadata.json"  # the backup's record of the epochs done
RUN_FILES = (HISTORY_FILE, "model.keras", BACKUP_DIR, METRICS_FILE)  # what a started training run leaves
RESUME_VALUES = (False, True, "auto")

# What check_run_dir finds, and so what the run does.
FRESH = "fresh"  # nothing there yet: train from epoch 1
RESUME = "resume"  # a backup: continue after its last epoch
RESTART = "restart"  # a started run without a usable backup: train again from epoch 1
COMPLETE = "complete"  # metrics.json: nothing left to do


def backup_dir(run_dir: Path) -> Path:
    """Where the backup keeps this run's state (a sub-folder per fine-tuning phase)."""
    return run_dir / BACKUP_DIR


def drop_backup(run_dir: Path) -> None:
    """Remove ``backup/`` once the run is complete (after metrics.json is written)."""
    shutil.rmtree(backup_dir(run_dir), ignore_errors=True)


def read_backup_metadata(path: Path) -> dict[str, Any] | None:
    """A backup's metadata, or None if missing or unreadable (a write cut short)."""
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return metadata if isinstance(metadata, dict) and isinstance(metadata.get("epoch"), int) else None


def finished_epochs(run_dir: Path) -> int:
    """How many epochs the run's backup holds (the latest phase's count), 0 if none."""
    found = (read_backup_metadata(p) for p in backup_dir(run_dir).rglob(BACKUP_METADATA))
    return max((m["epoch"] for m in found if m is not None), default=0)


def resume_mode(cfg: DictConfig, launcher_target: str | None = None, overrides: list[str] | None = None) -> Any:
    """``cfg.resume``, or ``auto`` under a launcher that requeues jobs (submitit_slurm) unless set by the user."""
    given = any(str(o).split("=", 1)[0].lstrip("+~") == "resume" for o in overrides or [])
    if not given and launcher_target and launcher_target.endswith("SlurmLauncher"):
        return "auto"
    return cfg.resume


def check_run_dir(cfg: DictConfig, run_dir: Path, dir_key: str = "hydra.run.dir", resume: Any = None) -> str:
    """What a training run in ``run_dir`` does: FRESH, RESUME, RESTART or COMPLETE.

    Without resume, a directory that holds a run is refused (never overwritten);
    with ``resume=true`` or ``auto`` nothing is refused.
    """
    resume = cfg.resume if resume is None else resume
    if cfg.task != "train":
        return FRESH
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not found:
        return FRESH
    if not resume:
        held = ", ".join(found)
        if METRICS_FILE in found:
            hint = "its run is complete: choose another directory (resume=true would only report it complete)"
        else:
            hint = "add resume=true to continue that run, or choose another directory"
        raise ConfigError(dir_key, str(run_dir), f"a directory without a training run (it holds {held}): {hint}")
    if (run_dir / METRICS_FILE).exists():
        return COMPLETE
    return RESUME if finished_epochs(run_dir) else RESTART


def prepare_restart(run_dir: Path) -> None:
    """Clear what an attempt that finished no epoch left, so the run starts again at epoch 1."""
    log.warning(
        "%s holds a run that finished no backed-up epoch (killed in its first epoch?); starting again at epoch 1 "
        "(its history.csv rows, backup/ and tensorboard/ are dropped)",
        run_dir,
    )
    drop_backup(run_dir)
    shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)
    (run_dir / HISTORY_FILE).unlink(missing_ok=True)


def complete_run_metric(run_dir: Path, monitor: str) -> float | None:
    """Log that the run in ``run_dir`` is complete; return its monitored value as the run returned it."""
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    drop_backup(run_dir)  # killed between metrics.json and the backup's removal
    log.info("%s", complete_message(run_dir, metrics))
    return monitored_value(metrics, monitor)


def monitored_value(metrics: dict[str, Any], monitor: str) -> float | None:
    """What a run returns to its sweeper: ``monitor`` on the whole split, else its best epoch's value."""
    return metrics.get(monitor, metrics.get(f"best_{monitor}"))


def complete_message(run_dir: Path, metrics: dict[str, Any]) -> str:
    """The one line that says a run is complete."""
    return f"{run_dir} is complete ({metrics.get('epochs_run', 'all')} epochs, {METRICS_FILE}); nothing to resume"


def restore_history(run_dir: Path) -> list[dict[str, float]]:
    """The rows of history.csv for the epochs the backup holds (later rows are removed from the file),
    with ``epoch`` counted from 0 as Keras's callbacks count it."""
    path = run_dir / HISTORY_FILE
    if not path.is_file():
        return []
    done = finished_epochs(run_dir)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        rows = {}
        for row in reader:  # a row cut short by a kill has missing fields; each epoch is kept once
            if None not in row.values() and row["epoch"].isdigit() and 1 <= int(row["epoch"]) <= done:
                rows.setdefault(int(row["epoch"]), row)
    if not fields:  # empty: CSVLogger must write the header again
        path.unlink()
        return []
    kept = [rows[epoch] for epoch in sorted(rows)]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
    replace_durably(tmp, path)
    # history.csv counts epochs from 1; the callbacks that replay these rows count them as Keras does, from 0
    restored = [{key: float(value) for key, value in row.items() if value not in ("", None)} for row in kept]
    return [{**row, "epoch": row["epoch"] - 1} for row in restored]

"""Continue an interrupted training run in its own directory (``resume=true``).

``keras.callbacks.BackupAndRestore`` keeps the weights, the optimizer state and
the epoch counter in ``<run dir>/backup`` after every epoch, and deletes the
backup when training ends. The rest of a run's state is rebuilt from the
epochs that finished, as ``history.csv`` records them: the best-so-far metric
(``BestModelCheckpoint``) and early stopping's patience count are replayed
from its rows. Rows written for an epoch the backup does not include (the
process died between the two writes) are dropped, so every epoch is listed once.

No TensorFlow here: the run directory is checked before any heavy import.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from omegaconf import DictConfig

from kfactory.errors import ConfigError

BACKUP_DIR = "backup"
HISTORY_FILE = "history.csv"
BACKUP_METADATA = "training_metadata.json"  # BackupAndRestore's record of the epochs done
RUN_FILES = (HISTORY_FILE, "model.keras", BACKUP_DIR)  # what a started training run leaves


def backup_dir(run_dir: Path) -> Path:
    """Where BackupAndRestore keeps this run's state (a sub-folder per fine-tuning phase)."""
    return run_dir / BACKUP_DIR


def drop_empty_backup(run_dir: Path) -> None:
    """Remove ``backup/`` once every phase's BackupAndRestore has deleted its own folder in it."""
    folder = backup_dir(run_dir)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def finished_epochs(run_dir: Path) -> int:
    """How many epochs the run's backup holds (the latest phase's count), 0 if none."""
    counts = [json.loads(p.read_text())["epoch"] for p in backup_dir(run_dir).rglob(BACKUP_METADATA)]
    return max(counts, default=0)


def check_run_dir(cfg: DictConfig, run_dir: Path, dir_key: str = "hydra.run.dir") -> None:
    """Refuse to overwrite a training run, or to resume one that has nothing to resume."""
    if cfg.task != "train":
        return
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not cfg.resume:
        if found:
            raise ConfigError(
                dir_key,
                str(run_dir),
                f"a directory without a training run (it holds {', '.join(found)}): add resume=true to "
                "continue that run, or choose another directory",
            )
        return
    if found and not backup_dir(run_dir).is_dir():
        state = (
            "finished (metrics.json)"
            if (run_dir / "metrics.json").exists()
            else "stopped before its first epoch ended, or stopped on an error"
        )
        raise ConfigError(
            "resume",
            True,
            f"a run directory with a backup to resume from; {run_dir} has no {BACKUP_DIR}/: its run {state}",
        )


def restore_history(run_dir: Path) -> list[dict[str, float]]:
    """The rows of history.csv for the epochs the backup holds; later rows are removed from the file."""
    path = run_dir / HISTORY_FILE
    if not path.is_file():
        return []
    done = finished_epochs(run_dir)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        rows = [row for row in reader if int(row["epoch"]) < done]
    if not fields:  # empty: CSVLogger must write the header again
        path.unlink()
        return []
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return [{key: float(value) for key, value in row.items() if value not in ("", None)} for row in rows]

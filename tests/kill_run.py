"""Run ``run.py`` and SIGKILL it at a chosen instant around an epoch's end (fault injection for resume tests).

``python tests/kill_run.py POINT EPOCH ARGS...`` trains with ARGS and kills
itself in epoch EPOCH (counted from 0) at POINT:

- ``history_row``: history.csv and model.keras have the epoch, the backup does not;
- ``weights_partial``: the backup's new weights file is written but not yet renamed into place;
- ``before_metadata``: the new weights are in place, the epoch counter still names the old ones;
- ``after_metadata``: the backup is complete, the previous weights not yet removed;
- ``before_metrics``: training ended (EPOCH is ignored), metrics.json not yet written.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kfactory.train import backup as backup_module  # noqa: E402
from kfactory.train import loop  # noqa: E402


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, epoch: int) -> None:
    """Patch the backup and the end of training so the process dies at ``point``."""
    backup = backup_module.AtomicBackupAndRestore
    on_epoch_end, save_model = backup.on_epoch_end, backup._save_model
    real_replace, real_write = os.replace, backup_module.write_json_atomic
    saving = {"epoch": None}  # the epoch being backed up, while its backup is written

    def epoch_end(self, current, logs=None):
        if point == "history_row" and current == epoch:
            die()
        on_epoch_end(self, current, logs)

    def save(self):
        saving["epoch"] = self._current_epoch - 1
        try:
            save_model(self)
        finally:
            saving["epoch"] = None

    def replace(src, dst):
        if point == "weights_partial" and saving["epoch"] == epoch:
            die()
        real_replace(src, dst)

    def write_json(path, payload):
        if point == "before_metadata" and saving["epoch"] == epoch:
            die()
        real_write(path, payload)
        if point == "after_metadata" and saving["epoch"] == epoch:
            die()

    backup.on_epoch_end, backup._save_model = epoch_end, save
    os.replace, backup_module.write_json_atomic = replace, write_json
    if point == "before_metrics":
        loop.write_final_summaries = lambda *args, **kwargs: die()


if __name__ == "__main__":
    point, epoch = sys.argv[1], int(sys.argv[2])
    arm(point, epoch)
    sys.argv = [str(Path(__file__).resolve().parent.parent / "run.py"), *sys.argv[3:]]
    runpy.run_path(sys.argv[0], run_name="__main__")

"""A Slurm job's requeue signal, held until the epoch in progress is backed up."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import keras

log = logging.getLogger(__name__)


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

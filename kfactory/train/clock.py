"""Where a run's time goes: before its first training step, and after its last.

A search pays both for every trial (reading the data, building and tracing the
model; then loading the best epoch, the final evaluations, the reports), so
``metrics.json`` records them as ``setup_s`` and ``finish_s`` beside
``wall_time_s``, and a search with a budget reports their medians.
"""

from __future__ import annotations

import time

import keras

TIMING_KEYS = ("wall_time_s", "setup_s", "finish_s", "test_ms_per_image")  # timings, not results


class RunClock(keras.callbacks.Callback):
    """The moments the first training step and the last fit ended, for ``times``."""

    def __init__(self, started: float) -> None:
        super().__init__()
        self.started = started
        self.first_step: float | None = None
        self.fit_end: float | None = None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.first_step is None:
            self.first_step = time.time()

    def on_train_end(self, logs: dict | None = None) -> None:
        self.fit_end = time.time()  # each fine-tuning phase is a fit; the last one's end counts

    def times(self) -> dict[str, float]:
        """wall_time_s, and setup_s and finish_s when training took a step in this process."""
        now = time.time()
        times = {"wall_time_s": now - self.started}
        if self.first_step is not None and self.fit_end is not None:
            times.update(setup_s=self.first_step - self.started, finish_s=now - self.fit_end)
        return times

"""Summary work queued at an epoch's end and run on a thread of its own once the next epoch begins.

Not beside the checkpoint and backup writes at the epoch's end, whose Python
would wait for the thread's; during the next epoch's steps Python is idle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

THREAD_PREFIX = "kfactory-"


class Deferred:
    """One piece of work at a time: ``defer`` queues it, ``start`` runs it on a thread, ``wait`` joins it."""

    def __init__(self, name: str, target: Callable[..., None]) -> None:
        self.name, self.target = f"{THREAD_PREFIX}{name}", target
        self.pending: tuple | None = None  # the arguments of work not started yet
        self.thread: threading.Thread | None = None

    def defer(self, *args: Any) -> None:
        """Queue ``target(*args)``, after the work already running (kept in epoch order)."""
        self.wait()
        self.pending = args

    def start(self) -> None:
        if self.pending is None:
            return
        # Not a daemon: joined at exit, as a thread killed inside a TensorFlow op aborts the interpreter.
        self.thread = threading.Thread(target=self.target, args=self.pending, name=self.name, daemon=False)
        self.pending = None
        self.thread.start()

    def finish(self) -> None:
        """Run what is queued and wait until all of it is written."""
        self.start()
        self.wait()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None


def wait_for_all() -> None:
    """Join every summary thread still running (a run cut short never reached its ``finish``)."""
    for thread in threading.enumerate():
        if thread.name.startswith(THREAD_PREFIX) and thread is not threading.current_thread():
            thread.join()

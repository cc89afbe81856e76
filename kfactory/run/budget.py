"""A search's time budget: its parsing, the ledger that carries it across a kill, and the jobs' deadline.

``auto.budget`` (``experiment=auto``) becomes ``hydra.sweeper.budget``. The sweeper
keeps ``budget.json`` in the sweep root: the budget and the seconds each command
spent on it, written every few seconds by a thread, so the same command run again
after a kill continues with what is left. Each job is told the wall-clock second
its training must end by through one environment variable (``hydra.job.env_set``),
which the run's ``kfactory.train.deadline.Deadline`` callback reads. No TensorFlow here.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

from kfactory.errors import ConfigError

BUDGET_FILE = "budget.json"  # in the sweep root
DEADLINE_ENV = "KFACTORY_DEADLINE"  # the job's deadline, seconds since the epoch
MIN_BUDGET_S = 60.0  # one trial of the smallest model: start, build, trace, an epoch and its evaluation
END_RESERVE_S = 5.0  # after the last job: the leaderboard and the results files
TICK_S = 5.0  # how often the ledger records the time spent
IMAGES_PER_BUDGET_S = 10  # experiment=auto: a trial's epoch trains on at most this many images per second of budget
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
IMPORTED_AT = time.time()  # kfactory.app imports this module first thing: about when the command started
ACCEPTED = "a duration such as 90s, 30m, 1h or 1h30m (or a number of seconds)"


def parse_budget(value: object, key: str = "auto.budget") -> float:
    """Seconds from ``90``, ``'90s'``, ``'30m'``, ``'1h30m'``; ConfigError (one line) otherwise or below the minimum."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(key, value, ACCEPTED)
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        elif text and re.fullmatch(f"(?:{DURATION.pattern})+", text):
            seconds = sum(float(n) * UNITS[u] for n, u in DURATION.findall(text))
        else:
            raise ConfigError(key, value, ACCEPTED)
    if seconds < MIN_BUDGET_S:
        raise ConfigError(
            key,
            value,
            f"at least {format_duration(MIN_BUDGET_S)}: one trial of the smallest model needs that much "
            "(start, build, trace, one epoch, its evaluation)",
        )
    return seconds


def images_per_epoch(budget: object) -> int | None:
    """``experiment=auto``'s ``trainer.max_images_per_epoch`` for ``budget``: IMAGES_PER_BUDGET_S a second of it
    (18,000 for 30m), so that on a large folder the pruner still sees many trials' epochs; None for a budget
    that does not parse (the search refuses it in one line)."""
    try:
        return int(IMAGES_PER_BUDGET_S * parse_budget(budget))
    except ConfigError:
        return None


def format_duration(seconds: float) -> str:
    """``1h 05m``, ``12m 04s``, ``45s``."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"


class BudgetLedger:
    """The sweep root's ``budget.json``: the budget and each command's seconds spent on it.

    ``start`` opens this command's session and starts a thread that records its
    time every ``TICK_S`` seconds (a kill loses at most that much); ``close`` records
    the end. A budget given again with another value replaces the old one; the
    time already spent still counts.
    """

    def __init__(self, root: Path, budget_s: float, started: float | None = None) -> None:
        self.path = Path(root) / BUDGET_FILE
        self.budget_s = budget_s
        self.earlier: list[float] = []  # the seconds of each earlier command on this sweep
        if self.path.is_file():
            self.earlier = [float(s) for s in json.loads(self.path.read_text()).get("sessions_s", [])]
        self.earlier_s = sum(self.earlier)
        self.started = time.time() if started is None else started  # this command's start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def spent_s(self) -> float:
        """Seconds spent by earlier commands and this one so far."""
        return self.earlier_s + (time.time() - self.started)

    @property
    def left_s(self) -> float:
        return self.budget_s - self.spent_s

    @property
    def deadline(self) -> float:
        """The wall-clock second this command must end by."""
        return self.started + self.budget_s - self.earlier_s

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write()
        self._thread = threading.Thread(target=self._tick, name="budget-ledger", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.write()

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            self.write()

    def write(self) -> None:
        """Record the sessions so far, this one's up to now, atomically."""
        sessions = [*self.earlier, round(time.time() - self.started, 1)]
        record = {"budget_s": self.budget_s, "spent_s": round(sum(sessions), 1), "sessions_s": sessions}
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(temporary, self.path)


def deadline_link(deadline: float) -> list[str]:
    """The per-job Hydra override that tells a job when its training must end."""
    return [f"++hydra.job.env_set.{DEADLINE_ENV}={deadline:.1f}"]


def job_deadline() -> float | None:
    """This job's deadline (seconds since the epoch) when a budgeted search launched it, else None."""
    value = os.environ.get(DEADLINE_ENV)
    return float(value) if value else None

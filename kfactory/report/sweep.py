"""The sweep leaderboard: a Hydra callback that sums up every job of a multirun.

After the last job, ``summary.csv`` and ``summary.md`` at the sweep root hold one
row per job (the overrides that differ, status, final metrics, epochs, wall time),
best first by ``trainer.monitor``. Jobs that differ only in ``data.fold`` form a
cross-validation group: a row per group (``data.fold`` reads ``mean``) holds each metric's
mean and ``<metric>_std`` over its finished folds, before its folds' rows, groups best first
by their mean. No TensorFlow here: this runs in the launcher.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from kfactory.config.resolvers import (  # registers the resolvers (also in launcher workers)
    FOLD_KEY,
    JOB_OFFSET_FILE,
    VARIED_KEYS_FILE,
    fold_group,
    next_job_number,
)
from kfactory.overrides import split_override
from kfactory.registry import TIE_BREAK, metric_direction
from kfactory.report.folds import FOLDS_KEY, STD_SUFFIX, fold_means, is_number
from kfactory.run.budget import BUDGET_FILE
from kfactory.schema import TrainerConfig

ERROR_FILE = "error.txt"  # kfactory.app writes it in a failed job's directory
METRICS_FILES = ("metrics.json", "eval_metrics.json")  # task=train, task=eval
SUMMARY_CSV, SUMMARY_MD = "summary.csv", "summary.md"
OPTUNA_RESULTS = "optimization_results.yaml"  # the Optuna sweeper's; with several objectives it lists the Pareto front
STATUS_ORDER = {"ok": 0, "pruned": 1, "failed": 2}  # how the table ranks jobs before their metric
TOP_ROWS = 10
TRADE_OFFS = ("params", "test_ms_per_image")  # lower is better: what a search with a budget weighs accuracy against
GROUP_COLUMN = "cv_group"  # a fold's cross-validation group (kfactory.config.resolvers.fold_group)
MEAN_ROW = "mean"  # the data.fold cell of a group's row


class SweepSummary(Callback):
    """Record the varied keys before the jobs; write the leaderboard after them, exit 1 if a job failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Job directories are named after these keys only (kfactory.config.resolvers.job_dirname)
        root = Path(str(config.hydra.sweep.dir))
        root.mkdir(parents=True, exist_ok=True)
        (root / VARIED_KEYS_FILE).write_text("".join(f"{key}\n" for key in varied_keys(config)))
        (root / JOB_OFFSET_FILE).write_text(f"{first_job_number(config, root)}\n")
        if config.task == "train" and config.trainer.tensorboard.hparams:
            from kfactory.train.hparams import sweep_experiment, write_summary

            write_summary(root, sweep_experiment(config))  # the HParams dashboard's one config for all jobs

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(str(config.hydra.sweep.dir))
        exclude = OmegaConf.select(config, "hydra.job.config.override_dirname.exclude_keys", default=None) or []
        table = summarize_sweep(root, [str(key) for key in exclude])
        if table.empty:
            return
        jobs = table[table["job"].notna()]  # not the cross-validation groups' rows
        failed = int((jobs["status"] == "failed").sum())
        pruned = int((jobs["status"] == "pruned").sum())
        counts = f"{failed} failed" + (f", {pruned} pruned" if pruned else "")
        print(f"\nSweep summary ({len(jobs)} jobs, {counts}): {root / SUMMARY_CSV}")
        print(table.attrs["shown"].head(TOP_ROWS).to_string(index=False))
        print(f"\nView: tensorboard --logdir {root}\n")
        if failed:
            raise SystemExit(1)  # so the multirun's exit status says that some jobs failed


def first_job_number(config: DictConfig, root: Path) -> int:
    """Where this multirun's job numbers start.

    Hydra's basic sweeper numbers jobs from 0, so running a sweep again into the
    same folder would land its jobs in the earlier ones' folders. They continue
    after the highest number instead, unless the command line resumes
    (``resume=true|auto``: each job goes back to its own folder). kfactory's
    Optuna sweeper numbers its trials after the earlier ones itself.
    """
    basic = str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).endswith(".BasicSweeper")
    resumes = any(split_override(o)[0] == "resume" and split_override(o)[1] != "false" for o in overrides_of(config))
    return next_job_number(root) if basic and not resumes else 0


def overrides_of(config: DictConfig) -> list[str]:
    """The multirun's command-line overrides."""
    return [str(o) for o in config.hydra.overrides.task]


def varied_keys(config: DictConfig) -> list[str]:
    """Keys with several values: command-line sweeps (``a=1,2``) and the sweeper's ``params`` (Optuna)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [o.key_or_group for o in overrides if o.is_sweep_override()]
    fixed = {o.key_or_group for o in overrides if not o.is_sweep_override()}  # a plain value stops a search
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    return list(dict.fromkeys([*keys, *(key for key in params if key not in fixed)]))


def summarize_sweep(root: Path, exclude_keys: Iterable[str] = ()):
    """Read every job under ``root``, write summary.csv and summary.md, return the table.

    ``exclude_keys``: hydra.job.config.override_dirname.exclude_keys, for the names of
    cross-validation groups (as the jobs name their TensorBoard session groups).
    """
    import pandas as pd  # only at the end of a sweep, not on every start

    jobs = sorted(p.parent.parent for p in root.glob("*/.hydra/overrides.yaml"))
    if not jobs:
        return pd.DataFrame()
    overrides = {job: read_overrides(job) for job in jobs}
    rows = [read_job(job, overrides[job]) for job in jobs]
    monitor = next((m for m in (read_monitor(job) for job in jobs) if m), TrainerConfig.monitor)
    mode = next((m for m in (read_monitor(job, "monitor_mode") for job in jobs) if m), TrainerConfig.monitor_mode)
    metrics = next((m for m in (read_monitor(job, "metrics") for job in jobs) if m), [])
    table = pd.DataFrame(rows)
    pareto = pareto_jobs(root)
    if pareto is None and (root / BUDGET_FILE).exists():  # experiment=auto: accuracy against size and speed
        pareto = trade_off_front(table, monitor, mode, metrics)
    if pareto is not None:  # a multi-objective search, or one with a budget: mark its Pareto-optimal trials
        table["pareto"] = table["job"].isin(pareto)
    if (chosen := chosen_job(root)) is not None:  # a search with a budget: the trial it ends with
        table["chosen"] = table["job"] == chosen
    override_keys = list(dict.fromkeys(key for job in jobs for key, _ in overrides[job]))
    lead = leading_columns(table, override_keys, monitor)
    table = sort_by_monitor(table[lead + [c for c in table.columns if c not in lead]], monitor, mode, metrics)
    # The printed and markdown tables leave out what every job shares
    hidden = ["overrides", "dir", *(k for k in override_keys if k not in lead)]
    shown = table.drop(columns=hidden)
    text = f"Best first by `{monitor}`.\n\n{markdown_table(shown)}"
    if FOLD_KEY in override_keys:
        pairs = {job.name: overrides[job] for job in jobs}
        table, groups = group_folds(table, pairs, override_keys, (monitor, mode, metrics), exclude_keys, root)
        shown = mean_cells(groups.drop(columns=["job", FOLD_KEY, *hidden]))
        text = (
            f"## Cross-validation\n\nMean ± std over each group's finished folds, best first by `{monitor}`."
            f"\n\n{markdown_table(shown)}\n\n## Folds\n\n{text}"
        )
    table.to_csv(root / SUMMARY_CSV, index=False)
    table.attrs["shown"] = shown
    (root / SUMMARY_MD).write_text(f"# Sweep {root.name}\n\n{text}\n")
    return table


def group_folds(
    table,
    overrides: dict[str, list[tuple[str, str]]],
    override_keys: list[str],
    monitor: tuple[str, str, Any],
    exclude_keys: Iterable[str],
    root: Path,
):
    """(``table`` with each cross-validation group's row before its folds' rows, the groups' rows).

    A group is the jobs whose overrides other than ``data.fold`` are the same; groups
    rank best first by their mean ``monitor`` (trainer.monitor, monitor_mode and metrics).
    """
    import pandas as pd

    keys = [" ".join(f"{k}={v}" for k, v in overrides[name] if k != FOLD_KEY) for name in table["dir"]]
    names = [fold_group([f"{k}={v}" for k, v in overrides[name]], exclude_keys, root) for name in table["dir"]]
    table = table.assign(**{GROUP_COLUMN: names})
    fixed = {"job", GROUP_COLUMN, "status", "pareto", "chosen", "overrides", "dir", *override_keys}
    metrics = [c for c in table.columns if c not in fixed]
    groups = sort_by_monitor(group_rows(table, keys, override_keys, metrics), *monitor)
    parts = []
    for index, key in enumerate(groups["overrides"]):
        members = table[[k == key for k in keys]]
        parts += [groups.iloc[[index]], members.sort_values(FOLD_KEY, key=lambda s: pd.to_numeric(s, errors="coerce"))]
    stds = [f"{m}{STD_SUFFIX}" for m in metrics if f"{m}{STD_SUFFIX}" in groups.columns]
    lead = [c for c in table.columns if c not in ("overrides", "dir", GROUP_COLUMN)]
    at = lead.index("status") + 1
    order = ["job", GROUP_COLUMN, *lead[1:at], FOLDS_KEY, *lead[at:], *stds, "overrides", "dir"]
    combined = pd.concat(parts, ignore_index=True)[order]
    combined["job"] = combined["job"].astype(object).where(combined["job"].notna(), None)
    combined[FOLDS_KEY] = combined[FOLDS_KEY].astype("Int64")  # 3, and blank on a fold's row (not 3.0 and NaN)
    return combined, groups


def group_rows(table, keys: list[str], override_keys: list[str], metrics: list[str]):
    """One row per cross-validation group (``keys``: each job's overrides less ``data.fold``).

    It holds the group's overrides (``data.fold``: mean), its worst status, how many of
    its folds finished (``folds``), and each metric's mean and ``<metric>_std`` over those.
    """
    import pandas as pd

    rows = []
    for key, members in table.groupby(pd.Series(keys, index=table.index), sort=False):
        ok = members[members["status"] == "ok"]
        first = members.iloc[0]
        row: dict[str, Any] = {"job": None, GROUP_COLUMN: first[GROUP_COLUMN]}
        row.update({name: first[name] for name in override_keys})
        row[FOLD_KEY] = MEAN_ROW
        row["status"] = max(members["status"], key=STATUS_ORDER.get)
        row[FOLDS_KEY] = len(ok)
        row.update(fold_means(ok[metrics].to_dict("records")))
        row.update(overrides=key, dir="")
        rows.append(row)
    return pd.DataFrame(rows)


def mean_cells(groups):
    """The groups' rows with each metric as ``mean ± std`` text (the std columns folded in)."""
    stds = [c for c in groups.columns if c.endswith(STD_SUFFIX) and c[: -len(STD_SUFFIX)] in groups.columns]
    shown = groups.drop(columns=stds)
    for std in stds:
        metric = std[: -len(STD_SUFFIX)]
        cells = zip(groups[metric], groups[std], strict=True)
        shown[metric] = [f"{m:.4g} ± {s:.2g}" if is_number(m) else "" for m, s in cells]
    return shown


def read_job(job: Path, overrides: list[tuple[str, str]]) -> dict[str, Any]:
    """One row: job number, ``overrides`` (one column per key), status, metrics, epochs, time."""
    number = job.name.split("_", 1)[0]
    row: dict[str, Any] = {"job": int(number) if number.isdigit() else job.name}
    row.update(overrides)
    metrics = read_metrics(job)
    failed = (job / ERROR_FILE).exists() or metrics is None
    status = "failed" if failed else "pruned" if metrics.get("pruned") else "ok"  # pruned: stopped by the search
    row.update(status=status, **(metrics or {}))
    if "epochs_run" not in row:  # metrics.json has both for a finished job
        row["epochs_run"] = count_epochs(job)
    if "wall_time_s" not in row:
        row["wall_time_s"] = elapsed(job)
    row.update(overrides=" ".join(f"{k}={v}" for k, v in overrides), dir=job.name)
    return row


def trade_off_front(table, monitor: str, mode: str, metrics: Any = ()) -> list[int]:
    """The finished jobs no other beats on ``monitor`` and matches on size (``params``) and speed
    (``test_ms_per_image``): the Pareto front of accuracy against size and speed."""
    import numpy as np

    needed = [monitor, *TRADE_OFFS]
    if not set(needed) <= set(table.columns):
        return []
    done = table[(table["status"] == "ok") & table[needed].notna().all(axis=1)]
    sign = 1 if (mode if mode in ("min", "max") else metric_direction(monitor, metrics or ())) == "min" else -1
    costs = np.column_stack([sign * done[monitor].to_numpy(float), *(done[c].to_numpy(float) for c in TRADE_OFFS)])
    front = [
        job
        for job, cost in zip(done["job"], costs, strict=True)
        if not any((other <= cost).all() and (other < cost).any() for other in costs)
    ]
    return sorted(front)


def chosen_job(root: Path) -> int | None:
    """The job a search with a budget ended with (its ``best_dir``, which may not top the table: of trials
    its validation split cannot tell apart it is the smallest); None for any other sweep."""
    path = root / OPTUNA_RESULTS
    if not path.exists():
        return None
    results = OmegaConf.load(path)
    job = OmegaConf.select(results, "best_job", default=None)
    return job if OmegaConf.select(results, "best_dir", default=None) and isinstance(job, int) else None


def pareto_jobs(root: Path) -> list[int] | None:
    """The job numbers of a multi-objective Optuna search's Pareto front; None for any other sweep."""
    path = root / OPTUNA_RESULTS
    if not path.exists():
        return None
    solutions = OmegaConf.select(OmegaConf.load(path), "solutions", default=None)
    return None if solutions is None else [s.job for s in solutions if s.get("job") is not None]


def read_overrides(job: Path) -> list[tuple[str, str]]:
    """The job's command-line overrides as (key, value) pairs; ``hydra.*`` settings (a sweeper's per-job
    environment, say) are not hyperparameters and are left out."""
    pairs = [split_override(str(o)) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")]
    return [(key, value) for key, value in pairs if not key.startswith("hydra.")]


def read_metrics(job: Path) -> dict[str, Any] | None:
    for name in METRICS_FILES:
        if (job / name).exists():
            return json.loads((job / name).read_text())
    return None


def read_monitor(job: Path, key: str = "monitor") -> Any:
    """A job's ``trainer.<key>`` as it ran (None if it has no saved config or no such key)."""
    config = job / ".hydra" / "config.yaml"
    if not config.exists():
        return None
    return OmegaConf.select(OmegaConf.load(config), f"trainer.{key}", default=None)


def count_epochs(job: Path) -> int:
    """Epochs a job finished, from history.csv (one row each); 0 if it never trained."""
    history = job / "history.csv"
    if not history.exists():
        return 0
    return max(len(history.read_text().strip().splitlines()) - 1, 0)


def elapsed(job: Path) -> float:
    """Wall time of a job without metrics.json: from its config to its last file."""
    started = (job / ".hydra" / "config.yaml").stat().st_mtime
    last = max(p.stat().st_mtime for p in job.iterdir())
    return max(last - started, 0.0)


def leading_columns(table, override_keys: list[str], monitor: str) -> list[str]:
    """Job, the override keys that differ between jobs (all if none differ), status, the monitored value."""
    varying = [k for k in override_keys if table[k].nunique(dropna=False) > 1] or override_keys
    lead = ["job", *varying, "status", *(c for c in ("pareto", "chosen") if c in table.columns)]
    return lead + [c for c in ranking_columns(monitor) if c in table.columns]


def ranking_columns(monitor: str) -> tuple[str, str]:
    """What the summary ranks by: the saved model's ``monitor`` on the whole split, else the best epoch's value.

    They differ when ``trainer.validation_steps`` limits the per-epoch validation to a few batches.
    """
    return monitor, f"best_{monitor}"


def markdown_table(table) -> str:
    """A DataFrame as a GitHub markdown table (pandas' to_markdown needs tabulate)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.4g}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def sort_by_monitor(table, monitor: str, mode: str = "auto", metrics: Any = ()):
    """Best first by ``monitor`` (lower is better for a loss or an error, or with ``mode`` min), ties by
    the lower ``TIE_BREAK``.

    Pruned jobs come after finished ones, failed jobs last.
    """
    column = next((c for c in ranking_columns(monitor) if c in table.columns), None)
    if column is None:
        return table.sort_values("job").reset_index(drop=True)
    ascending = (mode if mode in ("min", "max") else metric_direction(monitor, metrics or ())) == "min"
    by, order = [column], [ascending]
    if TIE_BREAK in table.columns and TIE_BREAK not in column:
        by, order = [column, TIE_BREAK], [ascending, True]
    table = table.sort_values(by, ascending=order, na_position="last", kind="stable")
    return table.sort_values("status", key=lambda s: s.map(STATUS_ORDER), kind="stable").reset_index(drop=True)

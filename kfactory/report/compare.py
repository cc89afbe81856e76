"""Compare runs outside TensorBoard: every scalar of every run in one DataFrame.

    python -m kfactory.report.compare outputs/multiruns/<sweep> outputs/runs/<run> --csv scalars.csv
    python -m kfactory.compare outputs/ --plot validation/epoch_accuracy --png accuracy.png

Event files are read with TensorBoard's own reader. A run is a directory that
holds event files; its name is the path below the given directory, and for a
kfactory run it splits into the job (``3_model=vgg16``) and the series (``train``,
``validation``, or empty for the run's own ``tensorboard/`` directory).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from tensorboard.backend.event_processing import plugin_event_accumulator as accumulator
from tensorboard.util import tensor_util

from kfactory.registry import metric_direction

EVENT_GLOB = "events.out.tfevents.*"
TB_DIR = "tensorboard"  # a kfactory run's TensorBoard directory
DEFAULT_SORT = ("validation/epoch_accuracy", "final/val_accuracy", "validation/epoch_loss")


def find_runs(roots: list[Path]) -> dict[str, Path]:
    """Run name -> directory, for every directory below ``roots`` that holds event files."""
    runs: dict[str, Path] = {}
    for root in roots:
        for folder in sorted({p.parent for p in root.rglob(EVENT_GLOB)}):
            relative = folder.relative_to(root).as_posix()
            # a run directory itself, or several roots: name runs after the root too
            if len(roots) > 1 or relative == "." or relative.split("/")[0] == TB_DIR:
                relative = f"{root.resolve().name}/{relative}".removesuffix("/.")
            runs[relative] = folder
    return runs


def read_scalars(folder: Path) -> pd.DataFrame:
    """The scalars of one run directory as (tag, step, wall_time, value) rows."""
    events = accumulator.EventAccumulator(str(folder), size_guidance={accumulator.TENSORS: 0})
    events.Reload()
    rows = []
    for tag in events.Tags()[accumulator.TENSORS]:
        if events.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        for event in events.Tensors(tag):
            value = float(tensor_util.make_ndarray(event.tensor_proto))
            rows.append((tag, event.step, event.wall_time, value))
    return pd.DataFrame(rows, columns=["tag", "step", "wall_time", "value"])


def load_scalars(roots: list[Path]) -> pd.DataFrame:
    """Every scalar below ``roots``: run, job, series, tag, metric (series/tag), step, wall_time, value."""
    frames = []
    for name, folder in find_runs(roots).items():
        frame = read_scalars(folder)
        job, series = split_run(name)
        metrics = [metric_name(series, tag) for tag in frame.tag]
        frames.append(frame.assign(run=name, job=job, series=series, metric=metrics))
    columns = ["run", "job", "series", "tag", "metric", "step", "wall_time", "value"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def split_run(name: str) -> tuple[str, str]:
    """``3_model=vgg16/tensorboard/validation`` -> (``3_model=vgg16``, ``validation``)."""
    parts = name.split("/")
    if TB_DIR not in parts:
        return name, ""
    at = len(parts) - 1 - parts[::-1].index(TB_DIR)
    return "/".join(parts[:at]) or ".", "/".join(parts[at + 1 :])


def metric_name(series: str, tag: str) -> str:
    """``validation`` + ``epoch_accuracy`` -> ``validation/epoch_accuracy``."""
    return f"{series}/{tag}" if series else tag


def leaderboard(scalars: pd.DataFrame, sort: str | None = None) -> pd.DataFrame:
    """One row per job: the last value of every metric (and epochs), best first by ``sort``."""
    if scalars.empty:
        return pd.DataFrame()
    scalars = scalars[~scalars.tag.str.endswith("_vs_iterations")]  # Keras' evaluate() logs, not per epoch
    last = scalars.sort_values("step").groupby(["job", "metric"]).last()["value"].unstack("metric")
    epochs = scalars[scalars.tag.str.startswith("epoch_")].groupby("job")["step"].max()  # steps count epochs from 1
    last.insert(0, "epochs", epochs.reindex(last.index))
    sort = sort or next((c for c in DEFAULT_SORT if c in last.columns), None)
    if sort is not None:
        if sort not in last.columns:
            raise SystemExit(f"--sort {sort}: no such metric; choose from {', '.join(last.columns)}")
        last = last.sort_values(sort, ascending=metric_direction(sort) == "min", na_position="last")
    return last


def plot_metric(scalars: pd.DataFrame, metric: str, png: Path) -> None:
    """Draw ``metric`` (``series/tag``, or a bare tag) against step, one line per job."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    chosen = scalars[(scalars.metric == metric) | (scalars.tag == metric)]
    if chosen.empty:
        raise SystemExit(f"--plot {metric}: no such metric; choose from {', '.join(sorted(set(scalars.metric)))}")
    figure = Figure(figsize=(8, 5), dpi=100)
    axes = figure.add_subplot()
    for (job, series), points in chosen.groupby(["job", "series"]):
        points = points.sort_values("step")
        label = job if chosen.series.nunique() == 1 else f"{job} {series}"
        axes.plot(points.step, points.value, marker="o", markersize=3, label=label)
    axes.set_xlabel("epoch" if chosen.tag.str.startswith("epoch_").all() else "step")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(metric)
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kfactory.compare", description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run, sweep or outputs directories")
    parser.add_argument("--csv", type=Path, help="write every scalar (run, job, series, tag, step, value) here")
    parser.add_argument("--sort", help="leaderboard column, e.g. validation/epoch_loss (default: val accuracy)")
    parser.add_argument("--plot", help="metric to draw, e.g. validation/epoch_accuracy")
    parser.add_argument("--png", type=Path, help="where --plot writes its PNG (default: <metric>.png)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        raise SystemExit(f"not a directory: {', '.join(missing)}")
    scalars = load_scalars(args.dirs)
    if scalars.empty:
        raise SystemExit(f"no TensorBoard scalars below {', '.join(map(str, args.dirs))}")
    board = leaderboard(scalars, args.sort)
    shown = {"display.expand_frame_repr": False, "display.max_columns": None, "display.float_format": "{:.4g}".format}
    with pd.option_context(*(item for pair in shown.items() for item in pair)):  # one line per job
        print(board)
    if args.csv:
        scalars.to_csv(args.csv, index=False)
        print(f"Scalars: {args.csv} ({len(scalars)} rows)")
    if args.plot:
        png = args.png or Path(args.plot.replace("/", "_") + ".png")
        plot_metric(scalars, args.plot, png)
        print(f"Plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

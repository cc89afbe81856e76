"""CLI latency: `run.py --help` and `--cfg job` against `python -c "import tensorflow"`.

Each command runs in a fresh process several times; prints the median, the
spread (min-max) and the ratio of each CLI command to the TensorFlow import.
Target: each ratio <= 0.25.

    python benchmarks/cli_latency.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.25


def time_command(args: list[str], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (user+sys) seconds of ``args`` in a fresh process, ``repeats`` times.

    One extra first run only warms the OS file cache. CPU time is the steadier
    figure when other processes share the cores.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    walls, cpus = [], []
    for attempt in range(repeats + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(args, cwd=ROOT, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if attempt:
            walls.append(wall)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return walls, cpus


def summary(times: list[float]) -> str:
    return f"{statistics.median(times):6.2f} s ({min(times):.2f}-{max(times):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    run_dir = tempfile.mkdtemp(prefix="kfactory-cli-")
    python = sys.executable
    print(f"{'command':32s} {'wall median (min-max)':24s} {'CPU median (min-max)':24s} ratio wall / CPU")
    base_wall, base_cpu = time_command([python, "-c", "import tensorflow"], args.repeats)
    label = 'python -c "import tensorflow"'
    print(f"{label:32s} {summary(base_wall):24s} {summary(base_cpu):24s}")
    worst = 0.0
    for flags in (["--help"], ["--cfg", "job"]):
        walls, cpus = time_command([python, "run.py", f"hydra.run.dir={run_dir}", *flags], args.repeats)
        ratio = statistics.median(walls) / statistics.median(base_wall)
        cpu_ratio = statistics.median(cpus) / statistics.median(base_cpu)
        worst = max(worst, ratio)
        label = "run.py " + " ".join(flags)
        print(f"{label:32s} {summary(walls):24s} {summary(cpus):24s} {ratio:.3f} / {cpu_ratio:.3f}")
    print(f"target wall ratio <= {TARGET}: {'met' if worst <= TARGET else 'MISSED'} (worst {worst:.3f})")


if __name__ == "__main__":
    main()

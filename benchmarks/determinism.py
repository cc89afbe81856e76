"""What trainer.deterministic=true costs, and what it buys: the same run repeated each way, on the digits.

Each way trains the same settings (``--model`` at ``--size`` px from scratch, ``--epochs`` epochs, seed 0)
with ``python run.py`` in its own process, alternating which way goes first:
  deterministic  trainer.deterministic=true (TensorFlow's deterministic ops; XLA off, as they turn it off)
  default        trainer.deterministic=false with trainer.jit_compile=--jit: false compares the ops alone;
                 auto is the default (on CPU, runs of 500 steps or more time XLA both ways and keep the
                 faster, so the digits need 22 epochs or more for it)
Prints each run's training seconds (``wall_time_s`` less ``setup_s`` and ``finish_s`` from its
metrics.json), the ratio deterministic / default per repeat (median, min-max), and whether the runs of
each way wrote the same ``history.csv``: the deterministic ones must, the default ones may not.

    python benchmarks/determinism.py --model small_cnn --size 32 --repeats 3
    python benchmarks/determinism.py --model small_cnn --size 32 --epochs 30 --jit auto --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WAYS = {"deterministic": "true", "default": "false"}


def train(way: str, model: str, size: int, epochs: int, jit: str, run_dir: Path) -> tuple[float, str]:
    """Training seconds of one run and its history.csv."""
    argv = [sys.executable, str(ROOT / "run.py"), f"model={model}", f"model.input_size={size}", "model.weights=null"]
    jit = "false" if way == "deterministic" else jit
    argv += [f"trainer.epochs={epochs}", f"trainer.jit_compile={jit}", f"trainer.deterministic={WAYS[way]}"]
    argv += ["seed=0", "trainer.verbose=0", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KFACTORY_OFFLINE": "1"}
    subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    seconds = metrics["wall_time_s"] - metrics["setup_s"] - metrics["finish_s"]
    return seconds, (run_dir / "history.csv").read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jit", choices=("false", "auto"), default="false", help="the default way's jit_compile")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    histories: dict[str, set[str]] = {way: set() for way in WAYS}
    with tempfile.TemporaryDirectory() as work:
        for repeat in range(args.repeats):
            order = list(WAYS) if repeat % 2 == 0 else list(WAYS)[::-1]
            for way in order:
                took, history = train(way, args.model, args.size, args.epochs, args.jit, Path(work) / f"{way}-{repeat}")
                seconds[way].append(took)
                histories[way].add(history)
                print(f"repeat {repeat + 1} {way}: {took:.1f} s training", flush=True)
    ratios = [d / p for d, p in zip(seconds["deterministic"], seconds["default"], strict=True)]
    command = f"python benchmarks/determinism.py --model {args.model} --size {args.size} --epochs {args.epochs}"
    command += f" --jit {args.jit}"
    print(f"\n`{command} --repeats {args.repeats}`\n")
    print("| way | training s, median (min-max) | runs that wrote the same history.csv |\n| --- | --- | --- |")
    for way, values in seconds.items():
        same = "all" if len(histories[way]) == 1 else f"{len(histories[way])} different of {args.repeats}"
        print(f"| {way} | {statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f}) | {same} |")
    print(f"\nratio deterministic / default: {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()

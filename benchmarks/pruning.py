"""Pruning: the same Optuna search with pruner=none and pruner=hyperband.

Both searches have the same space, sampler seed and trial count (by default 12
trials of mobilenet_v3_small, or --model, from scratch on the bundled digits at
32 px); each runs in a fresh process into its own sweep directory. Prints the
wall time and the best validation accuracy of each, and the ratio of the times.

    python benchmarks/pruning.py --trials 12 --epochs 8
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
SPACE = [
    "model.weights=null",
    "optimizer.learning_rate=tag(log,interval(1e-4,3e-2))",
    "optimizer=choice(adam,sgd,rmsprop)",
    "data.batch_size=choice(32,64)",
    "model.dropout=interval(0.0,0.5)",
    "trainer.verbose=0",
    "trainer.tensorboard.histogram_freq=0",
    "trainer.tensorboard.summary_freq=0",
]


def run_search(pruner: list[str], args: argparse.Namespace, sweep_dir: Path) -> tuple[float, dict]:
    """Run one search; (wall seconds, optimization_results.yaml as a dict)."""
    command = [sys.executable, str(ROOT / "run.py"), "-m", "hparams_search=optuna", f"model={args.model}", *SPACE]
    command += [f"trainer.epochs={args.epochs}", f"seed={args.seed}", f"hydra.sweeper.n_trials={args.trials}"]
    command += [f"trainer.steps_per_epoch={args.steps or 'null'}", *pruner]
    command += [f"hydra.sweep.dir={sweep_dir}"]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=False, capture_output=True)
    wall = time.perf_counter() - started
    results = sweep_dir / "optimization_results.yaml"
    return wall, OmegaConf.to_container(OmegaConf.load(results)) if results.exists() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v3_small")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch; default: the whole training split")
    args = parser.parse_args()
    hyperband = [
        "hydra.sweeper.pruner=hyperband",
        f"hydra.sweeper.pruner_args={{min_resource: 1, max_resource: {args.epochs}, reduction_factor: 3}}",
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, pruner in (("none", []), ("hyperband", hyperband)):
            wall, results = run_search(pruner, args, Path(tmp) / name)
            rows.append((name, wall, results.get("best_value"), results.get("trials", {})))
            print(f"pruner={name}: {wall:.0f} s, best {results.get('best_value')}, trials {results.get('trials')}")
    base = rows[0][1]
    print("\n| pruner | wall time (s) | best val_accuracy | trials (complete/pruned/fail) | time vs none |")
    print("| --- | --- | --- | --- | --- |")
    for name, wall, best, counts in rows:
        states = "/".join(str(counts.get(k, 0)) for k in ("complete", "pruned", "fail"))
        shown = "n/a" if best is None else f"{best:.4f}"
        print(f"| {name} | {wall:.0f} | {shown} | {states} | {wall / base:.2f}x |")


if __name__ == "__main__":
    main()

"""Sweep memory: RSS after each of 8 sequential tiny training jobs in one process.

Two ways of doing the same work, each in a fresh process:
  kfactory  `python run.py -m seed=1,...,8 ...` (Hydra's basic launcher runs the
            jobs one after another in one process); a Hydra callback records RSS
            after each job.
  plain     a hand-written loop that builds, compiles and fits the same Keras
            application 8 times on the same data, without clearing anything.
Prints peak and current RSS after each job and the growth from job 1 to job 8.
Target: kfactory's growth <= 10%.

    python benchmarks/sweep_memory.py --jobs 8 --model vgg16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.10
JOB_OVERRIDES = [
    "trainer=fast",
    "trainer.epochs=1",
    "trainer.steps_per_epoch=2",
    "trainer.validation_steps=1",
    "trainer.verbose=0",
    "data.batch_size=16",
]


def rss_mib() -> tuple[float, float]:
    """(peak, current) resident memory of this process in MiB (Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return peak, pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def record(path: str) -> None:
    """Append this process's RSS after one job to ``path`` (JSON lines)."""
    peak, current = rss_mib()
    with open(path, "a") as out:
        out.write(json.dumps({"peak_mib": peak, "rss_mib": current}) + "\n")


try:  # the callback class is only needed inside the kfactory process
    from hydra.experimental.callback import Callback

    class RssAfterJob(Callback):
        """Hydra callback: record RSS after every job (after kfactory has cleaned up)."""

        def __init__(self, path: str) -> None:
            self.path = path

        def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
            record(self.path)

except ImportError:  # pragma: no cover
    pass


def run_kfactory(jobs: int, model: str, out: Path, workdir: Path) -> None:
    seeds = ",".join(str(i) for i in range(1, jobs + 1))
    args = [
        sys.executable,
        "run.py",
        "-m",
        f"seed={seeds}",
        f"model={model}",
        *JOB_OVERRIDES,
        f"hydra.sweep.dir={workdir / 'sweep'}",
        "+hydra.callbacks.rss._target_=benchmarks.sweep_memory.RssAfterJob",
        f"+hydra.callbacks.rss.path={out}",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run(args, cwd=ROOT, env=env, check=True, capture_output=True)


def run_plain(jobs: int, model: str, out: Path) -> None:
    """A fresh process that runs ``plain_loop``."""
    code = f"from benchmarks.sweep_memory import plain_loop; plain_loop({jobs}, {model!r}, {str(out)!r})"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True)


def plain_loop(jobs: int, model: str, out: str) -> None:
    """What a user writes by hand: build, compile and fit in a loop, nothing cleared."""
    import keras
    import numpy as np
    from sklearn.datasets import load_digits

    from kfactory.registry import MODELS

    digits = load_digits()
    images = np.repeat(np.kron(digits.images, np.ones((4, 4)))[..., None] * 16, 3, axis=-1).astype("float32")
    labels = keras.utils.to_categorical(digits.target, 10)
    app = getattr(keras.applications, MODELS[model].keras_name)
    for seed in range(1, jobs + 1):
        keras.utils.set_random_seed(seed)
        net = app(weights=None, input_shape=(32, 32, 3), classes=10)
        net.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        validation = (images[-16:], labels[-16:])
        net.fit(images[:32], labels[:32], batch_size=16, epochs=1, verbose=0, validation_data=validation)
        record(out)


def report(name: str, path: Path) -> float:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    print(f"{name}: " + "  ".join(f"job{i + 1} {r['peak_mib']:.0f}/{r['rss_mib']:.0f}" for i, r in enumerate(rows)))
    growth = rows[-1]["peak_mib"] / rows[0]["peak_mib"] - 1
    rss_growth = rows[-1]["rss_mib"] / rows[0]["rss_mib"] - 1
    print(f"{name}: peak RSS growth job 1 -> {len(rows)}: {growth:+.1%}  (current RSS {rss_growth:+.1%})")
    return growth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--skip-plain", action="store_true", help="only the kfactory sweep")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kfactory-sweep-"))
    print(f"{args.jobs} jobs of {args.model} at 32 px on digits; MiB peak/current after each job")
    run_kfactory(args.jobs, args.model, workdir / "kfactory.jsonl", workdir)
    growth = report("kfactory", workdir / "kfactory.jsonl")
    if not args.skip_plain:
        run_plain(args.jobs, args.model, workdir / "plain.jsonl")
        plain = report("plain loop", workdir / "plain.jsonl")
        print(f"growth ratio kfactory/plain: {(1 + growth) / (1 + plain):.3f}")
    print(f"target kfactory growth <= {TARGET:.0%}: {'met' if growth <= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()

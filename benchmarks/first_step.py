"""The first training step with and without kfactory's build before fit (each step traced once).

Plain Keras (no distribution strategy) creates the optimizer's slots and the
compiled metrics' totals while tracing the first training step, and TensorFlow
then traces that step a second time. ``kfactory.train.compute.build_before_fit``
creates them first. Each way runs in its own process (``--model`` at ``--size``
px from scratch, Adam, accuracy, batches of 64 random images), alternating which
goes first; prints the seconds from ``fit``'s call to the end of its first step
(the build included), the ratio plain / built, and the second step's seconds:
the first step less the second is what tracing costs, once per run (and once per
trial of a search).

    python benchmarks/first_step.py --repeats 2
    python benchmarks/first_step.py --repeats 2 --model MobileNetV3Small
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ONE_RUN = """
import sys, time
import keras, numpy as np, tensorflow as tf
from kfactory.train.compute import build_before_fit

rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (256, 32, 32, 3)).astype("float32")
y = keras.utils.to_categorical(rng.integers(0, 10, 256), 10)
size = int(sys.argv[3])
x = tf.image.resize(x, (size, size)).numpy()
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
model = getattr(keras.applications, sys.argv[2])(weights=None, input_shape=(size, size, 3), classes=10)
model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
started = time.perf_counter()
if sys.argv[1] == "built":
    build_before_fit(model, data.element_spec)

class FirstSteps(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        global started
        float(logs["loss"])  # wait for the step to finish
        print(f"{time.perf_counter() - started:.3f}", flush=True)
        started = time.perf_counter()
        if batch == 1:
            self.model.stop_training = True

model.fit(data, epochs=1, verbose=0, callbacks=[FirstSteps()])
"""


def first_steps(way: str, model: str, size: int) -> tuple[float, float]:
    """Seconds of the first and the second training step of one process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", ONE_RUN, way, model, str(size)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    first, second = (float(line) for line in result.stdout.split()[-2:])
    return first, second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="ResNet50", help="a keras.applications class name")
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"plain": [], "built": []}
    seconds: dict[str, list[float]] = {"plain": [], "built": []}
    for repeat in range(args.repeats):
        for way in ("plain", "built") if repeat % 2 == 0 else ("built", "plain"):
            first, second = first_steps(way, args.model, args.size)
            times[way].append(first)
            seconds[way].append(second)
            print(f"repeat {repeat + 1} {way}: first step {first:.1f} s, second {second:.2f} s", flush=True)
    ratios = [p / b for p, b in zip(times["plain"], times["built"], strict=True)]
    command = f"python benchmarks/first_step.py --repeats {args.repeats} --model {args.model} --size {args.size}"
    print(f"\n`{command}` (batch 64)\n")
    print("| way | first step (s), median (min-max) | second step (s), median |\n| --- | --- | --- |")
    for way, values in times.items():
        spread = f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"
        print(f"| {way} | {spread} | {statistics.median(seconds[way]):.2f} |")
    print(f"\nratio plain / built: {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()

"""The first training step with and without kfactory's build before fit (each step traced once).

Plain Keras (no distribution strategy) creates the optimizer's slots and the
compiled metrics' totals while tracing the first training step, and TensorFlow
then traces that step a second time. ``kfactory.train.compute.build_before_fit``
creates them first. Each way runs in its own process (ResNet50 at 32 px, Adam,
accuracy, batches of 64 random images), alternating which goes first; prints the
seconds from ``fit``'s call to the end of its first step (the build included)
and the ratio plain / built.

    python benchmarks/first_step.py --repeats 2
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
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10)
model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
started = time.perf_counter()
if sys.argv[1] == "built":
    build_before_fit(model, data.element_spec)

class FirstStep(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            print(f"{time.perf_counter() - started:.2f}", flush=True)
            self.model.stop_training = True

model.fit(data, epochs=1, verbose=0, callbacks=[FirstStep()])
"""


def first_step(way: str) -> float:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", ONE_RUN, way], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return float(result.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"plain": [], "built": []}
    for repeat in range(args.repeats):
        for way in ("plain", "built") if repeat % 2 == 0 else ("built", "plain"):
            times[way].append(first_step(way))
            print(f"repeat {repeat + 1} {way}: first step {times[way][-1]:.1f} s", flush=True)
    ratios = [p / b for p, b in zip(times["plain"], times["built"], strict=True)]
    print(f"\n`python benchmarks/first_step.py --repeats {args.repeats}` (ResNet50, 32 px, batch 64)\n")
    print("| way | first step (s), median (min-max) |\n| --- | --- |")
    for way, values in times.items():
        print(f"| {way} | {statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f}) |")
    print(f"\nratio plain / built: {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()

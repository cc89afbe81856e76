"""Training throughput: images/s of a kfactory training epoch against a plain Keras 3 script.

For each model and input size, in one process, on the same random images,
labels, batch size and loss (categorical crossentropy, Adam):
  kfactory  kfactory's own code path: configure_tensorflow, make_dataset
            (tf.data from the arrays), build_model, choose_jit_compile and
            compile_model, then model.fit(dataset)
  plain     what a user writes by hand with Keras 3 defaults:
            keras.applications.<Model>(weights=None, classes=10),
            model.compile(optimizer="adam", loss=..., metrics=["accuracy"]),
            model.fit(numpy arrays, batch_size=...)
Epoch 1 (tracing, XLA compiling) is reported on its own; the median and spread
are over the following epochs. XLA's ``auto`` choice is made for a run of
--run-epochs epochs of this size, as trainer.epochs would give; where it times
both ways (on CPU, runs of 500 steps or more), that happens in epoch 1.
Targets (CPU): >= 1.5x for resnet50 at 32 px; never below 0.95x.

    python benchmarks/train_throughput.py --models resnet50 mobilenet_v2 --sizes 32 --steps 4 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0"]
SIZES = [32, 96, 224]
CLASSES = 10


def epoch_timer():
    """A Keras callback recording each epoch's wall seconds in ``.seconds``."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch: int, logs=None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs=None) -> None:
            self.seconds.append(time.perf_counter() - self.started)

    return EpochTimer()


def kfactory_epochs(model_name: str, side: int, batch: int, images, labels, epochs: int, run_epochs: int, jit: str):
    """Epoch seconds of kfactory's pipeline, model and compile settings; and the XLA choice."""
    from hydra import compose, initialize_config_dir

    from kfactory.data.pipeline import make_dataset
    from kfactory.data.sources import ImageSource
    from kfactory.model.build import build_model
    from kfactory.train.compile import compile_model
    from kfactory.train.compute import choose_jit_compile, configure_tensorflow
    from kfactory.train.xla_probe import XlaProbe

    overrides = [f"model={model_name}", "model.weights=null", f"model.input_size=[{side},{side}]"]
    overrides += [f"data.batch_size={batch}", f"trainer.epochs={run_epochs}", f"trainer.jit_compile={jit}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    configure_tensorflow(cfg.trainer, cfg.seed)
    source = ImageSource([str(i) for i in range(CLASSES)], labels, images=images)
    dataset = make_dataset(source, np.arange(len(labels)), cfg, training=True)
    steps = len(labels) // batch
    choice = choose_jit_compile(cfg.trainer.jit_compile, model_name, side, steps * cfg.trainer.epochs)
    model = build_model(cfg, CLASSES)
    compile_model(model, cfg, CLASSES, choice.jit)
    timer, probe = epoch_timer(), XlaProbe() if choice.measure else None
    model.fit(dataset, epochs=epochs, callbacks=[timer, *([probe] if probe else [])], verbose=0, shuffle=False)
    if probe is None:
        return timer.seconds, f"XLA {'on' if choice.jit else 'off'} ({choice.why})"
    timed = (
        f"{statistics.median(probe.times[False]):.3f} s a step without, {statistics.median(probe.times[True]):.3f} with"
    )
    return timer.seconds, f"XLA {'on' if probe.decided else 'off'} (auto, timed in epoch 1: {timed})"


def plain_epochs(model_name: str, side: int, batch: int, images, labels, epochs: int) -> list[float]:
    """Epoch seconds of a hand-written Keras 3 script with default settings."""
    import keras

    from kfactory.registry import MODELS as REGISTRY

    keras.utils.set_random_seed(42)
    app = getattr(keras.applications, REGISTRY[model_name].keras_name)
    model = app(weights=None, input_shape=(side, side, 3), classes=CLASSES)
    x = images.astype("float32")  # each family's preprocess_input would run once, before fit
    y = keras.utils.to_categorical(labels, CLASSES)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    timer = epoch_timer()
    model.fit(x, y, batch_size=batch, epochs=epochs, callbacks=[timer], verbose=0)
    return timer.seconds


def compare(model_name: str, side: int, args: argparse.Namespace) -> float:
    """Run both ways for one model and size; print and return the ratio of medians."""
    import keras

    batch = args.batch or (64 if side <= 96 else 16)
    count = batch * args.steps
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, count).astype(np.int64)
    epochs = args.repeats + 1
    kf, choice = kfactory_epochs(model_name, side, batch, images, labels, epochs, args.run_epochs, args.jit)
    keras.backend.clear_session()
    plain = plain_epochs(model_name, side, batch, images, labels, epochs)
    keras.backend.clear_session()
    kf_rates = [count / s for s in kf[1:]]
    plain_rates = [count / s for s in plain[1:]]
    ratio = statistics.median(kf_rates) / statistics.median(plain_rates)
    print(f"{model_name} {side}px batch {batch}, {args.steps} steps/epoch: kfactory {choice}")
    for name, rates, seconds in (("kfactory", kf_rates, kf), ("plain keras", plain_rates, plain)):
        spread = f"{min(rates):.1f}-{max(rates):.1f}"
        print(f"  {name:12s} median {statistics.median(rates):7.1f} img/s  spread {spread}  epoch 1 {seconds[0]:.1f} s")
    target = 1.5 if (model_name, side) == ("resnet50", 32) else 0.95
    print(f"  ratio {ratio:.2f}x  (target >= {target}x: {'met' if ratio >= target else 'MISSED'})", flush=True)
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--sizes", nargs="+", type=int, default=SIZES)
    parser.add_argument("--batch", type=int, default=None, help="default: 64 up to 96 px, 16 above")
    parser.add_argument("--steps", type=int, default=10, help="steps per epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs after the first")
    parser.add_argument(
        "--run-epochs", type=int, default=50, help="run length (epochs of --steps) XLA's auto choice assumes"
    )
    parser.add_argument("--jit", default="auto", choices=["auto", "true", "false"], help="trainer.jit_compile")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ratios = {(m, s): compare(m, s, args) for m in args.models for s in args.sizes}
    print("summary: " + ", ".join(f"{m}@{s} {r:.2f}x" for (m, s), r in ratios.items()))


if __name__ == "__main__":
    main()

"""Runner overhead: a whole ``python run.py`` process against a plain Keras script doing the same work.

Two comparisons, each run both ways in alternating order, ``--repeats`` times:
  digits  ResNet50 at 32 px from scratch on scikit-learn's digits, 3 epochs,
          batch 64, the same 1,439/179/179 split both ways (the plain script
          gets kfactory's split indices): ``fit`` + ``evaluate`` on test + ``save``
  photos  MobileNetV3Small at 96 px from scratch on 2,000 JPEG photos (320x240
          crops of scikit-learn's two sample photographs, one class each),
          3 epochs, batch 32, 80/20 split: the tutorials' script
          (``image_dataset_from_directory``, ``fit``, ``save``); kfactory as a
          first run on the folder: its decode cache is emptied before each run
kfactory runs with every default artifact on (best model, history, backup for
resume, TensorBoard scalars, histograms, PR curves, confusion matrix, images,
HParams). Reports the median and min-max wall time of each way and of the
ratio plain / kfactory (1.0: as fast as the plain script; above 1: faster),
the same ratio of CPU time (user + system; steadier when the machine is busy),
and the size of kfactory's model.keras against its weights' bytes.
Targets: >= 0.95x on the digits, >= 1.1x on the photos, model file <= 1.1x the weights.

    python benchmarks/overhead.py --repeats 3
    python benchmarks/overhead.py --repeats 1 --only photos
    python benchmarks/overhead.py --breakdown      # one profiled kfactory run of each: seconds per artifact
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 3

PLAIN_DIGITS = """
import sys
import numpy as np, keras, tensorflow as tf
from sklearn.datasets import load_digits

split = np.load(sys.argv[1])
digits = load_digits()
x = tf.image.resize(np.repeat(digits.images[..., None] * (255 / 16), 3, -1), (32, 32)).numpy()
y = keras.utils.to_categorical(digits.target, 10)
model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10)
model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
model.fit(x[split["train"]], y[split["train"]], batch_size=64, epochs={epochs}, verbose=2,
          validation_data=(x[split["val"]], y[split["val"]]))
model.evaluate(x[split["test"]], y[split["test"]], batch_size=64, verbose=2)
model.save(sys.argv[2])
"""

PLAIN_PHOTOS = """
import sys
import keras

train, val = keras.utils.image_dataset_from_directory(
    sys.argv[1], validation_split=0.2, subset="both", seed=123, image_size=(96, 96), batch_size=32,
    label_mode="categorical")
model = keras.applications.MobileNetV3Small(weights=None, input_shape=(96, 96, 3), classes=2)
model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
model.fit(train, validation_data=val, epochs={epochs}, verbose=2)
model.save(sys.argv[2])
"""


def write_photos(root: Path, count: int, seed: int = 0) -> None:
    """``count`` 320x240 JPEG crops (random window, scale and flip) of the two sample photographs."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    for index, photo in enumerate(load_sample_images().images):
        folder = root / f"photo{index}"
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(photo)
        for i in range(count // 2):
            width = int(rng.integers(200, 420))
            left = int(rng.integers(0, image.width - width))
            top = int(rng.integers(0, image.height - width * 3 // 4))
            crop = image.crop((left, top, left + width, top + width * 3 // 4)).resize((320, 240))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop.save(folder / f"{i:05d}.jpg", quality=90)


def digits_split(path: Path) -> None:
    """kfactory's split of the digits (its seed and fractions), for the plain script."""
    sys.path.insert(0, str(ROOT))
    from kfactory.data.sources import load_digits, split_indices
    from kfactory.schema import DataConfig, RunConfig

    data, seed = DataConfig(), RunConfig().seed
    train, val, test = split_indices(load_digits().labels, data.val_split, data.test_split, seed)
    np.savez(path, train=train, val=val, test=test)


def timed(command: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with log.open("w") as out:
        result = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}); its output: {log}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def comparison(name: str, tmp: Path) -> tuple[list[str], list[str], Path]:
    """(plain command, kfactory command, kfactory run dir) for one comparison."""
    script = tmp / f"plain_{name}.py"
    run_dir = tmp / f"kfactory_{name}"
    common = [f"trainer.epochs={EPOCHS}", "trainer.verbose=2", f"hydra.run.dir={run_dir}"]
    if name == "digits":
        split = tmp / "digits_split.npz"
        digits_split(split)
        script.write_text(PLAIN_DIGITS.replace("{epochs}", str(EPOCHS)))
        plain = [sys.executable, str(script), str(split), str(tmp / "plain_digits.keras")]
        kfactory = ["model=resnet50", "data.batch_size=64", *common]
    else:
        photos = tmp / "photos"
        if not photos.is_dir():
            write_photos(photos, 2000)
        script.write_text(PLAIN_PHOTOS.replace("{epochs}", str(EPOCHS)))
        plain = [sys.executable, str(script), str(photos), str(tmp / "plain_photos.keras")]
        kfactory = [
            "data=folder", f"data.path={photos}", "data.val_split=0.2", "data.test_split=0", "data.batch_size=32",
            "model=mobilenet_v3_small", "model.weights=null", "model.input_size=[96,96]", *common,
            f"data.cache_dir={tmp / 'decode_cache'}",
        ]  # fmt: skip
    return plain, [sys.executable, "run.py", *kfactory, "resume=false"], run_dir


def run(name: str, repeats: int, tmp: Path) -> dict:
    plain_cmd, kf_cmd, run_dir = comparison(name, tmp)
    times: dict[str, list[float]] = {"plain": [], "kfactory": []}
    cpu: dict[str, list[float]] = {"plain": [], "kfactory": []}
    for repeat in range(repeats):
        order = ["plain", "kfactory"] if repeat % 2 == 0 else ["kfactory", "plain"]
        for way in order:
            if way == "kfactory":  # a first run: no run directory, no decode cache
                subprocess.run(["rm", "-rf", str(run_dir), str(tmp / "decode_cache")], check=True)
            wall, used = timed(kf_cmd if way == "kfactory" else plain_cmd, tmp / f"{name}_{way}_{repeat}.log")
            times[way].append(wall)
            cpu[way].append(used)
            print(f"{name} repeat {repeat + 1} {way}: {wall:.1f} s wall, {used:.1f} s CPU", flush=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    weight_bytes = 4 * metrics["params"]  # float32 weights, trainable and not
    return {
        "times": times,
        "ratios": [p / k for p, k in zip(times["plain"], times["kfactory"], strict=True)],
        "cpu_ratios": [p / k for p, k in zip(cpu["plain"], cpu["kfactory"], strict=True)],
        "file_ratio": (run_dir / "model.keras").stat().st_size / weight_bytes,
    }


# What each default artifact costs, read from a cProfile of one kfactory run: (label, module, qualified name).
ARTIFACTS = [
    ("best model (model.keras, at each improvement)", "kfactory.train.best_model", "BestModelCheckpoint.on_epoch_end"),
    (
        "backup for resume (backup/, weights + optimizer)",
        "kfactory.train.backup",
        "AtomicBackupAndRestore._save_model",
    ),
    ("history.csv", "kfactory.train.callbacks", "HistoryCSV.on_epoch_end"),
    ("TensorBoard scalars and weight histograms", "kfactory.train.histograms", "EpochTensorBoard.on_epoch_end"),
    ("  of which weight histograms", "kfactory.train.histograms", "EpochTensorBoard._log_weights"),
    ("PR curves, confusion matrix, image grid", "kfactory.train.tensorboard", "ValidationSummaries.on_epoch_end"),
    ("  of which PR curves", "kfactory.train.summaries", "write_pr_curves"),
    ("  of which confusion matrix", "kfactory.train.summaries", "write_confusion_matrix"),
    ("  of which image grid", "kfactory.train.summaries", "write_image_grid"),
    ("variables built before fit, so each step traces once (once)", "kfactory.train.compute", "build_before_fit"),
    ("final evaluation of the best model (once)", "kfactory.train.loop", "evaluate_best"),
    ("HParams and final/* scalars (once)", "kfactory.train.final_summaries", "write_final_summaries"),
]


def breakdown(name: str, tmp: Path) -> list[tuple[str, float]]:
    """Seconds per artifact in one profiled kfactory run of comparison ``name`` (per run, not per epoch)."""
    import importlib
    import pstats

    _, kf_cmd, run_dir = comparison(name, tmp)
    subprocess.run(["rm", "-rf", str(run_dir), str(tmp / "decode_cache")], check=True)
    profile = tmp / f"{name}.prof"
    timed([kf_cmd[0], "-m", "cProfile", "-o", str(profile), *kf_cmd[1:]], tmp / f"{name}_profile.log")
    stats = pstats.Stats(str(profile)).stats  # {(file, line, name): (calls, primitive, tottime, cumtime, callers)}
    costs = []
    for label, module, qualname in ARTIFACTS:
        target = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
        code = target.__code__
        key = (code.co_filename, code.co_firstlineno, code.co_name)
        costs.append((label, stats[key][3] if key in stats else 0.0))
    return costs


def spread(values: list[float], unit: str = "", digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f}{unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["digits", "photos"])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (logs, runs, photos)")
    parser.add_argument(
        "--breakdown", action="store_true", help="only profile one kfactory run of each: cost per artifact"
    )
    args = parser.parse_args()
    names = [args.only] if args.only else ["digits", "photos"]
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        if args.breakdown:
            sys.path.insert(0, str(ROOT))
            costs = {name: breakdown(name, tmp) for name in names}
            print(f"\n`python benchmarks/overhead.py --breakdown` ({EPOCHS} epochs, cProfile, s)\n")
            print(f"| artifact | {' | '.join(names)} |\n| --- | {' | '.join('---' for _ in names)} |")
            for row, (label, _, _) in enumerate(ARTIFACTS):
                print(f"| {label} | {' | '.join(f'{costs[name][row][1]:.2f} s' for name in names)} |")
            return
        results = {name: run(name, args.repeats, tmp) for name in names}
    targets = {"digits": 0.95, "photos": 1.1}
    print(f"\n`python benchmarks/overhead.py --repeats {args.repeats}` ({EPOCHS} epochs, whole processes)\n")
    print("| Comparison | plain | kfactory | ratio plain / kfactory | target | CPU ratio | model.keras / weights |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, result in results.items():
        ratio = statistics.median(result["ratios"])
        met = "met" if ratio >= targets[name] else "missed"
        print(
            f"| {name} | {spread(result['times']['plain'], ' s')} | {spread(result['times']['kfactory'], ' s')} "
            f"| **{spread(result['ratios'], 'x', 2)}** | >= {targets[name]}x: {met} "
            f"| {spread(result['cpu_ratios'], 'x', 2)} | {result['file_ratio']:.3f}x |"
        )


if __name__ == "__main__":
    main()

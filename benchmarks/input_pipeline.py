"""Input pipeline: images/s reading a folder of JPEG files into batches at the model's input size.

Writes N JPEG files (two classes, photo-like smooth content, 320x240 or --photo)
to a temp folder, warms the OS file cache, then times, several times each, one pass over
all files into batches of 32 at SIZE x SIZE:
  kfactory   kfactory.data.pipeline.make_splits on the folder source, as a first run
             builds it (the decode cache emptied before each repeat): one parallel
             decode-and-resize pass that also finds unreadable files and writes the
             shared decode cache, then batches read from that cache; epoch 1
             (including that pass) and epoch 2
  old way    the old Keras Factory: PIL load_img per image into one numpy array
  keras      keras.utils.image_dataset_from_directory with its defaults
             (only image_size set); epoch 1 and epoch 2
Targets: kfactory epoch 1 >= 3x the old way and >= 1x keras; epoch 2 >= 5x keras.

    python benchmarks/input_pipeline.py --images 2000 --size 224 --repeats 3
    python benchmarks/input_pipeline.py --images 500 --size 224 --repeats 3 --photo 1600x1200
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BATCH = 32


def write_jpegs(root: Path, count: int, seed: int = 0, width: int = 320, height: int = 240) -> None:
    """``count`` JPEGs of ``width`` x ``height`` in two class folders: smooth gradients plus mild noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / float(width)
    for i in range(count):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        phase = rng.uniform(0, 6.28, 3)
        pixels = np.stack([np.sin(6 * x + 4 * y + p) for p in phase], -1) * 100 + 128
        pixels += rng.normal(0, 8, pixels.shape)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def warm_file_cache(root: Path) -> None:
    for path in root.rglob("*.jpg"):
        path.read_bytes()


def kfactory_config(root: Path, size: int):
    """The run config a training run on the folder composes (before, and not part of, reading images)."""
    from hydra import compose, initialize_config_dir

    from kfactory.schema import register_schema

    register_schema()
    overrides = ["data=folder", f"data.path={root}", f"model.input_size=[{size},{size}]", f"data.batch_size={BATCH}"]
    overrides += ["data.val_split=0", "data.test_split=0"]  # every image in the training pipeline
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def kfactory_dataset(cfg):
    """kfactory's training pipeline over the folder, as a run builds it (the first one builds the decode cache)."""
    from kfactory.data.pipeline import make_splits

    return make_splits(cfg).train


def kfactory_first_run(results: dict[str, list[float]], cfg, count: int) -> None:
    """Epochs 1 and 2 of a first run: the decode cache emptied beforehand, outside the timing."""
    shutil.rmtree(cfg.data.cache_dir, ignore_errors=True)
    record(results, "kf", epochs_per_second(lambda: kfactory_dataset(cfg), count, 2))


def keras_dataset(root: Path, size: int):
    import keras

    return keras.utils.image_dataset_from_directory(root, image_size=(size, size), verbose=False)


def old_way(root: Path, size: int) -> int:
    """The old project: PIL decode per image into one numpy array, then batches by slicing."""
    import keras

    paths = sorted(root.rglob("*.jpg"))
    images = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(size, size))) for p in paths])
    for start in range(0, len(images), BATCH):
        images[start : start + BATCH]  # noqa: B018 - the batches a fit would take
    return len(images)


def epochs_per_second(make: Callable, count: int, epochs: int) -> list[float]:
    """Images/s of each of ``epochs`` passes over a freshly built dataset; epoch 1 includes building it."""
    started = time.perf_counter()
    ds = make()
    rates = []
    for epoch in range(epochs):
        if epoch:
            started = time.perf_counter()
        seen = sum(int(x.shape[0]) for x, _ in ds)
        rates.append(seen / (time.perf_counter() - started))
        assert seen == count, (seen, count)
    return rates


def record(results: dict[str, list[float]], key: str, rates: list[float]) -> None:
    results[key + "1"].append(rates[0])
    results[key + "2"].append(rates[1])


def timed_old_way(root: Path, size: int) -> float:
    started = time.perf_counter()
    return old_way(root, size) / (time.perf_counter() - started)


def line(name: str, rates: list[float]) -> str:
    return f"{name:22s} median {statistics.median(rates):8.1f} img/s  spread {min(rates):.1f}-{max(rates):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224, help="model input side in px")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--photo", default="320x240", help="the written JPEGs' size, WIDTHxHEIGHT")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    width, height = (int(side) for side in args.photo.split("x"))
    root = Path(tempfile.mkdtemp(prefix="kfactory-jpegs-"))
    write_jpegs(root, args.images, width=width, height=height)
    warm_file_cache(root)
    results: dict[str, list[float]] = {k: [] for k in ("kf1", "kf2", "keras1", "keras2", "old")}
    cfg = kfactory_config(root, args.size)
    cache_dir = root.with_name(root.name + "-cache")
    cfg.data.cache_dir = str(cache_dir)
    ways = [
        lambda: kfactory_first_run(results, cfg, args.images),
        lambda: record(results, "keras", epochs_per_second(lambda: keras_dataset(root, args.size), args.images, 2)),
        lambda: results["old"].append(timed_old_way(root, args.size)),
    ]
    for repeat in range(args.repeats):  # interleaved and rotated, so load changes and order hit every way alike
        for way in ways[repeat % 3 :] + ways[: repeat % 3]:
            way()
    print(f"{args.images} JPEGs {args.photo} -> batches of {BATCH} at {args.size}x{args.size}, {args.repeats} repeats")
    for key, name in (
        ("kf1", "kfactory epoch 1"),
        ("kf2", "kfactory epoch 2"),
        ("keras1", "keras idfd epoch 1"),
        ("keras2", "keras idfd epoch 2"),
        ("old", "old way (PIL)"),
    ):
        print(line(name, results[key]))
    med = {k: statistics.median(v) for k, v in results.items()}
    for label, ratio, target in (
        ("epoch 1 vs old way", med["kf1"] / med["old"], 3.0),
        ("epoch 1 vs keras", med["kf1"] / med["keras1"], 1.0),
        ("epoch 2 vs keras", med["kf2"] / med["keras2"], 5.0),
    ):
        print(
            f"ratio kfactory {label:20s} {ratio:6.2f}x  (target >= {target}x: {'met' if ratio >= target else 'MISSED'})"
        )
    shutil.rmtree(cache_dir, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

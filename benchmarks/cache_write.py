"""What a first run's epoch 1 pays for the decode cache: the decode, and the write of the entry, each timed
against ``image_dataset_from_directory``'s epoch 1 in one process, the ways alternating.

On one folder of N JPEGs (320x240, two classes; input_pipeline.write_jpegs) read at SIZE x SIZE:
  keras    keras.utils.image_dataset_from_directory, one epoch: the decode Keras does every epoch
  decode   kfactory's decode pass (the pipeline kfactory.data.cache_build.write_shards reads) with no write
  write    the entry's bytes, already decoded and in memory, written to shard files as a build writes them
           and flushed to the disk: the write alone, with no decode
  build    kfactory.data.cache_build.write_shards: the decode and the write, as a first run does them
Each way runs --repeats times; ``os.sync()`` before each, so that no way pays for an earlier one's
write-back. Reported: each way's median seconds (range), and its median over keras's.

    python benchmarks/cache_write.py --images 8000 --size 224 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from input_pipeline import write_jpegs  # noqa: E402

WAYS = ("keras", "decode", "write", "build")


def keras_epoch(folder: Path, size: int) -> None:
    import keras
    import tensorflow as tf

    ds = keras.utils.image_dataset_from_directory(folder, image_size=(size, size), batch_size=32, seed=0, verbose=False)
    for _ in ds.prefetch(tf.data.AUTOTUNE):
        pass


def decoded(paths: list[str], size: int) -> tf.data.Dataset:
    """The build's decode pipeline, as kfactory.data.cache_build.write_shards makes it."""
    import tensorflow as tf

    from kfactory.data.cache_build import WRITE_AHEAD, WRITE_BATCH
    from kfactory.data.image_check import read_image

    shuffled = np.random.default_rng(0).permutation(len(paths))
    ds = tf.data.Dataset.from_tensor_slices((shuffled, np.asarray(paths)[shuffled]))
    ds = ds.map(lambda i, p: (i, read_image(p, (size, size))), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.ignore_errors().batch(WRITE_BATCH).prefetch(WRITE_AHEAD)


def decode_pass(paths: list[str], size: int) -> None:
    for _, images in decoded(paths, size):
        images.numpy()


def write_pass(images: np.ndarray, out: Path) -> None:
    """``images`` written in the build's batches into shard files of the build's size, each flushed."""
    from kfactory.data.cache_build import SHARD_BYTES, WRITE_BATCH
    from kfactory.paths import fsync_file

    per_shard = max(WRITE_BATCH, SHARD_BYTES // images[0].nbytes)
    for start in range(0, len(images), per_shard):
        path = out / f"images-{start // per_shard:05d}.bin"
        with open(path, "wb") as shard:
            for batch in range(start, min(start + per_shard, len(images)), WRITE_BATCH):
                shard.write(memoryview(images[batch : min(batch + WRITE_BATCH, start + per_shard, len(images))]))
        fsync_file(path)


def build_pass(paths: list[str], size: int, out: Path) -> None:
    from kfactory.data.cache_build import write_shards

    write_shards(paths, (size, size), out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the folder here (default: a temp dir)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kf_cache_write_"))
    folder, out = work / f"photos_{args.images}", work / "entry"
    if not folder.exists():
        write_jpegs(folder, args.images)
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))
    for path in paths:  # every way reads the files from the page cache
        Path(path).read_bytes()
    images = np.concatenate([batch.numpy() for _, batch in decoded(paths, args.size)])
    ways = {
        "keras": lambda: keras_epoch(folder, args.size),
        "decode": lambda: decode_pass(paths, args.size),
        "write": lambda: write_pass(images, out),
        "build": lambda: build_pass(paths, args.size, out),
    }
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    try:
        for repeat in range(args.repeats):
            for way in WAYS:
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                os.sync()
                started = time.perf_counter()
                ways[way]()
                seconds[way].append(time.perf_counter() - started)
                print(f"repeat {repeat + 1} {way:<7} {seconds[way][-1]:.2f} s", flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    keras = statistics.median(seconds["keras"])
    print(f"\n{args.images} images at {args.size} px, entry {images.nbytes / 1e9:.2f} GB, {args.repeats} repeats")
    print("| way | median s (range) | median / keras |")
    print("| --- | --- | --- |")
    for way in WAYS:
        median = statistics.median(seconds[way])
        spread = f"{min(seconds[way]):.2f}-{max(seconds[way]):.2f}"
        print(f"| {way} | {median:.2f} ({spread}) | {median / keras:.2f}x |")


if __name__ == "__main__":
    main()

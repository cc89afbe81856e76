"""Find image files that do not decode, before training, so they are skipped by name.

One parallel ``tf.data`` pass decodes every file once, with the decoder training
uses; each file carries its index through the pass and ``ignore_errors`` drops
the ones that fail, so the indices that come out are the readable files. No
Python runs per image. That pass is the one that builds the shared decode cache
(``kfactory.data.cache_build``); with ``data.cache=none`` a check pass at 1/8
scale finds them instead.
The same files are then left out of every split, so a corrupt image can
neither crash an epoch nor shift the split between ``train`` and ``eval``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from kfactory.data.sources import ImageSource
from kfactory.errors import ConfigError

log = logging.getLogger(__name__)

SKIPPED_FILE = "skipped_images.txt"  # in the run directory: one unreadable path a line
SHOWN = 3  # unreadable files named in the log line; the file lists all
CHECK_SIZE = (8, 8)  # a check that keeps nothing decodes JPEGs at 1/8 scale: the whole file is still read
PROGRESS_MIN_FILES = 2000  # passes over fewer files finish in seconds: no progress bar
JPEG_SCALES = (1, 2, 4, 8)  # libjpeg decodes at 1/ratio of full size for these ratios


def find_unreadable(paths: list[str]) -> np.ndarray:
    """Indices into ``paths`` of the files that cannot be read or decoded as an image (one pass, keeping nothing)."""
    if not paths:
        return np.zeros(0, np.int64)
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype=np.int64), paths))
    ds = ds.map(lambda i, p: (i, read_image(p, CHECK_SIZE)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    kept, progress = [], progress_bar(len(paths))
    for indices, _ in ds.ignore_errors().batch(256).prefetch(tf.data.AUTOTUNE):
        kept.append(indices.numpy())
        if progress and sum(map(len, kept)) < len(paths):  # the last line is the final update's
            progress.update(sum(map(len, kept)))
    if progress:
        progress.update(len(paths), finalize=True)  # the unreadable files are done too
    return np.setdiff1d(np.arange(len(paths)), np.concatenate(kept)) if kept else np.arange(len(paths))


def progress_bar(count: int) -> keras.utils.Progbar | None:
    """A progress bar for a pass over ``count`` files, if it is long enough to watch."""
    return keras.utils.Progbar(count, unit_name="image") if count >= PROGRESS_MIN_FILES else None


def read_image(path: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Decode one JPEG/PNG/BMP/GIF file to RGB uint8 at ``size``."""
    return decode_image(tf.io.read_file(path), size)


def decode_image(data: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes to RGB uint8 at ``size`` (training, predict and serving share it).

    A JPEG at least twice ``size`` on both sides is decoded already shrunk by
    1/2, 1/4 or 1/8 (libjpeg's DCT scaling, never below ``size``), then resized:
    a 12-megapixel photo decodes several times faster than at full size.
    """
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: _decode_jpeg_near(data, size),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )
    image = tf.image.resize(image, size)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _decode_jpeg_near(data: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """A JPEG decoded at the smallest 1/1, 1/2, 1/4 or 1/8 scale still covering ``size``."""
    shape = tf.image.extract_jpeg_shape(data)
    fits = tf.minimum(shape[0] // size[0], shape[1] // size[1])  # whole times the image covers size
    branch = tf.cast(fits >= 2, tf.int32) + tf.cast(fits >= 4, tf.int32) + tf.cast(fits >= 8, tf.int32)
    return tf.switch_case(
        branch, [lambda ratio=ratio: tf.io.decode_jpeg(data, channels=3, ratio=ratio) for ratio in JPEG_SCALES]
    )


def drop_unreadable(source: ImageSource, data: DictConfig, run_dir: Path | None) -> tuple[ImageSource, list[str]]:
    """``source`` (from ``data``) without its unreadable files, found by one check pass, and their paths."""
    if source.paths is None:
        return source, []
    log.info("Decoding %d images once to find unreadable files", len(source))
    return leave_out(source, find_unreadable(source.paths), data, run_dir)


def leave_out(
    source: ImageSource, bad: np.ndarray, data: DictConfig, run_dir: Path | None
) -> tuple[ImageSource, list[str]]:
    """``source`` without the files at ``bad``, and their paths, listed in ``run_dir``; refuse if none is left."""
    if len(bad) == 0:
        return source, []
    skipped = [source.paths[i] for i in bad]
    if len(bad) == len(source):
        key = {"csv": "data.csv", "custom": "data._target_"}.get(data.source, "data.path")
        raise ConfigError(
            key, data[key.split(".")[1]], f"readable images: none of its {len(source)} files decodes, e.g. {skipped[0]}"
        )
    keep = np.setdiff1d(np.arange(len(source)), bad)
    kept = ImageSource(source.class_names, source.labels[keep], [source.paths[i] for i in keep])
    where = ""
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / SKIPPED_FILE).write_text("".join(f"{p}\n" for p in skipped))
        where = f"; all listed in {run_dir / SKIPPED_FILE}"
    shown = ", ".join(skipped[:SHOWN]) + (", ..." if len(skipped) > SHOWN else "")
    log.warning("Skipping %d of %d images that cannot be decoded: %s%s", len(skipped), len(source), shown, where)
    return kept, skipped

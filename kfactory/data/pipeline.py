"""Image sources to batched ``tf.data`` pipelines: decode, resize, cache, prefetch.

Files are read and decoded in parallel, no Python per image. With
``data.cache=memory`` every file is decoded and resized once, by the check for
unreadable files (``kfactory.data.image_check``), and batches are gathered from that
array; with ``disk`` or ``none`` the pipeline decodes files (and caches them to a
file for ``disk``). In-memory arrays of other sizes are resized per batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from kfactory.data.augment import build_augmenter
from kfactory.data.image_check import decode_all, drop_unreadable, read_image
from kfactory.data.label_sets import is_multilabel
from kfactory.data.sources import ImageSource, describe_source, split_source
from kfactory.data.split_record import (
    ARRAYS,
    SPLIT_NAMES,
    SplitRecord,
    check_files,
    check_settings,
    read_split,
    record_split,
    recorded_source,
    source_key,
    write_split,
)
from kfactory.errors import ConfigError
from kfactory.model.build import output_units
from kfactory.registry import input_size, label_loss, sparse_labels

AUTOTUNE = tf.data.AUTOTUNE
log = logging.getLogger(__name__)


@dataclass
class Splits:
    """Train, validation and test pipelines over one source."""

    source: ImageSource
    train: tf.data.Dataset
    val: tf.data.Dataset | None
    test: tf.data.Dataset | None
    indices: dict[str, np.ndarray]
    skipped: list[str] = field(default_factory=list)  # unreadable files left out of every split
    drawn: bool = True  # False: read from a recorded split (splits.csv)

    @property
    def class_names(self) -> list[str]:
        return self.source.class_names


def load_source(data: DictConfig) -> ImageSource:
    """Describe any data source, keras.datasets included (may download)."""
    if data.source != "keras":
        return describe_source(data)
    import keras

    (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, data.name).load_data()
    images = np.concatenate([x_train, x_test])
    if images.ndim == 3:
        images = images[..., None]
    labels = np.concatenate([y_train, y_test]).reshape(-1).astype(np.int64)
    names = [str(i) for i in range(int(labels.max()) + 1)]
    return ImageSource(names, labels, images=images.astype(np.uint8))


def make_splits(cfg: DictConfig, run_dir: Path | None = None, recorded: SplitRecord | None = None) -> Splits:
    """Seeded, stratified splits of ``cfg.data`` as batched pipelines.

    The split is ``recorded`` (eval passes its run's), else the one recorded in
    ``run_dir`` (resume, the folds of a cross-validation), else drawn now and
    recorded in ``run_dir`` (kfactory.data.split_record).
    """
    if recorded is None and run_dir is not None and (recorded := read_split(run_dir)) is not None:
        check_settings(recorded, cfg.data, cfg.seed)
        recorded = recorded.for_fold(cfg.data.fold) if cfg.data.folds else recorded
    if recorded is None:
        source, skipped, indices = draw_split(cfg, run_dir)
    else:
        source, skipped, indices = read_recorded_split(cfg, recorded)
    if source.images is not None:  # one tensor for all splits, and no second copy kept as an array
        source = replace(source, images=tf.convert_to_tensor(source.images))
    pipelines = {
        name: make_dataset(source, idx, cfg, training=name == "train", cache_dir=run_dir, split=name)
        if len(idx)
        else None
        for name, idx in indices.items()
    }
    train, val, test = (pipelines[name] for name in SPLIT_NAMES)
    return Splits(source, train, val, test, indices, skipped, drawn=recorded is None)


def draw_split(cfg: DictConfig, run_dir: Path | None) -> tuple[ImageSource, list[str], dict[str, np.ndarray]]:
    """The source less its unreadable files, those files, and a split drawn now (recorded in ``run_dir``)."""
    # With a memory cache, the check's single decode pass also fills the cache.
    decode_size = input_size(cfg.model) if cfg.data.cache == "memory" else None
    listed = load_source(cfg.data)
    source, skipped = drop_unreadable(listed, cfg.data, run_dir, decode_size)
    indices = dict(zip(SPLIT_NAMES, split_source(source, cfg.data, cfg.seed), strict=True))
    if run_dir is not None:
        write_split(run_dir, record_split(listed, skipped, source, indices, cfg.data, cfg.seed))
    return source, skipped, indices


def read_recorded_split(cfg: DictConfig, recorded: SplitRecord) -> tuple[ImageSource, list[str], dict[str, np.ndarray]]:
    """The source, skipped files and split of ``recorded``, once its images are checked to be as recorded.

    The files it lists as unreadable are not decoded again; with a memory cache
    the others are decoded once, as when the split was drawn.
    """
    arrays = load_source(cfg.data) if recorded.kind == ARRAYS else None
    recorded = check_files(recorded, cfg.data, arrays)
    source, indices, skipped = recorded_source(recorded, arrays)
    log.info(
        "Split: as recorded in %s (%s)",
        recorded.where,
        ", ".join(f"{name} {count}" for name, count in recorded.counts().items() if count),
    )
    if cfg.data.cache == "memory" and source.paths is not None:
        images, bad = decode_all(source.paths, input_size(cfg.model))
        if len(bad):
            raise ConfigError(*source_key(cfg.data), f"images that decode ({source.paths[bad[0]]} no longer does)")
        source = replace(source, images=images)
    return source, skipped, indices


def make_dataset(
    source: ImageSource,
    indices: np.ndarray,
    cfg: DictConfig,
    training: bool,
    cache_dir: Path | None = None,
    split: str = "data",
) -> tf.data.Dataset:
    """Batches of (uint8-valued float images at the model's size, encoded labels).

    In-memory images (``source.images``, an array or a tensor) are gathered per
    batch from shuffled indices, so neither shuffling nor an epoch copies whole
    images.
    """
    size = input_size(cfg.model)
    labels = source.labels[indices]
    if source.images is None:
        paths = np.asarray(source.paths)[indices]
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        ds = ds.map(lambda p, y: (read_image(p, size), y), num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.ignore_errors(log_warning=True)
        ds = _cache(ds, cfg.data.cache, cache_dir, split)
        resize_batches = False
    else:
        ds = tf.data.Dataset.from_tensor_slices((indices, labels))
        resize_batches = True  # arrays stay at their own size in memory (decoded files are at ``size`` already)
    if training:
        ds = ds.shuffle(min(len(indices), cfg.data.shuffle_buffer), seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.batch(cfg.data.batch_size)
    if source.images is not None:
        pixels = tf.convert_to_tensor(source.images)  # a no-op for a tensor
        ds = ds.map(lambda i, y: (tf.gather(pixels, i), y), num_parallel_calls=AUTOTUNE)
    encode = label_encoder(label_loss(cfg.loss), len(source.class_names), is_multilabel(labels))
    ds = ds.map(
        lambda x, y: (to_rgb_float(x, size if resize_batches else None), encode(y)), num_parallel_calls=AUTOTUNE
    )
    augment = build_augmenter(cfg) if training else None  # data.augment: training batches only
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def epoch_inputs(
    splits: Splits, steps_per_epoch: int | None, validation_steps: int | None
) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
    """The training and validation data ``fit`` gets, so that every epoch is whole.

    With ``steps_per_epoch`` the training data repeats (reshuffled each pass), so
    every epoch runs all its steps instead of running out of data part-way. With
    ``validation_steps`` every epoch validates on the same first batches (a
    finite ``take``, read afresh each epoch).
    """
    train = splits.train.repeat() if steps_per_epoch else splits.train
    val = splits.val
    if val is not None and validation_steps:
        val = val.take(validation_steps)
    return train, val


def to_rgb_float(images: tf.Tensor, size: tuple[int, int] | None) -> tf.Tensor:
    """A batch as float32 RGB in [0, 255], resized to ``size`` when given."""
    images = tf.cast(images, tf.float32)
    if images.shape[-1] == 1:
        images = tf.image.grayscale_to_rgb(images)
    if size is not None and tuple(images.shape[1:3]) != tuple(size):
        images = tf.image.resize(images, size)
    return images


def label_encoder(loss: str, num_classes: int, multilabel: bool = False):
    """Labels as the loss wants them: integers, one sigmoid target, one-hot, or multi-hot as they are."""
    if multilabel:
        return lambda y: tf.cast(y, tf.float32)
    if sparse_labels(loss):
        return lambda y: y
    if output_units(loss, num_classes) == 1:
        return lambda y: tf.cast(tf.expand_dims(y, -1), tf.float32)
    return lambda y: tf.one_hot(y, num_classes)


def _cache(ds: tf.data.Dataset, mode: str, cache_dir: Path | None, split: str) -> tf.data.Dataset:
    if mode == "memory" or (mode == "disk" and cache_dir is None):
        return ds.cache()
    if mode == "disk":
        folder = cache_dir / "cache"
        folder.mkdir(parents=True, exist_ok=True)
        return ds.cache(str(folder / split))
    return ds

"""Image sources to batched ``tf.data`` pipelines: decode, resize, cache, prefetch.

Files are read and decoded in parallel, no Python per image. With ``data.cache``
``auto`` (the default), ``memory`` or ``disk``, every file is decoded and resized
once into the shared decode cache (``kfactory.data.cache_build``), which every
later run on the same files reads instead; a run keeps that entry in memory when
it fits ``data.cache_budget_gb`` (``memory`` insists on it, ``disk`` never does)
and otherwise streams it from disk, so memory does not grow with the data. With
``none`` the pipeline decodes the files every epoch. In-memory arrays (the
digits, keras.datasets, a custom array) are gathered per batch and resized per batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from kfactory.data.augment import build_augmenter
from kfactory.data.cache_build import DecodedImages, ensure_entry, unreadable_paths
from kfactory.data.cache_store import cache_root, fits_in_memory
from kfactory.data.image_check import drop_unreadable, leave_out, read_image
from kfactory.data.label_sets import is_multilabel
from kfactory.data.sources import ImageSource, describe_source, split_source
from kfactory.model.build import output_units
from kfactory.registry import input_size, label_loss, sparse_labels

AUTOTUNE = tf.data.AUTOTUNE


@dataclass
class Splits:
    """Train, validation and test pipelines over one source."""

    source: ImageSource
    train: tf.data.Dataset
    val: tf.data.Dataset | None
    test: tf.data.Dataset | None
    indices: dict[str, np.ndarray]
    skipped: list[str] = field(default_factory=list)  # unreadable files left out of every split

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


def make_splits(cfg: DictConfig, run_dir: Path | None = None) -> Splits:
    """Seeded, stratified splits of ``cfg.data`` as batched pipelines."""
    source, skipped = prepare_images(load_source(cfg.data), cfg, run_dir)
    train_idx, val_idx, test_idx = split_source(source, cfg.data, cfg.seed)
    indices = {"train": train_idx, "val": val_idx, "test": test_idx}
    if source.decoded is not None:  # streamed splits come in the order the cache holds them
        indices = {name: source.decoded.stream_order(idx) for name, idx in indices.items()}
    if source.images is not None:  # one tensor for all splits, and no second copy kept as an array
        source = replace(source, images=tf.convert_to_tensor(source.images))
    pipelines = {
        name: make_dataset(source, idx, cfg, training=name == "train") if len(idx) else None
        for name, idx in indices.items()
    }
    return Splits(source, pipelines["train"], pipelines["val"], pipelines["test"], indices, skipped)


def prepare_images(source: ImageSource, cfg: DictConfig, run_dir: Path | None) -> tuple[ImageSource, list[str]]:
    """``source`` without its unreadable files (listed in ``run_dir``) and reading the decode cache as
    ``data.cache`` says; also the paths left out."""
    data = cfg.data
    if source.paths is None:
        return source, []
    if data.cache == "none":
        return drop_unreadable(source, data, run_dir)
    size = input_size(cfg.model)
    in_memory = fits_in_memory(data.cache, len(source), size, data.cache_budget_gb)  # refuses before decoding
    entry, files = ensure_entry(source.paths, size, cache_root(data.cache_dir), data.path or data.csv or data.source)
    kept, skipped = leave_out(source, unreadable_paths(entry, files, source.paths), data, run_dir)
    return replace(kept, decoded=DecodedImages(entry, files, kept.paths, in_memory)), skipped


def make_dataset(source: ImageSource, indices: np.ndarray, cfg: DictConfig, training: bool) -> tf.data.Dataset:
    """Batches of (uint8-valued float images at the model's size, encoded labels).

    In-memory images (``source.images``, an array or a tensor, or a decode cache
    entry held in memory) are gathered per batch from shuffled indices, so
    neither shuffling nor an epoch copies whole images.
    """
    size, data = input_size(cfg.model), cfg.data
    labels = source.labels[indices]
    resize_batches = source.images is not None  # arrays stay at their own size (decoded files are at ``size``)
    if source.decoded is not None:
        ds = source.decoded.batches(indices, source.labels, training, data.shuffle_buffer, cfg.seed, data.batch_size)
    elif source.images is None:
        ds = _shuffled(tf.data.Dataset.from_tensor_slices((np.asarray(source.paths)[indices], labels)), training, cfg)
        ds = ds.map(lambda p, y: (read_image(p, size), y), num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.ignore_errors(log_warning=True).batch(data.batch_size)
    else:
        ds = _shuffled(tf.data.Dataset.from_tensor_slices((indices, labels)), training, cfg)
        pixels = tf.convert_to_tensor(source.images)  # a no-op for a tensor
        ds = ds.batch(data.batch_size).map(lambda i, y: (tf.gather(pixels, i), y), num_parallel_calls=AUTOTUNE)
    encode = label_encoder(label_loss(cfg.loss), len(source.class_names), is_multilabel(labels))
    ds = ds.map(
        lambda x, y: (to_rgb_float(x, size if resize_batches else None), encode(y)), num_parallel_calls=AUTOTUNE
    )
    augment = build_augmenter(cfg) if training else None  # data.augment: training batches only
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def _shuffled(ds: tf.data.Dataset, training: bool, cfg: DictConfig) -> tf.data.Dataset:
    """Training examples (indices or paths, not pixels) reshuffled each epoch, seeded; others in order."""
    if not training:
        return ds
    count = int(ds.cardinality())
    return ds.shuffle(min(count, cfg.data.shuffle_buffer), seed=cfg.seed, reshuffle_each_iteration=True)


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

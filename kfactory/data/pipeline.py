"""Image sources to batched ``tf.data`` pipelines: decode, resize, cache, prefetch.

Files are read and decoded in parallel, no Python per image. With ``data.cache``
``auto`` (the default), ``memory`` or ``disk``, every file is decoded and resized
once into the shared decode cache (``kfactory.data.cache_build``), which every
later run on the same files reads instead; a run reads that entry at random,
memory-mapped, when it fits ``data.cache_budget_gb`` (``memory`` insists on it,
``disk`` never does) and otherwise streams it from disk in order, so memory does
not grow with the data. With
``none`` the pipeline decodes the files every epoch. In-memory arrays (the
digits, keras.datasets, a custom array) are gathered per batch and resized per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from kfactory.data.augment import build_augmenter
from kfactory.data.cache_build import DecodedImages, ensure_entry, holds_all, open_built, unreadable_paths
from kfactory.data.cache_store import cache_root, fits_in_memory
from kfactory.data.image_check import drop_unreadable, leave_out, read_image
from kfactory.data.label_sets import is_multilabel
from kfactory.data.sources import ImageSource, describe_source, split_source
from kfactory.data.split_record import (
    ARRAYS,
    FILES,
    SPLIT_NAMES,
    SplitRecord,
    check_files,
    check_settings,
    find_changes,
    read_split,
    record_split,
    recorded_source,
    source_key,
    write_split,
)
from kfactory.errors import ConfigError, RunStopped
from kfactory.model.build import output_units
from kfactory.registry import input_size, label_loss, sparse_labels

AUTOTUNE = tf.data.AUTOTUNE
DECODE_CACHE_KEY = "decode_cache"  # splits.json: the decode cache entry the run's images were read from
SHORT_SPLIT = "Input dataset was expected to contain"  # tf.data, when a split yields fewer batches than it holds
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
    if source.decoded is not None:  # streamed splits come in the order the cache holds them
        indices = {name: source.decoded.stream_order(idx) for name, idx in indices.items()}
    if source.images is not None:  # one tensor for all splits, and no second copy kept as an array
        source = replace(source, images=tf.convert_to_tensor(source.images))
    pipelines = {
        name: make_dataset(source, idx, cfg, training=name == "train") if len(idx) else None
        for name, idx in indices.items()
    }
    train, val, test = (pipelines[name] for name in SPLIT_NAMES)
    return Splits(source, train, val, test, indices, skipped, drawn=recorded is None)


def draw_split(cfg: DictConfig, run_dir: Path | None) -> tuple[ImageSource, list[str], dict[str, np.ndarray]]:
    """The source less its unreadable files, those files, and a split drawn now (recorded in ``run_dir``)."""
    listed = load_source(cfg.data)
    source, skipped = prepare_images(listed, cfg, run_dir)
    indices = dict(zip(SPLIT_NAMES, split_source(source, cfg.data, cfg.seed), strict=True))
    if run_dir is not None:
        record = record_split(listed, skipped, source, indices, cfg.data, cfg.seed)
        if source.decoded is not None:  # eval and resume open this entry by name, without listing the folder
            record.meta[DECODE_CACHE_KEY] = source.decoded.entry.key
        write_split(run_dir, record)
    return source, skipped, indices


def read_recorded_split(cfg: DictConfig, recorded: SplitRecord) -> tuple[ImageSource, list[str], dict[str, np.ndarray]]:
    """The source, skipped files and split of ``recorded``, once its images are checked to be as recorded.

    The files it lists as unreadable are not decoded again; the others are read
    from the decode cache entry the training run used (built again if it is gone).
    """
    arrays = load_source(cfg.data) if recorded.kind == ARRAYS else None
    recorded = check_files(recorded, cfg.data, arrays)
    source, indices, skipped = recorded_source(recorded, arrays)
    log.info(
        "Split: as recorded in %s (%s)",
        recorded.where,
        ", ".join(f"{name} {count}" for name, count in recorded.counts().items() if count),
    )
    if source.paths is not None and cfg.data.cache != "none":
        source = replace(source, decoded=recorded_images(source, cfg, recorded.meta.get(DECODE_CACHE_KEY)))
    return source, skipped, indices


def recorded_images(source: ImageSource, cfg: DictConfig, key: str | None) -> DecodedImages | None:
    """The decode cache entry ``key`` (a recorded split's) for ``source``'s images, or one built for them now;
    None when a new one has no room (``ensure_entry``): the files are read instead."""
    data, size = cfg.data, input_size(cfg.model)
    in_memory = fits_in_memory(data.cache, len(source), size, data.cache_budget_gb)
    root = cache_root(data.cache_dir)
    built = open_built(root, key) if key else None
    if built is None or built[0].size != size or not holds_all(built[1], source.paths):
        built = ensure_entry(source.paths, size, root, data.path or data.csv or data.source, data.cache)
    if built is None:
        return None
    entry, files = built
    bad = unreadable_paths(entry, files, source.paths)
    if len(bad):
        raise ConfigError(*source_key(data), f"images that decode ({source.paths[bad[0]]} no longer does)")
    return DecodedImages(entry, files, source.paths, in_memory)


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
    root = cache_root(data.cache_dir)
    built = ensure_entry(source.paths, size, root, data.path or data.csv or data.source, data.cache)
    if built is None:  # no room for the decode cache: as data.cache=none
        return drop_unreadable(source, data, run_dir)
    entry, files = built
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
    # The number of batches, known to Keras: a streamed entry's filter and the files' ignore_errors hide it,
    # and Keras then warns at every epoch's end that the input "ran out of data". The count is exact: an
    # entry holds each image once, and unreadable files are left out before this pipeline is made.
    ds = ds.apply(tf.data.experimental.assert_cardinality(-(-len(indices) // data.batch_size)))
    encode = label_encoder(label_loss(cfg.loss), len(source.class_names), is_multilabel(labels))
    ds = ds.map(
        lambda x, y: (to_rgb_float(x, size if resize_batches else None), encode(y)), num_parallel_calls=AUTOTUNE
    )
    augment = build_augmenter(cfg) if training else None  # data.augment: training batches only
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


@contextmanager
def splits_read_whole(splits: Splits, run_dir: Path | None = None) -> Iterator[None]:
    """Around training and evaluation: a split that yields fewer batches than it holds ends the run in one
    line (RunStopped, with the command that goes on) instead of tf.data's error. Read from the files
    (``data.cache=none``), the line names those gone or changed since ``run_dir``'s split was recorded; read
    from the decode cache, the entry, which a resumed run finds damaged and builds again."""
    try:
        yield
    except tf.errors.FailedPreconditionError as error:
        if SHORT_SPLIT not in str(error):
            raise
        if splits.source.decoded is not None:
            raise RunStopped(
                f"The decode cache entry {splits.source.decoded.entry.path} came up short while this run read it "
                "(a shard cut or removed since the run opened it). Finished epochs are kept; resumed, the run "
                "finds the damage, deletes the entry and decodes the files again",
                resume_with=[],
            ) from None
        what, record = "", read_split(run_dir) if run_dir is not None else None
        if record is not None and record.kind == FILES:
            used, bad, changes = find_changes(record)
            what = f": of its {len(used)} images, {changes}" if bad.any() else ""
        raise RunStopped(
            "Images of this run's split were removed or changed while it trained, reading the files every epoch "
            f"(data.cache=none){what}. Finished epochs are kept",
            resume_with=["data.on_changed=use_remaining"],
        ) from None


def _shuffled(ds: tf.data.Dataset, training: bool, cfg: DictConfig) -> tf.data.Dataset:
    """Training examples (indices or paths, not pixels) reshuffled each epoch, seeded; others in order."""
    if not training:
        return ds
    count = int(ds.cardinality())
    return ds.shuffle(min(count, cfg.data.shuffle_buffer), seed=cfg.seed, reshuffle_each_iteration=True)


def epoch_steps(trainer: DictConfig, train_images: int, batch_size: int) -> int | None:
    """The steps of an epoch that is not one pass over the ``train_images``: ``trainer.steps_per_epoch``, or the
    batches of ``trainer.max_images_per_epoch`` when the split holds more; None for one whole pass."""
    if trainer.steps_per_epoch:
        return trainer.steps_per_epoch
    most = trainer.max_images_per_epoch
    return -(-most // batch_size) if most and most < train_images else None


def epoch_inputs(
    splits: Splits, steps_per_epoch: int | None, validation_steps: int | None
) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
    """The training and validation data ``fit`` gets, so that every epoch is whole.

    With ``steps_per_epoch`` (``epoch_steps``) the training data repeats (reshuffled
    each pass), so every epoch runs all its steps instead of running out of data
    part-way, and an epoch shorter than the split goes on where the last one ended. With
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

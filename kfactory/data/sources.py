"""Where images and labels come from: file lists and arrays, without TensorFlow.

A source is described once, cheaply (file names and labels, no decoding), so a
bad folder or CSV is refused before any heavy import.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig

from kfactory.data.label_sets import (
    detect_task,
    is_multilabel,
    iterative_split,
    label_set_folds,
    multi_hot,
    split_label_sets,
)
from kfactory.errors import ConfigError
from kfactory.paths import check_variables, expand_path
from kfactory.schema import DataConfig
from kfactory.targets import CUSTOM, build

log = logging.getLogger(__name__)
if TYPE_CHECKING:
    import pandas as pd

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclass
class ImageSource:
    """Images with integer labels: as file paths, or as an in-memory array."""

    class_names: list[str]
    labels: np.ndarray  # int64, one per image; or multi-hot float32 (images, classes) for label sets
    paths: list[str] | None = None
    images: np.ndarray | None = None  # uint8, (N, H, W, C) (a tf.Tensor once kfactory.data.pipeline holds it)
    decoded: Any = None  # the files' decode cache entry (kfactory.data.cache_build.DecodedImages), once opened

    def __len__(self) -> int:
        return len(self.labels)


def describe_source(data: DictConfig) -> ImageSource:
    """The images and labels ``data`` names (``digits``, ``folder``, ``csv`` or ``custom``)."""
    if data.source == "digits":
        return load_digits()
    if data.source == "folder":
        return list_folder(data.path)
    if data.source == "csv":
        return read_csv(data.csv, data.path_column, data.label_column, data.label_separator, data.task)
    if data.source == CUSTOM:
        return load_custom(data)
    raise ConfigError("data.source", data.source, "digits, folder, csv or custom (keras is loaded by the pipeline)")


def load_digits() -> ImageSource:
    """scikit-learn's bundled 8x8 digits as uint8 grayscale images."""
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ImageSource([str(i) for i in range(10)], digits.target.astype(np.int64), images=images)


def load_custom(data: DictConfig) -> ImageSource:
    """Your own source: ``data._target_`` called with the data group's extra keys (not the schema's).

    It returns ``(paths, labels)`` or ``(paths, labels, class_names)``, where ``paths``
    may instead be a uint8 array (N, H, W, 1 or 3); labels are class indices or names.
    """
    kind = "a tuple (image paths or a uint8 array (N, H, W, C), labels[, class_names])"
    loaded = build("data", data, (tuple, list, ImageSource), kind, schema=DataConfig)
    if isinstance(loaded, ImageSource):
        return loaded
    if len(loaded) not in (2, 3):
        raise ConfigError("data._target_", data._target_, f"{kind}; it returned {len(loaded)} items")
    images, labels = loaded[0], np.asarray(loaded[1])
    paths = None if isinstance(images, np.ndarray) else [str(p) for p in images]
    if len(labels) != (len(images) if paths is None else len(paths)) or not len(labels):
        raise ConfigError("data._target_", data._target_, f"{kind}: at least one image, and one label per image")
    names = [str(n) for n in loaded[2]] if len(loaded) == 3 else None
    labels, names = _index_labels(data._target_, labels, names)
    if paths is not None:
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise ConfigError(
                "data._target_", data._target_, f"paths of existing images ({len(missing)} missing: {shown})"
            )
        return ImageSource(names, labels, paths=paths)
    return ImageSource(names, labels, images=_pixels(data._target_, images))


def _index_labels(target: str, labels: np.ndarray, names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Labels as int64 indices into the class names (given, or the sorted distinct names or 0..max)."""
    if labels.dtype.kind in "iu":
        names = names or [str(i) for i in range(int(labels.max()) + 1)]
        if labels.min() < 0 or labels.max() >= len(names):
            raise ConfigError("data._target_", target, f"labels in 0..{len(names) - 1}, one per class name")
        return labels.astype(np.int64), names
    text = labels.astype(str)
    names = names or sorted(set(text))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(text) - set(index))
    if unknown:
        raise ConfigError("data._target_", target, f"labels among its class names (not: {', '.join(unknown[:3])})")
    return np.asarray([index[t] for t in text], dtype=np.int64), names


def _pixels(target: str, images: np.ndarray) -> np.ndarray:
    """An image array as uint8 (N, H, W, C), refusing values outside [0, 255] and [0, 1]-scaled floats."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ConfigError("data._target_", target, f"images as (N, H, W, 1 or 3), not {images.shape}")
    if images.dtype != np.uint8:
        low, high = float(images.min()), float(images.max())
        if low < 0 or high > 255 or (images.dtype.kind == "f" and high <= 1.0):
            raise ConfigError("data._target_", target, f"pixels in [0, 255] (they span [{low:g}, {high:g}])")
        images = images.astype(np.uint8)
    return images


def is_image_file(name: str) -> bool:
    """Whether a file name has an image extension kfactory reads."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_folder(path: str) -> ImageSource:
    """A folder with one sub-folder of images per class (names sorted)."""
    check_variables("data.path", path)  # also for eval/predict of a run trained on data.path=$PHOTOS
    root = expand_path(path)
    if not root.exists():
        raise ConfigError("data.path", path, "an existing folder with one sub-folder of images per class")
    if not root.is_dir():
        raise ConfigError("data.path", path, "a folder (not a file) with one sub-folder of images per class")
    class_names, paths, labels = [], [], []
    for class_dir in class_folders(root):
        files = sorted(_images_below(class_dir))
        if files:
            labels += [len(class_names)] * len(files)
            class_names.append(class_dir.name)
            paths += files
    if len(class_names) < 2:
        found = f"found {len(class_names)} class folder(s) with images"
        raise ConfigError("data.path", path, f"at least two sub-folders of JPEG/PNG/BMP/GIF images ({found})")
    return ImageSource(class_names, np.asarray(labels, dtype=np.int64), paths=paths)


def _images_below(folder: Path) -> list[str]:
    found = []
    for dirpath, _, filenames in os.walk(folder):
        found += [os.path.join(dirpath, f) for f in filenames if is_image_file(f)]
    return found


def read_csv(
    csv: str,
    path_column: str,
    label_column: str,
    separator: str = DataConfig.label_separator,
    task: str = DataConfig.task,
) -> ImageSource:
    """A CSV of image paths (relative to the CSV's folder) and labels (label sets for ``task`` multilabel)."""
    import pandas as pd

    check_variables("data.csv", csv)
    csv_path = expand_path(csv)
    if not csv_path.is_file():
        raise ConfigError("data.csv", csv, "an existing CSV file with an image-path column and a label column")
    table = pd.read_csv(csv_path)
    for key, column in (("data.path_column", path_column), ("data.label_column", label_column)):
        if column not in table.columns:
            raise ConfigError(key, column, f"a column of {csv_path.name}: {', '.join(map(str, table.columns))}")
    paths = csv_paths(csv_path, table[path_column])
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise ConfigError("data.csv", csv, f"every listed image to exist ({len(missing)} missing: {shown})")
    if detect_task(table[label_column].fillna("").astype(str).tolist(), separator, task) == "multilabel":
        return _label_sets_source(table[label_column], label_column, paths, separator)
    names = table[label_column].astype(str)
    class_names = sorted(names.unique())
    if len(class_names) < 2:
        raise ConfigError("data.label_column", label_column, "a column with at least two distinct labels")
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.asarray([index[n] for n in names], dtype=np.int64)
    return ImageSource(class_names, labels, paths=paths)


def _label_sets_source(column: pd.Series, label_column: str, paths: list[str], separator: str) -> ImageSource:
    """A multi-label source: each entry split at ``separator`` into a multi-hot row."""
    class_names, labels = multi_hot(split_label_sets(column.fillna("").astype(str).tolist(), separator))
    if len(class_names) < 2:
        raise ConfigError("data.label_column", label_column, "a column with at least two distinct labels")
    return ImageSource(class_names, labels, paths=paths)


def csv_paths(csv_path: Path, column: Iterable) -> list[str]:
    """A CSV's image paths, relative ones taken from the CSV's folder."""
    return [p if Path(p).is_absolute() else str(csv_path.parent / p) for p in map(str, column)]


def class_folders(root: Path) -> list[Path]:
    """The sub-folders of ``root`` that name classes (hidden ones are not), sorted."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_source(source: ImageSource, data: DictConfig, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) indices: ``data.val_split`` and ``test_split``, or fold ``data.fold`` of ``data.folds``."""
    if not data.folds:
        return split_indices(source.labels, data.val_split, data.test_split, seed)
    log.info("Cross-validation: fold %d of %d validates (data.val_split is not used)", data.fold, data.folds)
    return fold_indices(source.labels, data.folds, data.fold, data.test_split, seed, source.class_names)


def split_indices(
    labels: np.ndarray, val_split: float, test_split: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded (train, val, test) index arrays over ``labels`` (label sets: iteratively)."""
    if is_multilabel(labels):
        return iterative_split(labels, val_split, test_split, seed)
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for members in shuffled_classes(labels, rng):
        n_test = int(round(len(members) * test_split))
        n_val = int(round(len(members) * val_split))
        test.append(members[:n_test])
        val.append(members[n_test : n_test + n_val])
        train.append(members[n_test + n_val :])
    return tuple(rng.permutation(np.concatenate(part)) for part in (train, val, test))  # type: ignore[return-value]


def fold_indices(
    labels: np.ndarray, folds: int, fold: int, test_split: float, seed: int, class_names: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded (train, val, test) index arrays for fold ``fold`` of ``folds``.

    The test split is the one ``split_indices`` draws with the same seed, whatever
    the fold; the rest of each class is dealt round the folds (so per class and in
    all, fold sizes differ by at most one). Fold ``fold`` is the validation split,
    the others train. Label sets: ``label_set_folds``.
    """
    check_fold_sizes(labels, folds, test_split, class_names)
    if is_multilabel(labels):
        return label_set_folds(labels, folds, fold, test_split, seed)
    rng = np.random.default_rng(seed)
    train, val, test, dealt = [], [], [], 0
    for members in shuffled_classes(labels, rng):
        n_test = int(round(len(members) * test_split))
        pool = members[n_test:]
        assigned = (np.arange(len(pool)) + dealt) % folds  # each class starts where the last one stopped
        dealt += len(pool)
        test.append(members[:n_test])
        val.append(pool[assigned == fold])
        train.append(pool[assigned != fold])
    return tuple(rng.permutation(np.concatenate(part)) for part in (train, val, test))  # type: ignore[return-value]


def check_fold_sizes(
    labels: np.ndarray, folds: int, test_split: float, class_names: list[str] | None = None, key: str = "data.folds"
) -> None:
    """Refuse ``folds`` (set by ``key``) when a class has fewer images than folds once the test split is drawn.

    Label sets: when there are fewer images than folds (a label rarer than that is absent from some folds).
    """
    if is_multilabel(labels):
        pool = len(labels) - int(round(len(labels) * test_split))
        if pool < folds:
            raise ConfigError(key, folds, f"at most the images left for training and validation ({pool})")
        return
    for label, count in zip(*np.unique(labels, return_counts=True), strict=True):
        pool = int(count) - int(round(int(count) * test_split))
        if pool < folds:
            name = class_names[label] if class_names is not None else str(label)
            accepted = f"at most the images each class has for training and validation (class {name!r} has {pool})"
            raise ConfigError(key, folds, accepted)


def shuffled_classes(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Each class's indices in a seeded random order, classes in label order."""
    return [rng.permutation(np.flatnonzero(labels == label)) for label in np.unique(labels)]

"""Training-time augmentation: Keras 3 preprocessing layers applied to batches.

``data.augment`` is a list of ``{name: <layer>, <argument>: <value>, ...}``
entries, applied in order on each training batch inside the ``tf.data``
pipeline (never on validation or test). Images are float RGB in [0, 255], so
layers that take a ``value_range`` get (0, 255) unless one is given. MixUp and
CutMix mix labels too, so they need one-hot (or float) labels.

Checks here run before TensorFlow is imported; Keras is imported only when the
layers are built.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from kfactory.errors import ConfigError
from kfactory.registry import input_size, label_loss, sparse_labels

if TYPE_CHECKING:
    import tensorflow as tf

# Layer names accepted in data.augment (all in keras.layers).
AUGMENTATIONS = (
    "RandomFlip",
    "RandomRotation",
    "RandomZoom",
    "RandomTranslation",
    "RandomContrast",
    "RandomBrightness",
    "RandomCrop",
    "RandAugment",
    "AugMix",
    "MixUp",
    "CutMix",
)
LABEL_MIXING = ("MixUp", "CutMix")


def augment_entries(data: DictConfig) -> list[dict[str, Any]]:
    """``data.augment`` as plain dicts."""
    return [OmegaConf.to_container(e) if OmegaConf.is_config(e) else e for e in data.augment]


def check_augment(data: DictConfig, loss: DictConfig) -> None:
    """Refuse unknown layers and label-mixing layers with integer labels (no TensorFlow)."""
    for index, entry in enumerate(augment_entries(data)):  # the schema has made data.augment a list
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in AUGMENTATIONS:
            raise ConfigError(f"data.augment[{index}].name", name, "one of " + ", ".join(AUGMENTATIONS))
        if name in LABEL_MIXING and sparse_labels(label_loss(loss)):
            raise ConfigError(
                "loss.name",
                loss.name,
                f"data.augment uses {name}, which mixes labels and needs one-hot labels: "
                "use loss=categorical_crossentropy",
            )


def build_augmenter(cfg: DictConfig) -> Callable | None:
    """A ``(images, labels) -> (images, labels)`` function for ``Dataset.map``, or None."""
    import keras

    entries = augment_entries(cfg.data)
    if not entries:
        return None
    size = input_size(cfg.model)
    layers = [(e["name"], _make_layer(keras, index, e, cfg.seed, size)) for index, e in enumerate(entries)]

    def augment(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        import tensorflow as tf

        for name, layer in layers:
            if name in LABEL_MIXING:
                mixed = layer({"images": images, "labels": tf.cast(labels, tf.float32)}, training=True)
                images, labels = mixed["images"], mixed["labels"]
            else:
                images = layer(images, training=True)
        if tuple(images.shape[1:3]) != tuple(size):  # RandomCrop: back to the model's input size
            images = tf.image.resize(images, size)
        return tf.clip_by_value(images, 0.0, 255.0), labels

    return augment


def _make_layer(keras, index: int, entry: dict[str, Any], seed: int, size: tuple[int, int]):
    """One preprocessing layer; (0, 255) value range and a per-layer seed unless given."""
    name = entry["name"]
    cls = getattr(keras.layers, name)
    kwargs = {k: v for k, v in entry.items() if k != "name"}
    accepted = inspect.signature(cls.__init__).parameters
    if "value_range" in accepted:
        kwargs.setdefault("value_range", (0, 255))
    if "seed" in accepted:
        kwargs.setdefault("seed", seed + index)
    if name == "RandomCrop":
        kwargs.setdefault("height", size[0])
        kwargs.setdefault("width", size[1])
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        accepted = f"arguments of keras.layers.{name}: {error}"
        raise ConfigError(f"data.augment[{index}] ({name})", kwargs, accepted) from error


def write_augmented_images(train: tf.data.Dataset, log_dir: Path, count: int = 8) -> None:
    """A few augmented training images under TensorBoard's Images tab (step 0)."""
    import tensorflow as tf

    images, _ = next(iter(train.take(1)))
    writer = tf.summary.create_file_writer(str(log_dir / "train"))
    with writer.as_default():
        tf.summary.image("augmented_training_images", images[:count] / 255.0, step=0, max_outputs=count)
    writer.close()

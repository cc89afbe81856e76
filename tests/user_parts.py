"""Small user parts for tests/test_targets.py: what a user's own module would hold."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="kfactory_tests")
class Scale(keras.layers.Layer):
    """A custom layer: multiplies by a fixed factor (so a saved model needs this module to load)."""

    def __init__(self, factor: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def build_net(input_shape, num_classes, width=4):
    """A tiny convnet from raw pixels in [0, 255] to class probabilities."""
    inputs = keras.Input(input_shape)
    x = Scale(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(width, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="user_net")


def wrong_shape_net(input_shape, num_classes):
    """A model with one output too many."""
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, keras.layers.Dense(num_classes + 1)(keras.layers.Flatten()(inputs)))


def not_a_model(**kwargs):
    """Returns a string, not a model (or loss, optimizer, metric, callback, data)."""
    return "not a model"


def scaled_crossentropy(scale=1.0):
    """A loss factory: categorical crossentropy times ``scale``, so the logged loss shows it was used."""
    base = keras.losses.CategoricalCrossentropy()
    return lambda y_true, y_pred: scale * base(y_true, y_pred)


def make_sgd(learning_rate, momentum=0.0):
    """An optimizer factory."""
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)


class Constant(keras.metrics.Metric):
    """A metric that is always ``value``: easy to find in history.csv."""

    def __init__(self, value=7.0, **kwargs):
        super().__init__(**kwargs)
        self.value = value

    def update_state(self, y_true, y_pred, sample_weight=None):
        pass

    def result(self):
        return keras.ops.convert_to_tensor(self.value)


class EpochFile(keras.callbacks.Callback):
    """Appends ``epoch <n>`` to ``path`` at the end of each epoch."""

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        with self.path.open("a") as out:
            out.write(f"epoch {epoch}\n")


class RemoveValImages(keras.callbacks.Callback):
    """At the end of epoch 1, removes ``count`` validation images named in ``splits`` (a run's splits.csv):
    a data set that changes while a run reads its files every epoch."""

    def __init__(self, splits, count):
        super().__init__()
        self.splits, self.count = Path(splits), count

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            import pandas as pd

            rows = pd.read_csv(self.splits)
            for path in rows[rows["split"] == "val"]["file"].head(self.count):
                Path(path).unlink()


def load_files(root):
    """A data source: the image files under ``root``/<class>/, labelled by folder name."""
    paths = sorted(Path(root).glob("*/*.png"))
    return [str(p) for p in paths], [p.parent.name for p in paths]


def listing(paths):
    """A data source: the given paths, labelled a, b, a, b, ..."""
    return paths, ["a", "b"] * (len(paths) // 2) + ["a"] * (len(paths) % 2)


def load_arrays(count=40, size=16):
    """A data source: random uint8 images of two classes, integer labels, named classes."""
    rng = np.random.default_rng(0)
    labels = np.arange(count) % 2
    images = rng.integers(0, 100, (count, size, size, 3)) + 120 * labels[:, None, None, None]
    return images.astype(np.uint8), labels, ["dark", "light"]

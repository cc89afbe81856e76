"""tf.data pipelines: decoded, resized RGB batches with labels encoded for the loss."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import compose_config, write_image_folder


def first_batch(overrides: list[str]):
    from kfactory.data.pipeline import make_splits

    splits = make_splits(compose_config(overrides))
    images, labels = next(iter(splits.train))
    return splits, images.numpy(), labels.numpy()


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_folder_images_are_decoded_and_resized_to_the_input_size(tmp_path, fmt):
    write_image_folder(tmp_path / "imgs", {"a": 6, "b": 6}, size=20, fmt=fmt)
    splits, images, labels = first_batch(
        [
            "data=folder",
            f"data.path={tmp_path / 'imgs'}",
            "model.input_size=[40,36]",
            "data.batch_size=4",
            "data.val_split=0.25",
            "data.test_split=0.25",
            "model.weights=null",
        ]  # fmt: skip
    )
    assert splits.class_names == ["a", "b"]
    assert images.shape == (4, 40, 36, 3) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 255 and images.max() > 1  # raw pixels, not rescaled
    assert labels.shape == (4, 2)  # one-hot for categorical_crossentropy
    assert sum(len(i) for i in splits.indices.values()) == 12


def test_grayscale_digits_become_three_channel_batches():
    _, images, labels = first_batch(["data.batch_size=8"])
    assert images.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    np.testing.assert_allclose(labels.sum(axis=-1), 1.0)


def test_sparse_loss_gets_integer_labels():
    _, _, labels = first_batch(["data.batch_size=8", "loss=sparse_categorical_crossentropy"])
    assert labels.shape == (8,) and labels.dtype == np.int64


def test_binary_crossentropy_on_two_classes_gets_one_float_target(tmp_path):
    write_image_folder(tmp_path / "imgs", {"a": 4, "b": 4})
    _, _, labels = first_batch(
        [
            "data=folder",
            f"data.path={tmp_path / 'imgs'}",
            "model.input_size=[32,32]",
            "loss=binary_crossentropy",
            "model.activation=sigmoid",
            "data.batch_size=4",
            "data.val_split=0",
            "data.test_split=0",
            "model.weights=null",
        ]  # fmt: skip
    )
    assert labels.shape == (4, 1) and set(labels[:, 0]) <= {0.0, 1.0}

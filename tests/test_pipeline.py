"""tf.data pipelines: decoded, resized RGB batches with labels encoded for the loss."""

from __future__ import annotations

import os

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


def test_with_steps_per_epoch_every_epoch_runs_all_its_steps(recwarn):
    import keras

    from kfactory.data.pipeline import epoch_inputs, make_splits

    # 1437 training digits in batches of 512: 3 batches; 3 epochs of 2 steps need 6.
    splits = make_splits(compose_config(["data.batch_size=512", "model.input_size=[32,32]"]))
    train, val = epoch_inputs(splits, steps_per_epoch=2, validation_steps=1)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    steps: list[int] = []
    counter = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: steps.append(0),
        on_train_batch_end=lambda batch, logs: steps.__setitem__(-1, steps[-1] + 1),
    )
    fit = {"epochs": 3, "steps_per_epoch": 2, "shuffle": False}  # the pipeline shuffles; Keras would warn
    history = model.fit(train, validation_data=val, callbacks=[counter], verbose=0, **fit)
    assert steps == [2, 2, 2]
    assert len(history.history["val_loss"]) == 3
    assert not [w for w in recwarn if "ran out of data" in str(w.message)]


@pytest.mark.parametrize(
    ("steps_per_epoch", "most", "steps"),
    [(None, None, None), (None, 5000, None), (None, 1437, None), (None, 100, 2), (None, 128, 2), (3, 100, 3)],
)
def test_an_epoch_is_one_pass_unless_its_steps_or_images_are_capped(steps_per_epoch, most, steps):
    from omegaconf import OmegaConf

    from kfactory.data.pipeline import epoch_steps

    trainer = OmegaConf.create({"steps_per_epoch": steps_per_epoch, "max_images_per_epoch": most})
    assert epoch_steps(trainer, train_images=1437, batch_size=64) == steps


def test_epochs_capped_by_images_go_on_through_the_split_where_the_last_one_ended():
    import keras
    import tensorflow as tf

    from kfactory.data.pipeline import epoch_inputs, epoch_steps

    # 10 images in batches of 2, at most 4 images an epoch: 2 steps, and 5 epochs see every image twice
    cfg = compose_config(["trainer.max_images_per_epoch=4", "data.batch_size=2"])
    steps = epoch_steps(cfg.trainer, train_images=10, batch_size=2)
    images = tf.data.Dataset.range(10).map(lambda i: (tf.fill([1], tf.cast(i, tf.float32)), i % 2)).batch(2)
    splits = type("Splits", (), {"train": images, "val": None})()
    train, _ = epoch_inputs(splits, steps, None)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    seen: list[list[float]] = []

    def note(x: tf.Tensor) -> tf.Tensor:  # the images of each batch fit reads
        return tf.ensure_shape(
            tf.py_function(lambda v: seen.append(v.numpy()[:, 0].tolist()) or v, [x], tf.float32), [None, 1]
        )

    model.fit(train.map(lambda x, y: (note(x), y)), epochs=5, steps_per_epoch=steps, verbose=0, shuffle=False)
    assert steps == 2 and len(seen) >= 10  # tf.data reads a batch or two ahead of the last step
    assert sorted(sum(seen[:5], [])) == list(range(10)) and sorted(sum(seen[5:10], [])) == list(range(10))


@pytest.mark.parametrize("cache", ["disk", "none"])
def test_streamed_or_read_files_tell_keras_their_batches_so_no_epoch_ran_out_of_data(tmp_path, cache, recwarn):
    import keras

    from kfactory.data.pipeline import epoch_inputs, make_splits

    folder = write_image_folder(tmp_path / "imgs", {"a": 15, "b": 15}, size=20, fmt="jpg")
    overrides = ["data=folder", f"data.path={folder}", f"data.cache={cache}", f"data.cache_dir={tmp_path / 'c'}"]
    splits = make_splits(compose_config([*overrides, "model.input_size=[16,16]", "data.batch_size=4"]))
    for name in ("train", "val", "test"):  # a filter (the streamed entry) or ignore_errors (the files) hid it
        batches = -(-len(splits.indices[name]) // 4)
        assert int(getattr(splits, name).cardinality()) == batches == sum(1 for _ in getattr(splits, name))
    train, val = epoch_inputs(splits, steps_per_epoch=None, validation_steps=None)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    model.fit(train, validation_data=val, epochs=2, verbose=0, shuffle=False)
    model.evaluate(splits.test, verbose=0)
    assert not [w for w in recwarn if "ran out of data" in str(w.message)]


def test_a_split_a_batch_short_of_its_files_stops_the_run_in_one_line(tmp_path):
    from kfactory.data.pipeline import make_splits, splits_read_whole
    from kfactory.errors import RunStopped

    folder = write_image_folder(tmp_path / "imgs", {"a": 15, "b": 15}, size=20, fmt="jpg")
    overrides = ["data=folder", f"data.path={folder}", "data.cache=none", "model.input_size=[16,16]"]
    splits = make_splits(compose_config([*overrides, "data.batch_size=2", "data.val_split=0.2"]))
    for index in splits.indices["val"][:3]:  # read every epoch: removed while the run trains
        os.remove(splits.source.paths[index])
    stopped = r"^Images of this run's split were removed or changed while it trained, reading the files every epoch"
    with pytest.raises(RunStopped, match=stopped), splits_read_whole(splits):
        list(splits.val)

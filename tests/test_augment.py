"""Augmentation: training batches only, label mixing, presets, refusals before TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from kfactory.config.validate import validate
from kfactory.data.augment import AUGMENTATIONS
from kfactory.errors import ConfigError
from tests.conftest import compose_config, run_cli, write_image_folder


def test_presets_compose_under_data_augment():
    assert compose_config([]).data.augment == []
    light = compose_config(["data/augment=light"]).data.augment
    strong = compose_config(["data=folder", "data.path=/x", "data/augment=strong"]).data.augment
    assert [e.name for e in light][0] == "RandomFlip"
    assert all(e.name in AUGMENTATIONS for e in [*light, *strong])


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["loss=sparse_categorical_crossentropy", "data.augment=[{name: MixUp}]"], "loss.name"),
        (["loss=sparse_categorical_crossentropy", "data.augment=[{name: CutMix}]"], "loss.name"),
        (["data.augment=[{name: RandomBlur}]"], "data.augment[0].name"),
        (["data.augment=[RandomFlip]"], "data.augment[0].name"),  # a bare name, not {name: ...}
    ],
)
def test_label_mixing_with_sparse_labels_and_unknown_layers_are_refused(overrides, key):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(overrides))
    assert error.value.key == key


def test_mixup_with_a_sparse_loss_exits_before_tensorflow(tmp_path):
    result = run_cli(
        ["loss=sparse_categorical_crossentropy", "data.augment=[{name: MixUp}]", f"hydra.run.dir={tmp_path}"],
        env={"PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 2
    assert "MixUp" in result.stderr + result.stdout and "categorical_crossentropy" in result.stderr + result.stdout


def batches_as_array(ds) -> np.ndarray:
    return np.concatenate([x.numpy() for x, _ in ds])


def test_augmentation_changes_training_batches_only(tmp_path):
    from kfactory.data.pipeline import make_splits

    folder = write_image_folder(tmp_path / "images", {"a": 10, "b": 10}, size=16)
    base = ["data=folder", f"data.path={folder}", "model.input_size=[16,16]", "data.val_split=0.3", "data.test_split=0"]
    brighter = "data.augment=[{name: RandomBrightness, factor: [0.3, 0.3]}]"  # always +0.3 * 255
    plain = make_splits(compose_config(base), tmp_path / "plain")
    augmented = make_splits(compose_config([*base, brighter]), tmp_path / "aug")
    np.testing.assert_array_equal(batches_as_array(plain.val), batches_as_array(augmented.val))
    plain_train, aug_train = batches_as_array(plain.train), batches_as_array(augmented.train)
    assert plain_train.shape == aug_train.shape
    assert aug_train.mean() > plain_train.mean() + 30


def test_mixup_mixes_one_hot_labels_and_random_crop_keeps_the_input_size():
    import tensorflow as tf

    from kfactory.data.augment import build_augmenter

    cfg = compose_config(
        ["model.input_size=[16,16]", "data.augment=[{name: RandomCrop, height: 8, width: 8}, {name: MixUp}]"]
    )
    augment = build_augmenter(cfg)
    images = tf.random.uniform((8, 16, 16, 3), 0, 255)
    labels = tf.one_hot(tf.range(8) % 2, 2)
    out_images, out_labels = augment(images, labels)
    assert out_images.shape == (8, 16, 16, 3)
    np.testing.assert_allclose(out_labels.numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert not np.isin(out_labels.numpy(), [0.0, 1.0]).all()


def test_augmented_images_are_written_for_tensorboard(tmp_path):
    import tensorflow as tf

    from kfactory.data.augment import write_augmented_images

    ds = tf.data.Dataset.from_tensors((tf.fill((4, 8, 8, 3), 128.0), tf.zeros((4, 2))))
    write_augmented_images(ds, tmp_path)
    assert list((tmp_path / "train").glob("events.out.tfevents.*"))


def test_the_augmented_preview_shows_the_first_training_images_without_shuffling_them_all_in(tmp_path):
    import io

    import tensorflow as tf
    from PIL import Image

    from kfactory.data.pipeline import make_splits
    from kfactory.train.loop import describe_training

    folder = write_image_folder(tmp_path / "images", {"a": 12, "b": 12}, size=16)
    overrides = ["data=folder", f"data.path={folder}", "model.input_size=[16,16]", "data.cache=none"]  # read afresh
    overrides += ["data.augment=[{name: RandomFlip}]", "data.class_weight=balanced", "data.batch_size=8"]
    cfg = compose_config([*overrides, "data.val_split=0", "data.test_split=0"])
    splits = make_splits(cfg, tmp_path)
    shown = set(splits.indices["train"][:8])
    for i, path in enumerate(splits.source.paths):  # the 8 to show are black, every other image white
        Image.new("RGB", (16, 16), (0, 0, 0) if i in shown else (255, 255, 255)).save(path)
    weights = describe_training(cfg, splits, tmp_path)
    assert set(weights) == {0, 1} and (tmp_path / "class_counts.csv").exists()
    [events] = (tmp_path / "tensorboard" / "train").glob("events.out.tfevents.*")
    [encoded] = [
        value.tensor.string_val[2:]  # after width and height
        for event in tf.compat.v1.train.summary_iterator(str(events))
        for value in event.summary.value
        if value.tag == "augmented_training_images"
    ]
    assert len(encoded) == 8
    assert all(np.asarray(Image.open(io.BytesIO(png))).max() < 50 for png in encoded)  # no white image read

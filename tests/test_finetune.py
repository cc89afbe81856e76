"""Two-phase fine-tuning: which weights each phase changes, and one run across phases."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from kfactory.config.validate import validate
from kfactory.errors import ConfigError
from kfactory.train.finetune import plan_phases
from tests.conftest import TINY, compose_config, write_image_folder


def tiny_model(size: int = 16, classes: int = 2):
    """Like build_model, small: fixed caffe preprocessing, a base with BN called training=False, a head."""
    import keras

    from kfactory.model.build import preprocess

    keras.utils.set_random_seed(0)
    base_in = keras.Input((size, size, 3))
    y = keras.layers.Conv2D(4, 3, name="conv1")(base_in)
    y = keras.layers.BatchNormalization(name="bn1")(y)
    y = keras.layers.Conv2D(4, 3, name="conv2")(y)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    y = keras.layers.GlobalAveragePooling2D(name="pool")(y)
    base = keras.Model(base_in, y, name="base")
    inputs = keras.Input((size, size, 3), name="image")
    x = base(preprocess(inputs, "caffe"), training=False)
    # A small head: a softmax saturated by default-sized weights on 0-255 pixels can make
    # every gradient exactly zero, so that a check for "these weights changed" fails by chance.
    small = keras.initializers.RandomNormal(stddev=1e-3, seed=0)
    outputs = keras.layers.Dense(classes, activation="softmax", kernel_initializer=small, name="predictions")(x)
    return keras.Model(inputs, outputs, name="tiny")


def snapshot(model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.weights}


def changed(before: dict, after: dict) -> set[str]:
    return {path for path in before if not np.array_equal(before[path], after[path])}


def test_plan_is_one_phase_without_head_epochs_and_two_with():
    cfg = validate(compose_config(["model.weights=imagenet", "model.freeze=30", "trainer.epochs=5"]))
    [only] = plan_phases(cfg.finetune, cfg.model.freeze, cfg.optimizer.learning_rate, cfg.trainer.epochs)
    assert (only.freeze, only.initial_epoch, only.epochs, only.learning_rate) == (30, 0, 5, 0.001)
    cfg = compose_config(["model.weights=imagenet", "model.freeze=30", "trainer.epochs=5", "finetune.head_epochs=2"])
    head, tune = plan_phases(cfg.finetune, cfg.model.freeze, cfg.optimizer.learning_rate, cfg.trainer.epochs)
    assert (head.freeze, head.initial_epoch, head.epochs, head.learning_rate) == ("all", 0, 2, 0.001)
    assert (tune.freeze, tune.initial_epoch, tune.epochs) == (30, 2, 5)
    assert tune.learning_rate == pytest.approx(0.0001)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.freeze=-1"], "model.freeze"),
        (["model.weights=imagenet", "finetune.head_epochs=15"], "finetune.head_epochs"),
        (["finetune.head_epochs=1"], "finetune.head_epochs"),  # digits: weights=null, nothing pretrained
        (["model.weights=imagenet", "finetune.learning_rate_factor=0"], "finetune.learning_rate_factor"),
        (["model.bn_trainable=maybe"], "model.bn_trainable"),
    ],
)
def test_bad_finetune_settings_are_refused(overrides, key):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(overrides))
    assert error.value.key == key


def pretrained_model(tmp_path, name: str, overrides: list[str] | None = None):
    """``build_model`` of ``name`` at 32 px from a weights file, as training freezes it; and 8 images.

    The file's BatchNormalization statistics are taken from the images (one pass in training
    mode, momentum 0): with the fresh ones (mean 0, variance 1) a random base's features
    shrink to ~1e-20, no gradient reaches the base, and "nothing changed" would prove nothing.
    """
    import keras

    from kfactory.model.build import build_model, preprocess
    from kfactory.registry import MODELS
    from kfactory.train.finetune import apply_freeze, find_base

    spec = MODELS[name]
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    source = getattr(keras.applications, spec.keras_name)(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    for layer in source.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, source(preprocess(inputs, spec.preprocess)))(images, training=True)
    path = tmp_path / f"{name}.weights.h5"
    source.save_weights(path)
    cfg = compose_config([f"model={name}", f"model.weights={path}", "model.input_size=[32,32]", *(overrides or [])])
    model = build_model(cfg, 2)
    [phase] = plan_phases(cfg.finetune, cfg.model.freeze, cfg.optimizer.learning_rate, cfg.trainer.epochs)
    apply_freeze(find_base(model), phase.freeze, pretrained=True, bn_trainable=cfg.model.bn_trainable)  # as fit does
    return model, images


def fit_one_step(model, images) -> set[str]:
    """The weights one SGD step (in ``fit``, as training runs it) changes."""
    import keras

    model.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy")
    before = snapshot(model)
    labels = np.eye(2)[[0, 0, 0, 1, 0, 0, 0, 1]]  # unbalanced: the head's bias gradient is not zero
    model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    return changed(before, snapshot(model))


@pytest.mark.slow  # builds every model option; test_build keeps a fast sample
def test_every_model_option_freezes_its_pretrained_base_and_keeps_bn_in_inference_mode(tmp_path):
    from kfactory.registry import MODELS

    for name, spec in MODELS.items():
        weights = "imagenet" if spec.application else "null"  # kfactory's own nets: pretrained only from a file
        model = validate(compose_config([f"model={name}", f"model.weights={weights}", "model.input_size=null"])).model
        assert model.freeze == "all" and model.bn_trainable is False, name
    # What those defaults do to a built model: one training step moves the head only,
    # and the base's BatchNormalization runs in inference mode (moving statistics unchanged).
    model, images = pretrained_model(tmp_path, "mobilenet")
    moved = fit_one_step(model, images)
    assert moved == {"predictions/kernel", "predictions/bias"}
    assert any("moving_mean" in path for path in snapshot(model))  # the base has BN statistics that could move


def test_freeze_by_count_and_by_name_leaves_preprocessing_and_head_alone():
    from kfactory.train.finetune import apply_freeze, find_base

    model = tiny_model()
    base = find_base(model)
    apply_freeze(base, 2)  # conv1, bn1, conv2, bn2, pool: BN of a pretrained base stays frozen
    assert [layer.trainable for layer in base.layers[1:]] == [False, False, False, False, True]
    apply_freeze(base, "conv2", bn_trainable=True)
    assert [layer.trainable for layer in base.layers[1:]] == [False, False, True, True, True]
    apply_freeze(base, "all")
    assert not base.trainable and not any(layer.trainable for layer in base.layers[1:])
    assert model.get_layer("predictions").trainable
    apply_freeze(base, "all", pretrained=False)  # from scratch the base always trains
    assert base.trainable
    assert not model.get_layer("preprocess").trainable
    with pytest.raises(ConfigError, match="conv2"):
        apply_freeze(base, "no_such_layer")


def phase_recorder():
    """A callback keeping the weights at the start and at the end of every phase (one fit each)."""
    import keras

    class Recorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.states: list[dict] = []

        def on_train_begin(self, logs=None):
            if not self.states:
                self.states.append(snapshot(self.model))

        def on_train_end(self, logs=None):
            self.states.append(snapshot(self.model))

    return Recorder()


@pytest.mark.slow  # two fine-tuning phases
def test_head_phase_trains_only_the_head_then_the_unfrozen_layers_train(tmp_path):
    from kfactory.data.pipeline import make_splits
    from kfactory.train.best_model import BestModelCheckpoint
    from kfactory.train.callbacks import make_callbacks
    from kfactory.train.compile import compile_model
    from kfactory.train.finetune import fit_in_phases

    folder = write_image_folder(tmp_path / "images", {"a": 10, "b": 10}, size=16)
    overrides = [*TINY, "data=folder", f"data.path={folder}", "data.val_split=0.2", "data.test_split=0"]
    overrides += ["model.input_size=[16,16]", "model.weights=imagenet", "model.freeze=conv2"]
    overrides += ["finetune.head_epochs=1", "trainer.epochs=2", "trainer.monitor=val_loss"]
    overrides += ["optimizer.learning_rate=0.01"]
    cfg = compose_config(overrides)
    splits = make_splits(cfg, tmp_path)
    model = tiny_model()
    recorder = phase_recorder()
    checkpoint = BestModelCheckpoint(tmp_path / "model.keras", "val_loss", {})
    callbacks = [recorder, *make_callbacks(cfg, tmp_path, checkpoint)]
    history = fit_in_phases(model, cfg, splits, 2, callbacks, lambda lr: compile_model(model, cfg, 2, False, lr))

    start, after_head, after_tune = recorder.states
    head = {"predictions/kernel", "predictions/bias"}
    assert changed(start, after_head) == head
    unfrozen = {"conv2/kernel", "conv2/bias"}
    assert changed(after_head, after_tune) == head | unfrozen  # BN (stats too), conv1, preprocess: never
    assert history.epoch == [0, 1]
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # history.csv counts epochs from 1
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([0.01, 0.001])
    assert (tmp_path / "model.keras").exists()


def test_finetune_recipe_composes_and_validates(tmp_path):
    weights = tmp_path / "resnet50.weights.h5"
    weights.write_bytes(b"")  # validate checks only that the file exists
    cfg = compose_config(["experiment=finetune_imagenet", f"model.weights={weights}"])
    validate(cfg)
    assert cfg.model.name == "resnet50" and cfg.model.freeze == 30
    assert cfg.finetune.head_epochs == 3 and cfg.finetune.learning_rate_factor == 0.1
    assert cfg.optimizer.schedule.name == "cosine" and cfg.data.augment
    validate(compose_config(["experiment=from_scratch_small"]))


@pytest.mark.slow
def test_bn_statistics_of_a_frozen_pretrained_application_do_not_change(tmp_path):
    """The real builder: MobileNetV3Small from a weights file, the whole base fine-tuned."""
    import keras

    from kfactory.train.finetune import find_base

    model, images = pretrained_model(tmp_path, "mobilenet_v3_small", ["model.freeze=none"])
    base = find_base(model)
    bns = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    others = [layer for layer in base.layers if layer.weights and layer not in bns]
    assert bns and not any(layer.trainable for layer in bns)  # even fully unfrozen, BN stays in inference mode
    assert others and all(layer.trainable for layer in others)  # the base itself trains, not only the head
    moved = fit_one_step(model, images)
    assert {f"{layer.name}/kernel" for layer in others if hasattr(layer, "kernel")} & moved  # the base did train
    assert not {path for path in moved if "moving_" in path}

"""Every application builds with its preprocessing and a new head."""

from __future__ import annotations

import numpy as np
import pytest

from kfactory.registry import MODELS
from tests.conftest import compose_config

# One model per kind of block in the default suite (residual, dense, separable, inverted residual with its own
# rescaling, EfficientNet's normalization, ConvNeXt's layer norm); every other model is in the slow run.
FAST = {"resnet50", "densenet121", "xception", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "small_cnn"}


def build(overrides: list[str], num_classes: int = 3):
    from kfactory.model.build import build_model

    return build_model(compose_config(overrides), num_classes)


@pytest.fixture(autouse=True)
def fresh_session():
    yield
    import keras

    keras.backend.clear_session()


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in sorted(MODELS)])
def test_model_builds_at_its_smallest_input_size(name):
    side = MODELS[name].min_size
    model = build([f"model={name}", "model.weights=null", f"model.input_size=[{side},{side}]"], num_classes=3)
    assert model.input_shape == (None, side, side, 3)
    assert model.output_shape == (None, 3)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, side, side, 3)).astype("float32")
    probabilities = np.asarray(model(pixels, training=False))
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)


def test_include_top_keeps_the_imagenet_top_and_replaces_the_last_layer():
    model = build(["model=vgg16", "model.weights=null", "model.include_top=true", "model.input_size=[32,32]"], 5)
    base = model.get_layer("vgg16")
    names = [layer.name for layer in base.layers]
    assert "fc1" in names and "fc2" in names and "predictions" not in names
    assert model.get_layer("predictions").units == 5
    assert model.output_shape == (None, 5)


def test_binary_crossentropy_with_two_classes_uses_one_sigmoid_unit():
    model = build(["model=mobilenet", "model.weights=null", "model.input_size=[32,32]", "loss=binary_crossentropy"], 2)
    assert model.output_shape == (None, 1)
    assert model.get_layer("predictions").get_config()["activation"] == "sigmoid"


def test_dropout_goes_before_the_new_classifier():
    model = build(["model=mobilenet", "model.weights=null", "model.input_size=[32,32]", "model.dropout=0.3"])
    assert model.layers[-2].name == "head_dropout" and model.layers[-2].rate == 0.3


def test_bn_momentum_is_set_on_every_batch_normalization():
    import keras

    model = build(["model=mobilenet_v2", "model.weights=null", "model.input_size=[32,32]", "model.bn_momentum=0.8"])
    bns = [
        layer
        for layer in model.get_layer("mobilenetv2_1.00_32").layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert bns and all(layer.momentum == 0.8 for layer in bns)


def test_a_weights_file_saved_from_the_same_architecture_loads(tmp_path):
    import keras

    source = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    path = tmp_path / "mobilenet.weights.h5"
    source.save_weights(path)
    model = build(["model=mobilenet", f"model.weights={path}", "model.input_size=[32,32]"])
    loaded = model.get_layer(source.name).get_weights()
    for expected, got in zip(source.get_weights(), loaded, strict=True):
        np.testing.assert_array_equal(expected, got)


@pytest.mark.parametrize(
    ("mode", "family"), [("caffe", "vgg16"), ("tf", "mobilenet_v2"), ("torch", "densenet"), ("none", "efficientnet")]
)
def test_preprocessing_layers_equal_the_family_preprocess_input(mode, family, tmp_path):
    import keras

    from kfactory.model.build import preprocess

    inputs = keras.Input((6, 5, 3))
    model = keras.Model(inputs, preprocess(inputs, mode))
    model.save(tmp_path / "pre.keras")
    reloaded = keras.models.load_model(tmp_path / "pre.keras")  # safe mode: built-in layers only
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 6, 5, 3)).astype("float32")
    pixels[0, 0, 0] = [255, 0, 0]  # a pure red pixel: caffe's channel order must come out BGR
    expected = getattr(keras.applications, family).preprocess_input(pixels.copy())
    for built in (model, reloaded):
        np.testing.assert_allclose(built.predict(pixels, verbose=0), expected, rtol=1e-5, atol=1e-4)


def test_small_cnn_saves_as_plain_keras_layers_and_takes_its_own_weights_file(tmp_path):
    import keras

    model = build(["model=small_cnn", "model.input_size=[8,8]", "model.bn_momentum=0.8"], num_classes=4)
    base = model.get_layer("small_cnn")
    bns = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 6 and all(layer.momentum == 0.8 for layer in bns)
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras")  # safe mode: no kfactory class inside
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(reloaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0), atol=1e-6)
    base.save_weights(tmp_path / "small_cnn.weights.h5")
    again = build(["model=small_cnn", f"model.weights={tmp_path / 'small_cnn.weights.h5'}", "model.input_size=8"], 4)
    for expected, got in zip(base.get_weights(), again.get_layer("small_cnn").get_weights(), strict=True):
        np.testing.assert_array_equal(expected, got)

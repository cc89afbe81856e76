"""Pretrained weights without a network: local files by path, refused for another architecture."""

from __future__ import annotations

import numpy as np
import pytest

from kfactory.errors import ConfigError
from tests.conftest import compose_config


def build(overrides: list[str], classes: int = 3):
    from kfactory.model.build import build_model

    return build_model(compose_config([*overrides, "model.input_size=[32,32]"]), classes)


def save_vgg16_base(tmp_path):
    import keras

    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    path = tmp_path / "x.weights.h5"
    base.save_weights(path)
    return base, path


def test_a_local_weights_file_is_loaded_into_the_base(tmp_path):
    from kfactory.train.finetune import find_base

    source, path = save_vgg16_base(tmp_path)
    loaded = find_base(build(["model=vgg16", f"model.weights={path}"]))
    for expected, got in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(expected, got)


def test_a_file_for_another_architecture_is_refused(tmp_path):
    _, path = save_vgg16_base(tmp_path)
    with pytest.raises(ConfigError) as error:
        build(["model=vgg19", f"model.weights={path}"])
    assert error.value.key == "model.weights"
    assert str(path) in str(error.value) and "does not fit" in str(error.value)
    assert len(str(error.value)) < 600  # one readable line, not Keras's list of every layer


def test_imagenet_download_failure_names_both_alternatives(monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise OSError("URL fetch failure: no network")

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    with pytest.raises(ConfigError) as error:
        build(["model=vgg16", "model.weights=imagenet"])
    message = str(error.value)
    assert "model.weights=null" in message and "model.weights=<path>" in message and "no network" in message

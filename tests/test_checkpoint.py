"""Models load in Keras' safe mode unless unsafe_load=true asks otherwise."""

from __future__ import annotations

import pytest

from kfactory.config import ConfigError


def test_a_model_holding_python_code_needs_unsafe_load(tmp_path):
    import keras

    from kfactory.checkpoint import load_model

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2.0)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ConfigError) as caught:
        load_model(path)
    assert caught.value.key == "unsafe_load" and "\n" not in str(caught.value)
    assert load_model(path, safe_mode=False).output_shape == (None, 3)

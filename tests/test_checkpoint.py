"""Models load in Keras' safe mode unless unsafe_load=true asks otherwise."""

from __future__ import annotations

import pytest

from kfactory.errors import ConfigError


def test_a_model_holding_python_code_needs_unsafe_load(tmp_path):
    import keras

    from kfactory.model.checkpoint import load_model

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2.0)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ConfigError) as caught:
        load_model(path)
    assert caught.value.key == "unsafe_load" and "\n" not in str(caught.value)
    assert load_model(path, safe_mode=False).output_shape == (None, 3)


def test_find_model_file_prefers_model_keras_then_a_saved_model(tmp_path):
    import zipfile

    from kfactory.model.checkpoint import find_model_file

    run = tmp_path / "run"
    for version in ("1", "2", "10"):
        (run / "saved_model" / version).mkdir(parents=True)
        (run / "saved_model" / version / "saved_model.pb").write_bytes(b"")
    (run / "saved_model" / "notes").mkdir()
    assert find_model_file(str(run)) == run / "saved_model" / "10"  # TF Serving's newest version
    assert find_model_file(str(run / "saved_model")) == run / "saved_model" / "10"
    assert find_model_file(str(run / "saved_model" / "2")) == run / "saved_model" / "2"
    with zipfile.ZipFile(run / "model.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    assert find_model_file(str(run)) == run / "model.keras"
    with pytest.raises(ConfigError, match="SavedModel"):
        find_model_file(str(tmp_path / "empty"))


def test_saved_model_metadata_is_read_from_its_sidecar(tmp_path):
    import json

    from kfactory.model.checkpoint import SAVED_MODEL_METADATA, read_metadata

    (tmp_path / SAVED_MODEL_METADATA).parent.mkdir()
    (tmp_path / SAVED_MODEL_METADATA).write_text(json.dumps({"class_names": ["a", "b"]}))
    assert read_metadata(tmp_path) == {"class_names": ["a", "b"]}
    assert read_metadata(tmp_path / "assets.extra") == {}


@pytest.mark.numeric
def test_a_saved_model_file_is_lean_and_the_model_keeps_training(tmp_path):
    import warnings
    import zipfile

    import keras
    import numpy as np

    from kfactory.model.checkpoint import METADATA_ENTRY, save_model

    inputs = keras.Input((64,))  # 70k weights: the HDF5 file's own overhead stays small beside them
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(keras.layers.Dense(1024)(inputs)))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = np.random.default_rng(0).normal(size=(32, 64)).astype("float32"), np.arange(32) % 4
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    save_model(model, path, {"class_names": list("abcd")})

    weight_bytes = sum(v.numpy().nbytes for v in model.weights)
    with zipfile.ZipFile(path) as archive:
        stored = archive.getinfo("model.weights.h5").file_size
        assert METADATA_ENTRY in archive.namelist()
    assert stored <= 1.1 * weight_bytes  # Adam's two slots per weight would triple it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Skipping variable loading for optimizer"
        loaded = keras.models.load_model(path, safe_mode=True)
    assert not loaded.compiled
    # the same weights, inputs and batch shape: the same kernels on any CPU, so equal to float32 rounding
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    # The training model gets its optimizer back: it goes on from where it was.
    assert model.compiled and int(model.optimizer.iterations.numpy()) == 1
    model.fit(x, y, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 2

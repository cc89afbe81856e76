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

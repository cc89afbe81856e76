"""The Keras and TensorFlow internals kfactory touches (kfactory/framework.py): one contract test each.

A Keras release that changes one of them fails its test here, by name.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from kfactory import framework
from kfactory.errors import ConfigError
from tests.conftest import TINY, run_cli


def tiny_model(compiled: bool = True):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    if compiled:
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def tiny_data(count: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(count, 4)).astype("float32"), np.eye(2, dtype="float32")[rng.integers(0, 2, count)]


def test_keras_is_the_tested_minor_series_on_tensorflow():
    import keras

    assert keras.__version__.startswith(f"{framework.TESTED_KERAS}.") and keras.backend.backend() == "tensorflow"


def test_symbolic_build_creates_the_optimizer_and_metric_variables():
    import tensorflow as tf

    model = tiny_model()
    x, y = tiny_data()
    spec = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).element_spec
    assert not model.optimizer.built
    before = len(model.metrics_variables)
    framework.symbolic_build(model, spec)
    assert model.optimizer.built and model.optimizer.variables
    assert len(model.metrics_variables) > before  # the compiled accuracy's variables, before any trace


def test_set_initial_epoch_moves_where_fit_starts():
    model = tiny_model()
    x, y = tiny_data()
    framework.set_initial_epoch(model, 2)
    assert model.fit(x, y, epochs=4, verbose=0).epoch == [2, 3]
    framework.set_initial_epoch(model, None)  # back to fit's own initial_epoch
    assert model.fit(x, y, epochs=4, initial_epoch=3, verbose=0).epoch == [3]


def saved_entries(path) -> tuple[dict, set[str]]:
    """A .keras file's compile config and the top-level groups of its weights file."""
    import io

    import h5py

    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json")).get("compile_config")
        with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as weights:
            return config, set(weights.keys())


def test_set_untracked_hides_an_attribute_from_keras_saving(tmp_path):
    model = tiny_model()
    x, y = tiny_data()
    model.fit(x, y, verbose=0)
    model.save(tmp_path / "with.keras")
    optimizer = model.optimizer
    framework.set_untracked(model, "optimizer", None)
    framework.set_untracked(model, "compiled", False)
    model.save(tmp_path / "without.keras")
    framework.set_untracked(model, "optimizer", optimizer)
    framework.set_untracked(model, "compiled", True)
    assert saved_entries(tmp_path / "with.keras")[0] and "optimizer" in saved_entries(tmp_path / "with.keras")[1]
    config, groups = saved_entries(tmp_path / "without.keras")
    assert not config and "optimizer" not in groups
    assert model.optimizer is optimizer and model.compiled


def test_drop_custom_gradients_empties_tensorflows_global_registry():
    import tensorflow as tf

    @tf.custom_gradient
    def double(x):
        return 2 * x, lambda dy: 2 * dy

    tf.function(double).get_concrete_function(tf.TensorSpec([], tf.float32))  # a trace registers one
    assert framework.drop_custom_gradients() >= 1
    assert framework.drop_custom_gradients() == 0


def test_train_writer_is_the_tensorboard_callbacks_summary_writer(tmp_path):
    import keras
    import tensorflow as tf

    board = keras.callbacks.TensorBoard(log_dir=str(tmp_path))
    board.set_model(tiny_model())
    with framework.train_writer(board).as_default():
        tf.summary.scalar("probe", 1.0, step=0)
    framework.train_writer(board).flush()
    assert list((tmp_path / "train").glob("events.out.tfevents.*"))


def test_keras_calls_the_overridden_log_weights_with_the_epoch(tmp_path):
    import keras

    calls = []

    @framework.checked_overrides
    class Board(keras.callbacks.TensorBoard):
        def _log_weights(self, epoch):
            calls.append(epoch)

    x, y = tiny_data()
    tiny_model().fit(x, y, epochs=2, verbose=0, callbacks=[Board(log_dir=str(tmp_path), histogram_freq=1)])
    assert calls == [0, 1]


def test_keras_calls_the_overridden_save_model_where_its_backup_is_due(tmp_path):
    import keras

    seen = []

    @framework.checked_overrides
    class Backup(keras.callbacks.BackupAndRestore):
        def _save_model(self):
            seen.append((framework.backup_position(self), framework.backup_metadata_path(self)))

    x, y = tiny_data()
    tiny_model().fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=[Backup(str(tmp_path))])
    assert [position for position, _ in seen] == [(1, 0), (2, 0)]  # epochs finished, batches into the next
    assert {path for _, path in seen} == {str(tmp_path / "training_metadata.json")}


def test_an_override_keras_no_longer_calls_fails_at_import_naming_it(monkeypatch):
    import keras

    monkeypatch.setitem(framework.OVERRIDDEN, "TensorBoard", ("_log_weights_renamed",))
    with pytest.raises(RuntimeError, match=r"keras.callbacks.TensorBoard._log_weights_renamed is gone"):

        @framework.checked_overrides
        class Board(keras.callbacks.TensorBoard):
            pass


def test_another_keras_backend_is_refused_in_one_line():
    environ = {"KERAS_BACKEND": "jax"}
    with pytest.raises(ConfigError) as refused:
        framework.check_backend(environ)
    assert str(refused.value) == (
        "KERAS_BACKEND=jax is not accepted: tensorflow (or unset): kfactory trains with TensorFlow; "
        "run with KERAS_BACKEND=tensorflow"
    )
    unset: dict[str, str] = {}
    framework.check_backend(unset)
    assert unset == {"KERAS_BACKEND": "tensorflow"}  # a ~/.keras/keras.json naming another backend is overruled


def test_the_cli_refuses_another_backend_before_it_writes(tmp_path):
    result = run_cli([*TINY, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env={"KERAS_BACKEND": "jax"})
    assert result.returncode == 2
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "KERAS_BACKEND=jax is not accepted" in errors[0]
    assert not (tmp_path / "run").exists()

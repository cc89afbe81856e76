"""One tiny run end to end through the real CLI: train, then eval and predict on it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import TINY, run_cli


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    result = run_cli(["model=vgg16", *TINY, f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir, result.stdout + result.stderr


def test_train_writes_model_metrics_history_tensorboard_and_config(trained_run):
    run_dir, output = trained_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val_accuracy", "val_loss", "test_accuracy", "test_loss"):
        assert isinstance(metrics[key], float) and np.isfinite(metrics[key])
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == [1, 2]  # epochs count from 1, as in the logs and best_epoch
    assert 1 <= metrics["best_epoch"] <= 2
    # where the time went: before the first step (data, build, trace) and after the last (evaluation, reports)
    assert metrics["setup_s"] > 0 and metrics["finish_s"] > 0
    assert metrics["setup_s"] + metrics["finish_s"] < metrics["wall_time_s"]
    assert {"accuracy", "loss", "val_accuracy", "val_loss"} <= set(history.columns)
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    splits = pd.read_csv(run_dir / "splits.csv")  # digits: one row per image, by row number
    assert len(splits) == 1797 and splits["split"].value_counts()["test"] == 179
    assert metrics["validation_size"] == splits["split"].value_counts()["val"]  # what val_accuracy is a share of
    assert metrics["weights"] is None  # what the run started from, as resolved
    assert f"tensorboard --logdir {run_dir / 'tensorboard'}" in output
    assert str(run_dir / "model.keras") in output


def test_saved_model_loads_with_plain_keras_and_carries_class_names(trained_run):
    import keras

    from kfactory.model.checkpoint import read_metadata

    run_dir, _ = trained_run
    model = keras.models.load_model(run_dir / "model.keras")
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 10)
    assert read_metadata(run_dir / "model.keras")["class_names"] == [str(i) for i in range(10)]


@pytest.mark.numeric
@pytest.mark.slow  # a second CLI process on the run; test_evaluate scores a run in-process
def test_eval_reproduces_the_runs_test_metrics(trained_run, tmp_path):
    run_dir, _ = trained_run
    result = run_cli(["task=eval", f"ckpt_path={run_dir}", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stdout + result.stderr
    expected = json.loads((run_dir / "metrics.json").read_text())
    got = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert got["test_accuracy"] == pytest.approx(expected["test_accuracy"], abs=1e-6)
    assert got["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-4)
    report = pd.read_csv(tmp_path / "class_report.csv", index_col=0)
    assert report.loc["macro avg", "support"] == 179 and "precision" in report.columns
    assert "Per-class report" in result.stdout + result.stderr
    assert f"Split: as recorded in {run_dir / 'splits.csv'}" in result.stdout + result.stderr


@pytest.mark.slow  # a third CLI process on the run; test_predict covers predict in-process
def test_predict_writes_top_k_labels_and_probabilities(trained_run, tmp_path):
    from PIL import Image

    from kfactory.data.sources import load_digits

    run_dir, _ = trained_run
    digits = load_digits()
    for i in range(6):
        label = str(digits.labels[i])
        (tmp_path / "in" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.images[i, ..., 0]).save(tmp_path / "in" / label / f"{i}.png")
    out = tmp_path / "out"
    result = run_cli(["task=predict", f"ckpt_path={run_dir / 'model.keras'}", f"predict.input={tmp_path / 'in'}",
                      "predict.top_k=3", f"hydra.run.dir={out}"])  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == 6
    assert {"file", "label_1", "prob_1", "label_3", "prob_3", "true_label", "correct"} <= set(table.columns)
    assert (table["prob_1"] >= table["prob_2"]).all() and (table["prob_2"] >= table["prob_3"]).all()
    assert table["correct"].tolist() == (table["label_1"] == table["true_label"]).tolist()


def test_a_run_from_imagenet_weights_says_so_and_how_to_change_it(cfg_factory):
    from kfactory.train.loop import weights_note

    note = weights_note(cfg_factory(["data=folder", "data.path=/x"]).model)  # the folder preset keeps ImageNet
    assert note.startswith("Model: mobilenet_v2 from ImageNet weights at 224x224 px")
    assert "model.weights=null model.input_size=[H,W]" in note
    assert weights_note(cfg_factory([]).model) is None  # digits: from scratch at 32 px, nothing to say


@pytest.mark.numeric
def test_the_best_model_is_evaluated_from_memory_as_the_saved_file_would_be(tmp_path):
    import keras
    import tensorflow as tf

    from kfactory.model.checkpoint import load_model
    from kfactory.train.best_model import BestModelCheckpoint
    from kfactory.train.compile import compile_model
    from kfactory.train.loop import best_model, evaluate_best
    from tests.conftest import compose_config

    cfg = compose_config(["trainer.validation_steps=null"])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(48, 6)).astype("float32"), np.eye(3, dtype="float32")[np.arange(48) % 3]
    val = tf.data.Dataset.from_tensor_slices((x[:24], y[:24])).batch(8)
    test = tf.data.Dataset.from_tensor_slices((x[24:], y[24:])).batch(8)
    indices = {"val": np.arange(24), "test": np.arange(24, 48)}
    splits = type("Splits", (), {"val": val, "test": test, "class_names": ["a", "b", "c"], "indices": indices})()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
    compile_model(model, cfg, 3, jit_compile=False)
    checkpoint = BestModelCheckpoint(tmp_path / "model.keras", "val_accuracy", {})
    model.fit(x[24:], y[24:], validation_data=val, epochs=1, verbose=0, callbacks=[checkpoint])
    model.layers[0].kernel.assign(model.layers[0].kernel * -3.0)  # later epochs moved away from the best

    saved = load_model(checkpoint.path)
    compile_model(saved, cfg, 3, jit_compile=False)
    expected = {
        f"{split}_{k}": v
        for split, ds in (("val", val), ("test", test))
        for k, v in saved.evaluate(ds, verbose=0, return_dict=True).items()
    }
    from_memory = evaluate_best(cfg, best_model(cfg, model, checkpoint, splits), checkpoint, splits)
    assert from_memory.keys() == expected.keys() | {"test_ms_per_image"} and from_memory["test_ms_per_image"] > 0
    for key, value in expected.items():
        assert from_memory[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

    checkpoint.best_weights = checkpoint.best_logs = None  # resumed after its best epoch: the file is read
    model.layers[0].kernel.assign(model.layers[0].kernel * 2.0)
    from_file = evaluate_best(cfg, best_model(cfg, model, checkpoint, splits), checkpoint, splits)
    for key, value in expected.items():
        assert from_file[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

"""task=eval: the test split of the model's own training config, its metrics and a per-class report."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from kfactory.use.evaluate import class_report, training_config
from tests.conftest import compose_config


def test_class_report_counts_per_class_and_averages_the_classes():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 0, 1])  # class 2 is never predicted
    probabilities = np.eye(3)[predicted] * 0.8 + 0.2 / 3
    report = class_report(probabilities, labels, ["a", "b", "c"])
    assert report.index.tolist() == ["a", "b", "c", "macro avg"]
    expected = {  # precision, recall, f1, support
        "a": (2 / 3, 2 / 3, 2 / 3, 3),
        "b": (1 / 3, 1 / 2, 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2), 2),
        "c": (0.0, 0.0, 0.0, 1),
    }
    for name, (precision, recall, f1, support) in expected.items():
        row = report.loc[name]
        assert (row.precision, row.recall, row.f1) == pytest.approx((precision, recall, f1)), name
        assert row.support == support
    macro = report.loc["macro avg"]
    assert macro.precision == pytest.approx(np.mean([e[0] for e in expected.values()]))
    assert macro.f1 == pytest.approx(np.mean([e[2] for e in expected.values()]))
    assert macro.support == 6 and report["support"].dtype == np.int64


def test_one_sigmoid_unit_is_read_as_two_classes():
    from kfactory.model.build import to_probabilities

    probabilities = to_probabilities(np.array([[0.9], [0.2], [0.7]]), "sigmoid")
    report = class_report(probabilities, np.array([1, 0, 0]), ["no", "yes"])
    assert report.loc["yes", "recall"] == 1.0 and report.loc["no", "recall"] == 0.5


def test_the_training_runs_own_config_is_used_else_the_current_one(tmp_path, caplog):
    fallback = compose_config(["model=vgg16"])
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config(["model=mobilenet"]), tmp_path / "run" / ".hydra" / "config.yaml")
    assert training_config(tmp_path / "run" / "model.keras", fallback).model.name == "mobilenet"
    with caplog.at_level(logging.WARNING, logger="kfactory.use.evaluate"):
        assert training_config(tmp_path / "model.keras", fallback) is fallback
    assert "evaluating on the data of the current config" in caplog.text


SIDE = 16
BRIGHT, DARK = 200, 60


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as training leaves it, for a model that answers "b" for bright images, "a" for dark.

    Half of each class is bright, so the model is right about half the time: a wrong split,
    label order or metric would show. A three-layer model: tracing MobileNet costs seconds per call.
    """
    import keras
    from PIL import Image

    from kfactory.model.checkpoint import MODEL_FILE, save_model

    root = tmp_path_factory.mktemp("eval")
    for name in ("a", "b"):
        (root / "images" / name).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (SIDE, SIDE), (BRIGHT if i % 2 else DARK,) * 3).save(root / "images" / name / f"{i}.png")
    model = keras.Sequential(
        [keras.Input((SIDE, SIDE, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, "softmax")]
    )
    k = 0.05  # logit of "b" minus "a": 2k per grey level above 128, for each of the three channels
    model.layers[-1].set_weights([np.tile([[-k, k]], (3, 1)), np.array([3 * 128 * k, -3 * 128 * k])])
    overrides = ["data=folder", f"data.path={root / 'images'}", f"model.input_size=[{SIDE},{SIDE}]"]
    cfg = compose_config([*overrides, "data.val_split=0.25", "data.test_split=0.5"])
    run = root / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    metadata = {"class_names": ["a", "b"], "activation": "softmax", "loss": "categorical_crossentropy"}
    save_model(model, run / MODEL_FILE, metadata)
    return run


def expected_accuracy(run_dir: Path, split: str) -> tuple[float, int]:
    """Top-1 accuracy of the saved model on the run's ``split``, read with PIL and plain Keras; and its size."""
    import keras
    from PIL import Image

    from kfactory.data.pipeline import make_splits

    splits = make_splits(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    indices = splits.indices[split]
    pixels = np.stack([np.asarray(Image.open(splits.source.paths[i]).convert("RGB"), np.float32) for i in indices])
    predicted = keras.models.load_model(run_dir / "model.keras").predict(pixels, verbose=0).argmax(-1)
    accuracy = float(np.mean(predicted == splits.source.labels[indices]))
    assert 0 < accuracy < 1, "the model should be right about half the time"
    return accuracy, len(indices)


def run_eval(ckpt: Path, out: Path) -> float:
    from kfactory.use.evaluate import evaluate

    out.mkdir(parents=True)
    return evaluate(compose_config(["task=eval", f"ckpt_path={ckpt}"]), out)


@pytest.mark.numeric
def test_eval_scores_the_test_split_and_writes_the_report(run_dir, tmp_path):
    accuracy, size = expected_accuracy(run_dir, "test")
    returned = run_eval(run_dir, tmp_path / "eval")
    assert returned == pytest.approx(accuracy)
    metrics = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert metrics["test_accuracy"] == pytest.approx(accuracy) and np.isfinite(metrics["test_loss"])
    assert all(key.startswith("test_") for key in metrics)
    report = pd.read_csv(tmp_path / "eval" / "class_report.csv", index_col=0)
    assert report.index.tolist() == ["a", "b", "macro avg"]
    assert report.loc["macro avg", "support"] == size == 12
    assert report.loc[["a", "b"], "recall"].mean() == pytest.approx(accuracy)  # balanced classes


@pytest.mark.numeric
def test_a_run_trained_without_a_test_split_is_scored_on_its_validation_split(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    cfg = OmegaConf.load(copy / ".hydra" / "config.yaml")
    cfg.data.test_split = 0
    OmegaConf.save(cfg, copy / ".hydra" / "config.yaml")
    accuracy, size = expected_accuracy(copy, "val")
    assert run_eval(copy / "model.keras", tmp_path / "eval") == pytest.approx(accuracy)
    report = pd.read_csv(tmp_path / "eval" / "class_report.csv", index_col=0)
    assert report.loc["macro avg", "support"] == size == 6
    metrics = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert set(metrics) == {"val_accuracy", "val_loss"}  # named for the split they come from

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
from tests.conftest import compose_config, run_cli


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


@pytest.fixture
def recorded_run(run_dir, tmp_path) -> Path:
    """A copy of the run and its images, with the split training records (splits.csv) written for it."""
    from kfactory.data.pipeline import make_splits

    shutil.copytree(run_dir.parent / "images", tmp_path / "images")
    shutil.copytree(run_dir, tmp_path / "run")
    cfg = OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml")
    cfg.data.path = str(tmp_path / "images")
    OmegaConf.save(cfg, tmp_path / "run" / ".hydra" / "config.yaml")
    make_splits(cfg, tmp_path / "run")
    return tmp_path / "run"


def recorded_files(run: Path, split: str) -> list[str]:
    rows = pd.read_csv(run / "splits.csv")
    return rows.loc[rows["split"] == split, "file"].tolist()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_eval_scores_the_recorded_test_split_and_not_images_added_since(recorded_run, tmp_path, caplog):
    from PIL import Image

    accuracy, size = expected_accuracy(recorded_run, "test")  # the split as drawn, before any image is added
    for i in range(6):
        Image.new("RGB", (SIDE, SIDE), (BRIGHT,) * 3).save(tmp_path / "images" / "a" / f"new_{i}.png")
    with caplog.at_level(logging.INFO):
        assert run_eval(recorded_run, tmp_path / "eval") == pytest.approx(accuracy)
    assert pd.read_csv(tmp_path / "eval" / "class_report.csv", index_col=0).loc["macro avg", "support"] == size == 12
    assert "Split: as recorded in" in caplog.text and "No splits.csv" not in caplog.text


@pytest.mark.slow  # a CLI run: TensorFlow's import
def test_eval_refuses_in_one_line_when_a_test_image_is_gone_and_changes_no_file(recorded_run, tmp_path):
    gone = recorded_files(recorded_run, "test")[0]
    Path(gone).unlink()
    before = snapshot(recorded_run)
    result = run_cli(["task=eval", f"ckpt_path={recorded_run}", f"hydra.run.dir={tmp_path / 'eval'}"])
    assert result.returncode == 2, result.stderr[-2000:]
    refusals = [line for line in (result.stdout + result.stderr).splitlines() if "is not accepted" in line]
    assert len(refusals) == 1 and "Traceback" not in result.stderr
    assert f"data.path={tmp_path / 'images'} is not accepted: the test images recorded in" in refusals[0]
    assert f"of 12, 1 ({gone}) gone, 0 changed" in refusals[0]
    assert "add data.on_changed=use_remaining to use the other 11" in refusals[0]
    assert snapshot(recorded_run) == before and not (tmp_path / "eval" / "eval_metrics.json").exists()


def test_a_changed_test_image_is_refused_and_use_remaining_scores_the_rest(recorded_run, tmp_path, caplog):
    from kfactory.errors import ConfigError
    from kfactory.use.evaluate import evaluate

    changed = recorded_files(recorded_run, "test")[3]
    Path(changed).write_bytes(Path(changed).read_bytes() + b"\0")  # one byte longer
    with pytest.raises(ConfigError, match=rf"of 12, 0 gone, 1 \({changed}\) changed \(size or mtime\)"):
        run_eval(recorded_run, tmp_path / "refused")
    out = tmp_path / "eval"
    out.mkdir()
    opt_in = compose_config(["task=eval", f"ckpt_path={recorded_run}", "data.on_changed=use_remaining"])
    with caplog.at_level(logging.WARNING):
        evaluate(opt_in, out)
    assert pd.read_csv(out / "class_report.csv", index_col=0).loc["macro avg", "support"] == 11
    assert "data.on_changed=use_remaining: of the 12 test images recorded in" in caplog.text
    assert f"1 ({changed}) changed" in caplog.text and "using the other 11" in caplog.text


def test_a_run_from_before_splits_were_recorded_draws_its_split_and_says_so_once(run_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="kfactory.use.evaluate"):
        run_eval(run_dir, tmp_path / "eval")
    assert caplog.text.count("No splits.csv in") == 1 and "a run from before splits were recorded" in caplog.text

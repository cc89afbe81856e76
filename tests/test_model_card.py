"""model_card.md: what the exported file is, how to load it, its classes, metrics and training config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kfactory.use.model_card import CARD_FILE, write_model_card

METADATA = {
    "class_names": ["cats", "dogs", "owls"],
    "model": "mobilenet",
    "input_size": [24, 16],
    "loss": "categorical_crossentropy",
    "activation": "softmax",
}


@pytest.fixture(scope="module")
def model():
    """24 px high, 16 wide (not square, so height and width cannot swap unseen), 3,459 parameters."""
    import keras

    inputs = keras.Input((24, 16, 3))
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs, name="tiny")


def training_run(root: Path, metrics: dict | None = None, task: str = "train") -> Path:
    """A run directory holding model.keras (empty: the card never opens it), metrics.json and .hydra/config.yaml."""
    root.mkdir(parents=True)
    (root / "model.keras").write_bytes(b"")
    if metrics is not None:
        (root / "metrics.json").write_text(json.dumps(metrics))
    (root / ".hydra").mkdir()
    OmegaConf.save(
        OmegaConf.create({"task": task, "model": {"name": "mobilenet", "dropout": 0.25}}),
        root / ".hydra" / "config.yaml",
    )
    return root / "model.keras"


def card_for(model, tmp_path: Path, source: Path, fmt: str = "keras", metadata=None, checks=None) -> str:
    out = tmp_path / "export"
    artefact = {"keras": out / "model.keras", "saved_model": out / "saved_model" / "1", "tflite": out / "model.tflite"}[
        fmt
    ]
    artefact.parent.mkdir(parents=True, exist_ok=True)
    card = write_model_card(out, artefact, fmt, source, metadata or METADATA, model, checks or {})
    assert card == out / CARD_FILE
    return card.read_text()


def test_card_names_the_file_the_model_its_input_and_its_classes(model, tmp_path):
    source = training_run(tmp_path / "run", {"val_accuracy": 0.912345, "epochs_run": 7})
    card = card_for(model, tmp_path, source)
    assert card.startswith("# Model card: mobilenet\n")
    assert "- File: `model.keras` (keras)" in card
    assert f"- Exported from: `{source}` on " in card
    assert "- Architecture: tiny, 3,459 parameters" in card
    assert "- Input: 24x16 RGB pixels in [0, 255]" in card
    assert "- Output: probabilities of 3 classes (activation softmax, loss categorical_crossentropy)" in card
    assert "\n0. cats\n1. dogs\n2. owls\n" in card


def test_metrics_and_config_come_from_the_training_run(model, tmp_path):
    card = card_for(model, tmp_path, training_run(tmp_path / "run", {"val_accuracy": 0.912345, "epochs_run": 7}))
    metrics = card.split("## Final metrics")[1].split("##")[0]
    assert "| val_accuracy | 0.9123 |" in metrics and "| epochs_run | 7 |" in metrics
    config = card.split("## Training config")[1]
    assert "```yaml\n" in config and "dropout: 0.25" in config


@pytest.mark.parametrize(
    ("weights", "said"), [(None, "random initialization (model.weights=null)"), ("imagenet", "model.weights=imagenet")]
)
def test_the_card_says_what_training_started_from_as_the_run_resolved_it(model, tmp_path, weights, said):
    card = card_for(model, tmp_path, training_run(tmp_path / "run", {"val_accuracy": 0.9, "weights": weights}))
    assert f"- Trained from: {said}\n" in card
    assert "weights" not in card.split("## Final metrics")[1].split("##")[0]  # no metric
    older = training_run(tmp_path / "old_run", {"val_accuracy": 0.9})  # a run from before weights was recorded
    assert "Trained from" not in card_for(model, tmp_path / "old", older)


def test_without_metrics_json_the_checkpoints_own_numbers_are_shown(model, tmp_path):
    metadata = {**METADATA, "best_val_loss": 0.25, "best_epoch": 3}
    card = card_for(model, tmp_path, training_run(tmp_path / "run"), metadata=metadata)
    metrics = card.split("## Final metrics")[1].split("##")[0]
    assert "| best_val_loss | 0.25 |" in metrics and "| best_epoch | 3 |" in metrics
    assert "cats" not in metrics and "softmax" not in metrics and "mobilenet" not in metrics


def test_a_model_outside_its_training_run_says_what_is_missing(model, tmp_path):
    source = tmp_path / "loose" / "model.keras"
    source.parent.mkdir()
    card = card_for(model, tmp_path, source)
    assert "No metrics.json was found next to the model." in card
    assert "Not found: the model is not in its training run's directory." in card


def test_the_config_of_a_run_that_did_not_train_is_not_shown(model, tmp_path):
    card = card_for(model, tmp_path, training_run(tmp_path / "eval_run", {"test_accuracy": 0.5}, task="eval"))
    assert "Not found: the model is not in its training run's directory." in card
    assert "dropout" not in card


@pytest.mark.parametrize(
    ("fmt", "file", "loads"),
    [
        ("keras", "model.keras", 'keras.models.load_model("model.keras")'),
        ("saved_model", "saved_model/1", 'tf.saved_model.load("saved_model/1")'),
        ("tflite", "model.tflite", 'tf.lite.Interpreter(model_path="model.tflite")'),
    ],
)
def test_usage_loads_the_file_relative_to_the_card(model, tmp_path, fmt, file, loads):
    card = card_for(model, tmp_path, training_run(tmp_path / "run", {}), fmt=fmt)
    assert f"- File: `{file}` ({fmt})" in card
    usage = card.split("## Use")[1].split("##")[0]
    assert loads in usage and "24, 16, 3)" in usage


def test_tf_serving_gets_the_absolute_base_path(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    card = card_for(model, Path("."), training_run(tmp_path / "run", {}), fmt="saved_model")
    assert f"--model_base_path={(tmp_path / 'export' / 'saved_model').resolve()}" in card


def test_conversion_checks_get_a_table_only_when_there_are_some(model, tmp_path):
    source = training_run(tmp_path / "run", {})
    assert "## Conversion check" not in card_for(model, tmp_path / "a", source, fmt="tflite")
    card = card_for(model, tmp_path / "b", source, fmt="tflite", checks={"max_abs_difference": 3e-6, "images": 8})
    assert "| max_abs_difference | 3e-06 |" in card and "| images | 8 |" in card

"""Multi-label end to end: digits as label sets (even or odd, plus ge5), trained, predicted and exported.

One CLI training run per module (MobileNet from scratch at 32 px, 300 digits,
5 epochs: about 30 s on a quiet 2-core CPU) serves every test here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kfactory.model.checkpoint import read_metadata
from tests.conftest import PROB_ATOL, TINY, compose_config, run_cli, write_multilabel_digits

# Quality thresholds on a training run and comparisons of probabilities: CI runs them under other kernel sets too.
pytestmark = pytest.mark.numeric

CLASSES = ["even", "ge5", "odd"]
TRAIN = [
    "data=csv",
    "model=mobilenet",
    "model.weights=null",
    "model.input_size=32",
    "model.bn_momentum=0.9",
    "data.batch_size=16",
    "data.val_split=0.2",
    "trainer.monitor=val_f1_macro",
    "trainer.verbose=0",
    "trainer.tensorboard.histogram_freq=0",
]


def assert_same_label_sets(probabilities: np.ndarray, thresholds: np.ndarray, first, second) -> None:
    """``first`` and ``second`` list the same labels for every row with no probability within PROB_ATOL of its
    threshold; such a near tie may flip between two graphs of one model, and at most one is allowed."""
    clear = (np.abs(probabilities - thresholds) > PROB_ATOL).all(axis=1)
    assert (~clear).sum() <= 1, f"{(~clear).sum()} rows sit on a threshold"
    assert (np.asarray(first, dtype=object)[clear] == np.asarray(second, dtype=object)[clear]).all()


def train_run(root: Path, count: int, epochs: int) -> tuple[Path, Path]:
    csv = write_multilabel_digits(root / "data", count=count)
    run_dir = root / "run"
    args = [*TRAIN, f"data.csv={csv}", f"trainer.epochs={epochs}", f"hydra.run.dir={run_dir}"]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, csv


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, labels.csv) of a 5-epoch run on 300 digits."""
    return train_run(tmp_path_factory.mktemp("multilabel"), count=300, epochs=5)


@pytest.mark.slow  # shares a 5-epoch training run (40 s); CI also runs it on other kernels
@pytest.mark.kernels
def test_training_ranks_label_sets_and_stores_thresholds(multilabel_run):
    run_dir, _ = multilabel_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # Five epochs from scratch rank well but calibrate poorly: F1 at 0.5 measured 0.45 to 0.83 by seed and CPU
    # (every label for every image scores 0.67), so the bar is ranking. val_roc_auc measured 0.80 to 0.92 over
    # seeds 42, 1, 2 and, for seed 42, ONEDNN_MAX_CPU_ISA=AVX2 / SSE41 and TF_ENABLE_ONEDNN_OPTS=0; chance is 0.5.
    assert metrics["val_roc_auc"] > 0.65 and metrics["test_map"] > 0.7  # test_map measured 0.86 to 0.93
    assert metrics["val_f1_macro_tuned"] >= metrics["val_f1_macro"] - 1e-6  # tuned on this very split
    for key in ("val_f1_micro", "val_pr_auc", "val_roc_auc", "val_exact_match", "val_map", "test_map"):
        assert 0 <= metrics[key] <= 1
    assert "validation_size" not in metrics  # a label set's accuracy is not a share of images: no margin for a search
    metadata = read_metadata(run_dir / "model.keras")
    assert metadata["task"] == "multilabel" and metadata["class_names"] == CLASSES
    assert metadata["activation"] == "sigmoid" and metadata["loss"] == "binary_crossentropy"
    assert set(metadata["thresholds"]) == set(CLASSES)
    assert all(metrics[f"threshold_{n}"] == metadata["thresholds"][n] for n in CLASSES)
    history = pd.read_csv(run_dir / "history.csv")
    assert {"val_f1_macro", "val_f1_micro", "val_pr_auc", "val_roc_auc", "val_exact_match"} <= set(history.columns)


@pytest.mark.slow  # shares a 5-epoch training run (40 s); CI also runs it on other kernels
def test_model_keras_loads_with_plain_keras(multilabel_run):
    import keras

    model = keras.models.load_model(multilabel_run[0] / "model.keras")  # compile settings naming kfactory left out
    assert model.output_shape == (None, 3)


@pytest.mark.slow  # shares a 5-epoch training run (40 s); CI also runs it on other kernels
@pytest.mark.kernels
def test_predict_lists_every_label_above_its_threshold(multilabel_run, tmp_path):
    from kfactory.use.predict import predict

    run_dir, csv = multilabel_run
    cfg = compose_config(["task=predict", f"ckpt_path={run_dir}", f"predict.input={csv}"])
    exact = predict(cfg, tmp_path)
    table = pd.read_csv(tmp_path / "predictions.csv", keep_default_na=False)
    assert list(table.columns[:5]) == ["file", "labels", "probabilities", "true_labels", "exact_match"]
    assert list(table.columns[5:]) == [f"prob_{n}" for n in CLASSES]
    thresholds = read_metadata(run_dir / "model.keras")["thresholds"]
    for row in table.to_dict("records"):
        expected = {n for n in CLASSES if row[f"prob_{n}"] >= thresholds[n]}
        listed = [n for n in row["labels"].split(";") if n]
        assert set(listed) == expected
        assert row["exact_match"] == (set(listed) == set(filter(None, row["true_labels"].split(";"))))
        probs = [float(p) for p in str(row["probabilities"]).split(";") if p]
        assert probs == sorted(probs, reverse=True) and len(probs) == len(listed)
    # measured 0.51 to 0.67 (seeds 42, 1; seed 42 under SSE41); always naming the commonest label set scores 0.31
    assert exact == pytest.approx(table["exact_match"].mean()) and exact > 0.4
    truth = pd.read_csv(csv)["label"].map(lambda s: ";".join(sorted(s.split(";"))))
    assert (table["true_labels"] == truth).all()


@pytest.mark.slow
def test_a_longer_run_reaches_a_high_macro_f1(tmp_path):
    run_dir, _ = train_run(tmp_path, count=1797, epochs=10)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test_f1_macro"] > 0.9 and metrics["test_map"] > 0.95


@pytest.mark.slow
def test_cross_validation_deals_label_sets_into_folds(tmp_path):
    csv = write_multilabel_digits(tmp_path / "data", count=60)
    run_dir = tmp_path / "cv"
    args = [*TRAIN, *TINY, f"data.csv={csv}", "hparams_search.cv_folds=2", "trainer.epochs=1"]
    result = run_cli([*args, f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["folds"] == 2 and 0 <= metrics["val_map"] <= 1
    for fold in range(2):
        assert json.loads((run_dir / f"fold_{fold}" / "metrics.json").read_text())["val_map"] >= 0


def test_exact_match_and_average_precision_by_hand():
    from kfactory.train.multilabel import ExactMatch, average_precision, tune_thresholds

    metric = ExactMatch()
    metric.update_state(np.array([[1, 0], [1, 1], [0, 0]], "float32"), np.array([[0.9, 0.2], [0.8, 0.4], [0.1, 0.1]]))
    assert float(metric.result()) == pytest.approx(2 / 3)
    # positives at ranks 1 and 3: (1/1 + 2/3) / 2
    assert average_precision(np.array([True, False, True]), np.array([0.9, 0.8, 0.7])) == pytest.approx(5 / 6)
    truth = np.array([[1, 0], [1, 0], [0, 0], [0, 0]], "float32")
    probs = np.array([[0.9, 0.1], [0.35, 0.1], [0.2, 0.1], [0.1, 0.1]])
    assert tune_thresholds(truth, probs).tolist() == [0.25, 0.5]  # class 2 has no positive: 0.5 stays


def test_average_precision_of_tied_scores_does_not_depend_on_row_order():
    from kfactory.train.multilabel import average_precision

    # saturated sigmoids tie: one threshold holds a positive and a negative, so precision there is 1/2
    truth, scores = np.array([False, True, True]), np.array([1.0, 1.0, 0.2])
    expected = 0.5 * 0.5 + 0.5 * (2 / 3)  # recall steps of 1/2 at precision 1/2, then 2/3
    assert average_precision(truth, scores) == pytest.approx(expected)
    assert average_precision(truth[[1, 0, 2]], scores[[1, 0, 2]]) == pytest.approx(expected)
    assert np.isnan(average_precision(np.array([False, False]), np.array([0.3, 0.9])))


@pytest.mark.slow  # exports a SavedModel and a TFLite file, then predicts 300 images twice: test_export covers each
def test_saved_model_gives_the_labels_above_their_thresholds(multilabel_run, tmp_path):
    import keras
    import tensorflow as tf
    from PIL import Image

    from kfactory.config.validate import validate
    from kfactory.use.export import export
    from kfactory.use.predict import predict

    run_dir, csv = multilabel_run
    for fmt in ("saved_model", "tflite"):
        export(validate(compose_config(["task=export", f"ckpt_path={run_dir}", f"export.format={fmt}"])), tmp_path)
    files = sorted((csv.parent / "digits").glob("*.png"))[:20]
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    served = tf.saved_model.load(str(tmp_path / "saved_model" / "1")).signatures["serving_pixels"]
    out = served(pixels=tf.constant(pixels, tf.uint8))
    expected = keras.models.load_model(run_dir / "model.keras").predict(pixels.astype("float32"), verbose=0)
    # the SavedModel's graph is not Keras's: float32-close, and a probability on its threshold may flip
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=PROB_ATOL)
    thresholds = read_metadata(run_dir / "model.keras")["thresholds"]
    cut = np.array([thresholds[n] for n in CLASSES])
    wanted = [[name.encode() if on else b"" for name, on in zip(CLASSES, row, strict=True)] for row in expected >= cut]
    served_labels = [tuple(row) for row in out["labels"].numpy().tolist()]
    assert_same_label_sets(expected, cut, served_labels, [tuple(row) for row in wanted])
    lite = json.loads((tmp_path / "model.tflite.json").read_text())
    assert lite["thresholds"] == thresholds and lite["class_names"] == CLASSES
    assert "(threshold " in (tmp_path / "model_card.md").read_text()
    # task=predict reads the SavedModel's stored thresholds as it reads model.keras's
    predict(compose_config(["task=predict", f"ckpt_path={tmp_path / 'saved_model'}", f"predict.input={csv}"]), tmp_path)
    served_table = pd.read_csv(tmp_path / "predictions.csv", keep_default_na=False)
    (tmp_path / "k").mkdir()
    predict(compose_config(["task=predict", f"ckpt_path={run_dir}", f"predict.input={csv}"]), tmp_path / "k")
    keras_table = pd.read_csv(tmp_path / "k" / "predictions.csv", keep_default_na=False)
    keras_probabilities = keras_table[[f"prob_{n}" for n in CLASSES]].to_numpy()
    assert_same_label_sets(keras_probabilities, cut, served_table["labels"], keras_table["labels"])


@pytest.mark.slow  # shares a 5-epoch training run (40 s); CI also runs it on other kernels
def test_tensorboard_has_pr_curves_a_class_table_and_label_set_captions(multilabel_run):
    from tests.test_tensorboard import read_events, tensors

    events = read_events(multilabel_run[0] / "tensorboard")
    tags = set(events.Tags()["tensors"])
    assert {f"pr_curve/{n}/pr_curves" for n in [*CLASSES, "micro_average"]} <= tags
    positives = tensors(events, "pr_curve/ge5/pr_curves")[-1][1][[0, 3], 0].sum()  # TP + FN at threshold 0
    assert 0 < positives < tensors(events, "pr_curve/micro_average/pr_curves")[-1][1][[0, 3], 0].sum()
    assert "confusion_matrix" not in tags and "validation_images" in tags
    table = tensors(events, "class_scores")[-1][1].item().decode()
    assert table.startswith("| class | support | F1 at 0.5 | AP |") and all(f"| {n} |" in table for n in CLASSES)


@pytest.mark.slow  # shares a 5-epoch training run (40 s); CI also runs it on other kernels
@pytest.mark.kernels
def test_eval_scores_label_sets_at_the_stored_thresholds(multilabel_run, tmp_path):
    from kfactory.use.evaluate import evaluate

    run_dir, _ = multilabel_run
    evaluate(compose_config(["task=eval", f"ckpt_path={run_dir}"]), tmp_path)
    values = json.loads((tmp_path / "eval_metrics.json").read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())
    # the same split, model and batches as the run's own test evaluation: the same kernels, so only rounding differs
    assert values["test_f1_macro"] == pytest.approx(trained["test_f1_macro"], abs=1e-5)
    report = pd.read_csv(tmp_path / "class_report.csv", index_col="class")
    assert list(report.index) == [*CLASSES, "macro avg"]
    assert report.loc["macro avg", "f1"] == pytest.approx(trained["test_f1_macro_tuned"], abs=1e-6)

"""PR curves, confusion matrix, image grid and HParams, read back from the event files."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import plugin_event_accumulator as accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from kfactory.train.final_summaries import write_final_summaries
from kfactory.train.summaries import grid_order
from kfactory.train.tensorboard import ValidationSummaries, decode_labels, to_probabilities
from tests.conftest import PROB_ATOL, TINY, compose_config

CLASSES = ["cat", "dog", "owl"]
VAL_SIZE = 30


def read_events(folder: Path) -> accumulator.EventAccumulator:
    events = accumulator.EventAccumulator(str(folder), size_guidance={accumulator.TENSORS: 0})
    events.Reload()
    return events


def tensors(events: accumulator.EventAccumulator, tag: str) -> list:
    return [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Two epochs of a tiny dense model with the extras on; returns (log dir, validation labels)."""
    tmp = tmp_path_factory.mktemp("extras")
    cfg = compose_config([*TINY, "model.dropout=0.25", "seed=7", "trainer.tensorboard.images=6"], run_dir=tmp)
    rng = np.random.default_rng(0)
    labels = np.arange(VAL_SIZE) % len(CLASSES)
    images = rng.uniform(0, 255, (VAL_SIZE, 8, 8, 3)).astype(np.float32)
    one_hot = np.eye(len(CLASSES), dtype=np.float32)[labels]
    val = tf.data.Dataset.from_tensor_slices((images, one_hot)).batch(8)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(3, "softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    log_dir = tmp / "tensorboard"
    extras = ValidationSummaries(log_dir, val, CLASSES, cfg)
    model.fit(images, one_hot, validation_data=val, epochs=2, batch_size=16, verbose=0, callbacks=[extras])
    assert extras.tap is not None and extras.tap.read() is not None  # drawn from fit's own validation outputs
    write_final_summaries(cfg, log_dir, {"val_accuracy": 0.5, "test_accuracy": 0.25, "epochs_run": 2})
    return log_dir, labels


def test_pr_curves_per_class_and_micro_average(written):
    log_dir, labels = written
    events = read_events(log_dir)
    for index, name in enumerate([*CLASSES, "micro_average"]):
        curves = tensors(events, f"pr_curve/{name}/pr_curves")
        assert [step for step, _ in curves] == [1, 2]  # every epoch, counted from 1
        data = curves[-1][1]  # rows: TP, FP, TN, FN, precision, recall; columns: thresholds 0..1
        positives = VAL_SIZE if name == "micro_average" else int((labels == index).sum())
        assert np.all(data[0] + data[3] == positives)  # TP + FN: the positives, at every threshold
        assert np.all(data[0] + data[1] + data[2] + data[3] == VAL_SIZE * (3 if name == "micro_average" else 1))
        assert data[5][0] == pytest.approx(1.0)  # threshold 0: everything is positive, recall 1
        assert data[4][0] == pytest.approx(positives / (VAL_SIZE * (3 if name == "micro_average" else 1)))
        assert np.all(np.diff(data[5]) <= 1e-6)  # recall falls as the threshold rises


def test_confusion_matrix_counts_add_up_to_the_validation_size(written):
    log_dir, labels = written
    events = read_events(log_dir)
    steps = [step for step, _ in tensors(events, "confusion_matrix")]
    assert steps == [1, 2]  # epochs count from 1 in TensorBoard too
    table = tensors(events, "confusion_matrix_counts")[-1][1].item().decode()
    rows = [line.strip("|").split("|") for line in table.splitlines()[2:]]
    counts = np.array([[int(c) for c in row[1:]] for row in rows])
    assert [row[0].strip() for row in rows] == CLASSES
    assert counts.sum() == VAL_SIZE
    assert counts.sum(axis=1).tolist() == np.bincount(labels).tolist()  # rows are the true classes


def test_images_are_pngs(written):
    from PIL import Image

    events = read_events(written[0])
    for tag in ("confusion_matrix", "validation_images"):
        width, height, png = tensors(events, tag)[-1][1][:3]
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size == (int(width), int(height))
        assert min(image.size) > 100


def test_hparams_carry_the_config_and_overrides(written):
    events = read_events(written[0])
    session = events.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content
    hparams = hparams_metadata.parse_session_start_info_plugin_data(session).hparams
    assert hparams["model"].string_value == "mobilenet_v2"
    assert hparams["dropout"].number_value == pytest.approx(0.25)
    assert hparams["learning_rate"].number_value > 0
    assert hparams["batch_size"].number_value == 16
    assert hparams["input_size"].string_value == "32x32"
    assert hparams["seed"].number_value == 7  # an overridden key without its own name
    assert "model.dropout" not in hparams and "trainer.verbose" not in hparams  # no duplicates, no noise
    experiment = events.SummaryMetadata(hparams_metadata.EXPERIMENT_TAG).plugin_data.content
    metrics = hparams_metadata.parse_experiment_plugin_data(experiment).metric_infos
    names = {(m.name.group, m.name.tag) for m in metrics}
    assert {("validation", "epoch_accuracy"), ("", "final/test_accuracy")} <= names
    final = tensors(events, "final/test_accuracy")
    assert final[-1][1] == pytest.approx(0.25)


def test_misclassified_images_come_first():
    labels = np.array([0, 1, 2, 0, 1])
    predicted = np.array([0, 2, 2, 1, 1])
    assert grid_order(labels, predicted, 4).tolist() == [1, 3, 0, 2]


def test_outputs_become_probabilities():
    sigmoid_unit = to_probabilities(np.array([[0.8], [0.1]]), "sigmoid")
    assert sigmoid_unit == pytest.approx(np.array([[0.2, 0.8], [0.9, 0.1]]))
    logits = to_probabilities(np.array([[2.0, 0.0, -1.0]]), "linear")
    assert logits.sum() == pytest.approx(1.0) and logits.argmax() == 0
    assert decode_labels(np.array([[0, 1, 0], [1, 0, 0]])).tolist() == [1, 0]
    assert decode_labels(np.array([[1.0], [0.0]])).tolist() == [1, 0]
    assert decode_labels(np.array([2, 0])).tolist() == [2, 0]


@pytest.mark.parametrize(
    ("override", "accepted"),
    [
        ("trainer.tensorboard.pr_thresholds=1", "an integer >= 2"),
        ("trainer.tensorboard.images=-1", "an integer >= 0"),
        ("trainer.tensorboard.pr_curves=1", "true or false"),
    ],
)
def test_bad_settings_are_refused_before_training(override: str, accepted: str):
    from kfactory.config.validate import validate
    from kfactory.errors import ConfigError

    with pytest.raises(ConfigError, match=accepted):
        validate(compose_config([override]))


@pytest.mark.parametrize("classes", [10, 30, 100])
def test_the_confusion_matrix_text_is_legible_at_card_size_or_full_size(classes):
    from kfactory.train.figures import CARD_PIXELS, DPI, confusion_figure, confusion_layout

    side, font = confusion_layout(classes)
    png = confusion_figure(np.eye(classes, dtype=np.int64) * 3, [f"class_{i}" for i in range(classes)])
    width = int.from_bytes(png[16:20], "big")  # the PNG header's width
    assert width == pytest.approx(side * DPI, abs=2)
    font_pixels = font * DPI / 72
    shown = font_pixels * min(1.0, CARD_PIXELS / width) if classes <= 20 else font_pixels  # card, else full size
    assert shown >= 8  # pixels: the smallest text still read without zooming
    assert side * DPI / classes >= 1.2 * font_pixels  # a label fits its row


@pytest.mark.numeric
def test_weight_histograms_match_tensorflows_and_cover_every_weight(tmp_path):
    from kfactory.train.histograms import EpochTensorBoard, histogram_buckets

    rng = np.random.default_rng(1)
    samples = {"normal": rng.normal(size=5000), "constant": np.full(40, 0.5), "two": np.array([0.0, 1.0])}
    writer = tf.summary.create_file_writer(str(tmp_path / "tf"))
    with writer.as_default(step=0):
        for name, data in samples.items():
            tf.summary.histogram(name, data)
    writer.close()
    theirs = read_events(tmp_path / "tf")
    for name, data in samples.items():
        # float64 bucketing in NumPy and in TensorFlow, no oneDNN kernel involved: equal to rounding
        np.testing.assert_allclose(histogram_buckets(data), tensors(theirs, name)[0][1], rtol=1e-6, atol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value encountered in cast"
        diverged = histogram_buckets(np.array([np.nan, 1.0, np.inf, 3.0, -np.inf]))
        assert diverged[:, 2].sum() == 2 and diverged[0, 0] == 1.0 and diverged[-1, 1] == 3.0
        assert not histogram_buckets(np.array([np.nan, np.nan])).any()

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()])
    model.compile(optimizer="adam", loss="mse")
    board = EpochTensorBoard(log_dir=str(tmp_path / "run"), histogram_freq=1, write_graph=False)
    model.fit(np.ones((8, 4)), np.ones((8, 3)), epochs=2, verbose=0, callbacks=[board])
    events = read_events(tmp_path / "run" / "train")
    written_tags = {tag for tag in events.Tags()["tensors"] if tag.endswith("/histogram")}
    assert written_tags == {f"{w.path}/histogram" for w in model.weights}  # kernel, bias, BN's four
    assert set(events.PluginTagToContent("histograms")) == written_tags
    kernel = tensors(events, f"{model.layers[0].kernel.path}/histogram")
    assert [step for step, _ in kernel] == [1, 2]  # epochs counted from 1
    np.testing.assert_allclose(kernel[-1][1], histogram_buckets(model.layers[0].kernel.numpy()), rtol=1e-6)


@pytest.mark.numeric
def test_summaries_use_the_outputs_fit_validated_with_and_predict_when_there_are_none(tmp_path):
    from kfactory.train.tensorboard import collect_predictions

    cfg = compose_config([*TINY, "trainer.tensorboard.max_samples=20"], run_dir=tmp_path)
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (VAL_SIZE, 8, 8, 3)).astype(np.float32)
    labels = np.arange(VAL_SIZE) % len(CLASSES)
    val = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)  # sparse labels this time
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(3, "softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    extras = ValidationSummaries(tmp_path / "tensorboard", val, CLASSES, cfg)
    model.fit(images, labels, validation_data=val, epochs=1, batch_size=16, verbose=0, callbacks=[extras])
    recorded_labels, outputs = extras.tap.read()
    assert decode_labels(recorded_labels).tolist() == labels[:20].tolist()  # the first max_samples, in order
    # the test step's graph and predict's: float32-close (conftest.PROB_ATOL)
    np.testing.assert_allclose(outputs, model.predict(val, verbose=0)[:20], rtol=0, atol=PROB_ATOL)
    kept, predicted_labels, probs = collect_predictions(model, val, 20, "softmax", keep_images=True)
    assert predicted_labels.tolist() == labels[:20].tolist() and kept.shape == (20, 8, 8, 3)
    np.testing.assert_allclose(probs, outputs, rtol=0, atol=PROB_ATOL)
    model.evaluate(val, verbose=0)  # a later evaluate without the callback: training's weights unchanged
    extras.tap.reset()
    assert extras.tap.read() is None
    path = tmp_path / "model.keras"
    model.save(path)  # the wrapped test step is not part of the model
    assert keras.models.load_model(path).predict(images[:2], verbose=0).shape == (2, 3)


def test_a_summary_that_fails_to_draw_is_logged_and_training_goes_on(tmp_path, caplog):
    cfg = compose_config([*TINY], run_dir=tmp_path)
    images = np.random.default_rng(0).uniform(0, 255, (12, 8, 8, 3)).astype(np.float32)
    one_hot = np.eye(3, dtype=np.float32)[np.arange(12) % 3]
    val = tf.data.Dataset.from_tensor_slices((images, one_hot)).batch(4)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(3, "softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    extras = ValidationSummaries(tmp_path / "tensorboard", val, ["only", "two"], cfg)  # three outputs, two names
    with caplog.at_level("WARNING", logger="kfactory.train.tensorboard"):
        history = model.fit(images, one_hot, validation_data=val, epochs=2, verbose=0, callbacks=[extras])
    assert len(history.epoch) == 2 and extras.figures.thread is None  # both epochs trained; the drawing thread joined
    failures = [r.getMessage() for r in caplog.records if "not written" in r.getMessage()]
    assert [message.split(":")[0] for message in failures] == [
        "TensorBoard summaries of epoch 1 not written",
        "TensorBoard summaries of epoch 2 not written",
    ]


def test_figures_of_a_split_that_came_up_short_leave_the_run_its_one_line(tmp_path, caplog):
    cfg = compose_config([*TINY], run_dir=tmp_path)
    images = np.random.default_rng(0).uniform(0, 255, (12, 8, 8, 3)).astype(np.float32)
    one_hot = np.eye(3, dtype=np.float32)[np.arange(12) % 3]
    val = tf.data.Dataset.from_tensor_slices((images, one_hot)).batch(4)
    short = val.take(0).apply(tf.data.experimental.assert_cardinality(3))  # no batch of the 3 promised
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(3, "softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    extras = ValidationSummaries(tmp_path / "tensorboard", short, CLASSES, cfg)  # its image grid reads the split
    with caplog.at_level("WARNING", logger="kfactory.train.tensorboard"):
        model.fit(images, one_hot, validation_data=val, epochs=1, verbose=0, callbacks=[extras])
    assert cfg.trainer.tensorboard.images > 0 and not [r for r in caplog.records if "not written" in r.getMessage()]

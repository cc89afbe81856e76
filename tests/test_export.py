"""task=export: SavedModel signatures, TFLite against Keras, the .keras copy, model cards."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kfactory.config.validate import validate
from kfactory.errors import ConfigError
from tests.conftest import PROB_ATOL, assert_same_top_labels, compose_config, run_cli


def run_export(trained_run: Path, out: Path, *overrides: str) -> Path:
    from kfactory.use.export import export

    cfg = compose_config(["task=export", f"ckpt_path={trained_run}", *overrides])
    validate(cfg)
    out.mkdir(parents=True, exist_ok=True)
    export(cfg, out)
    return out


def keras_probabilities(run_dir: Path, pixels: np.ndarray) -> np.ndarray:
    import keras

    return keras.models.load_model(run_dir / "model.keras").predict(pixels.astype(np.float32), verbose=0)


def jpeg_bytes(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def saved_model(trained, tmp_path_factory) -> Path:
    out = run_export(trained[0], tmp_path_factory.mktemp("sm"), "export.format=saved_model")
    return out


@pytest.mark.slow  # shares a SavedModel export (11 s)
@pytest.mark.numeric
def test_saved_model_takes_jpeg_bytes_and_matches_keras(trained, saved_model):
    import tensorflow as tf

    run_dir, images = trained
    files = sorted(images.glob("*/*.png"))[::5]
    encoded = [jpeg_bytes(f) for f in files]
    served = tf.saved_model.load(str(saved_model / "saved_model" / "1"))
    out = served.signatures["serving_default"](tf.constant(encoded))
    # What Keras sees for the same JPEG: decoded by TF, at the model's size already.
    pixels = np.stack([tf.io.decode_jpeg(b, channels=3).numpy() for b in encoded])
    expected = keras_probabilities(run_dir, pixels)
    # the SavedModel's graph is not Keras's: float32-close, and a near tie may name another class
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=PROB_ATOL)
    assert out["class_names"].numpy().tolist() == [[b"cats", b"dogs"]] * len(files)
    top = np.array([b"cats", b"dogs"])[expected.argmax(-1)]
    assert_same_top_labels(expected, out["top_class"].numpy(), top)
    by_pixels = served.signatures["serving_pixels"](tf.constant(pixels, tf.uint8))
    np.testing.assert_allclose(by_pixels["probabilities"].numpy(), expected, atol=PROB_ATOL)


@pytest.mark.slow  # shares a SavedModel export (11 s)
@pytest.mark.numeric
def test_predict_reads_the_exported_saved_model(trained, saved_model, tmp_path):
    import pandas as pd

    from kfactory.use.predict import predict

    run_dir, images = trained
    tables = []
    for name, ckpt in (("keras", run_dir), ("saved", saved_model)):
        (tmp_path / name).mkdir()
        predict(compose_config(["task=predict", f"ckpt_path={ckpt}", f"predict.input={images}"]), tmp_path / name)
        tables.append(pd.read_csv(tmp_path / name / "predictions.csv"))
    # two graphs of one model (Keras's, the SavedModel's): float32-close, a near tie may flip
    assert_same_top_labels(tables[0][["prob_1", "prob_2"]], tables[0]["label_1"], tables[1]["label_1"])
    np.testing.assert_allclose(tables[0]["prob_1"], tables[1]["prob_1"], atol=PROB_ATOL)


@pytest.mark.slow  # shares a SavedModel export (11 s)
def test_model_card_lists_classes_metrics_and_training_config(saved_model):
    card = (saved_model / "model_card.md").read_text()
    assert "`saved_model/1` (saved_model)" in card
    assert "32x32 RGB" in card
    assert "0. cats" in card and "1. dogs" in card
    assert "| accuracy |" in card  # from the run's metrics.json
    assert "name: mobilenet" in card  # from the run's .hydra/config.yaml


@pytest.mark.slow  # converts to TFLite
@pytest.mark.numeric
def test_tflite_matches_keras_and_is_checked(trained, tmp_path):
    from kfactory.use.export import run_tflite

    run_dir, images = trained
    out = run_export(run_dir, tmp_path / "lite", "export.format=tflite", f"export.check_input={images}")
    files = sorted(images.glob("*/*.png"))[1::6]
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]).astype(np.float32)
    lite = run_tflite(out / "model.tflite", pixels)
    np.testing.assert_allclose(lite, keras_probabilities(run_dir, pixels), atol=PROB_ATOL)  # TFLite's own kernels
    card = (out / "model_card.md").read_text()
    assert "max_abs_difference" in card and "`model.tflite` (tflite)" in card
    assert f"| images | {len(list(images.glob('*/*.png')))} |" in card  # every check_input image, not a sample


@pytest.mark.slow
def test_quantised_tflite_is_smaller_and_fails_loudly_over_the_tolerance(trained, tmp_path):
    run_dir, images = trained
    # A tiny model with a random base quantises poorly (about 0.2 off); the point here is the failure below.
    loose = ["export.format=tflite", "export.quantize=true", "export.tolerance=0.5", f"export.check_input={images}"]
    out = run_export(run_dir, tmp_path / "q", *loose)
    float_size = run_export(run_dir, tmp_path / "f", "export.format=tflite").joinpath("model.tflite").stat().st_size
    assert (out / "model.tflite").stat().st_size < float_size / 2
    strict = ["export.format=tflite", "export.quantize=true", "export.tolerance=0", f"export.check_input={images}"]
    with pytest.raises(RuntimeError, match="differ from Keras"):
        run_export(run_dir, tmp_path / "strict", *strict)
    assert not list((tmp_path / "strict").rglob("*.tflite"))  # a file that failed its check is not left behind


@pytest.mark.slow  # exports the model
def test_keras_export_copies_the_model_with_its_class_names(trained, tmp_path):
    from kfactory.model.checkpoint import read_metadata

    run_dir, _ = trained
    out = run_export(run_dir, tmp_path / "k", "export.format=keras", f"export.dir={tmp_path / 'elsewhere'}")
    copy = tmp_path / "elsewhere" / "model.keras"
    assert copy.read_bytes() == (run_dir / "model.keras").read_bytes()
    assert read_metadata(copy)["class_names"] == ["cats", "dogs"]
    assert (tmp_path / "elsewhere" / "model_card.md").is_file()
    assert not (out / "model_card.md").exists()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("export.format=onnx", "export.format"),
        ("export.quantize=true", "export.quantize"),  # saved_model cannot be quantised
        ("export.tolerance=-1", "export.tolerance"),
        ("export.check_input=/no/such/folder", "export.check_input"),
    ],
)
def test_bad_export_settings_are_refused_before_tensorflow(trained, override, key):
    cfg = compose_config(["task=export", f"ckpt_path={trained[0]}", override])
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert error.value.key == key


@pytest.mark.slow  # shares a SavedModel export (11 s)
def test_export_refuses_a_saved_model_as_its_source(saved_model):
    cfg = compose_config(["task=export", f"ckpt_path={saved_model}"])
    with pytest.raises(ConfigError, match="an exported SavedModel serves task=predict"):
        validate(cfg)
    with pytest.raises(ConfigError, match="an exported SavedModel serves task=predict"):
        validate(compose_config(["task=eval", f"ckpt_path={saved_model}"]))


def test_cli_refuses_an_unknown_format_in_one_line(trained, tmp_path):
    result = run_cli(["task=export", f"ckpt_path={trained[0]}", "export.format=onnx", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 2
    assert "export.format=onnx" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_exports_a_saved_model_that_predict_reads(trained, tmp_path):
    import pandas as pd

    run_dir, images = trained
    exported = run_cli(["task=export", f"ckpt_path={run_dir}", f"hydra.run.dir={tmp_path / 'e'}"])
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (tmp_path / "e" / "saved_model" / "1" / "saved_model.pb").is_file()
    assert (tmp_path / "e" / "model_card.md").is_file()
    predicted = run_cli(
        ["task=predict", f"ckpt_path={tmp_path / 'e'}", f"predict.input={images}", f"hydra.run.dir={tmp_path / 'p'}"]
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert len(table) == 24 and set(table["true_label"]) == {"cats", "dogs"}

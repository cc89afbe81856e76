"""Export a trained model: a stand-alone .keras, a SavedModel for TF Serving, or TFLite.

Each export writes ``model_card.md`` next to it. The SavedModel serves two
signatures, both returning class names and probabilities: ``serving_default``
takes a batch of encoded JPEG/PNG images (tf.string), ``serving_pixels`` a batch
of uint8 RGB pixels at the model's input size.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from kfactory.data.image_check import decode_image, read_image
from kfactory.model.checkpoint import (
    BYTES_SIGNATURE,
    MODEL_FILE,
    PIXELS_SIGNATURE,
    SAVED_MODEL_METADATA,
    find_model_file,
    load_model,
    read_metadata,
    write_json_atomic,
)
from kfactory.paths import expand_path
from kfactory.registry import PROBABILITY_ACTIVATIONS
from kfactory.train.multilabel import stored_thresholds
from kfactory.use.model_card import write_model_card
from kfactory.use.predict import list_inputs

log = logging.getLogger(__name__)

TFLITE_FILE = "model.tflite"
TFLITE_METADATA = "model.tflite.json"  # kfactory's metadata beside the TFLite file, as in a SavedModel's assets.extra
RANDOM_IMAGES = 8  # random images the TFLite model is compared with Keras on when export.check_input is null
CHECK_BATCH = 32  # export.check_input images compared at a time (all of them are compared)


def export(cfg: DictConfig, run_dir: Path) -> None:
    """Export the model of ``cfg.ckpt_path`` as ``cfg.export.format``, with a model card."""
    source = find_model_file(cfg.ckpt_path)
    metadata = read_metadata(source)
    model = load_model(source, safe_mode=not cfg.unsafe_load, modules=cfg.load.modules)
    metadata.setdefault("class_names", [str(i) for i in range(max(model.output_shape[-1], 2))])
    out_dir = expand_path(cfg.export.dir) if cfg.export.dir else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    fmt = cfg.export.format
    checks: dict[str, Any] = {}
    if fmt == "keras":
        target = out_dir / MODEL_FILE
        if target.resolve() != source.resolve():
            shutil.copyfile(source, target)  # class names are inside the .keras zip already
    elif fmt == "saved_model":
        target = next_version_dir(out_dir / "saved_model")
        export_saved_model(model, metadata, target)
    else:
        target = out_dir / TFLITE_FILE
        checks = export_tflite(model, target, cfg.export)
        write_json_atomic(out_dir / TFLITE_METADATA, metadata)  # class names (and thresholds) for the app
    card = write_model_card(out_dir, target, fmt, source, metadata, model, checks)
    log.info("Exported %s: %s (model card %s)", fmt, target, card)


def next_version_dir(base: Path) -> Path:
    """``base/<n>`` for the first unused version number, as TF Serving expects."""
    versions = [int(p.name) for p in base.glob("[0-9]*") if p.name.isdigit()] if base.is_dir() else []
    return base / str(max(versions, default=0) + 1)


def export_saved_model(model: keras.Model, metadata: dict[str, Any], target: Path) -> None:
    """A SavedModel with a bytes and a pixels signature, and kfactory's metadata beside it."""
    height, width = (int(s) for s in model.input_shape[1:3])
    class_names = list(metadata["class_names"])
    activation = metadata.get("activation", "softmax")
    if metadata.get("task") == "multilabel":
        from_pixels = label_set_outputs(model, class_names, metadata)
    else:
        from_pixels = class_outputs(model, class_names, activation)

    def from_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        spec = tf.TensorSpec((height, width, 3), tf.uint8)
        pixels = tf.map_fn(lambda b: decode_image(b, (height, width)), image_bytes, fn_output_signature=spec)
        return from_pixels(pixels)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(BYTES_SIGNATURE, from_bytes, input_signature=[tf.TensorSpec([None], tf.string)])
    pixels_spec = tf.TensorSpec([None, height, width, 3], tf.uint8)
    archive.add_endpoint(PIXELS_SIGNATURE, from_pixels, input_signature=[pixels_spec])
    archive.write_out(str(target), verbose=False)
    (target / SAVED_MODEL_METADATA).parent.mkdir(exist_ok=True)
    write_json_atomic(target / SAVED_MODEL_METADATA, metadata)


def class_outputs(model: keras.Model, class_names: list[str], activation: str) -> Callable:
    """Pixels to ``probabilities`` (one per class), ``class_names`` and ``top_class``."""

    def from_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = model(tf.cast(pixels, tf.float32), training=False)
        if activation not in PROBABILITY_ACTIVATIONS:  # logits or scores, as kfactory.model.build.to_probabilities
            outputs = tf.sigmoid(outputs) if outputs.shape[-1] == 1 else tf.nn.softmax(outputs)
        probabilities = tf.concat([1 - outputs, outputs], -1) if outputs.shape[-1] == 1 else outputs
        names = tf.constant(class_names)
        return {
            "probabilities": probabilities,
            "class_names": tf.tile(names[None], [tf.shape(probabilities)[0], 1]),
            "top_class": tf.gather(names, tf.argmax(probabilities, axis=-1)),
        }

    return from_pixels


def label_set_outputs(model: keras.Model, class_names: list[str], metadata: dict[str, Any]) -> Callable:
    """Pixels to per-class sigmoid ``probabilities``, ``class_names`` and ``labels``: each class's name where
    its probability reaches its stored threshold, else an empty string."""
    thresholds = tf.constant(stored_thresholds(metadata, class_names), tf.float32)

    def from_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = model(tf.cast(pixels, tf.float32), training=False)
        if metadata.get("activation") not in PROBABILITY_ACTIVATIONS:
            probabilities = tf.sigmoid(probabilities)
        names = tf.tile(tf.constant(class_names)[None], [tf.shape(probabilities)[0], 1])
        labels = tf.where(probabilities >= thresholds, names, tf.fill(tf.shape(names), ""))
        return {"probabilities": probabilities, "class_names": names, "labels": labels}

    return from_pixels


def export_tflite(model: keras.Model, target: Path, export_cfg: DictConfig) -> dict[str, Any]:
    """Convert to TFLite, then compare the interpreter with Keras; raise over the tolerance."""
    kwargs = {"optimizations": [tf.lite.Optimize.DEFAULT]} if export_cfg.quantize else {}
    model.export(str(target), format="litert", verbose=False, **kwargs)
    tolerance = export_cfg.tolerance
    if tolerance is None:
        tolerance = 0.1 if export_cfg.quantize else 1e-4
    count, difference = tflite_difference(target, model, export_cfg.check_input)
    log.info("TFLite vs Keras on %d images: max abs difference %.3g (tolerance %.3g)", count, difference, tolerance)
    if not difference <= tolerance:
        target.unlink()  # a file that fails its check is not kept
        raise RuntimeError(
            f"TFLite outputs differ from Keras by {difference:.3g} > export.tolerance={tolerance}; {target} is suspect"
        )
    checks = {"quantized": bool(export_cfg.quantize), "images": count, "max_abs_difference": difference}
    return {**checks, "tolerance": tolerance, "size_bytes": target.stat().st_size}


def tflite_difference(target: Path, model: keras.Model, check_input: str | None) -> tuple[int, float]:
    """How many images were compared, and the largest absolute output difference (NaN if any output is NaN)."""
    differences, count = [], 0
    for images in check_batches(check_input, tuple(model.input_shape[1:3])):
        differences.append(np.max(np.abs(run_tflite(target, images) - model.predict_on_batch(images))))
        count += len(images)
    return count, float(np.max(differences))


def check_batches(check_input: str | None, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """Every image of ``check_input`` as float32 pixels, ``CHECK_BATCH`` at a time; else seeded random pixels."""
    if check_input is None:
        rng = np.random.default_rng(0)
        yield rng.integers(0, 256, (RANDOM_IMAGES, *size, 3)).astype(np.float32)
        return
    files, _ = list_inputs(check_input)
    for start in range(0, len(files), CHECK_BATCH):
        batch = files[start : start + CHECK_BATCH]
        yield np.stack([read_image(tf.constant(f), size).numpy() for f in batch]).astype(np.float32)


def run_tflite(path: Path, images: np.ndarray) -> np.ndarray:
    """The TFLite model's outputs for a batch of ``images``."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter  # noqa: N806
    with warnings.catch_warnings():  # tf.lite.Interpreter warns that it moved to ai_edge_litert; it still works
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        interpreter = Interpreter(model_path=str(path))
    (entry,), (exit_,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(entry["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], images.astype(entry["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(exit_["index"])

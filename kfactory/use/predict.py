"""Predict images with a trained model: top-k labels and probabilities to a CSV.

The model may be a ``model.keras`` (a run directory or the file) or an exported
SavedModel; images are decoded and resized by the same ``tf.data`` reader as in
training. Files that cannot be decoded are skipped, listed and logged, without
shifting any other row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from omegaconf import DictConfig

from kfactory.data.image_check import read_image
from kfactory.data.label_sets import split_label_sets
from kfactory.data.pipeline import AUTOTUNE
from kfactory.data.sources import class_folders, csv_paths, is_image_file, list_folder
from kfactory.errors import ConfigError
from kfactory.model.build import to_probabilities
from kfactory.model.checkpoint import PIXELS_SIGNATURE, find_model_file, is_saved_model, load_model, read_metadata
from kfactory.paths import expand_path
from kfactory.train.multilabel import stored_thresholds
from kfactory.use.annotate import annotate_image, annotated_path, contact_sheet, input_root

log = logging.getLogger(__name__)

UNREADABLE_FILE = "unreadable.txt"  # files predict skipped, one a line


@dataclass
class Predictor:
    """A loaded model as predict uses it: uint8 RGB batches in, class probabilities out."""

    predict_batch: Callable[[tf.Tensor], np.ndarray]
    input_size: tuple[int, int]
    class_names: list[str]
    thresholds: np.ndarray | None = None  # a multi-label model's per-class thresholds; None: one class per image
    label_separator: str = ";"


def load_predictor(path: Path, safe_mode: bool = True, modules: Sequence[str] = ()) -> Predictor:
    """Load a ``.keras`` file (importing ``modules`` first) or an exported SavedModel directory for prediction."""
    metadata = read_metadata(path)
    predictor = _load(path, metadata, safe_mode, modules)
    if metadata.get("task") == "multilabel":
        predictor.thresholds = stored_thresholds(metadata, predictor.class_names)
        predictor.label_separator = metadata.get("label_separator", predictor.label_separator)
    return predictor


def _load(path: Path, metadata: dict, safe_mode: bool, modules: Sequence[str]) -> Predictor:
    if is_saved_model(path):
        signature = tf.saved_model.load(str(path)).signatures[PIXELS_SIGNATURE]
        spec = signature.structured_input_signature[1]["pixels"]
        size = (int(spec.shape[1]), int(spec.shape[2]))
        names = metadata.get("class_names")
        if names is None:
            sample = signature(pixels=tf.zeros((1, *size, 3), tf.uint8))["class_names"]
            names = [n.decode() for n in sample.numpy()[0]]
        return Predictor(lambda x: signature(pixels=tf.cast(x, tf.uint8))["probabilities"].numpy(), size, names)
    model = load_model(path, safe_mode, modules)
    size = (int(model.input_shape[1]), int(model.input_shape[2]))
    names = metadata.get("class_names") or [str(i) for i in range(max(model.output_shape[-1], 2))]
    activation, multilabel = metadata.get("activation", "softmax"), metadata.get("task") == "multilabel"
    return Predictor(
        lambda x: to_probabilities(model.predict_on_batch(tf.cast(x, tf.float32)), activation, multilabel), size, names
    )


def list_inputs(value: str) -> tuple[list[str], list[str] | None]:
    """Image paths named by ``predict.input`` and, for labelled inputs, their labels."""
    path = expand_path(value)
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_prediction_csv(path)
    if path.is_file():
        return [str(path)], None
    if class_folders(path):
        source = list_folder(str(path))
        return source.paths, [source.class_names[i] for i in source.labels]
    files = sorted(str(p) for p in path.iterdir() if is_image_file(p.name))
    if not files:
        raise ConfigError("predict.input", value, "an image, or a folder holding images or class sub-folders")
    return files, None


def read_prediction_csv(path: Path) -> tuple[list[str], list[str] | None]:
    """Paths (column ``path``, relative to the CSV's folder) and, if there is a ``label`` column, labels.

    Missing files are not refused here: like undecodable ones, they are skipped and listed.
    """
    table = pd.read_csv(path)
    if "path" not in table.columns:
        raise ConfigError("predict.input", str(path), f"a CSV with a 'path' column (found: {', '.join(table.columns)})")
    files = csv_paths(path, table["path"])
    labels = table["label"].astype(str).tolist() if "label" in table.columns else None
    return files, labels


def predict(cfg: DictConfig, run_dir: Path) -> float | None:
    """Write ``predictions.csv`` for ``cfg.predict.input``; return accuracy if labelled."""
    predictor = load_predictor(find_model_file(cfg.ckpt_path), not cfg.unsafe_load, cfg.load.modules)
    files, true_labels = list_inputs(cfg.predict.input)
    kept, probabilities = predict_files(predictor, files, cfg.data.batch_size)
    record_unreadable(files, kept, run_dir)
    if predictor.thresholds is not None:
        if cfg.predict.annotate:
            log.warning("predict.annotate=true draws nothing for a multi-label model; predictions.csv lists the labels")
        return predict_label_sets(predictor, [files[i] for i in kept], probabilities, true_labels, kept, run_dir)
    table = top_k_table([files[i] for i in kept], probabilities, predictor.class_names, cfg.predict.top_k)
    accuracy = None
    if true_labels is not None:
        table["true_label"] = [true_labels[i] for i in kept]
        table["correct"] = table["label_1"] == table["true_label"]
        accuracy = float(table["correct"].mean()) if len(table) else None
        log.info("Accuracy on %d labelled images: %s", len(table), accuracy)
    out = run_dir / "predictions.csv"
    table.to_csv(out, index=False)
    log.info("Predictions for %d images: %s", len(table), out)
    if cfg.predict.annotate:
        write_annotations(table, run_dir, cfg.predict.contact_sheet)
    return accuracy


def predict_label_sets(
    predictor: Predictor,
    files: list[str],
    probabilities: np.ndarray,
    true_labels: list[str] | None,
    kept: list[int],
    run_dir: Path,
) -> float | None:
    """A multi-label model's predictions.csv; return the exact-match ratio if labelled."""
    separator = predictor.label_separator
    table = label_set_table(files, probabilities, predictor.class_names, predictor.thresholds, separator)
    exact = None
    if true_labels is not None:
        truth = [set(labels) for labels in split_label_sets([true_labels[i] for i in kept], separator)]
        names = np.array(predictor.class_names)
        predicted = [set(names[row >= predictor.thresholds]) for row in probabilities]
        table.insert(3, "true_labels", [separator.join(sorted(labels)) for labels in truth])
        table.insert(4, "exact_match", [p == t for p, t in zip(predicted, truth, strict=True)])
        exact = float(table["exact_match"].mean()) if len(table) else None
        log.info("Exact-match ratio on %d labelled images: %s", len(table), exact)
    out = run_dir / "predictions.csv"
    table.to_csv(out, index=False)
    log.info("Predictions for %d images (every label above its threshold): %s", len(table), out)
    return exact


def label_set_table(
    files: list[str], probabilities: np.ndarray, class_names: list[str], thresholds: np.ndarray, separator: str
) -> pd.DataFrame:
    """One row per file: ``labels`` above their thresholds, most probable first, and their ``probabilities``
    (same order and separator), then ``prob_<class>`` for every class."""
    labels, probs = [], []
    for row in probabilities:
        above = [i for i in np.argsort(-row, kind="stable") if row[i] >= thresholds[i]]
        labels.append(separator.join(class_names[i] for i in above))
        probs.append(separator.join(f"{row[i]:.4f}" for i in above))
    table = pd.DataFrame({"file": files, "labels": labels, "probabilities": probs})
    for index, name in enumerate(class_names):
        table[f"prob_{name}"] = probabilities[:, index]
    return table


def predict_files(predictor: Predictor, files: list[str], batch_size: int) -> tuple[list[int], np.ndarray]:
    """Class probabilities of each readable file, and those files' indices in ``files``.

    Each image carries its index through the pipeline, so a file that fails to
    decode (dropped by ``ignore_errors``) cannot shift the others' rows.
    """
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(files)), files))
    ds = ds.map(lambda i, p: (i, read_image(p, predictor.input_size)), num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors(log_warning=True).batch(batch_size).prefetch(AUTOTUNE)
    progress = keras.utils.Progbar(len(files), unit_name="image")
    kept: list[int] = []
    outputs = [np.zeros((0, len(predictor.class_names)), np.float32)]
    for indices, images in ds:
        outputs.append(predictor.predict_batch(images))
        kept.extend(indices.numpy().tolist())
        progress.update(kept[-1] + 1)  # skipped files count as done too
    if kept and kept[-1] + 1 < len(files):
        progress.update(len(files))
    return kept, np.concatenate(outputs)


def record_unreadable(files: list[str], kept: list[int], run_dir: Path) -> None:
    """List the files that could not be read in ``unreadable.txt`` and the log."""
    skipped = sorted(set(range(len(files))) - set(kept))
    if not skipped:
        return
    names = [files[i] for i in skipped]
    (run_dir / UNREADABLE_FILE).write_text("".join(f"{n}\n" for n in names))
    log.warning("Skipped %d unreadable file(s), e.g. %s; all in %s", len(names), names[0], run_dir / UNREADABLE_FILE)


def write_annotations(table: pd.DataFrame, run_dir: Path, sheet_count: int) -> list[Path]:
    """Annotated copies under ``run_dir/annotated`` and a contact sheet of the first ``sheet_count``."""
    out_dir = run_dir / "annotated"
    root = input_root(list(table["file"]))
    k = sum(c.startswith("label_") for c in table.columns)
    written = []
    for row in table.to_dict("records"):
        predictions = [(row[f"label_{r}"], row[f"prob_{r}"]) for r in range(1, k + 1)]
        target = annotated_path(row["file"], root, out_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        annotate_image(row["file"], predictions, row.get("true_label")).save(target)
        written.append(target)
    log.info("Annotated images: %s", out_dir)
    if written and sheet_count > 0:
        sheet = contact_sheet(written[:sheet_count], run_dir / "contact_sheet.png")
        log.info("Contact sheet: %s", sheet)
    return written


def top_k_table(files: list[str], probabilities: np.ndarray, class_names: list[str], k: int) -> pd.DataFrame:
    """One row per file: label_i and prob_i for the ``k`` most probable classes."""
    k = min(k, probabilities.shape[-1])
    order = np.argsort(-probabilities, axis=-1)[:, :k]
    table = pd.DataFrame({"file": files})
    for rank in range(k):
        table[f"label_{rank + 1}"] = [class_names[i] for i in order[:, rank]]
        table[f"prob_{rank + 1}"] = np.take_along_axis(probabilities, order[:, rank : rank + 1], axis=-1)[:, 0]
    return table

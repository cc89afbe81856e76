"""Predict images with a trained model: top-k labels and probabilities to a CSV."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from omegaconf import DictConfig

from kfactory.checkpoint import find_model_file, load_model, read_metadata
from kfactory.config import ConfigError, expand_path
from kfactory.data import AUTOTUNE, read_image, to_rgb_float
from kfactory.sources import is_image_file, list_folder, read_csv

log = logging.getLogger(__name__)


def list_inputs(value: str) -> tuple[list[str], list[str] | None]:
    """Image paths named by ``predict.input`` and, for labelled inputs, their labels."""
    path = expand_path(value)
    if path.is_file() and path.suffix.lower() == ".csv":
        source = read_csv(str(path), "path", "label")
        return source.paths, [source.class_names[i] for i in source.labels]
    if path.is_file():
        return [str(path)], None
    class_dirs = [p for p in path.iterdir() if p.is_dir()]
    if class_dirs:
        source = list_folder(str(path))
        return source.paths, [source.class_names[i] for i in source.labels]
    files = sorted(str(p) for p in path.iterdir() if is_image_file(p.name))
    if not files:
        raise ConfigError("predict.input", value, "an image, or a folder holding images or class sub-folders")
    return files, None


def predict(cfg: DictConfig, run_dir: Path) -> float | None:
    """Write ``predictions.csv`` for ``cfg.predict.input``; return accuracy if labelled."""
    model_path = find_model_file(cfg.ckpt_path)
    class_names = read_metadata(model_path).get("class_names")
    model = load_model(model_path)
    size = tuple(model.input_shape[1:3])
    if class_names is None:
        class_names = [str(i) for i in range(max(model.output_shape[-1], 2))]
    files, true_labels = list_inputs(cfg.predict.input)
    ds = tf.data.Dataset.from_tensor_slices(files).map(lambda p: read_image(p, size), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(cfg.data.batch_size).map(lambda x: to_rgb_float(x, None)).prefetch(AUTOTUNE)
    probabilities = as_class_probabilities(model.predict(ds, verbose=1))
    table = top_k_table(files, probabilities, class_names, cfg.predict.top_k)
    accuracy = None
    if true_labels is not None:
        table["true_label"] = true_labels
        table["correct"] = table["label_1"] == table["true_label"]
        accuracy = float(table["correct"].mean())
        log.info("Accuracy on %d labelled images: %.4f", len(table), accuracy)
    out = run_dir / "predictions.csv"
    table.to_csv(out, index=False)
    log.info("Predictions for %d images: %s", len(table), out)
    return accuracy


def as_class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Model outputs as one probability per class (a sigmoid unit becomes two)."""
    if outputs.shape[-1] == 1:
        return np.concatenate([1 - outputs, outputs], axis=-1)
    return outputs


def top_k_table(files: list[str], probabilities: np.ndarray, class_names: list[str], k: int) -> pd.DataFrame:
    """One row per file: label_i and prob_i for the ``k`` most probable classes."""
    k = min(k, probabilities.shape[-1])
    order = np.argsort(-probabilities, axis=-1)[:, :k]
    table = pd.DataFrame({"file": files})
    for rank in range(k):
        table[f"label_{rank + 1}"] = [class_names[i] for i in order[:, rank]]
        table[f"prob_{rank + 1}"] = np.take_along_axis(probabilities, order[:, rank : rank + 1], axis=-1)[:, 0]
    return table

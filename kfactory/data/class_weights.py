"""Class counts of the training split and the loss weights ``data.class_weight`` asks for.

``null``: no weights; ``balanced``: scikit-learn's ``compute_class_weight``,
``n_samples / (n_classes * count)`` per class of the training split (a class absent
from it weighs 0 and does not count in ``n_classes``); a mapping ``{class: weight}``
weights the named classes, the rest keep 1.0. No TensorFlow here.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from kfactory.data.label_sets import label_counts
from kfactory.errors import ConfigError

log = logging.getLogger(__name__)

COUNTS_FILE = "class_counts.csv"


def check_class_weight(data: DictConfig) -> None:
    """Refuse anything but null, balanced, or a mapping of class names to weights >= 0."""
    value = data.class_weight
    if value is None or value == "balanced":
        return
    if not OmegaConf.is_dict(value):
        raise ConfigError("data.class_weight", value, "null, balanced, or {class_name: weight}")
    for name, weight in value.items():
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise ConfigError(f"data.class_weight.{name}", weight, "a number >= 0")


def class_weights(setting, labels: np.ndarray, class_names: list[str]) -> dict[int, float] | None:
    """Per-class-index weights for ``model.fit(class_weight=...)``, or None."""
    if setting is None:
        return None
    if setting == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(labels)  # scikit-learn refuses a class without samples: it weighs 0 here
        balanced = compute_class_weight("balanced", classes=present, y=labels)
        weights = dict.fromkeys(range(len(class_names)), 0.0)
        return {**weights, **{int(c): float(w) for c, w in zip(present, balanced, strict=True)}}
    weights = {str(name): float(weight) for name, weight in dict(setting).items()}
    unknown = sorted(set(weights) - set(class_names))
    if unknown:
        raise ConfigError("data.class_weight", unknown, "class names of the data: " + ", ".join(class_names))
    return {i: weights.get(name, 1.0) for i, name in enumerate(class_names)}


def record_class_counts(
    labels: np.ndarray, class_names: list[str], weights: dict[int, float] | None, run_dir: Path
) -> None:
    """Log the training split's count (and weight) per class and write class_counts.csv."""
    counts = label_counts(labels, len(class_names))
    rows = [(name, int(counts[i]), (weights or {}).get(i, 1.0)) for i, name in enumerate(class_names)]
    log.info("Training images per class: %s", ", ".join(f"{n} {c} (weight {w:.3g})" for n, c, w in rows))
    with open(run_dir / COUNTS_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "train_count", "weight"])
        writer.writerows(rows)

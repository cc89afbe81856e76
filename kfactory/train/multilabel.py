"""Multi-label scoring: the Keras metrics a run logs, and per-class thresholds and scores after training.

During training, Keras's own metrics at threshold 0.5 (macro and micro F1, PR and
ROC AUC over every class) and an exact-match ratio. After training, each class
gets the threshold with the best F1 on the validation split, and average
precision is scikit-learn's, computed from the validation predictions.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)  # candidate per-class thresholds
DEFAULT_THRESHOLD = 0.5  # a class the validation split cannot tune (no image has it, or there is no split)


@keras.saving.register_keras_serializable(package="kfactory")
class ExactMatch(keras.metrics.Metric):
    """The share of images whose whole label set is predicted right at ``threshold``."""

    def __init__(self, threshold: float = 0.5, name: str = "exact_match", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.matches = self.add_variable((), initializer="zeros", name="matches")
        self.count = self.add_variable((), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        ops = keras.ops
        same = ops.all(ops.equal(y_true > 0.5, y_pred >= self.threshold), axis=-1)
        self.matches.assign_add(ops.sum(ops.cast(same, "float32")))
        self.count.assign_add(ops.cast(ops.shape(y_true)[0], "float32"))

    def result(self):
        return keras.ops.divide_no_nan(self.matches, self.count)

    def reset_state(self) -> None:
        self.matches.assign(0.0)
        self.count.assign(0.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "threshold": self.threshold}


def multilabel_metrics(num_classes: int) -> list[keras.metrics.Metric]:
    """The metrics every multi-label run logs, named as registry.MULTILABEL_METRICS."""
    return [
        keras.metrics.F1Score(average="macro", threshold=0.5, name="f1_macro"),
        keras.metrics.F1Score(average="micro", threshold=0.5, name="f1_micro"),
        keras.metrics.AUC(curve="PR", multi_label=True, num_labels=num_classes, name="pr_auc"),
        keras.metrics.AUC(curve="ROC", multi_label=True, num_labels=num_classes, name="roc_auc"),
        ExactMatch(name="exact_match"),
    ]


def f1_scores(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """F1 per class (columns) of boolean predictions; 0 where a class is neither present nor predicted."""
    tp = (truth & predicted).sum(axis=0)
    denominator = truth.sum(axis=0) + predicted.sum(axis=0)
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one class (scikit-learn's: tied scores are one threshold); NaN without positives."""
    if not truth.any():
        return float("nan")
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(truth, scores))


def stored_thresholds(metadata: dict[str, Any], class_names: list[str]) -> np.ndarray:
    """A model's per-class thresholds in class order, from its metadata (``DEFAULT_THRESHOLD`` where none)."""
    stored = metadata.get("thresholds") or {}
    return np.array([stored.get(name, DEFAULT_THRESHOLD) for name in class_names], dtype=np.float64)


def tune_thresholds(truth: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per class, the threshold of ``THRESHOLD_GRID`` with the best validation F1 (ties: the lower one)."""
    truth = truth > 0.5
    f1 = np.stack([f1_scores(truth, probabilities >= t) for t in THRESHOLD_GRID])  # (grid, class)
    best = THRESHOLD_GRID[f1.argmax(axis=0)]
    return np.where(truth.any(axis=0), best, DEFAULT_THRESHOLD)


def class_scores(truth: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Per class: support, F1 at its threshold and average precision."""
    truth = truth > 0.5
    return {
        "support": truth.sum(axis=0),
        "f1": f1_scores(truth, probabilities >= thresholds),
        "ap": np.array([average_precision(truth[:, i], probabilities[:, i]) for i in range(truth.shape[1])]),
    }


def threshold_metrics(
    split: str, truth: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray
) -> dict[str, float]:
    """Flat metrics.json values of one split at the tuned thresholds: mAP, macro F1, exact match."""
    scores = class_scores(truth, probabilities, thresholds)
    predicted = probabilities >= thresholds
    present = scores["support"] > 0
    return {
        f"{split}_map": float(np.nanmean(scores["ap"])) if present.any() else float("nan"),
        f"{split}_f1_macro_tuned": float(scores["f1"].mean()),
        f"{split}_exact_match_tuned": float(np.all(predicted == (truth > 0.5), axis=1).mean()),
    }

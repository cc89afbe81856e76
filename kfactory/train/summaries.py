"""TensorBoard summaries of one validation pass: PR curves, confusion matrix, image grids, label-set scores."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure
from tensorboard.plugins.pr_curve import summary as pr_summary

from kfactory.train.figures import confusion_figure, figure_png
from kfactory.train.multilabel import class_scores

MAX_TEXT_CLASSES = 50  # the confusion matrix is also logged as a text table up to this many classes


def write_pr_curves(labels: np.ndarray, probs: np.ndarray, class_names: list[str], thresholds: int, step: int) -> None:
    """One PR curve per class (one-vs-rest) and a micro-averaged one, under ``pr_curve/``; labels: indices
    or multi-hot rows."""
    one_hot = labels > 0.5 if labels.ndim == 2 else np.eye(len(class_names), dtype=bool)[labels]
    curves = {name: (one_hot[:, i], probs[:, i]) for i, name in enumerate(class_names)}
    curves["micro_average"] = (one_hot.reshape(-1), probs.reshape(-1))
    for name, (truth, scores) in curves.items():
        summary = pr_summary.pb(
            f"pr_curve/{name}", truth, scores.astype(np.float32), num_thresholds=thresholds, display_name=name
        )
        tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def write_confusion_matrix(labels: np.ndarray, predicted: np.ndarray, class_names: list[str], step: int) -> None:
    """The confusion matrix as an image (counts, row-normalised colours) and a text table."""
    counts = confusion_counts(labels, predicted, len(class_names))
    tf.summary.image("confusion_matrix", png_to_batch(confusion_figure(counts, class_names)), step=step)
    if len(class_names) <= MAX_TEXT_CLASSES:
        header = "| true \\ predicted | " + " | ".join(class_names) + " |"
        rows = [f"| {name} | {' | '.join(map(str, row))} |" for name, row in zip(class_names, counts, strict=True)]
        table = "\n".join([header, "|---" * (len(class_names) + 1) + "|", *rows])
        tf.summary.text("confusion_matrix_counts", table, step=step)


def write_image_grid(
    images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, class_names: list[str], step: int
) -> None:
    """A grid of validation images titled true/predicted, misclassified (red) first: ``images`` in grid order."""
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    figure = Figure(figsize=(2 * cols, 2.2 * rows), dpi=80)
    for slot, image in enumerate(images):
        axes = figure.add_subplot(rows, cols, slot + 1)
        axes.imshow(image)
        axes.axis("off")
        wrong = labels[slot] != predicted[slot]
        title = f"true {class_names[labels[slot]]}\npred {class_names[predicted[slot]]}"
        axes.set_title(title, fontsize=8, color="red" if wrong else "black")
    figure.tight_layout()
    tf.summary.image("validation_images", png_to_batch(figure_png(figure)), step=step)


def write_label_set_summaries(
    images_at: Callable[[np.ndarray], np.ndarray],
    truth: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    count: int,
    step: int,
) -> None:
    """Label sets at threshold 0.5: a per-class F1 and AP table (Text) and an image grid of true/predicted sets.

    ``images_at``: the validation images at the given indices, for the ``count`` shown.
    """
    half = np.full(len(class_names), 0.5)
    scores = class_scores(truth, probs, half)
    rows = [
        f"| {name} | {int(support)} | {f1:.3f} | {ap:.3f} |"
        for name, support, f1, ap in zip(class_names, scores["support"], scores["f1"], scores["ap"], strict=True)
    ]
    table = "\n".join(["| class | support | F1 at 0.5 | AP |", "|---|---|---|---|", *rows])
    tf.summary.text("class_scores", table, step=step)
    if not count:
        return
    true_sets, predicted_sets = truth > 0.5, probs >= half
    wrong = np.any(true_sets != predicted_sets, axis=1)
    order = np.argsort(~wrong, kind="stable")[:count]  # wrong sets first
    images = dict(zip(order.tolist(), images_at(order), strict=True))
    cols = math.ceil(math.sqrt(len(order)))
    figure = Figure(figsize=(2 * cols, 2.2 * math.ceil(len(order) / cols)), dpi=80)
    for slot, index in enumerate(order):
        axes = figure.add_subplot(math.ceil(len(order) / cols), cols, slot + 1)
        axes.imshow(images[index])
        axes.axis("off")
        shown = [
            ";".join(n for n, on in zip(class_names, row, strict=True) if on) or "-"
            for row in (true_sets[index], predicted_sets[index])
        ]
        axes.set_title(f"true {shown[0]}\npred {shown[1]}", fontsize=8, color="red" if wrong[index] else "black")
    figure.tight_layout()
    tf.summary.image("validation_images", png_to_batch(figure_png(figure)), step=step)


def grid_order(labels: np.ndarray, predicted: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to ``count`` images: misclassified ones first, each group in data order."""
    return np.argsort(labels == predicted, kind="stable")[:count]  # False (wrong) sorts first


def png_to_batch(png: bytes) -> tf.Tensor:
    """A PNG as a batch of one image, as tf.summary.image wants it."""
    return tf.expand_dims(tf.io.decode_png(png, channels=3), 0)

"""Matplotlib figures for TensorBoard images: the confusion matrix, rendered to PNG."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

CARD_PIXELS = 400  # about the width TensorBoard's Time Series card shows an image at


DPI = 100


def confusion_layout(num_classes: int) -> tuple[float, float]:
    """Figure side (inches) and label size (points) for a confusion matrix of ``num_classes``.

    Up to 20 classes the figure stays small, so text is still legible once the
    card shrinks it to ``CARD_PIXELS``; beyond that each class keeps enough room
    for a readable label in the full-size view (100 classes: about 2,000 px).
    """
    cell = 0.5 if num_classes <= 20 else 0.3 if num_classes <= 50 else 0.2  # inches per class
    side = max(4.0, cell * num_classes + 2.0)
    return side, float(min(14.0, max(6.0, cell * 72 * 0.6)))


def confusion_figure(counts: np.ndarray, class_names: list[str]) -> bytes:
    """A PNG of the confusion matrix: class names on the axes, colour = share of the true class."""
    n = len(class_names)
    side, font = confusion_layout(n)
    figure = Figure(figsize=(side, side), dpi=DPI)
    axes = figure.add_subplot()
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(n), class_names, rotation=90 if n > 10 else 45, ha="right" if n <= 10 else "center")
    axes.set_yticks(range(n), class_names)
    axes.tick_params(labelsize=font)
    axes.set_xlabel("predicted", fontsize=font)
    axes.set_ylabel("true", fontsize=font)
    if n <= 30:  # numbers stay readable up to about this many classes
        for (row, col), count in np.ndenumerate(counts):
            colour = "white" if rates[row, col] > 0.5 else "black"
            axes.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=font * 0.85)
    figure.tight_layout()
    return figure_png(figure)


def figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()

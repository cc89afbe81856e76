"""TensorBoard beyond scalars: PR curves, confusion matrix, image grid and HParams.

Everything is drawn from the outputs fit's own validation pass computed (at
most ``trainer.tensorboard.max_samples`` of them), on a thread of its own while
the next epoch trains, into the run's ``tensorboard/`` directory itself, next to
the ``train/`` and ``validation/`` runs the Keras callback writes; nothing runs
per training batch.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from hydra.core.hydra_config import HydraConfig
from matplotlib.figure import Figure
from omegaconf import DictConfig
from tensorboard.plugins.hparams import api as hp
from tensorboard.plugins.pr_curve import summary as pr_summary

from kfactory.framework import set_untracked
from kfactory.model.build import to_probabilities
from kfactory.train.deferred import Deferred
from kfactory.train.hparams import hparam_metrics, run_hparams, session_group, task_overrides
from kfactory.train.multilabel import class_scores

log = logging.getLogger(__name__)

MAX_TEXT_CLASSES = 50  # the confusion matrix is also logged as a text table up to this many classes


class ValidationSummaries(keras.callbacks.Callback):
    """Epoch-end PR curves, confusion matrix and image grid; HParams at the start.

    Args:
        log_dir: the run's ``tensorboard/`` directory.
        val_data: the validation pipeline (batches of images, encoded labels), or None.
        class_names: names for curves, axes and titles.
        cfg: the run config (``trainer.tensorboard`` settings, hyperparameters).
    """

    def __init__(self, log_dir: Path, val_data: tf.data.Dataset | None, class_names: list[str], cfg: DictConfig):
        super().__init__()
        self.log_dir, self.val_data, self.class_names = Path(log_dir), val_data, list(class_names)
        self.settings = cfg.trainer.tensorboard
        self.activation = cfg.model.activation
        self.multilabel = cfg.data.task == "multilabel"
        if self.multilabel and self.settings.confusion_matrix:
            log.info("TensorBoard: no confusion matrix for label sets; a per-class F1 and AP table instead")
        self.hparams = run_hparams(cfg, task_overrides(cfg)) if self.settings.hparams else None
        self.group = session_group(cfg, self.log_dir.parent)  # the run directory's name, or its fold group's
        self.writer: Any = None
        self.tap: ValidationOutputs | None = None
        self.figures = Deferred("summaries", self.draw)  # drawn once the next epoch begins

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        if self.val_data is not None and self.settings.summary_freq:
            self.tap = ValidationOutputs.attach(model, self.settings.max_samples, self.val_data.element_spec)

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self.tap is not None:
            self.tap.reset()

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.writer is None:  # fine-tuning phases call fit (and this) again
            self.writer = tf.summary.create_file_writer(str(self.log_dir))
            if self.hparams is not None:
                with self.writer.as_default():
                    hp.hparams(self.hparams, trial_id=self.group)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        freq = self.settings.summary_freq
        last = epoch + 1 == self.params.get("epochs")
        if self.val_data is None or not freq or ((epoch + 1) % freq and not last):
            return
        wants_images = self.settings.images > 0
        recorded = self.tap.read() if self.tap is not None else None
        if recorded is None:  # a model whose own test_step does not report its outputs
            images, labels, probs = collect_predictions(
                self.model, self.val_data, self.settings.max_samples, self.activation, wants_images, self.multilabel
            )
        else:
            labels = recorded[0] if self.multilabel else decode_labels(recorded[0])
            probs = to_probabilities(recorded[1], self.activation, self.multilabel)
            images = None

        def images_at(order: np.ndarray) -> np.ndarray:
            return images[order] if images is not None else take_images(self.val_data, order)

        if not np.isfinite(probs).all():  # a diverged model (NaN loss): nothing to draw, and no curve to skew
            return
        self.figures.defer(epoch + 1, labels, probs, images_at)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.figures.start()

    def draw(self, step: int, labels: np.ndarray, probs: np.ndarray, images_at: Callable) -> None:
        """Render and write one epoch's summaries (``step``: the epoch, counted from 1); off the training thread.

        The figures are drawn while the next epoch trains: they read only this
        epoch's copies of the labels and outputs (and validation images). A
        failure is logged, never raised into training.
        """
        try:
            with self.writer.as_default(step=step):
                if self.settings.pr_curves:
                    write_pr_curves(labels, probs, self.class_names, self.settings.pr_thresholds, step)
                if self.multilabel:
                    write_label_set_summaries(images_at, labels, probs, self.class_names, self.settings.images, step)
                elif self.settings.confusion_matrix:
                    write_confusion_matrix(labels, probs.argmax(axis=1), self.class_names, step)
                if self.settings.images > 0 and not self.multilabel:
                    predicted = probs.argmax(axis=1)
                    order = grid_order(labels, predicted, self.settings.images)
                    write_image_grid(images_at(order), labels[order], predicted[order], self.class_names, step)
            self.writer.flush()
        except Exception as error:  # a figure is not worth a run
            log.warning("TensorBoard summaries of epoch %d not written: %s: %s", step, type(error).__name__, error)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.figures.finish()  # the last epoch's
        if self.writer is not None:
            self.writer.flush()


class ValidationOutputs:
    """The labels and outputs of fit's validation pass, kept as it computes them (no second pass).

    Wraps the model's ``compute_metrics`` (called by ``test_step`` with every
    batch's labels and outputs) so that, while the test step is traced, it also
    writes the first ``capacity`` rows into variables; the training step is
    traced without it. The variables exist before the first trace where the
    label and output widths are known: a variable created while tracing makes
    TensorFlow trace the test step a second time. Nothing is saved with the
    model: the wrappers are instance attributes, not layers or weights. Under a
    distribution strategy (replicas would write the same rows) nothing is attached.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.count = tf.Variable(0, dtype=tf.int32, trainable=False)
        self.labels: tf.Variable | None = None
        self.outputs: tf.Variable | None = None
        self.tracing_test = False

    def allocate(self, label_width: int, output_width: int) -> None:
        """Create the variables for rows of these widths (labels flattened: one column for sparse labels)."""
        with tf.init_scope():
            self.labels = tf.Variable(tf.zeros((self.capacity + 1, label_width)), trainable=False)
            self.outputs = tf.Variable(tf.zeros((self.capacity + 1, output_width)), trainable=False)

    @classmethod
    def attach(cls, model: keras.Model, capacity: int, element_spec: Any = None) -> ValidationOutputs | None:
        """Tap ``model``'s test step; ``element_spec`` (the validation data's, (images, labels)) sizes the rows."""
        if model.distribute_strategy.num_replicas_in_sync > 1:
            return None
        tap = cls(capacity)
        labels = element_spec[1] if isinstance(element_spec, tuple) and len(element_spec) > 1 else None
        outputs = getattr(model, "outputs", None) or [None]  # a subclassed model may have none
        label_width, output_width = flat_width(labels), flat_width(outputs[0])
        if label_width is not None and output_width is not None:
            tap.allocate(label_width, output_width)
        test_step, compute_metrics = model.test_step, model.compute_metrics

        def tapped_test_step(data: Any) -> Any:
            tap.tracing_test = True
            try:
                return test_step(data)
            finally:
                tap.tracing_test = False

        def tapped_compute_metrics(x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> Any:
            if tap.tracing_test and tf.is_tensor(y) and tf.is_tensor(y_pred):
                tap.record(y, y_pred)
            return compute_metrics(x, y, y_pred, sample_weight=sample_weight)

        set_untracked(model, "test_step", tapped_test_step)  # untracked by Keras, never saved
        set_untracked(model, "compute_metrics", tapped_compute_metrics)
        return tap

    def record(self, y: tf.Tensor, y_pred: tf.Tensor) -> None:
        """Write a batch's rows after those already kept; rows past ``capacity`` go to a spare last row."""
        rows = tf.shape(y_pred)[0]
        label_width, output_width = flat_width(y), flat_width(y_pred)  # sparse labels: one column
        if self.outputs is None or self.labels is None:  # widths unknown before: made on the first trace
            self.allocate(label_width, output_width)
        y = tf.reshape(tf.cast(y, tf.float32), (-1, label_width))
        y_pred = tf.reshape(tf.cast(y_pred, tf.float32), (-1, output_width))
        index = tf.minimum(self.count + tf.range(rows), self.capacity)[:, None]
        self.labels.scatter_nd_update(index, y)
        self.outputs.scatter_nd_update(index, y_pred)
        self.count.assign_add(rows)

    def reset(self) -> None:
        self.count.assign(0)

    def read(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels, outputs) of the last validation pass, or None if none was recorded."""
        kept = min(int(self.count.numpy()), self.capacity)
        if self.outputs is None or kept == 0:
            return None
        return self.labels[:kept].numpy(), self.outputs[:kept].numpy().astype(np.float64)


def flat_width(spec: Any) -> int | None:
    """How many columns a batch of this tensor (or tensor spec) has once flattened per row; None if unknown."""
    try:
        dims = tuple(getattr(spec, "shape", None))  # a TensorShape or a KerasTensor's tuple
    except (TypeError, ValueError):  # no shape, or an unknown rank
        return None
    return None if not dims or None in dims[1:] else math.prod(dims[1:])


def take_images(dataset: tf.data.Dataset, indices: np.ndarray) -> np.ndarray:
    """The validation images at ``indices`` (in data order, as fit saw them), as uint8."""
    wanted, found, seen = set(indices.tolist()), {}, 0
    for x, _ in dataset:
        batch = np.asarray(x)
        for offset in range(len(batch)):
            if seen + offset in wanted:
                found[seen + offset] = np.clip(batch[offset], 0, 255).astype(np.uint8)
        seen += len(batch)
        if len(found) == len(wanted):
            break
    return np.stack([found[i] for i in indices.tolist()])


def collect_predictions(
    model: keras.Model,
    dataset: tf.data.Dataset,
    max_samples: int,
    activation: str,
    keep_images: bool,
    multilabel: bool = False,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Up to ``max_samples`` validation (uint8 images, int labels or multi-hot rows, class probabilities).

    One pass reads the labels (and images), then Keras's predict, traced once
    for the run and distributed as fit is, runs the model over those batches:
    a third of the time of calling the model eagerly batch by batch.
    """
    images, labels, batches, seen = [], [], 0, 0
    for x, y in dataset:
        labels.append(np.asarray(y) if multilabel else decode_labels(np.asarray(y)))
        if keep_images:
            images.append(np.clip(np.asarray(x), 0, 255).astype(np.uint8))
        batches, seen = batches + 1, seen + len(labels[-1])
        if seen >= max_samples:
            break
    outputs = np.asarray(model.predict(dataset.take(batches), verbose=0), dtype=np.float64)
    probs = to_probabilities(outputs[:max_samples], activation, multilabel)
    kept = np.concatenate(images)[:max_samples] if keep_images else None
    return kept, np.concatenate(labels)[:max_samples], probs


def decode_labels(y: np.ndarray) -> np.ndarray:
    """Class indices from integer, one-hot or single-sigmoid-unit labels."""
    if y.ndim == 2 and y.shape[1] > 1:
        return y.argmax(axis=1)
    return np.rint(y.reshape(-1)).astype(np.int64)


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


def figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def png_to_batch(png: bytes) -> tf.Tensor:
    """A PNG as a batch of one image, as tf.summary.image wants it."""
    return tf.expand_dims(tf.io.decode_png(png, channels=3), 0)


def in_multirun() -> bool:
    """Whether this run is one job of a sweep (whose root holds the HParams experiment config)."""
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def write_final_summaries(cfg: DictConfig, log_dir: Path, metrics: dict[str, Any]) -> None:
    """After training: the final metrics as ``final/*`` scalars; a single run's HParams experiment config.

    A sweep's jobs write no experiment config: TensorBoard would keep one of them;
    the sweep root holds the one config for all of them (kfactory.report.sweep).
    """
    if not cfg.trainer.tensorboard.hparams:
        return
    final = {k: float(v) for k, v in metrics.items() if k.startswith(("val_", "test_", "best_"))}
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default(step=int(metrics.get("epochs_run", 1))):  # the last epoch, counted from 1
        for key, value in final.items():
            tf.summary.scalar(f"final/{key}", value)
        if not in_multirun():
            hparams = [hp.HParam(name) for name in run_hparams(cfg, task_overrides(cfg))]
            hp.hparams_config(hparams=hparams, metrics=hparam_metrics(cfg.trainer, list(final)))
    writer.close()

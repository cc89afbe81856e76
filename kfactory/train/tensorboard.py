"""TensorBoard beyond scalars, as a callback: PR curves, confusion matrix, image grid and the HParams session.

Everything is drawn from the outputs fit's own validation pass computed (at
most ``trainer.tensorboard.max_samples`` of them), on a thread of its own while
the next epoch trains, into the run's ``tensorboard/`` directory itself, next to
the ``train/`` and ``validation/`` runs the Keras callback writes; nothing runs
per training batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig
from tensorboard.plugins.hparams import api as hp

from kfactory.data.pipeline import SHORT_SPLIT
from kfactory.model.build import to_probabilities
from kfactory.overrides import task_overrides
from kfactory.train.deferred import Deferred
from kfactory.train.hparams import run_hparams, session_group
from kfactory.train.summaries import (
    grid_order,
    write_confusion_matrix,
    write_image_grid,
    write_label_set_summaries,
    write_pr_curves,
)
from kfactory.train.validation_tap import ValidationOutputs

log = logging.getLogger(__name__)


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
            if SHORT_SPLIT in str(error):  # a split came up short: the run stops on it, in one line of its own
                log.debug("TensorBoard summaries of epoch %d not written: a split came up short", step)
                return
            log.warning("TensorBoard summaries of epoch %d not written: %s: %s", step, type(error).__name__, error)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.figures.finish()  # the last epoch's
        if self.writer is not None:
            self.writer.flush()


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

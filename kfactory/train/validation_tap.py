"""The labels and outputs of fit's own validation pass, kept by a tap on the model's test step."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kfactory.framework import set_untracked


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

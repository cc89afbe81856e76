"""Settle what the labels are (data.task=auto from a CSV) and fit a multi-label run's head and loss to them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from kfactory.data.label_sets import TASKS as TASKS_OF_LABELS
from kfactory.data.label_sets import is_multilabel
from kfactory.errors import ConfigError, check_choice
from kfactory.overrides import split_override, task_overrides
from kfactory.registry import MULTILABEL_LOSSES
from kfactory.targets import CUSTOM

if TYPE_CHECKING:
    from kfactory.data.sources import ImageSource


def settle_label_task(cfg: DictConfig) -> ImageSource | None:
    """Resolve ``data.task=auto`` from a CSV's labels (logged) and fit a multi-label run's head and loss.

    Returns the source if it was read (a CSV with ``data.task=auto``), so it is not read twice.
    """
    data, source = cfg.data, None
    check_choice("data.task", data.task, TASKS_OF_LABELS)
    if data.source != "csv" and data.task == "multilabel":
        accepted = f"auto or multiclass with data.source={data.source}; label sets are read by data=csv"
        raise ConfigError("data.task", data.task, accepted)
    if data.source == "csv" and data.task == "auto" and data.csv is not None:
        from kfactory.data.sources import describe_source  # lists files only, no TensorFlow

        source = describe_source(data)
        data.task = "multilabel" if is_multilabel(source.labels) else "multiclass"  # the training run logs it
    if data.task == "multilabel":
        _fit_multilabel_head(cfg)
    return source


def _fit_multilabel_head(cfg: DictConfig) -> None:
    """Sigmoid units and binary crossentropy in place of untouched defaults; refuse what cannot score label sets."""
    model, loss, chosen = cfg.model, cfg.loss, {split_override(o)[0] for o in task_overrides(cfg)}
    if loss.name == "categorical_crossentropy" and not chosen & {"loss", "loss.name"}:
        loss.name = "binary_crossentropy"
    elif loss.name == CUSTOM and loss.labels != "one_hot":
        accepted = "one_hot with data.task=multilabel: your loss gets multi-hot float labels"
        raise ConfigError("loss.labels", loss.labels, accepted)
    elif loss.name != CUSTOM and loss.name not in MULTILABEL_LOSSES:
        accepted = f"with data.task=multilabel, a per-class loss: {', '.join(MULTILABEL_LOSSES)} or custom"
        raise ConfigError("loss.name", loss.name, accepted)
    if model.activation == "softmax" and "model.activation" not in chosen:
        model.activation = "sigmoid"
    elif model.activation != "sigmoid":
        accepted = "sigmoid with data.task=multilabel: each class is a yes or no of its own"
        raise ConfigError("model.activation", model.activation, accepted)
    if "top_k" in cfg.trainer.metrics:
        raise ConfigError("trainer.metrics", "top_k", "metrics without top_k with data.task=multilabel")
    if cfg.data.class_weight is not None:
        accepted = "null with data.task=multilabel (Keras weighs one class per image)"
        raise ConfigError("data.class_weight", cfg.data.class_weight, accepted)

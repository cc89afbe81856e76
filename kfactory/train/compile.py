"""The optimizer, loss and metrics of a run, built from their config groups, and the model compiled with them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from omegaconf import DictConfig, OmegaConf

from kfactory.errors import ConfigError
from kfactory.model.build import output_units
from kfactory.registry import LOSSES, OPTIMIZERS, label_loss, metric_log_name, sparse_labels
from kfactory.schema import LossConfig, OptimizerConfig, extra_keys
from kfactory.targets import TARGET, build, target_of
from kfactory.train.multilabel import multilabel_metrics


def compile_model(
    model: keras.Model, cfg: DictConfig, num_classes: int, jit_compile: bool, learning_rate: Any = None
) -> None:
    """Compile with the configured optimizer (at ``learning_rate`` if given), loss and metrics."""
    model.compile(
        optimizer=make_optimizer(cfg.optimizer, learning_rate, cfg.trainer.ema),
        loss=make_loss(cfg.loss, cfg.model.activation),
        metrics=make_metrics(cfg.trainer, label_loss(cfg.loss), num_classes, cfg.data.task == "multilabel"),
        jit_compile=jit_compile,
    )


def make_optimizer(
    optimizer: DictConfig, learning_rate: Any = None, ema: float | None = None
) -> keras.optimizers.Optimizer:
    """A keras optimizer from ``optimizer.name`` (or ``_target_``) and its arguments; ``ema``: an EMA of the weights."""
    kwargs = {"learning_rate": optimizer.learning_rate if learning_rate is None else learning_rate}
    kwargs.update(keras_kwargs(optimizer, OptimizerConfig))
    if ema is not None:
        kwargs.update(use_ema=True, ema_momentum=ema)
    if optimizer._target_ is not None:
        kind = "a keras.optimizers.Optimizer"
        return build("optimizer", {TARGET: optimizer[TARGET]}, keras.optimizers.Optimizer, kind, **kwargs)
    return construct("optimizer", optimizer.name, keras.optimizers, OPTIMIZERS[optimizer.name], kwargs)


def make_loss(loss: DictConfig, activation: str) -> keras.losses.Loss:
    """A keras loss (or your own, by ``_target_``); after a linear output, named crossentropies take logits."""
    if loss._target_ is not None:
        kind = "a keras.losses.Loss or a function (y_true, y_pred)"
        return build("loss", loss, (keras.losses.Loss, Callable), kind, schema=LossConfig)
    kwargs = keras_kwargs(loss, LossConfig)
    if activation == "linear" and "crossentropy" in loss.name:
        kwargs["from_logits"] = True
    return construct("loss", loss.name, keras.losses, LOSSES[loss.name], kwargs)


def keras_kwargs(group: DictConfig, schema: type) -> dict[str, Any]:
    """The group's keys the schema does not declare, as plain values: the Keras class's own arguments."""
    return OmegaConf.to_container(OmegaConf.create(extra_keys(group, schema)))


def construct(group: str, name: str, module: Any, class_name: str, kwargs: dict[str, Any]) -> Any:
    """``module.class_name(**kwargs)``; arguments Keras refuses become one ConfigError line."""
    cls = getattr(module, class_name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"{group} ({name})", kwargs, f"arguments of {module.__name__}.{class_name}: {error}"
        ) from error


def make_metrics(
    trainer: DictConfig, loss: str, num_classes: int, multilabel: bool = False
) -> list[keras.metrics.Metric]:
    """The ``trainer.metrics`` entries as Keras metrics that fit the label encoding (and label sets' own)."""
    sparse = sparse_labels(loss)
    single_unit = output_units(loss, num_classes, multilabel) == 1
    built = multilabel_metrics(num_classes) if multilabel else []
    for index, name in enumerate(trainer.metrics):
        log_name = metric_log_name(name)
        if target_of(name) is not None:
            built.append(make_target_metric(f"trainer.metrics[{index}]", name, log_name))
        elif name == "accuracy":
            cls = (
                keras.metrics.BinaryAccuracy
                if single_unit or multilabel
                else (keras.metrics.SparseCategoricalAccuracy if sparse else keras.metrics.CategoricalAccuracy)
            )
            built.append(cls(name=log_name))
        elif name == "top_k":
            cls = keras.metrics.SparseTopKCategoricalAccuracy if sparse else keras.metrics.TopKCategoricalAccuracy
            built.append(cls(k=min(trainer.top_k, num_classes), name=log_name))
        elif sparse:
            raise ConfigError(
                "trainer.metrics", name, "accuracy or top_k with sparse labels; use loss=categorical_crossentropy"
            )
        elif name == "precision":
            built.append(keras.metrics.Precision(name=log_name))
        elif name == "recall":
            built.append(keras.metrics.Recall(name=log_name))
        elif name == "auc":
            built.append(keras.metrics.AUC(name=log_name, multi_label=not single_unit))
        elif name == "f1":
            threshold = 0.5 if single_unit or multilabel else None
            built.append(keras.metrics.F1Score(average="macro", threshold=threshold, name=log_name))
    return built


def make_target_metric(key: str, entry: DictConfig, log_name: str) -> keras.metrics.Metric:
    """Your own metric from a ``_target_`` entry, logged as ``log_name`` (its ``name`` key is kfactory's)."""
    metric = build(key, entry, keras.metrics.Metric, "a keras.metrics.Metric", drop=("name",))
    metric.name = log_name  # a fixed name, so trainer.monitor and history.csv can rely on it
    return metric

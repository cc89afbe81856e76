"""Which way a monitored metric improves: kfactory's answer is Keras's own for every loss and metric offered."""

from __future__ import annotations

import pytest

from kfactory.config.validate import validate
from kfactory.errors import ConfigError
from kfactory.registry import LOSSES, METRICS, MULTILABEL_METRICS, metric_direction, metric_log_name, monitor_mode
from tests.conftest import compose_config

OWN_METRICS = {"exact_match": "max"}  # kfactory.train.multilabel.ExactMatch: the share of images with every label right


def keras_direction(metric) -> str:
    """The direction Keras's own callbacks read from a metric (mode='auto'): its ``_direction``, up or down."""
    if metric.name in OWN_METRICS:
        return OWN_METRICS[metric.name]
    return {"down": "min", "up": "max"}[metric._direction]  # a test oracle; kfactory does not read it


def kfactory_metrics() -> list:
    """Every metric kfactory builds from trainer.metrics (one-hot and sparse labels) and for label sets."""
    from omegaconf import OmegaConf

    from kfactory.train.compile import make_metrics

    def built(metrics: list[str], loss: str, multilabel: bool = False) -> list:
        return make_metrics(OmegaConf.create({"metrics": metrics, "top_k": 2}), loss, 3, multilabel)

    return [
        *built(list(METRICS), "categorical_crossentropy"),
        *built(["accuracy", "top_k"], "sparse_categorical_crossentropy"),
        *built([], "binary_crossentropy", multilabel=True),
    ]


def test_every_metric_kfactory_builds_improves_the_way_keras_says():
    metrics = kfactory_metrics()
    assert {m.name for m in metrics} >= {metric_log_name(n) for n in METRICS} | set(MULTILABEL_METRICS)
    for metric in metrics:
        assert monitor_mode(f"val_{metric.name}") == keras_direction(metric), metric.name


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_is_lower_is_better_as_the_loss_and_as_a_metric(loss):
    import keras

    assert monitor_mode("val_loss") == monitor_mode("loss") == "min"
    assert monitor_mode(f"val_{loss}") == "min"  # a metric entry named after the loss
    metric_class = getattr(keras.metrics, LOSSES[loss], None)
    if metric_class is not None:  # the same quantity as a keras.metrics entry: {_target_: keras.metrics.<class>}
        log_name = metric_log_name({"_target_": f"keras.metrics.{LOSSES[loss]}"})
        assert monitor_mode(f"val_{log_name}") == keras_direction(metric_class(name=log_name)), log_name


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_option_monitored_as_val_loss_keeps_the_lowest(loss):
    cfg = validate(compose_config([f"loss={loss}", "trainer.monitor=val_loss", "model.activation=sigmoid"]))
    assert monitor_mode(cfg.trainer.monitor, cfg.trainer.monitor_mode) == "min"


def test_an_error_metric_is_minimised_not_maximised():
    entry = "+trainer.metrics=[accuracy,{_target_:keras.metrics.MeanAbsoluteError}]"
    cfg = validate(compose_config(["~trainer.metrics", entry, "trainer.monitor=val_mean_absolute_error"]))
    assert monitor_mode(cfg.trainer.monitor, cfg.trainer.monitor_mode) == "min"


def test_a_metric_of_your_own_needs_its_direction_in_one_line():
    entry = "+trainer.metrics=[{_target_:keras.metrics.Mean,name:spread}]"
    with pytest.raises(ConfigError) as refused:
        validate(compose_config(["~trainer.metrics", entry, "trainer.monitor=val_spread"]))
    assert str(refused.value).startswith("trainer.monitor_mode=auto is not accepted: min or max")
    assert "\n" not in str(refused.value)
    cfg = validate(
        compose_config(["~trainer.metrics", entry, "trainer.monitor=val_spread", "trainer.monitor_mode=min"])
    )
    assert monitor_mode(cfg.trainer.monitor, cfg.trainer.monitor_mode) == "min"
    assert metric_direction("val_spread") is None


def test_an_explicit_mode_wins_and_a_wrong_one_is_refused():
    assert monitor_mode("val_accuracy", "min") == "min"
    with pytest.raises(ConfigError, match=r"^trainer.monitor_mode=up is not accepted: one of auto, min, max$"):
        validate(compose_config(["trainer.monitor_mode=up"]))


@pytest.mark.parametrize(
    ("entry", "expected"),
    [("{_target_:keras.metrics.AUC,name:pr}", "max"), ("{_target_:keras.metrics.MeanAbsoluteError,name:mae}", "min")],
)
def test_a_keras_metric_under_a_name_of_your_own_is_known_by_its_class(entry, expected):
    import keras

    cfg = validate(
        compose_config(["~trainer.metrics", f"+trainer.metrics=[{entry}]", f"trainer.monitor=val_{cfg_name(entry)}"])
    )
    assert monitor_mode(cfg.trainer.monitor, cfg.trainer.monitor_mode, cfg.trainer.metrics) == expected
    class_name = entry.split(".")[-1].split(",")[0]
    assert expected == keras_direction(getattr(keras.metrics, class_name)(name=cfg_name(entry)))


def cfg_name(entry: str) -> str:
    return entry.rsplit("name:", 1)[1].rstrip("}")

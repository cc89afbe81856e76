"""Learning-rate schedules: the rate per epoch as configured, and refusals before TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from kfactory.config.validate import validate
from kfactory.errors import ConfigError
from kfactory.train.schedules import make_learning_rate, schedule_of
from tests.conftest import compose_config

STEPS = 4  # optimizer steps per epoch


def rate_at_epoch_starts(overrides: list[str], epochs: int) -> list[float]:
    cfg = compose_config(overrides)
    rate = make_learning_rate(schedule_of(cfg.optimizer), 0.1, epochs, STEPS)
    if isinstance(rate, float):
        return [rate] * epochs
    return [float(rate(epoch * STEPS)) for epoch in range(epochs)]


def test_constant_and_plateau_keep_the_rate():
    assert rate_at_epoch_starts([], 3) == [0.1, 0.1, 0.1]
    assert rate_at_epoch_starts(["optimizer/schedule=plateau"], 3) == [0.1, 0.1, 0.1]


def test_step_multiplies_by_factor_every_step_epochs():
    rates = rate_at_epoch_starts(["optimizer/schedule=step", "optimizer.schedule.step_epochs=2"], 5)
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_exponential_decays_by_decay_rate_per_epoch():
    rates = rate_at_epoch_starts(["optimizer/schedule=exponential", "optimizer.schedule.decay_rate=0.5"], 3)
    assert rates == pytest.approx([0.1, 0.05, 0.025])


def test_cosine_warms_up_then_decays_to_alpha():
    overrides = ["optimizer/schedule=cosine", "optimizer.schedule.warmup_epochs=2", "optimizer.schedule.alpha=0.1"]
    rates = rate_at_epoch_starts(overrides, 6)
    assert rates[0] == 0.0 and rates[1] == pytest.approx(0.05) and rates[2] == pytest.approx(0.1)
    assert rates[2] > rates[3] > rates[4] > rates[5] > 0.01
    cfg = compose_config(overrides)
    end = make_learning_rate(schedule_of(cfg.optimizer), 0.1, 6, STEPS)(6 * STEPS)
    assert float(end) == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["optimizer.schedule.name=linear"], "optimizer.schedule.name"),
        (["optimizer/schedule=step", "optimizer.schedule.factor=2"], "optimizer.schedule.factor"),
        (["optimizer/schedule=cosine", "optimizer.schedule.warmup_epochs=15"], "optimizer.schedule.warmup_epochs"),
        (["optimizer/schedule=cosine", "+optimizer.schedule.patience=2"], "optimizer.schedule.patience"),
    ],
)
def test_bad_schedules_are_refused(overrides, key):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(overrides))
    assert error.value.key == key


def test_fit_logs_the_learning_rate_of_every_epoch_and_plateau_lowers_it():
    import keras

    from kfactory.train.schedules import learning_rate_logger, schedule_callbacks

    cfg = compose_config(
        ["optimizer/schedule=plateau", "optimizer.schedule.patience=0", "optimizer.schedule.factor=0.5"]
    )
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = np.zeros((8, 2), "float32")  # constant loss: no epoch improves, so plateau halves the rate each time
    plateau = schedule_callbacks(schedule_of(cfg.optimizer), "loss", "min")
    history = model.fit(x, np.ones(8), epochs=3, verbose=0, callbacks=[learning_rate_logger(), *plateau])
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.1, 0.05])

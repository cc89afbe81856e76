"""Pruning reports: a trial's epochs as Optuna steps, counted on across the folds of a cv_folds trial."""

from __future__ import annotations

import types

import pytest

from kfactory.config.search import PRUNED_ATTR
from kfactory.train.pruning import TrialPruning, pruned_at_chance, pruned_epoch


class FakeTrial:
    """Records what the callback reports; says prune once a report reaches ``prune_at``."""

    def __init__(self, prune_at: int) -> None:
        self.prune_at, self.reports, self.attrs = prune_at, [], {}

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        return self.reports[-1][0] >= self.prune_at

    def set_user_attr(self, key: str, value: int) -> None:
        self.attrs[key] = value


def test_a_folds_epochs_are_reported_after_the_earlier_folds_steps():
    trial = FakeTrial(prune_at=7)
    callback = TrialPruning(trial, "val_loss", first_step=5)  # fold 1 of a trial whose runs train 5 epochs
    callback.set_model(types.SimpleNamespace(stop_training=False))
    callback.on_epoch_end(0, {"val_loss": 0.9})
    assert not callback.model.stop_training
    callback.on_epoch_end(1, {"val_loss": 0.8})
    assert trial.reports == [(6, 0.9), (7, 0.8)]
    assert callback.model.stop_training and pruned_epoch([callback]) == 2  # the fold's own epoch, in metrics.json
    assert trial.attrs == {PRUNED_ATTR: 7}  # the step the pruner judged


def test_a_plain_trial_reports_its_epochs_as_steps():
    trial = FakeTrial(prune_at=99)
    callback = TrialPruning(trial, "val_loss")
    callback.set_model(types.SimpleNamespace(stop_training=False))
    callback.on_epoch_end(0, {"val_loss": 0.5})
    callback.on_epoch_end(1, {"val_loss": float("nan")})  # a diverged epoch is not reported
    assert trial.reports == [(1, 0.5)] and pruned_epoch([callback]) is None


@pytest.mark.parametrize(
    ("classes", "train", "val", "pruned"),
    [
        (4, 0.8, [0.25] * 8, 5),  # at chance for 5 epochs while training learns: pruned after the fifth
        (4, 0.8, [0.25, 0.25, 0.9, 0.25, 0.25, 0.25, 0.25, 0.25], None),  # it left chance once: it can learn
        (0, 0.8, [0.25] * 8, None),  # label sets (no single chance level): never for this reason
        # the digits' MobileNetV2 at 128 px: training at 0.26 by epoch 5 (chance 0.10), validation at 0.10
        (10, 0.26, [0.10] * 8, 5),
        (10, 0.20, [0.10] * 8, None),  # training inside chance's band too (below 0.235): nothing learned to judge
    ],
)
def test_a_trial_at_chance_while_training_learns_is_pruned_whatever_its_pruner_says(
    classes, train, val, pruned, caplog
):
    import logging

    trial = FakeTrial(prune_at=99)  # a bracket with no peers: the pruner itself would let it run
    callback = TrialPruning(trial, "val_accuracy", classes=classes)
    callback.set_model(types.SimpleNamespace(stop_training=False))
    with caplog.at_level(logging.INFO):
        for epoch, accuracy in enumerate(val):
            callback.on_epoch_end(epoch, {"accuracy": train, "val_accuracy": accuracy})
            if callback.model.stop_training:
                break
    assert pruned_epoch([callback]) == pruned and pruned_at_chance([callback]) is bool(pruned)
    assert trial.attrs == ({PRUNED_ATTR: pruned} if pruned else {})
    if pruned:
        chance = f"{1 / classes:.2f}"
        said = f"Pruned after epoch 5: validation accuracy still at chance (best {val[0]:.2f}, chance {chance}) while "
        assert said + f"training accuracy reached {train:.2f}" in caplog.text

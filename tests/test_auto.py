"""experiment=auto: a search within a wall-clock budget that ends with a model and the command that retrains it."""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from kfactory.errors import ConfigError
from kfactory.run import budget as budget_module
from kfactory.run.budget import BudgetLedger, format_duration, parse_budget
from kfactory.train.clock import TIMING_KEYS
from kfactory.train.deadline import AFTER_FIT_S, Deadline
from tests.conftest import ROOT, run_cli


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h30m", 5400), ("2H", 7200), (120, 120), ("75", 75)]
)
def test_a_budget_reads_as_seconds(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize(("text", "says"), [("soon", "a duration such as"), ("10s", "at least 1m"), (None, "duration")])
def test_a_bad_or_too_small_budget_is_refused_naming_what_it_needs(text, says):
    with pytest.raises(ConfigError) as refused:
        parse_budget(text)
    assert refused.value.key == "auto.budget" and says in str(refused.value) and "\n" not in str(refused.value)


def test_durations_read_as_people_write_them():
    assert [format_duration(s) for s in (45, 724, 3900, -3)] == ["45s", "12m 04s", "1h 05m", "0s"]


def test_the_ledger_counts_every_command_and_what_a_killed_one_spent(tmp_path, monkeypatch):
    monkeypatch.setattr(budget_module, "TICK_S", 0.05)
    first = BudgetLedger(tmp_path, 100.0)
    first.start()
    time.sleep(0.4)
    first._stop.set()  # killed: no close, only what the thread recorded
    first._thread.join()
    second = BudgetLedger(tmp_path, 100.0)
    assert 0.3 <= second.earlier_s <= 0.5
    assert second.deadline == pytest.approx(second.started + 100.0 - second.earlier_s)
    second.start()
    second.close()
    record = json.loads((tmp_path / "budget.json").read_text())
    assert len(record["sessions_s"]) == 2 and record["spent_s"] == pytest.approx(sum(record["sessions_s"]), abs=0.1)


class FakeClock:
    """A clock that moves a fixed step per training batch (a StepClock callback moves it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class StepClock(keras.callbacks.Callback):
    def __init__(self, clock: FakeClock, step_s: float) -> None:
        super().__init__()
        self.clock, self.step_s, self.batches = clock, step_s, 0

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.clock.now += self.step_s
        self.batches += 1


def test_a_run_stops_at_the_batch_past_which_it_could_not_finish_and_still_validates():
    keras.utils.set_random_seed(0)
    x, y = np.random.rand(160, 4).astype("float32"), np.random.randint(0, 2, 160)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    clock = FakeClock()
    # 10 batches an epoch of 1 s each; a deadline 25 s away less what the end of a run keeps
    deadline = Deadline(clock.now + 25 + AFTER_FIT_S, clock=clock)
    stepper = StepClock(clock, 1.0)
    history = model.fit(x, y, batch_size=16, epochs=5, validation_data=(x, y), callbacks=[stepper, deadline], verbose=0)
    assert deadline.deadline_epoch == 3  # stopped inside the third epoch...
    assert 20 < stepper.batches < 30  # ...after some of its batches, not at an epoch's end
    assert len(history.history["val_loss"]) == 3  # the cut epoch was still validated (the checkpoint can keep it)


def test_before_a_validation_is_timed_its_cost_is_estimated_from_its_batches_when_known():
    from types import SimpleNamespace

    from kfactory.train.callbacks import validation_batches
    from kfactory.train.deadline import AFTER_FIT_VALIDATIONS, FIRST_VALIDATION_SHARE, VALIDATION_STEP_SHARE

    by_epoch, by_batches = Deadline(1e12), Deadline(1e12, validation_batches=5)
    for deadline in (by_epoch, by_batches):
        deadline.params, deadline.batch_s = {"steps": 40}, 1.0  # 40 training steps of 1 s an epoch
    passes = 1 + AFTER_FIT_VALIDATIONS
    assert by_epoch.reserve_s() == pytest.approx(AFTER_FIT_S + passes * FIRST_VALIDATION_SHARE * 40)
    assert by_batches.reserve_s() == pytest.approx(AFTER_FIT_S + passes * VALIDATION_STEP_SHARE * 5)
    by_batches.validation_s = 3.0
    assert by_batches.reserve_s() == pytest.approx(AFTER_FIT_S + passes * 3.0)  # once timed, the time it took

    splits = SimpleNamespace(val=object(), indices={"val": np.arange(100)})
    cfg = OmegaConf.create({"data": {"batch_size": 32}, "trainer": {"validation_steps": None}})
    assert validation_batches(cfg, splits) == 4
    cfg.trainer.validation_steps = 2
    assert validation_batches(cfg, splits) == 2
    assert validation_batches(cfg, SimpleNamespace(val=None, indices={"val": np.arange(0)})) is None
    assert validation_batches(cfg, None) is None


def test_the_front_keeps_the_trials_no_other_beats_on_accuracy_size_and_speed():
    from kfactory.report.sweep import trade_off_front

    table = pd.DataFrame(
        {
            "job": [0, 1, 2, 3, 4, 5],
            "status": ["ok", "ok", "ok", "ok", "failed", "ok"],
            "val_accuracy": [0.90, 0.95, 0.95, 0.80, None, 0.85],
            "params": [1e6, 2e6, 3e6, 0.5e6, 1.0, 2e6],
            "test_ms_per_image": [1.0, 2.0, 1.5, 0.5, 1.0, 1.0],
        }
    )
    # job 5 is beaten by job 0 on all three; job 2 trades size for speed against job 1; a failed job is out
    assert trade_off_front(table, "val_accuracy", "auto") == [0, 1, 2, 3]
    assert trade_off_front(table, "val_accuracy", "min") == [3]  # a metric to minimise: the lowest wins all three


def reproduce_command(run_dir: Path) -> str:
    from hydra_plugins.kfactory_optuna_sweeper._impl import reproduce_command

    return reproduce_command(run_dir)


@pytest.mark.parametrize(("budget", "images"), [("30m", 18000), ("5m", 3000), ("90", 900), ("10s", None)])
def test_a_trials_epoch_is_capped_at_ten_images_a_second_of_the_budget(tmp_path, budget, images):
    import kfactory.config.resolvers  # noqa: F401  (registers the resolver, as run.py does)
    from tests.conftest import compose_config

    cfg = compose_config(["experiment=auto", f"auto.budget={budget}"], run_dir=tmp_path)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)
    assert params["trainer.max_images_per_epoch"] == images  # a budget below 1m is refused by the search itself


def test_the_winners_command_leaves_the_search_out_and_keeps_the_epochs_it_ran(tmp_path):
    (tmp_path / ".hydra").mkdir()
    overrides = [
        "model=efficientnet_b0",
        "optimizer.learning_rate=0.0031",
        "data.path=/data/my photos",
        "experiment=auto",
        "auto.budget=30m",
        "trainer.epochs=30",
        "resume=auto",
        "++hydra.job.env_set.KFACTORY_DEADLINE=1796386409.7",
    ]
    OmegaConf.save(OmegaConf.create(overrides), tmp_path / ".hydra" / "overrides.yaml")
    (tmp_path / "metrics.json").write_text(json.dumps({"val_accuracy": 0.9, "deadline_epoch": 7}))
    words = shlex.split(reproduce_command(tmp_path))
    assert words == [
        "python",
        "run.py",
        "model=efficientnet_b0",
        "optimizer.learning_rate=0.0031",
        "data.path=/data/my photos",
        "trainer.epochs=7",
    ]


def test_a_winner_stopped_in_its_warm_up_gets_epochs_its_schedule_accepts(tmp_path):
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(
        OmegaConf.create(["model=mobilenet_v2", "optimizer/schedule=cosine"]), tmp_path / ".hydra" / "overrides.yaml"
    )
    OmegaConf.save(
        OmegaConf.create({"optimizer": {"schedule": {"warmup_epochs": 1}}}), tmp_path / ".hydra" / "config.yaml"
    )
    (tmp_path / "metrics.json").write_text(json.dumps({"deadline_epoch": 1}))
    assert shlex.split(reproduce_command(tmp_path))[-1] == "trainer.epochs=2"  # warm-up 1 needs 2 epochs at least


@pytest.mark.parametrize(
    ("model", "reachable", "weights"), [("small_cnn", True, "null"), ("mobilenet_v2", True, "imagenet")]
)
def test_each_trial_resolves_its_weights_and_the_winners_command_says_what_they_were(
    tmp_path, monkeypatch, model, reachable, weights
):
    from kfactory.config import resolvers
    from tests.conftest import compose_config

    monkeypatch.setattr(resolvers, "imagenet_reachable", lambda: reachable)
    (tmp_path / ".hydra").mkdir()
    overrides = ["experiment=auto", f"model={model}", "optimizer.learning_rate=0.002"]  # a trial's command line
    OmegaConf.save(OmegaConf.create(overrides), tmp_path / ".hydra" / "overrides.yaml")
    OmegaConf.save(compose_config(overrides, run_dir=tmp_path), tmp_path / ".hydra" / "config.yaml")
    words = shlex.split(reproduce_command(tmp_path))[2:]
    assert words == [f"model={model}", "optimizer.learning_rate=0.002", f"model.weights={weights}"]
    overrides.append("model.weights=/w/mine.weights.h5")  # the command line's own value stays, once
    OmegaConf.save(OmegaConf.create(overrides), tmp_path / ".hydra" / "overrides.yaml")
    assert shlex.split(reproduce_command(tmp_path))[2:] == [*overrides[1:]]


def test_the_winners_command_gives_the_weights_the_run_recorded_not_what_the_network_says_now(tmp_path, monkeypatch):
    from kfactory.config import resolvers
    from tests.conftest import compose_config

    monkeypatch.setattr(resolvers, "imagenet_reachable", lambda: False)  # the host stopped answering after training
    (tmp_path / ".hydra").mkdir()
    overrides = ["experiment=auto", "model=mobilenet_v2"]
    OmegaConf.save(OmegaConf.create(overrides), tmp_path / ".hydra" / "overrides.yaml")
    OmegaConf.save(compose_config(overrides, run_dir=tmp_path), tmp_path / ".hydra" / "config.yaml")
    assert shlex.split(reproduce_command(tmp_path))[-1] == "model.weights=null"  # a run without the record
    (tmp_path / "metrics.json").write_text(json.dumps({"val_accuracy": 0.9, "weights": "imagenet"}))
    assert shlex.split(reproduce_command(tmp_path))[-1] == "model.weights=imagenet"


def test_the_search_reports_the_median_fixed_cost_of_the_trials_that_trained(tmp_path):
    import optuna

    from hydra_plugins.kfactory_optuna_sweeper._impl import DIR_ATTR, fixed_cost

    study = optuna.create_study()
    for job, metrics in enumerate([{"setup_s": 6.0, "finish_s": 2.0}, {"setup_s": 9.0, "finish_s": 3.0}, {}, None]):
        trial = study.ask()
        if metrics is not None:  # the last job never wrote a directory
            (tmp_path / str(job)).mkdir()
            (tmp_path / str(job) / "metrics.json").write_text(json.dumps({"val_accuracy": 0.5, **metrics}))
            trial.set_user_attr(DIR_ATTR, str(tmp_path / str(job)))
        study.tell(trial, 0.5)
    assert fixed_cost(study) == "; a trial's fixed cost (median): 7.5 s to its first step, 2.5 s after its last"
    assert fixed_cost(optuna.create_study()) == ""


def test_trials_tied_at_the_validation_ceiling_are_told_apart_by_their_loss(tmp_path, caplog):
    import optuna

    from hydra_plugins.kfactory_optuna_sweeper._impl import DIR_ATTR, RESULTS_FILE, write_results
    from kfactory.report.sweep import sort_by_monitor

    study = optuna.create_study(direction="maximize")
    runs = [(1.0, 0.30), (0.9, 0.01), (1.0, 0.05), (1.0, None)]  # val_accuracy, val_loss (None: not recorded)
    for job, (accuracy, loss) in enumerate(runs):
        run_dir = tmp_path / str(job)
        (run_dir / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create([f"model.dropout=0.{job}"]), run_dir / ".hydra" / "overrides.yaml")
        metrics = {"val_accuracy": accuracy, **({} if loss is None else {"val_loss": loss})}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        trial = study.ask()
        trial.set_user_attr(DIR_ATTR, str(run_dir))
        study.tell(trial, accuracy)
    assert study.best_trial.number == 0  # Optuna names the first of the tied trials
    with caplog.at_level(logging.INFO):
        write_results(study, tmp_path, None, winner=True)
    results = OmegaConf.load(tmp_path / RESULTS_FILE)
    assert results.best_dir == str(tmp_path / "2") and results.command == "python run.py model.dropout=0.2"
    assert "Trials 0, 2, 3 tie at 1.0000; trial 2 has the lowest val_loss (0.05)" in caplog.text
    table = pd.DataFrame(
        {"job": [0, 1, 2, 3], "status": "ok", "val_accuracy": [a for a, _ in runs], "val_loss": [0.3, 0.01, 0.05, None]}
    )
    assert sort_by_monitor(table, "val_accuracy")["job"].tolist() == [2, 0, 3, 1]  # the leaderboard agrees


@pytest.mark.parametrize(("images", "chosen"), [(179, 0), (20_000, 1)])
def test_of_trials_a_small_validation_split_cannot_tell_apart_the_smallest_wins(tmp_path, caplog, images, chosen):
    import optuna

    from hydra_plugins.kfactory_optuna_sweeper._impl import DIR_ATTR, JOB_ATTR, RESULTS_FILE, write_results
    from kfactory.report.sweep import summarize_sweep

    study = optuna.create_study(direction="maximize")
    # accuracy, parameters, val_loss: one image of 179 below the best, the best, four images below it
    runs = [(178 / 179, 290_000, 0.026), (1.0, 945_000, 0.023), (175 / 179, 100_000, 0.05)]
    for job, (accuracy, params, loss) in enumerate(runs):
        correct = round(accuracy * images)
        run_dir = tmp_path / str(job)
        (run_dir / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create([f"model.dropout=0.{job}"]), run_dir / ".hydra" / "overrides.yaml")
        OmegaConf.save(OmegaConf.create({"trainer": {"monitor": "val_accuracy"}}), run_dir / ".hydra" / "config.yaml")
        metrics = {"val_accuracy": correct / images, "val_loss": loss, "params": params, "validation_size": images}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        trial = study.ask()
        trial.set_user_attr(DIR_ATTR, str(run_dir))
        trial.set_user_attr(JOB_ATTR, job)
        study.tell(trial, correct / images)
    with caplog.at_level(logging.INFO):
        write_results(study, tmp_path, None, winner=True)
    assert OmegaConf.load(tmp_path / RESULTS_FILE).best_dir == str(tmp_path / str(chosen))
    said = "Trials 0, 1 are within one standard error of the best (1.0000 on 179 validation images); "
    said += "trial 0 has the fewest parameters (290,000)"
    assert (said in caplog.text) == (chosen == 0)
    table = summarize_sweep(tmp_path)
    assert table.loc[table["chosen"], "job"].tolist() == [chosen]  # the leaderboard marks it
    assert table["job"].tolist()[0] == 1  # and still ranks by the value measured
    repeat = study.ask()  # settings an earlier trial ran: answered from it, with no run directory of its own
    study.tell(repeat, 175 / 179)
    write_results(study, tmp_path, None, winner=True)
    assert OmegaConf.load(tmp_path / RESULTS_FILE).best_dir == str(tmp_path / str(chosen))  # the rule still holds


def test_a_search_whose_trials_all_stopped_early_ends_with_the_best_saved_model(tmp_path, caplog):
    import optuna
    from optuna.trial import TrialState

    from hydra_plugins.kfactory_optuna_sweeper._impl import DIR_ATTR, JOB_ATTR, RESULTS_FILE, write_results
    from kfactory.report.sweep import summarize_sweep

    study = optuna.create_study(direction="maximize")
    # epoch values, whether the run saved a model: the best values are in a run that saved none
    runs = [([0.2, 0.5], True), ([0.3, 0.6, 0.4], True), ([0.9], False), ([], True)]
    for job, (values, saved) in enumerate(runs):
        run_dir = tmp_path / f"{job}_model.dropout=0.{job}"
        (run_dir / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create([f"model.dropout=0.{job}"]), run_dir / ".hydra" / "overrides.yaml")
        OmegaConf.save(OmegaConf.create({"trainer": {"monitor": "val_accuracy"}}), run_dir / ".hydra" / "config.yaml")
        (run_dir / "metrics.json").write_text(json.dumps({"pruned": True, "pruned_epoch": len(values)}))
        if saved:
            (run_dir / "model.keras").write_bytes(b"")
        trial = study.ask()
        trial.set_user_attr(DIR_ATTR, str(run_dir))
        trial.set_user_attr(JOB_ATTR, job)
        for step, value in enumerate(values, start=1):
            trial.report(value, step)
        study.tell(trial, state=TrialState.PRUNED)
    with caplog.at_level(logging.INFO):
        write_results(study, tmp_path, None, winner=True)
    results = OmegaConf.load(tmp_path / RESULTS_FILE)
    assert results.best_job == 1 and results.best_value == 0.6 and results.stopped_early
    assert results.best_dir == str(tmp_path / "1_model.dropout=0.1")
    assert results.command == "python run.py model.dropout=0.1 model.weights=null trainer.epochs=3"  # as it ran
    said = "No trial ran to its end (4 pruned); the search ends with trial 1 (job 1), stopped early, whose best "
    assert said + "epoch scored 0.6; a larger auto.budget lets trials finish" in caplog.text
    table = summarize_sweep(tmp_path)
    assert table.loc[table["chosen"], "job"].tolist() == [1]  # the leaderboard marks it

    (tmp_path / RESULTS_FILE).unlink()
    for job in (0, 1, 3):
        (tmp_path / f"{job}_model.dropout=0.{job}" / "model.keras").unlink()
    write_results(study, tmp_path, None, winner=True)  # no model anywhere: the error, and no results
    assert "Error: none of the study's 4 trials completed" in caplog.text
    assert not (tmp_path / RESULTS_FILE).exists()
    from hydra_plugins.kfactory_optuna_sweeper._impl import best_stopped_early

    lowest = optuna.create_study(direction="minimize")  # a loss: the lowest epoch value wins
    for job, values in enumerate([[0.9, 0.5], [0.7, 0.6]]):
        (tmp_path / f"min{job}").mkdir()
        (tmp_path / f"min{job}" / "model.keras").write_bytes(b"")
        trial = lowest.ask()
        trial.set_user_attr(DIR_ATTR, str(tmp_path / f"min{job}"))
        for step, value in enumerate(values, start=1):
            trial.report(value, step)
        lowest.tell(trial, state=TrialState.PRUNED)
    chosen, value = best_stopped_early(lowest)
    assert (chosen.number, value) == (0, 0.5)
    several = optuna.create_study(directions=["maximize", "minimize"])  # Pareto fronts have no single best
    several.tell(several.ask(), state=TrialState.PRUNED)
    write_results(several, tmp_path, ["val_accuracy", "params"], winner=True)
    assert "Error: none of the study's 1 trials completed" in caplog.text


def test_a_margin_is_one_standard_error_of_the_difference():
    from hydra_plugins.kfactory_optuna_sweeper._impl import accuracy_margin

    # Laplace's rule: 179 of 179 is taken as 180/181, 178 of 179 as 179/181
    expected = ((180 / 181 * 1 / 181 + 179 / 181 * 2 / 181) / 179) ** 0.5
    assert accuracy_margin(1.0, 178 / 179, 179) == pytest.approx(expected)
    assert accuracy_margin(0.5, 0.5, 100) == pytest.approx(((51 / 102) * (51 / 102) * 2 / 100) ** 0.5)
    assert accuracy_margin(0.5, 0.5, 10_000) == pytest.approx(0.5 * 2**0.5 / 100, rel=1e-3)  # as 1/sqrt(images)


def test_a_search_whose_command_line_fixed_every_key_runs_its_one_point_once():
    import optuna
    from optuna.distributions import CategoricalDistribution

    from hydra_plugins.kfactory_optuna_sweeper._impl import FIXED_ATTR, OptunaSearch

    search = OptunaSearch(
        params=None, sampler="tpe", seed=0, sampler_args={}, pruner="none", pruner_args={}, direction="maximize",
        directions=None, study_name="s", storage=None, n_trials=1000, n_jobs=1, enqueue=[], budget=300,
    )  # fmt: skip
    study = optuna.create_study(direction="maximize")
    fixed = {"model.dropout": "0.2"}
    assert search.trials_to_run(study, {}, fixed) == 1  # not 1000 repeats of it
    assert search.trials_to_run(study, {"model.dropout": CategoricalDistribution([0.0, 0.1])}, {}) == 1000
    trial = study.ask()
    trial.set_user_attr(FIXED_ATTR, fixed)
    study.tell(trial, 0.5)
    assert search.trials_to_run(study, {}, fixed) == 0  # the same command again: its point already ran
    assert search.trials_to_run(study, {}, {"model.dropout": "0.5"}) == 1  # other fixed values: another point
    failed = study.ask()
    failed.set_user_attr(FIXED_ATTR, {"model.dropout": "0.7"})
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    assert search.trials_to_run(study, {}, {"model.dropout": "0.7"}) == 1  # a failed point runs again, once mended


@pytest.mark.parametrize(("left_s", "complete", "resumed"), [(20, True, False), (20, False, True), (200, True, True)])
def test_a_cut_trial_resumes_unless_its_start_would_overrun_a_search_that_has_a_result(
    tmp_path, caplog, left_s, complete, resumed
):
    import optuna
    from hydra.core.utils import JobReturn, JobStatus
    from optuna.trial import TrialState

    from hydra_plugins.kfactory_optuna_sweeper._impl import JOB_ATTR, OptunaSearch

    search = OptunaSearch(
        params=None, sampler="tpe", seed=0, sampler_args={}, pruner="none", pruner_args={}, direction="maximize",
        directions=None, study_name="s", storage=None, n_trials=5, n_jobs=1, enqueue=[], budget=300,
    )  # fmt: skip
    search.ledger = BudgetLedger(tmp_path, 300, started=time.time() - (300 - left_s))
    launched = []

    class Launcher:
        def launch(self, overrides, initial_job_idx):
            launched.append(overrides)
            return [JobReturn(overrides=overrides[0], status=JobStatus.COMPLETED, _return_value=0.9)]

    search.launcher, search.objectives = Launcher(), None
    study = optuna.create_study(direction="maximize")
    if complete:
        study.tell(study.ask(), 0.8)
    cut = study.ask()
    cut.set_user_attr(JOB_ATTR, 1)
    cut.report(0.7, step=1)  # its first epoch, as the pruning callback reports it
    search.sweep_dir = tmp_path
    (tmp_path / "1_model=mob" / ".hydra").mkdir(parents=True)  # the cut job's directory, with no metrics.json
    (tmp_path / "1_model=mob" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    with caplog.at_level("INFO"):
        search.resume_cut_trials(study, {})
    (after,) = [t for t in study.trials if t.number == cut.number]
    assert bool(launched) == resumed
    assert after.state == (TrialState.COMPLETE if resumed else TrialState.PRUNED)
    assert study.best_value == (0.9 if resumed else 0.8)  # a trial stopped early never wins
    if not resumed:  # the leaderboard lists it as pruned, and the search does not exit 1 for a failed job
        from kfactory.report.sweep import read_job

        assert read_job(tmp_path / "1_model=mob", [])["status"] == "pruned"
        assert "left is too little to finish it: it counts as stopped early" in caplog.text


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["auto.budget=10s"], "auto.budget=10s is not accepted: at least 1m"),
        (["auto.budget=soon"], "auto.budget=soon is not accepted: a duration such as"),
        (["auto.budget=5m", "data=folder", "data.path=/no/such/folder"], "data.path=/no/such/folder"),
    ],
)
def test_a_refused_search_says_why_in_one_line_and_leaves_no_folder(tmp_path, args, says):
    sweep = tmp_path / "auto"
    result = run_cli(["experiment=auto", *args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and says in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not sweep.exists()


AUTO_BUDGET_S = 120  # the continued command has time to resume the cut trial even on a slow, busy machine
AUTO_TINY = [
    "experiment=auto",
    f"auto.budget={AUTO_BUDGET_S}s",
    "model=mobilenet_v3_small",  # a fixed value replaces the search's entry
    "trainer.epochs=4",
    "trainer.verbose=0",
]


def start_auto(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KFACTORY_OFFLINE": "1"}
    argv = [sys.executable, str(ROOT / "run.py"), *args]
    # SIGINT as a terminal delivers it: a job started in the background (`.ci/run &`) inherits it ignored.
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip


@pytest.mark.slow
def test_a_killed_search_continues_with_the_time_left_and_ends_with_a_model_and_its_command(tmp_path):
    sweep = tmp_path / "auto"
    started = time.time()
    first = start_auto([*AUTO_TINY, f"hydra.sweep.dir={sweep}"], tmp_path)
    history = None
    # Kill in the first trial's third epoch: its first epoch's backup is complete by then
    while first.poll() is None and time.time() - started < 120:
        history = next(sweep.glob("0_*/history.csv"), None)
        if history is not None and len(history.read_text().splitlines()) >= 3:
            break
        time.sleep(0.5)
    assert first.poll() is None, first.communicate()[1][-3000:]
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=60)
    first_s = time.time() - started
    assert first.returncode == 130 and "Traceback" not in out + err, (out + err)[-3000:]
    said = next((line for line in (out + err).splitlines() if "continue with the time left: " in line), None)
    assert said is not None, (out + err)[-3000:]
    command = shlex.split(said.split("continue with the time left: ", 1)[1])
    assert command[:2] == ["python", "run.py"] and f"hydra.sweep.dir={sweep}" in command

    again = time.time()
    second = start_auto(command[2:], tmp_path)  # the command the interrupted one printed
    out, err = second.communicate(timeout=300)
    second_s = time.time() - again
    assert second.returncode == 0, err[-4000:]
    assert "Trial 0 (job 0) was cut short by a kill: it continues from its last finished epoch" in out + err
    # The budget holds for both commands together, within 30 s (each command's start before the search
    # opens its ledger, some seconds, is the only time not counted)
    assert first_s + second_s <= AUTO_BUDGET_S + 30, (first_s, second_s)
    spent = json.loads((sweep / "budget.json").read_text())
    assert len(spent["sessions_s"]) == 2 and spent["spent_s"] <= AUTO_BUDGET_S + 30

    # Job 0 went on from its last finished epoch in its own folder: each epoch once, in order
    job0 = next(sweep.glob("0_*"))
    epochs = pd.read_csv(job0 / "history.csv")["epoch"].tolist()
    assert epochs == list(range(1, len(epochs) + 1)), epochs
    assert "Resuming" in (job0 / "kfactory.log").read_text()

    results = OmegaConf.load(sweep / "optimization_results.yaml")
    best = Path(results.best_dir)
    assert best.parent == sweep and (best / "model.keras").is_file() and (best / "metrics.json").is_file()
    summary = pd.read_csv(sweep / "summary.csv")
    # No trial failed; Hyperband may have pruned one (a pruned trial still ends as a complete run)
    assert summary["status"].isin(["ok", "pruned"]).all(), summary["status"].tolist()
    assert summary["pareto"].any() and (summary["test_ms_per_image"] > 0).all()
    assert summary.loc[0, "dir"] == best.name  # the leaderboard's first row is the run the results name

    # The command printed for the winner trains it without the search
    words = shlex.split(results.command)
    assert words[:2] == ["python", "run.py"] and "experiment=auto" not in words
    rerun = run_cli([*words[2:], f"hydra.run.dir={tmp_path / 'again'}"], cwd=tmp_path, env={"KFACTORY_OFFLINE": "1"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (tmp_path / "again" / "model.keras").is_file()


@pytest.mark.slow
def test_the_winners_command_trains_the_same_model_again(tmp_path):
    sweep = tmp_path / "auto"
    fixed = ["model=small_cnn", "model.input_size=16", "model.bn_momentum=0.9", "model.dropout=0.1"]
    fixed += ["optimizer.learning_rate=0.002", "data/augment=light", "trainer.epochs=3", "trainer.verbose=0"]
    env = {"KFACTORY_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}  # the CPU, where auto turns the ops on
    # one fixed point runs once, in seconds: the deadline of a 5-minute budget cannot cut it short
    search = run_cli(["experiment=auto", "auto.budget=5m", *fixed, f"hydra.sweep.dir={sweep}"], tmp_path, env=env)
    assert search.returncode == 0, search.stderr[-3000:]
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    words = shlex.split(results.command)
    assert "trainer.deterministic=auto" in words  # as the trial had it
    again = tmp_path / "again"
    rerun = run_cli([*words[2:], f"hydra.run.dir={again}"], cwd=tmp_path, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    best = Path(results.best_dir)
    assert "deadline_epoch" not in json.loads((best / "metrics.json").read_text())  # it trained all its epochs
    assert (again / "history.csv").read_text() == (best / "history.csv").read_text()
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (best, again))
    for key in TIMING_KEYS:  # seconds, not results
        first.pop(key), second.pop(key)
    assert first == second

"""The task function: exit statuses, error.txt in a multirun job, SIGTERM as Ctrl-C, and the task dispatch."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from kfactory import app
from kfactory.errors import ConfigError, RunStopped, Terminated
from tests.conftest import TINY, compose_config, run_cli, write_image_folder

REFUSAL = ConfigError("model.dropout", 2, "a number in [0, 1)")
DROPOUT_REFUSAL = "model.dropout=2 is not accepted: a number in [0, 1)"


@pytest.fixture
def hydra_job(monkeypatch, tmp_path):
    """``start(overrides, multirun=False)``: a composed config set as Hydra's current job in ``tmp_path/job``.

    Hydra's config and the SIGTERM handler that ``kfactory()`` installs are restored after the test.
    """
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    previous = signal.getsignal(signal.SIGTERM)

    def start(overrides: list[str] | None = None, multirun: bool = False, name: str = "job") -> tuple[DictConfig, Path]:
        run_dir = tmp_path / name
        run_dir.mkdir(exist_ok=True)
        cfg = compose_config(overrides or [], run_dir=run_dir)
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.MULTIRUN if multirun else RunMode.RUN
            cfg.hydra.job.num = 0  # a multirun job's number (kfactory gives each parallel job its own GPU)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]  # the task function sees the job's config without the hydra node, as under @hydra.main
        return cfg, run_dir

    yield start
    signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def default_sigterm():
    """SIGTERM back to its default before and after the test (kfactory() installs its own handler)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def fail_with(monkeypatch, error: BaseException) -> None:
    """Make the task itself raise ``error`` (validation and the run-directory check still run first)."""

    def run_task(cfg, run_dir):
        raise error

    monkeypatch.setattr(app, "run_task", run_task)


def test_a_bad_value_exits_2_with_one_line_naming_it(hydra_job, monkeypatch, caplog):
    cfg, _ = hydra_job()
    fail_with(monkeypatch, REFUSAL)  # wherever the check sits, validate() or a task's own
    with caplog.at_level(logging.ERROR, logger="kfactory"), pytest.raises(SystemExit) as stopped:
        app.kfactory(cfg)
    assert stopped.value.code == 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [DROPOUT_REFUSAL]


def test_a_run_stopped_for_a_named_reason_exits_1(hydra_job, monkeypatch, caplog):
    cfg, _ = hydra_job()
    fail_with(monkeypatch, RunStopped("Training loss became NaN or infinite in epoch 3"))
    with caplog.at_level(logging.ERROR, logger="kfactory"), pytest.raises(SystemExit) as stopped:
        app.kfactory(cfg)
    assert stopped.value.code == 1
    assert "Training loss became NaN or infinite in epoch 3" in caplog.text


def test_an_existing_training_run_is_not_overwritten(hydra_job):
    cfg, run_dir = hydra_job()
    (run_dir / "history.csv").write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(SystemExit) as stopped:
        app.kfactory(cfg)
    assert stopped.value.code == 2


@pytest.mark.parametrize(
    ("interrupt", "status", "word"), [(KeyboardInterrupt(), 130, "Interrupted"), (Terminated(), 143, "Terminated")]
)
def test_ctrl_c_and_sigterm_exit_with_the_resume_command(hydra_job, monkeypatch, caplog, interrupt, status, word):
    cfg, run_dir = hydra_job()
    fail_with(monkeypatch, interrupt)
    with caplog.at_level(logging.ERROR, logger="kfactory"), pytest.raises(SystemExit) as stopped:
        app.kfactory(cfg)
    assert stopped.value.code == status
    expected = f"{word}. Finished epochs are kept; continue with: python run.py hydra.run.dir={run_dir} resume=true"
    assert expected in caplog.text


@pytest.mark.slow
def test_the_printed_resume_command_runs_with_quotes_in_its_values(hydra_job, monkeypatch, caplog, tmp_path):
    folder = write_image_folder(tmp_path / "it's images", {"a": 8, "b": 8}, size=8)
    overrides = [*TINY, "model=mobilenet", "model.weights=null", "model.input_size=32", "trainer.epochs=1"]
    cfg, run_dir = hydra_job([*overrides, "data=folder", f'data.path="{folder}"'], name="it's run, 1")
    fail_with(monkeypatch, KeyboardInterrupt())
    with caplog.at_level(logging.ERROR, logger="kfactory"), pytest.raises(SystemExit):
        app.kfactory(cfg)
    command = caplog.text.split("continue with: ", 1)[1].splitlines()[0]
    assert command.startswith("python run.py ") and "resume=true" in command
    result = run_cli(shlex.split(command)[2:])  # as a shell reads it, run by this interpreter
    assert result.returncode == 0, result.stderr[-3000:]
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert (saved.data.path, saved.resume) == (str(folder), True)
    assert (run_dir / "metrics.json").is_file()


def test_a_multirun_job_that_is_refused_writes_error_txt_and_lets_the_sweep_go_on(hydra_job, monkeypatch):
    cfg, run_dir = hydra_job(multirun=True)
    fail_with(monkeypatch, REFUSAL)
    assert app.kfactory(cfg) is None  # no SystemExit: the next job runs
    assert (run_dir / app.ERROR_FILE).read_text() == DROPOUT_REFUSAL + "\n"


def test_a_multirun_job_that_crashes_writes_its_traceback_and_returns_none(hydra_job, monkeypatch, caplog):
    cfg, run_dir = hydra_job(multirun=True)
    fail_with(monkeypatch, RuntimeError("out of memory in conv2"))
    with caplog.at_level(logging.ERROR, logger="kfactory"):
        assert app.kfactory(cfg) is None
    error = (run_dir / app.ERROR_FILE).read_text()
    assert error.startswith("Traceback") and "RuntimeError: out of memory in conv2" in error
    assert "Job failed: RuntimeError: out of memory in conv2" in caplog.text


def test_a_single_run_that_crashes_keeps_its_traceback(hydra_job, monkeypatch):
    cfg, run_dir = hydra_job()
    fail_with(monkeypatch, RuntimeError("out of memory in conv2"))
    with pytest.raises(RuntimeError, match="out of memory"):
        app.kfactory(cfg)
    assert not (run_dir / app.ERROR_FILE).exists()


def test_ctrl_c_stops_a_whole_multirun(hydra_job, monkeypatch):
    cfg, run_dir = hydra_job(multirun=True)
    fail_with(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        app.kfactory(cfg)
    assert not (run_dir / app.ERROR_FILE).exists()


def test_sigterm_during_the_task_ends_the_run_as_terminated(hydra_job, monkeypatch, default_sigterm):
    cfg, _ = hydra_job()

    def run_task(cfg, run_dir):
        # Without kfactory's handler SIGTERM would kill the test process: fail cleanly instead.
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, "kfactory() installed no SIGTERM handler"
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's stop, delivered while the task runs
        raise AssertionError("SIGTERM did not interrupt the task")

    monkeypatch.setattr(app, "run_task", run_task)
    with pytest.raises(SystemExit) as stopped:
        app.kfactory(cfg)
    assert stopped.value.code == 143


def test_sigterm_handling_leaves_a_launchers_own_handler_alone(default_sigterm):
    app.stop_on_sigterm()
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    with pytest.raises(Terminated):
        handler(signal.SIGTERM, None)

    def launcher_handler(signum, frame):
        pass

    signal.signal(signal.SIGTERM, launcher_handler)
    app.stop_on_sigterm()
    assert signal.getsignal(signal.SIGTERM) is launcher_handler


def test_sigterm_handling_is_not_installed_from_another_thread(default_sigterm):
    errors = []

    def install():
        try:
            app.stop_on_sigterm()
        except ValueError as error:  # what signal.signal raises outside the main thread
            errors.append(error)

    worker = threading.Thread(target=install)  # e.g. a launcher running the job in a thread
    worker.start()
    worker.join()
    assert errors == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def fake_folds(monkeypatch, values: list[float], pruned_fold: int | None = None) -> list[tuple[int, int, str]]:
    """Make each fold's training write metrics.json with ``values[fold]``; return the (fold, folds, dir) it ran."""
    calls = []

    def run_task(cfg, run_dir):
        fold = cfg.data.fold
        calls.append((fold, cfg.data.folds, run_dir.name))
        metrics = {"val_accuracy": values[fold], "epochs_run": 2, "wall_time_s": 1.5, "setup_s": 0.5}
        metrics["validation_size"] = 60 + fold  # the folds need not be the same size
        if fold == pruned_fold:
            metrics.update(pruned=True, pruned_epoch=1)
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return values[fold]

    monkeypatch.setattr(app, "run_task", run_task)
    return calls


def test_cv_folds_trains_each_fold_in_its_folder_and_returns_their_mean(hydra_job, monkeypatch):
    cfg, run_dir = hydra_job(["hparams_search.cv_folds=3"])
    calls = fake_folds(monkeypatch, [0.5, 0.7, 0.9])
    assert app.kfactory(cfg) == pytest.approx(0.7)
    assert calls == [(0, 3, "fold_0"), (1, 3, "fold_1"), (2, 3, "fold_2")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val_accuracy"] == pytest.approx(0.7) and metrics["val_accuracy_std"] == pytest.approx(0.1633, 1e-3)
    assert metrics["folds"] == 3 and metrics["epochs_run"] == 6 and metrics["wall_time_s"] == 4.5  # totals
    assert metrics["setup_s"] == 1.5 and "setup_s_std" not in metrics  # a total too
    assert metrics["validation_size"] == 183 and "validation_size_std" not in metrics  # each image validated once
    assert "epochs_run_std" not in metrics and "wall_time_s_std" not in metrics  # no spread beside a total
    saved = OmegaConf.load(run_dir / "fold_2" / ".hydra" / "config.yaml")  # what task=eval of a fold reads
    assert (saved.data.folds, saved.data.fold) == (3, 2)


@pytest.mark.slow  # trains folds twice
def test_cv_folds_rerun_skips_complete_folds_only_with_resume(hydra_job, monkeypatch):
    cfg, run_dir = hydra_job(["hparams_search.cv_folds=3"])
    fake_folds(monkeypatch, [0.5, 0.7, 0.9])
    app.kfactory(cfg)
    with pytest.raises(SystemExit) as stopped:  # without resume its folds are not overwritten
        app.kfactory(cfg)
    assert stopped.value.code == 2
    shutil.rmtree(run_dir / "fold_1")
    cfg, _ = hydra_job(["hparams_search.cv_folds=3", "resume=true"])
    calls = fake_folds(monkeypatch, [0.0, 0.4, 0.0])
    assert app.kfactory(cfg) == pytest.approx(0.6)  # folds 0 and 2 as they were, fold 1 trained again
    assert calls == [(1, 3, "fold_1")]


def test_a_pruned_fold_ends_the_cv_run_as_pruned(hydra_job, monkeypatch):
    cfg, run_dir = hydra_job(["hparams_search.cv_folds=3"])
    calls = fake_folds(monkeypatch, [0.5, 0.3, 0.9], pruned_fold=1)
    assert app.kfactory(cfg) == pytest.approx(0.4)
    assert [fold for fold, _, _ in calls] == [0, 1]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["pruned"] is True and metrics["pruned_fold"] == 1 and metrics["folds"] == 2


def test_cv_folds_read_the_split_fold_0_recorded_even_after_images_are_added(hydra_job, monkeypatch, tmp_path):
    from kfactory.data.pipeline import make_splits

    images = write_image_folder(tmp_path / "images", {"cats": 8, "dogs": 8}, size=8)
    data = ["data=folder", f"data.path={images}", "data.cache=none", "data.test_split=0.25"]
    cfg, run_dir = hydra_job(["hparams_search.cv_folds=3", *data, "model.input_size=[32,32]", "model.weights=null"])
    used = {}

    def run_task(cfg, fold_dir):  # each fold builds its data as training does, and adds images after fold 0
        splits = make_splits(cfg, fold_dir)
        used[cfg.data.fold] = {name: {splits.source.paths[i] for i in idx} for name, idx in splits.indices.items()}
        more = write_image_folder(tmp_path / f"more_{cfg.data.fold}", {"cats": 2}, size=8, seed=cfg.data.fold + 1)
        for path in (more / "cats").iterdir():
            path.rename(images / "cats" / f"new_{cfg.data.fold}_{path.name}")
        (fold_dir / "metrics.json").write_text(json.dumps({"val_accuracy": 0.5, "epochs_run": 1, "wall_time_s": 1}))

    monkeypatch.setattr(app, "run_task", run_task)
    app.kfactory(cfg)
    assert len(list((images / "cats").iterdir())) == 14  # images were added after each fold
    assert used[0]["test"] == used[1]["test"] == used[2]["test"] and len(used[0]["test"]) == 4
    assert all(len(used[fold]["train"] | used[fold]["val"]) == 12 for fold in range(3))  # never the new images
    vals = [used[fold]["val"] for fold in range(3)]
    assert sum(map(len, vals)) == 12 and len(set().union(*vals)) == 12  # the folds partition the 12
    assert all((run_dir / f"fold_{fold}" / "splits.csv").is_file() for fold in range(3))


@pytest.mark.parametrize(
    ("task", "module", "function"),
    [
        ("train", "kfactory.train.loop", "train"),
        ("eval", "kfactory.use.evaluate", "evaluate"),
        ("export", "kfactory.use.export", "export"),
        ("predict", "kfactory.use.predict", "predict"),
    ],
)
def test_run_task_calls_the_tasks_own_module(monkeypatch, tmp_path, task, module, function):
    calls = []
    for name, attribute in [
        ("kfactory.train.loop", "train"),
        ("kfactory.use.evaluate", "evaluate"),
        ("kfactory.use.export", "export"),
        ("kfactory.use.predict", "predict"),
    ]:
        fake = types.ModuleType(name)  # stands in for the module, so no TensorFlow is imported
        setattr(fake, attribute, lambda cfg, run_dir, name=name: calls.append((name, cfg.task, run_dir)) or 0.75)
        monkeypatch.setitem(sys.modules, name, fake)
    cfg = compose_config([f"task={task}"])
    assert app.run_task(cfg, tmp_path) == 0.75
    assert calls == [(module, task, tmp_path)]


CLI_REFUSALS = [
    (["model=resnet9000"], 1, "model"),  # Hydra's own message, with the list of options
    (["trainer.epochs=0"], 2, "trainer.epochs"),
    (["data=folder", "data.path=/nonexistent/kf"], 2, "data.path"),
]


@pytest.mark.parametrize(("overrides", "code", "key"), CLI_REFUSALS, ids=[o[0] for o, _, _ in CLI_REFUSALS])
def test_cli_refuses_without_traceback_or_tensorflow(tmp_path, overrides, code, key):
    result = run_cli([*overrides, f"hydra.run.dir={tmp_path / 'run'}"], timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output
    assert key in output
    assert "tensorflow" not in output.lower()


EXIT_UNDER_A_BUSY_THREAD = """
import logging, sys, threading, time
from kfactory.errors import interrupted_exits_at_once
logging.basicConfig(filename=sys.argv[2], level=logging.INFO)
threading.Thread(target=time.sleep, args=(60,)).start()  # teardown would wait for it, as TF's threads can abort it
with interrupted_exits_at_once():
    logging.getLogger("kfactory").error("Interrupted. Finished epochs are kept")
    raise SystemExit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("status", [130, 143])
def test_an_interrupted_command_exits_at_once_with_its_status_and_its_log_line(tmp_path, status):
    log_file = tmp_path / "run.log"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", EXIT_UNDER_A_BUSY_THREAD, str(status), str(log_file)], timeout=50)
    assert result.returncode == status
    assert time.monotonic() - started < 30  # not the 60 s teardown would wait for the thread
    assert "Interrupted. Finished epochs are kept" in log_file.read_text()


def test_other_exits_keep_the_interpreters_teardown():
    code = """
import atexit
from kfactory.errors import interrupted_exits_at_once
atexit.register(print, "teardown ran")
with interrupted_exits_at_once():
    raise SystemExit(2)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert (result.returncode, result.stdout.strip()) == (2, "teardown ran")

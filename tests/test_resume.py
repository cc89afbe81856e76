"""Resume: a killed run continues from its last finished epoch; a run directory is never clobbered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kfactory.errors import ConfigError
from kfactory.run.resume import (
    BACKUP_METADATA,
    COMPLETE,
    FRESH,
    RESTART,
    RESUME,
    check_run_dir,
    prepare_restart,
    restore_history,
    resume_mode,
)
from tests.conftest import ROOT, TINY, compose_config, run_cli

HEADER = "epoch,accuracy,loss,val_accuracy,val_loss\n"


def write_run(run_dir: Path, rows: int, backed_up: int | None) -> None:
    """A run directory with ``rows`` history rows and a backup of ``backed_up`` epochs."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{e + 1},0.{e + 1},{2 - e / 10},0.{e + 2},{3 - e / 10}\n" for e in range(rows))  # from 1
    (run_dir / "history.csv").write_text(HEADER + lines)
    if backed_up is not None:
        (run_dir / "backup").mkdir(exist_ok=True)
        (run_dir / "backup" / BACKUP_METADATA).write_text(json.dumps({"epoch": backed_up, "batch": 0}))


def test_a_run_directory_is_not_clobbered_without_resume(tmp_path):
    write_run(tmp_path, rows=2, backed_up=2)
    with pytest.raises(ConfigError, match=r"hydra.run.dir=.*resume=true"):
        check_run_dir(compose_config([]), tmp_path)
    check_run_dir(compose_config(["resume=true"]), tmp_path)
    check_run_dir(compose_config(["task=eval"]), tmp_path)  # eval/predict only read the run


def test_what_a_run_directory_holds_decides_what_resume_does(tmp_path):
    resume = compose_config(["resume=true"])
    assert check_run_dir(resume, tmp_path / "empty") == FRESH
    write_run(tmp_path / "backed_up", rows=3, backed_up=2)
    assert check_run_dir(resume, tmp_path / "backed_up") == RESUME
    write_run(tmp_path / "first_epoch", rows=1, backed_up=None)  # killed before its first backup
    assert check_run_dir(resume, tmp_path / "first_epoch") == RESTART
    write_run(tmp_path / "cut_short", rows=1, backed_up=None)
    (tmp_path / "cut_short" / "backup").mkdir()
    (tmp_path / "cut_short" / "backup" / BACKUP_METADATA).write_text('{"epo')  # a metadata write cut short
    assert check_run_dir(resume, tmp_path / "cut_short") == RESTART
    write_run(tmp_path / "done", rows=3, backed_up=None)
    (tmp_path / "done" / "metrics.json").write_text("{}")
    assert check_run_dir(resume, tmp_path / "done") == COMPLETE
    assert check_run_dir(compose_config(["resume=auto"]), tmp_path / "done") == COMPLETE


def test_a_finished_run_is_not_offered_resume_as_a_way_to_train_again(tmp_path):
    write_run(tmp_path, rows=3, backed_up=None)
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"complete: choose another directory"):
        check_run_dir(compose_config([]), tmp_path)


def test_a_restart_clears_the_attempt_that_finished_no_epoch(tmp_path, caplog):
    write_run(tmp_path, rows=1, backed_up=None)
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "partial-epoch1.weights.h5").write_bytes(b"cut")
    (tmp_path / "tensorboard").mkdir()
    prepare_restart(tmp_path)
    assert not any((tmp_path / name).exists() for name in ("history.csv", "backup", "tensorboard"))
    assert "starting again at epoch 1" in caplog.text


@pytest.mark.parametrize(
    ("target", "overrides", "expected"),
    [
        ("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", [], "auto"),
        ("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", ["resume=false"], False),
        ("hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher", [], False),
        ("hydra._internal.core_plugins.basic_launcher.BasicLauncher", ["resume=true"], True),
    ],
)
def test_resume_is_auto_under_a_launcher_that_requeues_unless_set(target, overrides, expected):
    assert resume_mode(compose_config(overrides), target, overrides) == expected


def test_resume_accepts_true_false_or_auto():
    from kfactory.config.validate import validate

    validate(compose_config(["resume=auto"]))
    with pytest.raises(ConfigError, match=r"resume=yes is not accepted: true, false or auto"):
        validate(compose_config(["resume=yes"]))


def test_restore_history_drops_rows_the_backup_does_not_hold(tmp_path):
    write_run(tmp_path, rows=3, backed_up=2)  # killed after epoch 3's row, before its backup
    rows = restore_history(tmp_path)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[1]["val_accuracy"] == pytest.approx(0.3)
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines == [HEADER.strip(), "1,0.1,2.0,0.2,3.0", "2,0.2,1.9,0.3,2.9"]  # the file counts from 1


def test_restore_history_drops_a_row_cut_short_and_repeated_epochs(tmp_path):
    write_run(tmp_path, rows=2, backed_up=3)
    with (tmp_path / "history.csv").open("a") as handle:
        handle.write("2,0.9,0.9,0.9,0.9\n3,0.3")  # epoch 2 again, then a row the kill cut short
    assert [r["epoch"] for r in restore_history(tmp_path)] == [0, 1]
    assert (tmp_path / "history.csv").read_text().splitlines()[-1] == "2,0.2,1.9,0.3,2.9"


def test_the_backup_survives_a_kill_at_any_instant_of_its_write(tmp_path):
    import keras
    import numpy as np

    from kfactory.train.backup import AtomicBackupAndRestore

    def model_with_backup():
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        backup = AtomicBackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)
        backup.set_model(model)
        return model, backup

    model, backup = model_with_backup()
    model.layers[0].kernel.assign(np.ones((2, 1)))
    backup.on_epoch_end(0, {"loss": 1.0})
    model.layers[0].kernel.assign(np.full((2, 1), 2.0))
    backup.on_epoch_end(1, {"loss": float("nan")})  # a NaN epoch is not backed up
    (tmp_path / "backup" / "partial-epoch2.weights.h5").write_bytes(b"cut short")  # killed mid-write
    restored, backup = model_with_backup()
    backup.on_train_begin()
    assert restored._initial_epoch == 1
    np.testing.assert_array_equal(restored.layers[0].kernel.numpy(), np.ones((2, 1)))


def test_best_checkpoint_and_early_stopping_replay_the_finished_epochs(tmp_path):
    import keras

    from kfactory.train.best_model import BestModelCheckpoint
    from kfactory.train.callbacks import ResumableEarlyStopping

    past = [{"epoch": 0, "val_accuracy": 0.5}, {"epoch": 1, "val_accuracy": 0.7}, {"epoch": 2, "val_accuracy": 0.6}]
    checkpoint = BestModelCheckpoint(tmp_path / "model.keras", "val_accuracy", {})
    checkpoint.replay(past)
    assert (checkpoint.best, checkpoint.best_epoch) == (0.7, 1)
    tied = [
        *past,
        {"epoch": 3, "val_accuracy": 0.7, "val_loss": 0.4},
        {"epoch": 4, "val_accuracy": 0.7, "val_loss": 0.5},
    ]
    again = BestModelCheckpoint(tmp_path / "model.keras", "val_accuracy", {})
    again.replay(tied)
    assert (again.best, again.best_epoch) == (0.7, 3)  # a tie goes to the lower val_loss
    stopping = ResumableEarlyStopping(past, monitor="val_accuracy", mode="max", patience=3)
    stopping.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    stopping.on_train_begin()
    assert (stopping.best, stopping.wait) == (0.7, 1)
    stopping.phase_start = 2  # resumed in a fine-tuning phase that began at epoch 2: patience counts from there
    stopping.on_train_begin()
    assert (stopping.best, stopping.wait) == (0.6, 0)


def wait_for_backup(run_dir: Path, process: subprocess.Popen, timeout: float = 400, phase: int | None = None) -> None:
    """Block until the run (with ``phase``: that fine-tuning phase) has backed up at least one finished epoch."""
    metadata = run_dir / "backup" / (f"phase{phase}" if phase else "") / BACKUP_METADATA
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metadata.is_file() and metadata.read_text().strip():
            return
        assert process.poll() is None, "the run ended before its first epoch was backed up"
        time.sleep(0.2)
    raise TimeoutError("no epoch finished in time")


@pytest.mark.slow
def test_a_run_killed_after_its_first_epoch_resumes_and_finishes_all_epochs(tmp_path):
    import keras

    run_dir = tmp_path / "run"
    args = ["model=vgg16", *TINY, "trainer.epochs=4", "trainer.early_stopping=10", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_backup(run_dir, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (run_dir / "metrics.json").exists()
    recorded = (run_dir / "splits.csv").read_bytes()

    refused = run_cli(args, timeout=120)  # the same directory again, without resume=true
    assert refused.returncode == 2 and "resume=true" in refused.stdout + refused.stderr

    resumed = run_cli([*args, "resume=true"])
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert "Resuming" in output
    assert f"Split: as recorded in {run_dir / 'splits.csv'}" in output and "no recorded split" not in output
    assert (run_dir / "splits.csv").read_bytes() == recorded  # read, not drawn and written again
    epochs = [int(line.split(",")[0]) for line in (run_dir / "history.csv").read_text().splitlines()[1:]]
    assert epochs == [1, 2, 3, 4]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 4
    assert not (run_dir / "backup").exists()
    model = keras.models.load_model(run_dir / "model.keras")
    assert model.output_shape == (None, 10)


@pytest.mark.slow
@pytest.mark.parametrize(("stop", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_ends_the_run_with_one_line_naming_the_resume_command(tmp_path, stop, status):
    run_dir = tmp_path / "run"
    args = ["model=vgg16", *TINY, "trainer.epochs=50", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # SIGINT as a terminal delivers it: a job started in the background (`.ci/run &`) inherits it ignored.
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        wait_for_backup(run_dir, process)
        process.send_signal(stop)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == status, output[-3000:]
    assert "Traceback" not in output
    assert f"hydra.run.dir={run_dir} resume=true" in output
    assert (run_dir / "backup").is_dir() and not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_images_removed_while_a_run_reads_its_files_stop_it_naming_them_and_the_command_that_goes_on(tmp_path):
    import shlex

    from tests.conftest import write_image_folder

    folder = write_image_folder(tmp_path / "imgs", {"a": 15, "b": 15}, size=20, fmt="jpg")
    run_dir = tmp_path / "run"
    remove = f"{{_target_:tests.user_parts.RemoveValImages,splits:'{run_dir / 'splits.csv'}',count:4}}"
    args = [*TINY, "trainer.steps_per_epoch=null", "trainer.validation_steps=null", "data.batch_size=2"]
    args += ["data=folder", f"data.path={folder}", "data.cache=none", "data.val_split=0.2"]
    args += ["model.weights=null", "model.input_size=[32,32]"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = run_cli([*args, f"trainer.callbacks=[{remove}]", f"hydra.run.dir={run_dir}"], env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    assert "while it trained, reading the files every epoch (data.cache=none): of its 30 images, 4 (" in errors[0]
    assert "Finished epochs are kept; continue with: python run.py " in errors[0]
    assert not (run_dir / "metrics.json").exists() and (run_dir / "backup").is_dir()
    command = shlex.split(errors[0].split("continue with: ")[1])
    assert command[-3:] == [f"hydra.run.dir={run_dir}", "resume=true", "data.on_changed=use_remaining"]
    again = run_cli(command[2:], env=env)  # the command as printed, from its `run.py` on
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "data.on_changed=use_remaining: of the 30 train/val/test images recorded in" in again.stdout + again.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2


@pytest.mark.slow
def test_a_two_phase_run_killed_while_fine_tuning_resumes_in_that_phase(tmp_path):
    import keras

    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    weights = tmp_path / "base.weights.h5"
    base.save_weights(weights)
    run_dir = tmp_path / "run"
    args = ["model=vgg16", f"model.weights={weights}", "model.input_size=[32,32]", *TINY, "trainer.epochs=4"]
    args += ["finetune.head_epochs=1", "trainer.early_stopping=10", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_backup(run_dir, process, phase=2)  # the head phase, and one fine-tuning epoch, done
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (run_dir / "metrics.json").exists()

    resumed = run_cli([*args, "resume=true"])
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert "Phase 2/2" in output and "Phase 1/2" not in output  # the head phase is not trained again
    epochs = [int(line.split(",")[0]) for line in (run_dir / "history.csv").read_text().splitlines()[1:]]
    assert epochs == [1, 2, 3, 4]
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 4
    assert not (run_dir / "backup").exists()


SMALL = ["model=mobilenet_v2", "model.input_size=[32,32]", "model.weights=null", *TINY, "trainer.epochs=3"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "epoch"),
    [
        ("history_row", 0),  # no backup yet: starts again at epoch 1
        ("history_row", 1),
        ("weights_partial", 1),
        ("before_metadata", 1),
        ("after_metadata", 1),
        ("before_metrics", 0),
    ],
)
def test_a_run_killed_at_any_instant_around_an_epochs_end_resumes_to_all_its_epochs(tmp_path, point, epoch):
    run_dir = tmp_path / "run"
    args = [*SMALL, f"hydra.run.dir={run_dir}"]
    killed = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_run.py"), point, str(epoch), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    refused = run_cli(args, timeout=120)  # the refusal names the command that continues the run: run it
    refusal = refused.stdout + refused.stderr
    assert refused.returncode == 2 and "add resume=true to continue that run" in refusal
    assert (run_dir / ".kfactory.lock").exists()  # the refusal wrote nothing, not even a takeover of the lock
    resumed = run_cli([*args, "resume=true"])
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert "Taking over the lock" in output  # the killed process's lock: the resumed run takes it over
    assert ("starting again at epoch 1" in output) == (point == "history_row" and epoch == 0)
    epochs = [int(line.split(",")[0]) for line in (run_dir / "history.csv").read_text().splitlines()[1:]]
    assert epochs == [1, 2, 3]
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 3
    assert not (run_dir / "backup").exists() and not (run_dir / ".kfactory.lock").exists()

    again = run_cli([*args, "resume=true"], timeout=120)  # idempotent: a requeue script may always pass it
    assert again.returncode == 0 and "is complete" in again.stdout + again.stderr

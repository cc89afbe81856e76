"""A NaN loss stops the run at once, keeps the last good model and names the epoch and a fix."""

from __future__ import annotations

import shlex

import numpy as np
import pytest
from omegaconf import OmegaConf

from kfactory.errors import RunStopped
from tests.conftest import TINY, compose_config, run_cli


def test_nan_loss_stops_training_keeps_the_best_model_and_names_the_epoch(tmp_path):
    import keras

    from kfactory.train.best_model import BestModelCheckpoint
    from kfactory.train.callbacks import stop_if_diverged
    from kfactory.train.divergence import StopOnNaN

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    x, y = np.ones((32, 4), "float32"), np.ones((32, 2), "float32")
    cfg = compose_config(["optimizer.learning_rate=0.01"])
    checkpoint = BestModelCheckpoint(tmp_path / "model.keras", "loss", {})
    callbacks = [checkpoint, StopOnNaN()]
    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=callbacks)  # two good epochs
    saved = (tmp_path / "model.keras").read_bytes()
    model.compile(keras.optimizers.SGD(1e30), "mse")
    model.fit(x, y, initial_epoch=2, epochs=5, batch_size=8, verbose=0, callbacks=callbacks)
    assert callbacks[1].stopped is not None and callbacks[1].stopped[0] == 2  # stopped in epoch 3
    assert (tmp_path / "model.keras").read_bytes() == saved  # the NaN epoch was not saved
    with pytest.raises(RunStopped, match=r"epoch 3 .*epoch 2\).*optimizer.learning_rate=0.001"):
        stop_if_diverged(callbacks, cfg, checkpoint)


@pytest.mark.slow
def test_cli_exits_non_zero_with_one_line_when_the_loss_becomes_nan(tmp_path):
    run_dir = tmp_path / "nan"
    args = ["model=vgg16", *TINY, "optimizer=sgd", "optimizer.learning_rate=1e30", f"hydra.run.dir={run_dir}"]
    result = run_cli(args)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output and "RuntimeWarning" not in output  # one line, nothing else
    assert "Training loss became NaN or infinite in epoch 1" in output
    # The message's command starts over in a new directory with a tenth of the learning rate: run it.
    command = output.split("start over in a new run directory: ", 1)[1].splitlines()[0]
    assert command.startswith("python run.py ") and "hydra.run.dir" not in command
    before = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    retry_dir = tmp_path / "retry"  # the command leaves the folder to Hydra; here under tmp_path
    retried = run_cli([*shlex.split(command)[2:], f"hydra.run.dir={retry_dir}"])
    assert OmegaConf.load(retry_dir / ".hydra" / "config.yaml").optimizer.learning_rate == 1e29, retried.stderr[-2000:]
    assert "(now 1e+29)" in retried.stdout + retried.stderr  # still too high here: it says so again, one step lower
    assert {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(("hold_s", "expected"), [(600, ["backup 0", "requeue"]), (0, ["requeue", "backup 0"])])
def test_a_requeue_signal_waits_for_the_epochs_backup_unless_that_takes_too_long(hold_s, expected):
    import os
    import signal

    import keras
    import numpy as np

    from kfactory.run.requeue import RequeueAtEpochEnd

    events: list[str] = []
    before = signal.signal(signal.SIGUSR2, lambda signum, frame: events.append("requeue"))  # stands in for submitit
    try:
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        signal_at_first_batch = keras.callbacks.LambdaCallback(
            on_train_batch_begin=lambda batch, logs: batch == 0 and not events and os.kill(os.getpid(), signal.SIGUSR2)
        )
        backup = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: events.append(f"backup {epoch}"))
        x = np.zeros((8, 2), dtype="float32")
        callbacks = [signal_at_first_batch, backup, RequeueAtEpochEnd(hold_s)]
        model.fit(x, x[:, :1], batch_size=2, epochs=1, callbacks=callbacks, verbose=0)
    finally:
        signal.signal(signal.SIGUSR2, before)
    assert events == expected


@pytest.mark.parametrize(
    ("monitor", "epochs", "best_epoch"),
    [
        # accuracy at its best from epoch 2 on, while the loss goes on falling: the epoch that fits best
        ("val_accuracy", [(0.9, 0.5), (0.99, 0.2), (0.99, 0.1), (0.99, 0.15), (0.98, 0.05)], 2),
        ("val_accuracy", [(0.9, 0.5), (0.99, 0.2), (0.99, 0.3)], 1),  # a tie with a higher loss keeps the first
        ("val_loss", [(0.9, 0.5), (0.99, 0.2), (0.98, 0.2)], 1),  # the tie-break is the monitor: strictly better
    ],
)
def test_the_best_epoch_of_a_tie_on_the_monitor_is_the_one_with_the_lower_val_loss(
    tmp_path, monitor, epochs, best_epoch
):
    import keras

    from kfactory.train.best_model import BestModelCheckpoint

    checkpoint = BestModelCheckpoint(tmp_path / "model.keras", monitor, {})
    checkpoint.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    for epoch, (accuracy, loss) in enumerate(epochs):
        checkpoint.on_epoch_end(epoch, {"loss": 1.0, "val_accuracy": accuracy, "val_loss": loss})
    assert checkpoint.best_epoch == best_epoch
    assert checkpoint.best_logs["val_loss"] == epochs[best_epoch][1]

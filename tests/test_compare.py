"""kfactory.report.compare: event files of several runs -> one DataFrame, leaderboard, CSV and PNG."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import tensorflow as tf

from kfactory.report.compare import leaderboard, load_scalars, main, split_run


def write_run(job: Path, accuracy: list[float], loss: list[float]) -> None:
    """A kfactory-like run: tensorboard/train and tensorboard/validation, one point per epoch."""
    for series, values in (("train", loss), ("validation", accuracy)):
        writer = tf.summary.create_file_writer(str(job / "tensorboard" / series))
        with writer.as_default():
            for epoch, value in enumerate(values, start=1):  # steps count epochs from 1, as kfactory writes
                tf.summary.scalar("epoch_loss" if series == "train" else "epoch_accuracy", value, step=epoch)
        writer.close()


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> tuple[Path, Path]:
    monday, tuesday = tmp_path_factory.mktemp("monday"), tmp_path_factory.mktemp("tuesday")
    write_run(monday / "0_model=vgg16", [0.5, 0.6, 0.7], [1.0, 0.8, 0.6])
    write_run(monday / "1_model=resnet50", [0.4, 0.9], [1.2, 0.5])
    write_run(tuesday / "0_optimizer=sgd", [0.3, 0.35], [2.0, 1.9])
    return monday, tuesday


def test_split_run():
    assert split_run("3_model=vgg16/tensorboard/validation") == ("3_model=vgg16", "validation")
    assert split_run("sweep/3_a=1/tensorboard") == ("sweep/3_a=1", "")
    assert split_run("elsewhere/run") == ("elsewhere/run", "")


def test_scalars_of_every_run_in_one_frame(sweeps):
    scalars = load_scalars(list(sweeps))
    monday, tuesday = (p.name for p in sweeps)
    jobs = {f"{monday}/0_model=vgg16", f"{monday}/1_model=resnet50", f"{tuesday}/0_optimizer=sgd"}
    assert set(scalars["job"]) == jobs  # several roots: run names start with the root's name
    vgg = scalars[(scalars.job == f"{monday}/0_model=vgg16") & (scalars.metric == "validation/epoch_accuracy")]
    assert vgg.sort_values("step")["value"].tolist() == pytest.approx([0.5, 0.6, 0.7])
    assert len(scalars) == 2 * (3 + 2 + 2)


def test_leaderboard_best_first(sweeps):
    board = leaderboard(load_scalars([sweeps[0]]))
    assert board.index.tolist() == ["1_model=resnet50", "0_model=vgg16"]  # last validation accuracy 0.9 > 0.7
    assert board["epochs"].tolist() == [2, 3]
    by_loss = leaderboard(load_scalars([sweeps[0]]), sort="train/epoch_loss")
    assert by_loss.index.tolist() == ["1_model=resnet50", "0_model=vgg16"]  # 0.5 < 0.6


def test_cli_writes_csv_and_png(sweeps, tmp_path: Path, capsys):
    csv, png = tmp_path / "all.csv", tmp_path / "accuracy.png"
    args = [*map(str, sweeps), "--csv", str(csv), "--plot", "validation/epoch_accuracy", "--png", str(png)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.index("1_model=resnet50") < out.index("0_model=vgg16") < out.index("0_optimizer=sgd")
    table = pd.read_csv(csv)
    assert list(table.columns[:5]) == ["run", "job", "series", "tag", "metric"]
    assert len(table) == 14
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_names_what_it_cannot_find(sweeps, tmp_path: Path):
    with pytest.raises(SystemExit, match="no such metric"):
        main([str(sweeps[0]), "--plot", "validation/epoch_f1", "--png", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="no TensorBoard scalars"):
        main([str(tmp_path)])

"""Sweeps: safe job directory names, the summary.csv leaderboard, and TensorBoard over a real sweep."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from kfactory.config.resolvers import VARIED_KEYS_FILE
from kfactory.report.sweep import SweepSummary, summarize_sweep
from tests.conftest import TINY, hparams_session_groups, run_cli

# Two jobs train (dropout 0 and 0.5); two are refused before TensorFlow (a weights file that does not exist).
SWEEP = [
    *TINY,
    "model=vgg16",
    "trainer.epochs=1",
    "trainer.steps_per_epoch=1",
    "data.batch_size=8",
    "trainer.tensorboard.max_samples=32",
    "trainer.tensorboard.images=4",
    "seed=3",
    "model.dropout=0.0,0.5",
    "model.weights=null,/nonexistent/w.h5",
]


def test_varied_keys_are_the_sweeps_and_the_searched_params_not_fixed_on_the_command_line():
    from kfactory.report.sweep import varied_keys

    task = ["model=vgg16", "trainer.epochs=2,3", "model.dropout=choice(0.0,0.1)"]
    params = {"model": "choice(a,b)", "optimizer": "choice(adam,sgd)", "model.dropout": "interval(0,1)"}
    config = OmegaConf.create({"hydra": {"overrides": {"task": task}, "sweeper": {"params": params}}})
    assert varied_keys(config) == ["trainer.epochs", "model.dropout", "optimizer"]


def fake_job(root: Path, name: str, overrides: list[str], metrics: dict | None, error: bool = False) -> None:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"trainer": {"monitor": "val_loss"}}), job / ".hydra" / "config.yaml")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if error:
        (job / "error.txt").write_text("boom\n")


def test_summary_sorts_by_monitor_and_marks_failures(tmp_path: Path, capsys):
    fake_job(tmp_path, "0_lr=0.1", ["lr=0.1", "model=a"], {"best_val_loss": 0.9, "epochs_run": 3, "wall_time_s": 5.0})
    fake_job(tmp_path, "1_lr=0.01", ["lr=0.01", "model=a"], {"best_val_loss": 0.4, "epochs_run": 3, "wall_time_s": 6.0})
    fake_job(tmp_path, "2_lr=1", ["lr=1", "model=a"], None, error=True)
    fake_job(tmp_path, "3_lr=2", ["lr=2", "model=a"], {"best_val_loss": 0.1}, error=True)  # error.txt wins
    with pytest.raises(SystemExit) as stopped:
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert stopped.value.code == 1
    table = pd.read_csv(tmp_path / "summary.csv")
    assert table["job"].tolist() == [1, 0, 3, 2]  # loss: lowest first; failed jobs last
    assert table["status"].tolist() == ["ok", "ok", "failed", "failed"]
    assert table.columns[:4].tolist() == ["job", "lr", "status", "best_val_loss"]
    markdown = (tmp_path / "summary.md").read_text()
    assert "| job | lr | status |" in markdown and "model" not in markdown.split("\n")[4]  # shared keys left out
    assert f"tensorboard --logdir {tmp_path}" in capsys.readouterr().out


def test_summary_ranks_by_the_whole_split_value_it_shows_first(tmp_path: Path):
    # best_ comes from 2 validation batches per epoch, val_loss from the saved model on the whole split
    fake_job(tmp_path, "0_a=1", ["a=1"], {"best_val_loss": 0.1, "val_loss": 0.5})
    fake_job(tmp_path, "1_a=2", ["a=2"], {"best_val_loss": 0.4, "val_loss": 0.3})
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    table = pd.read_csv(tmp_path / "summary.csv")
    assert table["job"].tolist() == [1, 0]
    assert table.columns[:5].tolist() == ["job", "a", "status", "val_loss", "best_val_loss"]


def test_summary_ranks_pruned_trials_after_finished_ones_and_marks_the_pareto_front(tmp_path: Path):
    fake_job(tmp_path, "0_lr=0.1", ["lr=0.1"], {"best_val_loss": 0.5, "epochs_run": 4, "wall_time_s": 5.0})
    pruned = {"best_val_loss": 0.3, "epochs_run": 1, "wall_time_s": 1.0, "pruned": True, "pruned_epoch": 1}
    fake_job(tmp_path, "1_lr=0.01", ["lr=0.01"], pruned)
    fake_job(tmp_path, "2_lr=9", ["lr=9"], None, error=True)
    OmegaConf.save(
        OmegaConf.create({"solutions": [{"job": 1, "values": [0.3, 5]}]}), tmp_path / "optimization_results.yaml"
    )
    table = summarize_sweep(tmp_path)
    assert list(table["job"]) == [0, 1, 2]  # the pruned trial's better value does not put it first
    assert list(table["status"]) == ["ok", "pruned", "failed"]
    assert list(table["pareto"]) == [False, True, False]
    assert table.loc[1, "pruned_epoch"] == 1
    assert "| pruned |" in (tmp_path / "summary.md").read_text()


def test_summary_groups_jobs_that_differ_only_in_the_fold(tmp_path: Path, capsys):
    (tmp_path / VARIED_KEYS_FILE).write_text("model\ndata.fold\n")
    losses = {("a", 0): 0.4, ("a", 1): 0.6, ("b", 0): 0.2, ("b", 1): 0.3, ("b", 2): 0.1}
    for number, ((model, fold), loss) in enumerate(losses.items()):
        overrides = ["data.folds=3", f"model={model}", f"data.fold={fold}"]
        fake_job(tmp_path, f"{number}_model={model},data.fold={fold}", overrides, {"val_loss": loss, "epochs_run": 2})
    fake_job(tmp_path, "5_model=a,data.fold=2", ["data.folds=3", "model=a", "data.fold=2"], None, error=True)
    config = {"sweep": {"dir": str(tmp_path)}, "job": {"config": {"override_dirname": {"exclude_keys": ["seed"]}}}}
    with pytest.raises(SystemExit):  # a fold failed
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": config}))
    table = pd.read_csv(tmp_path / "summary.csv")
    groups = table[table["data.fold"] == "mean"]
    assert groups["cv_group"].tolist() == ["cv/model=b", "cv/model=a"]  # best mean loss first
    assert groups["folds"].tolist() == [3, 2] and groups["status"].tolist() == ["ok", "failed"]
    assert groups["val_loss"].tolist() == pytest.approx([0.2, 0.5])
    assert groups["val_loss_std"].tolist() == pytest.approx([np.std([0.2, 0.3, 0.1]), 0.1])
    assert groups["epochs_run"].tolist() == [2, 2] and groups["job"].isna().all()
    # each group's row, then its folds in fold order
    assert table["data.fold"].tolist() == ["mean", "0", "1", "2", "mean", "0", "1", "2"]
    assert table["job"].tolist()[1:4] == [2, 3, 4] and table["cv_group"].tolist()[5:] == ["cv/model=a"] * 3
    markdown = (tmp_path / "summary.md").read_text()
    assert "## Cross-validation" in markdown and "| cv/model=b | b | ok | 3 | 0.2 ± 0.082 |" in markdown
    assert "Sweep summary (6 jobs, 1 failed)" in capsys.readouterr().out


FOLDS = [*SWEEP[:8], "data.folds=2", "data.fold=range(2)"]  # SWEEP's tiny run, without its dropout/weights sweeps


@pytest.mark.slow  # about a minute on 2 cores
def test_a_fold_sweep_reports_its_mean_and_tensorboard_shows_one_group(tmp_path: Path):
    root = tmp_path / "folds"
    result = run_cli(["-m", *FOLDS, f"hydra.sweep.dir={root}"])
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(root / "summary.csv")
    assert table["data.fold"].tolist() == ["mean", "0", "1"]
    folds = table.iloc[1:]
    assert table.loc[0, "val_accuracy"] == pytest.approx(folds["val_accuracy"].mean())
    assert table.loc[0, "val_loss_std"] == pytest.approx(folds["val_loss"].std(ddof=0))
    assert folds["test_accuracy"].between(0, 1).all() and table.loc[0, "folds"] == 2
    assert "± " in (root / "summary.md").read_text()
    assert (
        "fold 1 of 2 validates (data.val_split is not used)"
        in (root / folds["dir"].iloc[-1] / "kfactory.log").read_text()
    )
    (group,) = hparams_session_groups(root)  # the two folds as one row, their metrics averaged
    assert group.name.startswith("cv/") and "data.fold=" not in group.name and "data.fold" not in group.hparams
    assert sorted(s.name for s in group.sessions) == [f"{d}/tensorboard" for d in sorted(folds["dir"])]
    final = {m.name.tag: m.value for m in group.metric_values}
    assert final["final/val_loss"] == pytest.approx(folds["val_loss"].mean(), rel=1e-4)


def test_summary_of_an_all_ok_sweep_does_not_exit(tmp_path: Path):
    fake_job(tmp_path, "0_a=1", ["a=1"], {"best_val_loss": 0.5})
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert len(summarize_sweep(tmp_path)) == 1


def test_failed_jobs_get_safe_directories_and_a_nonzero_exit(tmp_path: Path):
    root = tmp_path / "sweep"
    overrides = ["trainer=fast", "model.weights=/no/such/w.h5,/no/such/x.h5", f"hydra.sweep.dir={root}"]
    result = run_cli(["-m", *overrides])
    assert result.returncode == 1, result.stderr[-2000:]
    assert (root / VARIED_KEYS_FILE).read_text() == "model.weights\n"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [  # named by what differs, '/' made safe
        "0_model.weights=_no_such_w.h5",
        "1_model.weights=_no_such_x.h5",
    ]
    table = pd.read_csv(root / "summary.csv")
    assert table["status"].tolist() == ["failed", "failed"]
    assert table["model.weights"].tolist() == ["/no/such/w.h5", "/no/such/x.h5"]
    assert "tensorboard --logdir" in result.stdout


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("sweep") / "root"
    return root, run_cli(["-m", *SWEEP, f"hydra.sweep.dir={root}"])


@pytest.mark.slow
def test_multirun_summary_keeps_good_jobs_and_exits_nonzero(sweep):
    root, result = sweep
    assert result.returncode == 1, result.stderr[-3000:]
    table = pd.read_csv(root / "summary.csv", keep_default_na=False, na_values=[""])  # "null" stays a string
    assert (
        sorted(p.name for p in root.iterdir() if p.is_dir())
        == sorted(table["dir"])
        == [
            "0_model.dropout=0.0,model.weights=null",
            "1_model.dropout=0.0,model.weights=_nonexistent_w.h5",
            "2_model.dropout=0.5,model.weights=null",
            "3_model.dropout=0.5,model.weights=_nonexistent_w.h5",
        ]
    )
    assert sorted(table["status"]) == ["failed", "failed", "ok", "ok"]
    ok = table[table.status == "ok"]
    assert set(ok["model.weights"]) == {"null"} and set(ok["model.dropout"]) == {0.0, 0.5}
    assert ok["test_accuracy"].between(0, 1).all() and (ok["epochs_run"] == 1).all()
    assert (table[table.status == "failed"]["model.weights"] == "/nonexistent/w.h5").all()
    assert "Sweep summary (4 jobs, 2 failed)" in result.stdout
    assert (root / "summary.md").exists()


@pytest.mark.slow
def test_compare_cli_reads_the_sweep(sweep, tmp_path: Path):
    root, _ = sweep
    csv, png = tmp_path / "scalars.csv", tmp_path / "acc.png"
    args = [str(root), "--csv", str(csv), "--plot", "validation/epoch_accuracy", "--png", str(png)]
    result = subprocess.run([sys.executable, "-m", "kfactory.report.compare", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    scalars = pd.read_csv(csv)
    assert scalars["job"].nunique() == 2
    assert {"validation/epoch_accuracy", "train/epoch_loss", "final/test_accuracy"} <= set(scalars["metric"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def tensorboard_url(sweep):
    root, _ = sweep
    port = free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(root), "--host", "127.0.0.1"]
    server = subprocess.Popen([*command, "--port", str(port), "--load_fast=false"], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        yield wait_for_runs(url, server, expected=6)  # 2 jobs x (tensorboard, train, validation)
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_for_runs(url: str, server: subprocess.Popen, expected: int, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(server.stderr.read().decode()[-2000:])
        try:
            if len(fetch(f"{url}/data/runs")) >= expected:
                return url
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"TensorBoard at {url} did not list {expected} runs")


@pytest.mark.slow
def test_tensorboard_serves_the_sweep(tensorboard_url):
    url = tensorboard_url
    runs = fetch(f"{url}/data/runs")
    assert "." in runs  # the sweep root: the one HParams experiment config
    jobs = {run.split("/")[0] for run in runs if run != "."}
    assert len(jobs) == 2 and all("model.dropout=" in job for job in jobs)
    validation = [r for r in runs if r.endswith("tensorboard/validation")]
    assert len(validation) == 2
    scalars = fetch(f"{url}/data/plugin/scalars/tags")
    assert all("epoch_accuracy" in scalars[r] for r in validation)
    own = [r for r in runs if r.endswith("/tensorboard")]
    assert len(own) == 2
    pr_curves = fetch(f"{url}/data/plugin/pr_curves/tags")
    assert all({"pr_curve/0/pr_curves", "pr_curve/micro_average/pr_curves"} <= set(pr_curves[r]) for r in own)
    images = fetch(f"{url}/data/plugin/images/tags")
    assert all({"confusion_matrix", "validation_images"} <= set(images[r]) for r in own)
    experiment = fetch(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""})
    hparams = {h["name"]: h for h in experiment["hparamInfos"]}
    assert {"model", "optimizer", "learning_rate", "dropout", "batch_size", "weights"} <= set(hparams)
    assert {name for name, h in hparams.items() if h.get("differs")} == {"dropout", "weights"}  # shown by default
    assert hparams["dropout"]["domainDiscrete"] == [0.0, 0.5]
    assert sorted(hparams["weights"]["domainDiscrete"]) == ["/nonexistent/w.h5", "null"]
    shown = [m["displayName"] for m in experiment["metricInfos"]]
    assert len(shown) == len(set(shown)) and {"validation/loss", "train/loss", "final/test_accuracy"} <= set(shown)
    groups = fetch(
        f"{url}/data/plugin/hparams/session_groups",
        {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN"], "startIndex": 0, "sliceSize": 10},
    )
    by_name = {g["name"]: g["hparams"]["dropout"] for g in groups["sessionGroups"]}
    assert by_name == {"0_model.dropout=0.0,model.weights=null": 0.0, "2_model.dropout=0.5,model.weights=null": 0.5}


@pytest.mark.slow  # two sweeps through run.py
def test_a_sweep_run_again_into_its_folder_adds_jobs_and_leaves_the_earlier_ones_untouched(tmp_path: Path):
    root = tmp_path / "sweep"
    args = ["-m", "trainer=fast", "model.dropout=0.1,0.2", "model.weights=/no/such/w.h5", f"hydra.sweep.dir={root}"]
    first = run_cli(args)  # both jobs are refused before TensorFlow: quick, and each leaves error.txt
    assert first.returncode == 1, first.stderr[-2000:]
    earlier = {str(p.relative_to(root)): p.read_bytes() for p in root.glob("[0-9]*/**/*") if p.is_file()}
    second = run_cli(args)
    assert second.returncode == 1, second.stderr[-2000:]
    jobs = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert jobs == ["0_model.dropout=0.1", "1_model.dropout=0.2", "2_model.dropout=0.1", "3_model.dropout=0.2"]
    assert {str(p.relative_to(root)): p.read_bytes() for p in root.glob("[0-1]_*/**/*") if p.is_file()} == earlier
    assert pd.read_csv(root / "summary.csv")["job"].tolist() == [0, 1, 2, 3]  # the summary lists both calls
    resumed = run_cli([*args, "resume=true"])  # resuming sends each job back to its own folder
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == jobs, resumed.stderr[-2000:]

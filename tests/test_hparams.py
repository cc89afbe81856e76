"""The HParams experiment config a sweep writes at its root: domains, what is shown, and no TensorFlow."""

from __future__ import annotations

import subprocess
import sys

from omegaconf import DictConfig, open_dict
from tensorboard.plugins.hparams import metadata

from kfactory.config.resolvers import fold_group
from kfactory.train.hparams import run_hparams, session_group, sweep_domains, sweep_experiment
from tests.conftest import ROOT, compose_config


def sweep_config(task_overrides: list[str], overrides: list[str] | None = None) -> DictConfig:
    """The composed config as the sweep callback sees it, with ``task_overrides`` as the multirun's command line."""
    cfg = compose_config(overrides or [], run_dir=ROOT)
    with open_dict(cfg):
        cfg.hydra.overrides.task = task_overrides
    return cfg


def test_domains_come_from_list_range_and_interval_sweeps_and_the_command_line_wins():
    cfg = sweep_config(
        ["optimizer=adam,sgd", "data.batch_size=range(16,49,16)", "model=vgg16"], ["hparams_search=optuna"]
    )
    domains = sweep_domains(cfg)
    assert domains["optimizer"] == ["adam", "sgd"]  # the command line replaces the search's choice
    assert domains["data.batch_size"] == [16.0, 32.0, 48.0]
    assert domains["model.dropout"] == (0.0, 0.5)  # an Optuna interval
    assert "model" not in domains  # fixed on the command line: not varied


def test_the_varied_keys_are_marked_as_differing_with_their_domains():
    summary = sweep_experiment(sweep_config(["optimizer=adam,sgd", "model.dropout=0.0,0.5,null"]))
    experiment = metadata.parse_experiment_plugin_data(summary.value[0].metadata.plugin_data.content)
    infos = {i.name: i for i in experiment.hparam_infos}
    assert {name for name, info in infos.items() if info.differs} == {"optimizer", "dropout"}
    assert [v.string_value for v in infos["dropout"].domain_discrete.values] == ["0.0", "0.5", "null"]  # one type
    shown = [m.display_name for m in experiment.metric_infos]
    assert len(shown) == len(set(shown))


def test_the_sweep_root_config_is_written_without_tensorflow(tmp_path):
    code = (
        "import sys; from omegaconf import OmegaConf; from pathlib import Path\n"
        "from kfactory.train.hparams import write_summary\n"
        "from tensorboard.plugins.hparams import summary_v2 as hp\n"
        "summary = hp.hparams_config_pb(hparams=[hp.HParam('optimizer')], metrics=[hp.Metric('epoch_loss')])\n"
        f"print(write_summary(Path({str(tmp_path)!r}), summary))\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    events = list(EventFileLoader(result.stdout.strip()).Load())
    assert events[-1].summary.value[0].tag == metadata.EXPERIMENT_TAG  # TensorBoard reads the framed records


def test_folds_are_aggregated_not_a_hyperparameter():
    summary = sweep_experiment(sweep_config(["model.dropout=0.0,0.5", "data.fold=range(3)", "data.folds=3"]))
    experiment = metadata.parse_experiment_plugin_data(summary.value[0].metadata.plugin_data.content)
    infos = {i.name: i for i in experiment.hparam_infos}
    assert {name for name, info in infos.items() if info.differs} == {"dropout"} and "data.fold" not in infos
    cfg = compose_config(["data.folds=3", "data.fold=1"])
    assert "data.fold" not in run_hparams(cfg, ["data.folds=3", "data.fold=1"])
    assert run_hparams(cfg, ["data.folds=3", "data.fold=1"])["data.folds"] == 3.0


def test_a_fold_joins_its_groups_session_and_other_runs_keep_their_own(tmp_path):
    overrides = ["model=vgg16", "data.folds=3", "data.fold=2"]
    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.hydra = {"overrides": {"task": overrides}}
    assert session_group(cfg, tmp_path / "run") == "cv/model=vgg16,data.folds=3"  # every override but the fold
    (tmp_path / "varied_keys.txt").write_text("model\ndata.fold\n")
    assert fold_group(overrides, [], tmp_path) == "cv/model=vgg16"  # in a sweep: the varied keys but the fold
    assert session_group(compose_config(["model=vgg16"]), tmp_path / "run") == "run"
    in_trial = compose_config(["hparams_search.cv_folds=3", "data.folds=3", "data.fold=1"])
    assert session_group(in_trial, tmp_path / "7_model=vgg16" / "fold_1") == "cv/7_model=vgg16"

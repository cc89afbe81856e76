"""kfactory's Optuna sweeper (hydra_plugins/kfactory_optuna_sweeper): the grammar, samplers, job numbers, discovery."""

from __future__ import annotations

from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402

from hydra_plugins.kfactory_optuna_sweeper import _impl  # noqa: E402
from kfactory.config.search import make_pruner  # noqa: E402
from kfactory.errors import ConfigError  # noqa: E402


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optimizer=choice(adam, sgd)", CategoricalDistribution(["adam", "sgd"])),
        ("data.batch_size=choice(16,32)", CategoricalDistribution([16, 32])),
        ("data.batch_size=16,32", CategoricalDistribution([16, 32])),  # the short form of choice
        ("trainer.epochs=range(2,8,2)", IntDistribution(2, 6, step=2)),  # stop excluded, as Hydra counts
        ("trainer.epochs=tag(log,range(1,9))", IntDistribution(1, 8, log=True)),
        ("model.dropout=range(0.0,0.5,0.1)", FloatDistribution(0.0, 0.4, step=0.1)),
        ("model.dropout=interval(0.0,0.5)", FloatDistribution(0.0, 0.5)),
        ("trainer.epochs=interval(1,10)", FloatDistribution(1.0, 10.0)),  # Hydra's interval is a float interval
        ("optimizer.learning_rate=tag(log,interval(1e-4,1e-2))", FloatDistribution(1e-4, 1e-2, log=True)),
    ],
)
def test_the_override_grammar_becomes_optuna_distributions(override, expected):
    space, fixed = _impl.search_space([override])
    assert list(space.values()) == [expected] and fixed == {}


def test_a_later_value_for_a_key_replaces_its_range_and_the_other_way_round():
    params = ["model=choice(vgg16,resnet50)", "model.dropout=interval(0,0.5)", "seed=3"]
    space, fixed = _impl.search_space([*params, "model=vgg16", "model.dropout=choice(0.0,0.2)"])
    assert space == {"model.dropout": CategoricalDistribution([0.0, 0.2])}
    assert fixed == {"model": "vgg16", "seed": "3"}


@pytest.mark.parametrize(
    ("override", "key"),
    [("trainer.epochs=tag(log,range(1,9,2))", "trainer.epochs"), ("trainer.epochs=range(5,1)", "trainer.epochs")],
)
def test_a_range_optuna_cannot_sample_is_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        _impl.search_space([override])


def test_params_reach_the_jobs_as_the_command_line_writes_them():
    from hydra_plugins.kfactory_optuna_sweeper._impl import param_overrides, search_space

    params = {"trainer.max_images_per_epoch": None, "trainer.deterministic": True, "model.input_size": "choice(32,64)"}
    overrides = param_overrides(params)
    assert overrides[:2] == ["trainer.max_images_per_epoch=null", "trainer.deterministic=true"]
    assert overrides[2] == "model.input_size=choice(32,64)"
    space, fixed = search_space(overrides)
    assert set(space) == {"model.input_size"} and fixed["trainer.max_images_per_epoch"] == "null"


def test_grid_takes_discrete_ranges_and_refuses_intervals():
    space, _ = _impl.search_space(["a=choice(x,y)", "b=range(1,4)", "c=range(0.0,0.3,0.1)"])
    sampler = _impl.make_sampler("grid", 0, {}, space)
    assert isinstance(sampler, optuna.samplers.GridSampler)
    assert [_impl.grid_values(k, d) for k, d in space.items()] == [["x", "y"], [1, 2, 3], [0.0, 0.1, 0.2]]
    with pytest.raises(ConfigError, match="sampler=grid"):
        _impl.make_sampler("grid", 0, {}, _impl.search_space(["d=interval(0,1)"])[0])


@pytest.mark.parametrize(
    ("name", "cls"),
    [("tpe", "TPESampler"), ("random", "RandomSampler"), ("cmaes", "CmaEsSampler"), ("nsga2", "NSGAIISampler")],
)
def test_samplers_by_name(name, cls):
    assert type(_impl.make_sampler(name, 1, {}, {})).__name__ == cls


def test_pruners_by_name_with_their_arguments():
    assert type(make_pruner("none")).__name__ == "NopPruner"
    assert make_pruner("hyperband", {"min_resource": 1, "max_resource": 4})._min_resource == 1
    with pytest.raises(ConfigError, match="^hydra.sweeper.pruner=bogus is not accepted"):
        make_pruner("bogus")
    with pytest.raises(ConfigError, match="^hydra.sweeper.pruner_args="):
        make_pruner("median", {"patience": 3})


def test_job_numbers_continue_after_the_highest_folder_or_trial(tmp_path: Path):
    assert _impl.next_job_number(tmp_path, []) == 0
    for name in ("0_model=a", "7_model=b", "summary.csv", ".submitit"):
        (tmp_path / name).mkdir()
    assert _impl.next_job_number(tmp_path, []) == 8
    trial = optuna.trial.create_trial(value=1.0, user_attrs={"job": 11})
    assert _impl.next_job_number(tmp_path, [trial]) == 12


def test_the_preset_selects_the_plugin_and_hydra_discovers_it(cfg_factory, tmp_path):
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    cfg = cfg_factory(["hparams_search=optuna"], run_dir=tmp_path)
    assert cfg.hydra.sweeper._target_.endswith("KfactoryOptunaSweeper")
    assert cfg.hydra.sweeper.seed == cfg.seed and cfg.hydra.sweeper.storage is None
    names = [p.__name__ for p in Plugins.instance().discover(Sweeper)]
    assert "KfactoryOptunaSweeper" in names

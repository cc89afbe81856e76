"""A command naming a Hydra plugin that is not installed names the pip extra to install."""

from __future__ import annotations

import importlib.util

import pytest

from kfactory.config import plugins
from tests.conftest import run_cli

RAY_INSTALLED = importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is not None


@pytest.mark.parametrize(
    ("override", "extra"),
    [
        ("hydra/launcher=ray", "ray"),
        ("hydra/launcher=submitit_slurm", "slurm"),
        ("hydra/launcher=joblib", "sweep"),
        ("hparams_search=optuna", "sweep"),
        ("+hydra/sweeper=kfactory_optuna", "sweep"),
    ],
)
def test_missing_plugin_names_the_extra(monkeypatch, override, extra):
    monkeypatch.setattr(plugins, "_installed", lambda module: False)
    message = plugins.missing_plugin(["model=vgg16", override])
    assert message.startswith(override.lstrip("+"))
    assert f"pip install -e '.[{extra}]'" in message


def test_installed_plugins_and_other_overrides_pass():
    assert plugins.missing_plugin(["model=vgg16", "hydra/launcher=basic", "trainer.epochs=2"]) is None
    assert plugins.missing_plugin(["hydra/launcher=joblib", "hparams_search=optuna"]) is None  # the dev extra


@pytest.mark.skipif(RAY_INSTALLED, reason="the ray launcher is installed here")
def test_cli_refuses_a_missing_launcher_before_hydra_composes(tmp_path):
    result = run_cli(["-m", "hydra/launcher=ray", "model.dropout=0.0,0.1", f"hydra.sweep.dir={tmp_path}"])
    assert result.returncode == 2
    assert "pip install -e '.[ray]'" in result.stderr
    assert "Could not find" not in result.stderr  # Hydra's own, less helpful error never shows
    assert not any(tmp_path.iterdir())

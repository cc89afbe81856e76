"""``${kf_job_dirname:...}``: a sweep job's directory named after what varies, safe on any filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from kfactory.config.resolvers import (
    MAX_DIRNAME,
    VARIED_KEYS_FILE,
    job_dirname,
    read_varied_keys,
    register_resolvers,
    safe_dirname,
)
from kfactory.overrides import split_override
from tests.conftest import compose_config


def test_safe_dirname_replaces_slashes_and_shortens():
    assert safe_dirname("model=vgg16,optimizer=sgd") == "model=vgg16,optimizer=sgd"
    assert safe_dirname("data.path=/home/me/my photos") == "data.path=_home_me_my_photos"
    long_a, long_b = "x" * 200 + "a", "x" * 200 + "b"
    assert len(safe_dirname(long_a)) == MAX_DIRNAME
    assert safe_dirname(long_a) != safe_dirname(long_b)  # the hash keeps them apart
    assert safe_dirname(long_a).startswith("x" * (MAX_DIRNAME - 9) + "-")  # a readable prefix, then the hash


@pytest.mark.parametrize("character", list("\\:*?\"<>|[]{}$`'~ \t\n"))
def test_safe_dirname_leaves_nothing_a_shell_or_windows_trips_on(character):
    assert safe_dirname(f"a{character}b") == "a_b"


def test_a_run_of_unsafe_characters_becomes_one_underscore():
    assert safe_dirname("model.input_size=[32, 32]") == "model.input_size=_32,_32_"
    assert safe_dirname("data.path=C:\\\\photos") == "data.path=C_photos"


def test_job_dirname_rounds_floats_and_shortens_words_not_keys(tmp_path: Path):
    overrides = ["optimizer=adamw", "optimizer.learning_rate=0.00031234567", "model.dropout=0.3005575058716044"]
    name = job_dirname([*overrides, "data.batch_size=64", "model=efficientnet_b0"], [], str(tmp_path))
    assert name == (
        "optimizer=adamw,optimizer.learning_rate=0.0003123,model.dropout=0.3006,data.batch_size=64,model=efficientnet_b0"
    )
    assert job_dirname(["model.dropout=1e-05", "seed=7"], [], str(tmp_path)) == "model.dropout=1e-05,seed=7"
    long = ["model=efficientnet_v2_b0", "loss=categorical_focal_crossentropy", "optimizer.learning_rate=0.0001234"]
    long += ["data.augment=strong", "trainer.monitor=val_top_k_accuracy", "optimizer=rmsprop", "model.dropout=0.25"]
    name = job_dirname(long, [], str(tmp_path))
    assert len(name) <= MAX_DIRNAME
    assert [split_override(o)[0] for o in name.split(",")] == [split_override(o)[0] for o in long]  # every key
    assert "optimizer.learning_rate=0.0001234" in name  # numbers are never cut
    assert "loss=categorical_focal_cross" not in name  # the longest words were cut first


def test_job_dirname_keeps_the_varied_keys(tmp_path: Path):
    overrides = ["trainer=fast", "model.dropout=0.5", "seed=3", "+data.path=/x/y", "optimizer=sgd"]
    everything = "trainer=fast,model.dropout=0.5,+data.path=_x_y,optimizer=sgd"  # no record of the sweep: all
    assert job_dirname(overrides, ["seed"], str(tmp_path)) == everything  # in the order written
    (tmp_path / VARIED_KEYS_FILE).write_text("model.dropout\noptimizer\ndata.path\n")
    assert job_dirname(overrides, ["seed"], str(tmp_path)) == "model.dropout=0.5,+data.path=_x_y,optimizer=sgd"
    assert job_dirname(["trainer=fast"], [], str(tmp_path)) == "trainer=fast"  # nothing varied: keep all


def test_excluded_keys_match_with_a_plus_or_tilde_prefix(tmp_path: Path):
    assert job_dirname(["+seed=3", "~trainer.ema", "model=vgg16"], ["seed", "trainer.ema"], str(tmp_path)) == (
        "model=vgg16"
    )
    assert job_dirname(["seed=3"], ["seed"], str(tmp_path)) == ""
    assert job_dirname(["seed=3"], None, str(tmp_path)) == "seed=3"  # exclude_keys may be null


def test_varied_keys_are_read_from_the_sweep_root(tmp_path: Path):
    assert read_varied_keys(tmp_path) == set()
    (tmp_path / VARIED_KEYS_FILE).write_text("model.dropout optimizer\ndata.path\n")
    assert read_varied_keys(str(tmp_path)) == {"model.dropout", "optimizer", "data.path"}


def test_registering_twice_keeps_one_resolver():
    resolver = OmegaConf._get_resolver("kf_job_dirname")
    register_resolvers()  # e.g. kfactory.app imported after kfactory.config.resolvers: no ValueError
    assert OmegaConf._get_resolver("kf_job_dirname") is resolver


def test_the_sweep_subdir_of_the_real_config_is_the_job_number_and_the_varied_overrides(tmp_path: Path):
    cfg = compose_config([], run_dir=tmp_path)
    (tmp_path / VARIED_KEYS_FILE).write_text("model.dropout\n")
    with open_dict(cfg):
        cfg.hydra.job.num = 3
        cfg.hydra.overrides.task = ["model.dropout=0.5", "seed=1", "trainer=fast", "hydra.sweep.dir=/x"]
        cfg.hydra.sweep.dir = str(tmp_path)
    assert cfg.hydra.sweep.subdir == "3_model.dropout=0.5"
    (tmp_path / VARIED_KEYS_FILE).unlink()  # not recorded: every override but the excluded keys (seed, dirs)
    assert cfg.hydra.sweep.subdir == "3_model.dropout=0.5,trainer=fast"


@pytest.mark.parametrize(
    ("model", "reachable", "weights"),
    [("mobilenet_v2", True, "imagenet"), ("mobilenet_v2", False, None), ("small_cnn", True, None)],
)
def test_imagenet_or_null_fine_tunes_only_a_model_with_imagenet_weights_that_download(
    monkeypatch, model, reachable, weights
):
    from kfactory.config import resolvers

    monkeypatch.setattr(resolvers, "imagenet_reachable", lambda: reachable)
    cfg = compose_config([f"model={model}", "model.weights=${kf_imagenet_or_null:}"])  # as a search's trial gets it
    assert cfg.model.weights == weights

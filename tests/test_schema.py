"""The typed schema: defaults once, wrong types refused in one line, room for plug-ins."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from omegaconf import OmegaConf

from kfactory.config.validate import validate
from kfactory.errors import ConfigError
from kfactory.registry import MODELS
from kfactory.schema import ModelConfig, RunConfig, apply_schema
from tests.conftest import CONF_DIR, compose_config, run_cli

# (overrides, the key named, what the message says is accepted)
TYPE_REFUSALS = [
    (["data.batch_size=true"], "data.batch_size", "an integer"),  # a bool is not an int
    (["task=predict", "predict.top_k=true"], "predict.top_k", "an integer"),
    (["trainer.epochs=2.5"], "trainer.epochs", "an integer"),
    (["model.dropout=abc"], "model.dropout", "a number"),  # a string is not a float
    (["trainer.ema=fast"], "trainer.ema", "null or a number"),
    (["trainer.tensorboard.images=many"], "trainer.tensorboard.images", "an integer"),
    (["unsafe_load=1"], "unsafe_load", "true or false"),  # an int is not a bool either
    (["resume=1"], "resume", "true, false or auto"),  # typed Any (a bool or auto), and 1 == True is no bool
    (["resume=yes"], "resume", "true, false or auto"),
    (["trainer.callbacks=5"], "trainer.callbacks", "a list"),
    (["loss=custom", "loss._target_=x.y", "loss.labels=[1]"], "loss.labels", "a string"),
    (["hparams_search.objectives=val_accuracy"], "hparams_search.objectives", "a list"),
    (["trainer.deterministic=yes"], "trainer.deterministic", "true, false or auto"),
    (["trainer.deterministic=1"], "trainer.deterministic", "true, false or auto"),
    (["data.val_split=[0.1]"], "data.val_split", "a number"),
    (["+trainer.epoch=3"], "trainer.epoch", "a key of trainer"),  # an unknown key under a typed group
    (["+finetune.head=1"], "finetune.head", "a key of finetune"),
    (["+model.width=8"], "model.width", "other keys only with model._target_"),
    (["+data.foo=1"], "data.foo", "other keys only with data._target_"),
    (["optimizer/schedule=cosine", "+optimizer.schedule.patience=2"], "optimizer.schedule.patience", "a key of"),
    (["optimizer/schedule=step", "optimizer.schedule.step_epochs=often"], "optimizer.schedule.step_epochs", "integer"),
]


@pytest.mark.parametrize(("overrides", "key", "accepted"), TYPE_REFUSALS, ids=[" ".join(t[0]) for t in TYPE_REFUSALS])
def test_a_wrong_type_is_refused_in_one_line_naming_key_value_and_type(overrides, key, accepted):
    with pytest.raises(ConfigError) as caught:
        validate(compose_config(overrides))
    message = str(caught.value)
    assert caught.value.key == key
    assert message.startswith(f"{key}=") and "is not accepted" in message and accepted in message
    assert "\n" not in message


def test_a_wrong_type_on_the_command_line_exits_2_with_one_line(tmp_path):
    result = run_cli(["data.batch_size=true", f"hydra.run.dir={tmp_path}"], timeout=120)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
    assert result.returncode == 2
    assert len(errors) == 1 and errors[0].endswith("data.batch_size=true is not accepted: an integer")


def test_validate_returns_the_config_typed_by_the_schema():
    cfg = validate(compose_config(["model.dropout=0", "optimizer/schedule=cosine"]))
    assert OmegaConf.get_type(cfg) is RunConfig
    assert isinstance(cfg.model.dropout, float)
    assert cfg.optimizer.schedule == {"name": "cosine", "warmup_epochs": 0, "alpha": 0.0}
    assert cfg.optimizer.beta_1 == 0.9  # adam.yaml's own Keras argument passes through


def test_optimizer_and_loss_take_extra_keras_arguments():
    cfg = validate(compose_config(["+optimizer.clipnorm=1.0", "loss.label_smoothing=0.1"]))
    assert cfg.optimizer.clipnorm == 1.0 and cfg.loss.label_smoothing == 0.1


def test_plug_in_targets_may_carry_their_own_keys():
    overrides = ["model._target_=x.y", "+model.width=8", "data._target_=my.source", "+data.foo=1"]
    overrides += ["+trainer.callbacks=[{_target_: keras.callbacks.TerminateOnNaN}]"]
    overrides += ["trainer.metrics=[accuracy,{_target_: keras.metrics.AUC}]"]
    cfg = apply_schema(compose_config(overrides))
    assert (cfg.model._target_, cfg.model.width, cfg.data._target_, cfg.data.foo) == ("x.y", 8, "my.source", 1)
    assert cfg.trainer.callbacks[0]._target_ == "keras.callbacks.TerminateOnNaN"
    assert cfg.trainer.metrics[1]._target_ == "keras.metrics.AUC"


def test_every_key_and_default_is_printed_by_the_composed_config():
    cfg = compose_config([])
    for node in dataclasses.fields(RunConfig):
        assert node.name in cfg
    assert cfg.finetune.learning_rate_factor == 0.1  # one value, the schema's
    assert cfg.model.freeze == "all" and cfg.model.input_size == [32, 32]  # digits sizes the model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_model_file_holds_only_its_name(name):
    option = yaml.safe_load((CONF_DIR / "model" / f"{name}.yaml").read_text())
    own = {} if MODELS[name].application else {"weights": None}  # kfactory's own: no ImageNet weights
    assert option == {"name": name, **own}
    model = compose_config([f"model={name}", "data=keras"]).model
    shared = {f.name for f in dataclasses.fields(ModelConfig)} - {"name", *own}
    defaults = OmegaConf.structured(ModelConfig)
    assert all(model[key] == defaults[key] for key in shared)


def test_data_presets_are_packaged_under_data_except_digits():
    for preset in sorted((CONF_DIR / "data").glob("*.yaml")):
        first = preset.read_text().splitlines()[0]
        assert first == ("# @package _global_" if preset.stem == "digits" else "# @package data"), preset


def test_the_keys_of_plug_ins_resume_and_search_are_typed_with_their_defaults():
    cfg = validate(compose_config([]))
    assert cfg.trainer.callbacks == [] and cfg.loss.labels is None and cfg.hparams_search.objectives is None
    assert [cfg[group]._target_ for group in ("model", "loss", "optimizer", "data")] == [None] * 4
    assert validate(compose_config(["resume=auto"])).resume == "auto"
    search = validate(compose_config(["hparams_search=optuna", "hparams_search.objectives=[val_accuracy,params]"]))
    assert search.hparams_search.objectives == ["val_accuracy", "params"]


def test_a_named_loss_refuses_a_label_encoding_of_its_own():
    with pytest.raises(ConfigError, match=r"^loss.labels=sparse is not accepted: null with loss=categorical_cross"):
        validate(compose_config(["loss.labels=sparse"]))


def test_a_group_target_is_given_only_the_keys_the_schema_does_not_declare():
    from kfactory.schema import DataConfig
    from kfactory.targets import build

    cfg = apply_schema(compose_config(["data=custom", "data._target_=builtins.dict", "+data.root=/x"]))
    assert build("data", cfg.data, dict, "a dict", schema=DataConfig) == {"root": "/x"}

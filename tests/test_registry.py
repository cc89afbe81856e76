"""The model registry, the config groups and Keras agree on every option."""

from __future__ import annotations

import pytest

from kfactory.registry import ACTIVATIONS, LOSSES, MODELS, OPTIMIZERS, PREPROCESS_MODES, input_size
from kfactory.targets import CUSTOM
from tests.conftest import CONF_DIR, compose_config

APPLICATIONS = sorted(name for name, spec in MODELS.items() if spec.application)
OWN = sorted(name for name, spec in MODELS.items() if not spec.application)


def group_options(group: str) -> set[str]:
    return {p.stem for p in (CONF_DIR / group).glob("*.yaml")}


def test_every_keras_application_has_a_model_option():
    import keras

    from kfactory.model import nets

    applications = {name for name in dir(keras.applications) if name[0].isupper()}
    assert applications == {MODELS[name].keras_name for name in APPLICATIONS}
    assert len(APPLICATIONS) == 40
    assert all(callable(getattr(nets, MODELS[name].keras_name)) for name in OWN)
    assert group_options("model") == set(MODELS) | {CUSTOM}  # custom: your own model (tests/test_targets.py)


@pytest.mark.parametrize("name", OWN)
def test_kfactorys_own_networks_compose_from_scratch_at_their_size(name):
    spec = MODELS[name]
    assert f"{spec.default_size} px" in (CONF_DIR / "model" / f"{name}.yaml").read_text().splitlines()[0]
    cfg = compose_config([f"model={name}", "data=folder", "data.path=/nonexistent"])
    assert input_size(cfg.model) == (spec.default_size, spec.default_size)
    assert cfg.model.weights is None  # no ImageNet weights to start from


@pytest.mark.parametrize("name", APPLICATIONS)
def test_model_option_composes_with_its_own_size(name):
    spec = MODELS[name]
    assert spec.preprocess in PREPROCESS_MODES
    text = (CONF_DIR / "model" / f"{name}.yaml").read_text()
    assert text.startswith("# "), "each option starts with a comment saying what it is"
    assert f"{spec.default_size} px" in text.splitlines()[0]  # the comment names the size null stands for
    cfg = compose_config([f"model={name}", "data=folder", "data.path=/nonexistent"])
    assert cfg.model.name == name
    assert input_size(cfg.model) == (spec.default_size, spec.default_size)
    assert cfg.model.weights == "imagenet"


def keras_input_sizes(spec) -> tuple[int, int]:
    """(default, min) input side as Keras's builder for ``spec`` declares it, read without building the model."""
    import keras
    from keras.src.applications import imagenet_utils, mobilenet_v3

    if spec.keras_name.startswith("MobileNetV3"):  # no obtain_input_shape: its ImageNet weights name the size
        sizes = {int(key.split("_")[-3]) for key in mobilenet_v3.WEIGHTS_HASHES}  # large_224_0.75_float
        assert len(sizes) == 1
        return sizes.pop(), 32

    class Declared(Exception):
        pass

    def declared(input_shape, default_size, min_size, **kwargs):
        raise Declared(default_size, min_size)

    original, imagenet_utils.obtain_input_shape = imagenet_utils.obtain_input_shape, declared
    try:
        getattr(keras.applications, spec.keras_name)(weights=None, include_top=True)
    except Declared as sizes:
        return sizes.args
    finally:
        imagenet_utils.obtain_input_shape = original
    raise AssertionError(f"{spec.keras_name} did not ask obtain_input_shape for its size")


@pytest.mark.parametrize("name", APPLICATIONS)
def test_default_and_minimum_sizes_are_the_ones_keras_declares(name):
    spec = MODELS[name]
    assert (spec.default_size, spec.min_size) == tuple(keras_input_sizes(spec))


def test_optimizer_and_loss_options_match_the_registry():
    assert group_options("optimizer") == set(OPTIMIZERS) | {CUSTOM}
    assert group_options("loss") == set(LOSSES) | {CUSTOM}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_option_builds(name):
    from kfactory.train.compile import make_optimizer

    cfg = compose_config([f"optimizer={name}", "optimizer.learning_rate=0.05"])
    optimizer = make_optimizer(cfg.optimizer)
    assert type(optimizer).__name__ == OPTIMIZERS[name]
    assert float(optimizer.learning_rate) == pytest.approx(0.05)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_option_builds(name):
    from kfactory.train.compile import make_loss

    activation = "sigmoid" if name.startswith("binary") else "softmax"
    cfg = compose_config([f"loss={name}", f"model.activation={activation}"])
    loss = make_loss(cfg.loss, cfg.model.activation)
    assert type(loss).__name__ == LOSSES[name]


def test_linear_output_makes_crossentropy_take_logits():
    from kfactory.train.compile import make_loss

    cfg = compose_config(["model.activation=linear"])
    assert make_loss(cfg.loss, "linear").get_config()["from_logits"] is True
    assert make_loss(cfg.loss, "softmax").get_config()["from_logits"] is False


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_is_accepted_with_a_fitting_loss(activation):
    from kfactory.config.validate import validate

    loss = "categorical_crossentropy" if activation in ("softmax", "sigmoid", "linear") else "mean_squared_error"
    validate(compose_config([f"model.activation={activation}", f"loss={loss}"]))


def test_keras_factory_experiment_is_the_old_default_config():
    cfg = compose_config(["experiment=keras_factory"])
    assert (cfg.model.name, cfg.optimizer.name, cfg.loss.name) == ("vgg19", "rmsprop", "categorical_crossentropy")
    assert cfg.model.include_top is True and cfg.model.weights == "imagenet"
    assert (cfg.trainer.epochs, cfg.data.batch_size, cfg.model.activation) == (3, 32, "softmax")

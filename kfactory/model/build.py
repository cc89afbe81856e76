"""Build a Keras application with its preprocessing and a new classifier.

The built model takes raw RGB pixels in [0, 255]: each family's own
``preprocess_input`` is expressed with built-in layers inside the model, so a
saved ``model.keras`` loads and predicts with plain Keras, in safe mode.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from kfactory.errors import ConfigError
from kfactory.model import nets
from kfactory.paths import expand_path
from kfactory.registry import MODELS, PROBABILITY_ACTIVATIONS, input_size, label_loss
from kfactory.schema import ModelConfig
from kfactory.targets import build, is_custom_model

if TYPE_CHECKING:
    import keras

IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)  # caffe mode subtracts these, as BGR
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


def output_units(loss: str, num_classes: int, multilabel: bool = False) -> int:
    """One sigmoid unit for binary crossentropy on two classes (not label sets), else one per class."""
    return 1 if loss.startswith("binary") and num_classes == 2 and not multilabel else num_classes


def to_probabilities(outputs: np.ndarray, activation: str, multilabel: bool = False) -> np.ndarray:
    """Model outputs as one probability per class (two columns for one sigmoid unit).

    ``activation`` is the output activation the model was built with (stored in its
    metadata): logits or other scores from a non-probability activation get a softmax
    (a sigmoid for one unit, or for each class of a multi-label model).
    """
    if multilabel:
        return np.clip(outputs if activation in PROBABILITY_ACTIVATIONS else 1 / (1 + np.exp(-outputs)), 0.0, 1.0)
    if outputs.shape[1] == 1:
        positive = outputs[:, 0] if activation in PROBABILITY_ACTIVATIONS else 1 / (1 + np.exp(-outputs[:, 0]))
        positive = np.clip(positive, 0.0, 1.0)
        return np.stack([1 - positive, positive], axis=1)
    if activation in PROBABILITY_ACTIVATIONS:
        return np.clip(outputs, 0.0, 1.0)
    shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))  # logits or scores: softmax
    return shifted / shifted.sum(axis=1, keepdims=True)


def build_model(cfg: DictConfig, num_classes: int) -> keras.Model:
    """The application named by ``cfg.model`` (or your own, model=custom) with ``num_classes`` outputs."""
    import keras

    if is_custom_model(cfg.model):
        return build_custom_model(cfg, num_classes)
    spec = MODELS[cfg.model.name]
    height, width = input_size(cfg.model)
    inputs = keras.Input((height, width, 3), name="image")
    base = build_backbone(cfg, num_classes)
    x = preprocess(inputs, spec.preprocess)
    # A pretrained base keeps BatchNormalization in inference mode, also when
    # unfrozen; from scratch its statistics must learn. Keras 3's fit ignores this
    # nested training=False, so kfactory.train.finetune also keeps those layers
    # non-trainable (which Keras runs in inference mode); the flag still holds
    # for calls outside fit.
    pretrained = cfg.model.weights is not None
    bn_trainable = cfg.model.bn_trainable or not pretrained
    x = base(x, training=None if bn_trainable else False)
    if _keeps_imagenet_classifier(cfg, num_classes):
        return keras.Model(inputs, x, name=cfg.model.name)
    if cfg.model.dropout > 0:
        x = keras.layers.Dropout(cfg.model.dropout, name="head_dropout")(x)
    units = output_units(label_loss(cfg.loss), num_classes, cfg.data.task == "multilabel")
    activation = cfg.model.activation
    if activation == "softmax" and units == 1:
        activation = "sigmoid"
    outputs = keras.layers.Dense(units, activation=activation, dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=cfg.model.name)


def build_custom_model(cfg: DictConfig, num_classes: int) -> keras.Model:
    """``model._target_`` called with ``input_shape``, ``num_classes`` and the group's extra keys; checked as is."""
    import keras

    height, width = input_size(cfg.model)
    kind = "an uncompiled keras.Model"
    model = build(
        "model",
        cfg.model,
        keras.Model,
        kind,
        schema=ModelConfig,
        input_shape=(height, width, 3),
        num_classes=num_classes,
    )
    units = output_units(label_loss(cfg.loss), num_classes, cfg.data.task == "multilabel")
    try:
        shapes = (tuple(model.input_shape), tuple(model.output_shape))
    except (AttributeError, ValueError):  # a subclassed model that was never built
        shapes = ("unbuilt", "unbuilt")
    if shapes[0] != (None, height, width, 3) or shapes[1] not in ((None, units), (None, num_classes)):
        wanted = f"{kind} from (None, {height}, {width}, 3) to (None, {units}); it maps {shapes[0]} to {shapes[1]}"
        raise ConfigError("model._target_", cfg.model._target_, wanted)
    return model


def build_backbone(cfg: DictConfig, num_classes: int) -> keras.Model:
    """The application itself: pooled features, or its ImageNet top minus the last layer."""
    import keras

    spec = MODELS[cfg.model.name]
    height, width = input_size(cfg.model)
    weights = cfg.model.weights
    weights_file = None if weights in (None, "imagenet") else expand_path(weights)
    kwargs = {"include_top": bool(cfg.model.include_top), "input_shape": (height, width, 3)}
    if not cfg.model.include_top:
        kwargs["pooling"] = "avg"
    app = getattr(keras.applications if spec.application else nets, spec.keras_name)
    try:
        if _keeps_imagenet_classifier(cfg, num_classes):
            kwargs["classifier_activation"] = cfg.model.activation
        base = app(weights="imagenet" if weights == "imagenet" else None, **kwargs)
    except Exception as error:  # download or architecture refusal
        if weights == "imagenet":
            raise ConfigError(
                "model.weights",
                weights,
                f"ImageNet weights could not be loaded ({type(error).__name__}: {error}); "
                "use model.weights=null, or model.weights=<path> to a local .h5/.weights.h5 file",
            ) from error
        raise
    if weights_file is not None:
        load_weights_file(base, weights_file)
    if cfg.model.include_top and not _keeps_imagenet_classifier(cfg, num_classes):
        base = _without_last_layer(base)
    set_bn_momentum(base, cfg.model.bn_momentum)
    return base


def _keeps_imagenet_classifier(cfg: DictConfig, num_classes: int) -> bool:
    """ImageNet weights, top and 1000 classes: the original classifier is the model."""
    return bool(cfg.model.include_top) and cfg.model.weights == "imagenet" and num_classes == 1000


def load_weights_file(base: keras.Model, path) -> None:
    """Load a local weights file into ``base``, refusing one for another architecture."""
    # Keras warns once per layer that did not fit before it raises; the refusal below says that in one line.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            base.load_weights(str(path))
        except Exception as error:
            reason = str(error).strip().splitlines()[0][:300]  # Keras lists every layer that did not fit
            raise ConfigError(
                "model.weights",
                str(path),
                f"a weights file saved from this architecture ({base.name}) with the same include_top; "
                f"this file does not fit it: {reason}",
            ) from error
    for warning in caught:  # a file that loaded: what Keras said about it still shows
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _without_last_layer(model: keras.Model) -> keras.Model:
    """``model`` up to the input of its ImageNet classification layer, flattened."""
    import keras

    classifier = next(
        layer for layer in reversed(model.layers) if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))
    )
    features = classifier.input
    if len(features.shape) > 2:
        features = keras.layers.Flatten(name="top_features")(features)
    return keras.Model(model.inputs, features, name=model.name)


def set_bn_momentum(model: keras.Model, momentum: float | None) -> None:
    """Set every BatchNormalization's momentum (null leaves the application's)."""
    import keras

    if momentum is None:
        return
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def preprocess(x, mode: str):
    """Apply a family's ``preprocess_input`` mode with serialisable built-in layers."""
    import keras

    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(x)
    if mode == "torch":
        x = keras.layers.Rescaling(1 / 255.0, name="preprocess_scale")(x)
        variance = [s**2 for s in TORCH_STD]
        return keras.layers.Normalization(mean=TORCH_MEAN, variance=variance, name="preprocess")(x)
    if mode == "caffe":
        # RGB -> BGR and minus the mean, as one fixed 1x1 convolution.
        layer = keras.layers.Conv2D(3, 1, trainable=False, name="preprocess")
        x = layer(x)
        flip = np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)
        layer.set_weights([flip, -np.asarray(IMAGENET_MEAN_RGB[::-1], dtype="float32")])
        return x
    return x

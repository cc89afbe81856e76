"""The Keras applications kfactory can build, as plain data.

Nothing here imports TensorFlow: the command line validates a config against
this table before any heavy import.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kfactory.errors import ConfigError

# How each family expects its input pixels (given RGB in [0, 255]):
#   caffe: RGB -> BGR, minus the ImageNet channel means;
#   tf:    scaled to [-1, 1];
#   torch: scaled to [0, 1], then normalised by the ImageNet mean and std;
#   none:  the application rescales inside itself (EfficientNet, ConvNeXt, …).
PREPROCESS_MODES = ("caffe", "tf", "torch", "none")


@dataclass(frozen=True)
class ModelSpec:
    """One Keras application, or one of kfactory's own networks."""

    keras_name: str  # attribute of keras.applications (of kfactory.model.nets when not an application)
    default_size: int  # the size its ImageNet weights were trained at (kfactory's own: its usual size)
    preprocess: str  # one of PREPROCESS_MODES
    min_size: int = 32  # smallest input side the architecture accepts
    application: bool = True  # a keras.applications model, with ImageNet weights; False: trained from scratch


MODELS: dict[str, ModelSpec] = {
    "vgg16": ModelSpec("VGG16", 224, "caffe"),
    "vgg19": ModelSpec("VGG19", 224, "caffe"),
    "resnet50": ModelSpec("ResNet50", 224, "caffe"),
    "resnet101": ModelSpec("ResNet101", 224, "caffe"),
    "resnet152": ModelSpec("ResNet152", 224, "caffe"),
    "resnet50_v2": ModelSpec("ResNet50V2", 224, "tf"),
    "resnet101_v2": ModelSpec("ResNet101V2", 224, "tf"),
    "resnet152_v2": ModelSpec("ResNet152V2", 224, "tf"),
    "inception_v3": ModelSpec("InceptionV3", 299, "tf", min_size=75),
    "inception_resnet_v2": ModelSpec("InceptionResNetV2", 299, "tf", min_size=75),
    "xception": ModelSpec("Xception", 299, "tf", min_size=71),
    "densenet121": ModelSpec("DenseNet121", 224, "torch"),
    "densenet169": ModelSpec("DenseNet169", 224, "torch"),
    "densenet201": ModelSpec("DenseNet201", 224, "torch"),
    "mobilenet": ModelSpec("MobileNet", 224, "tf"),
    "mobilenet_v2": ModelSpec("MobileNetV2", 224, "tf"),
    "mobilenet_v3_small": ModelSpec("MobileNetV3Small", 224, "none"),
    "mobilenet_v3_large": ModelSpec("MobileNetV3Large", 224, "none"),
    "nasnet_mobile": ModelSpec("NASNetMobile", 224, "tf"),
    "nasnet_large": ModelSpec("NASNetLarge", 331, "tf"),
    "efficientnet_b0": ModelSpec("EfficientNetB0", 224, "none"),
    "efficientnet_b1": ModelSpec("EfficientNetB1", 240, "none"),
    "efficientnet_b2": ModelSpec("EfficientNetB2", 260, "none"),
    "efficientnet_b3": ModelSpec("EfficientNetB3", 300, "none"),
    "efficientnet_b4": ModelSpec("EfficientNetB4", 380, "none"),
    "efficientnet_b5": ModelSpec("EfficientNetB5", 456, "none"),
    "efficientnet_b6": ModelSpec("EfficientNetB6", 528, "none"),
    "efficientnet_b7": ModelSpec("EfficientNetB7", 600, "none"),
    "efficientnet_v2_b0": ModelSpec("EfficientNetV2B0", 224, "none"),
    "efficientnet_v2_b1": ModelSpec("EfficientNetV2B1", 240, "none"),
    "efficientnet_v2_b2": ModelSpec("EfficientNetV2B2", 260, "none"),
    "efficientnet_v2_b3": ModelSpec("EfficientNetV2B3", 300, "none"),
    "efficientnet_v2_s": ModelSpec("EfficientNetV2S", 384, "none"),
    "efficientnet_v2_m": ModelSpec("EfficientNetV2M", 480, "none"),
    "efficientnet_v2_l": ModelSpec("EfficientNetV2L", 480, "none"),
    "convnext_tiny": ModelSpec("ConvNeXtTiny", 224, "none"),
    "convnext_small": ModelSpec("ConvNeXtSmall", 224, "none"),
    "convnext_base": ModelSpec("ConvNeXtBase", 224, "none"),
    "convnext_large": ModelSpec("ConvNeXtLarge", 224, "none"),
    "convnext_xlarge": ModelSpec("ConvNeXtXLarge", 224, "none"),
    # kfactory's own: plain 3x3 convolutions, for small images trained from scratch (8x8 digits, 28x28 scans)
    "small_cnn": ModelSpec("SmallCNN", 32, "none", min_size=8, application=False),
}

# Config name -> keras.optimizers class.
OPTIMIZERS: dict[str, str] = {
    "sgd": "SGD",
    "rmsprop": "RMSprop",
    "adagrad": "Adagrad",
    "adadelta": "Adadelta",
    "adam": "Adam",
    "adamax": "Adamax",
    "nadam": "Nadam",
    "adamw": "AdamW",
    "lion": "Lion",
    "ftrl": "Ftrl",
}

# Config name (the old Keras Factory's) -> keras.losses class.
LOSSES: dict[str, str] = {
    "mean_squared_error": "MeanSquaredError",
    "mean_absolute_error": "MeanAbsoluteError",
    "mean_absolute_percentage_error": "MeanAbsolutePercentageError",
    "mean_squared_logarithmic_error": "MeanSquaredLogarithmicError",
    "squared_hinge": "SquaredHinge",
    "hinge": "Hinge",
    "categorical_hinge": "CategoricalHinge",
    "logcosh": "LogCosh",
    "categorical_crossentropy": "CategoricalCrossentropy",
    "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
    "binary_crossentropy": "BinaryCrossentropy",
    "kullback_leibler_divergence": "KLDivergence",
    "poisson": "Poisson",
    "cosine_proximity": "CosineSimilarity",
    "categorical_focal_crossentropy": "CategoricalFocalCrossentropy",
    "binary_focal_crossentropy": "BinaryFocalCrossentropy",
}

CROSSENTROPY_LOSSES = frozenset(
    {
        "categorical_crossentropy",
        "sparse_categorical_crossentropy",
        "binary_crossentropy",
        "categorical_focal_crossentropy",
        "binary_focal_crossentropy",
    }
)

# Output activations of the old project. Those that give probabilities are
# the only ones a crossentropy can follow ("linear" means logits).
ACTIVATIONS = (
    "softmax",
    "elu",
    "selu",
    "softplus",
    "relu",
    "tanh",
    "sigmoid",
    "hard_sigmoid",
    "exponential",
    "linear",
)
PROBABILITY_ACTIVATIONS = frozenset({"softmax", "sigmoid"})

# trainer.metrics names -> how train.py builds them.
METRICS = ("accuracy", "top_k", "precision", "recall", "auc", "f1")
# Logged by every data.task=multilabel run besides trainer.metrics (kfactory.train.multilabel builds them).
MULTILABEL_METRICS = ("f1_macro", "f1_micro", "pr_auc", "roc_auc", "exact_match")
# Losses that score each class on its own, as label sets need.
MULTILABEL_LOSSES = ("binary_crossentropy", "binary_focal_crossentropy")


def label_loss(loss: Any) -> str:
    """The named loss whose label encoding the ``loss`` group uses.

    Its own name; for ``loss=custom``, ``loss.labels`` picks integers (sparse) or one-hot.
    """
    if loss.name != "custom":
        return loss.name
    return "sparse_categorical_crossentropy" if loss.labels == "sparse" else "categorical_crossentropy"


def sparse_labels(loss: str) -> bool:
    """Whether a loss takes integer class labels rather than one-hot vectors."""
    return loss == "sparse_categorical_crossentropy"


# How a monitored value improves, by the name Keras logs it under (less ``val_``): every trainer.metrics name,
# every multi-label metric, and the keras.metrics an entry ``{_target_: keras.metrics.X}`` may add.
MONITOR_MODES = ("auto", "min", "max")  # trainer.monitor_mode; auto: by the metric's name
HIGHER_IS_BETTER = frozenset(
    {
        *("accuracy", "top_k_accuracy", "precision", "recall", "auc", "f1_score"),  # METRICS, as logged
        *MULTILABEL_METRICS,
        *("f_beta_score", "cosine_similarity", "r2_score", "pearson_correlation"),  # and every *_accuracy
        *("iou", "mean_iou", "one_hot_iou", "one_hot_mean_iou", "binary_iou", "concordance_correlation"),
        *("precision_at_recall", "recall_at_precision", "sensitivity_at_specificity", "specificity_at_sensitivity"),
        *("true_positives", "true_negatives"),
    }
)
LOWER_IS_BETTER = frozenset(
    {
        "loss",
        *LOSSES,  # a loss used as a metric logs under its config name
        *("kl_divergence", "log_cosh_error", "logcosh", "root_mean_squared_error", "false_positives"),
        *("false_negatives", "categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy"),
    }
)


def metric_direction(monitor: str, metrics: Sequence[Any] = ()) -> str | None:
    """``min`` or ``max``: how a logged metric (``val_`` or not) improves; None for a name kfactory does not know.

    A trainer.metrics entry ``{_target_: keras.metrics.<Class>, name: ...}`` among ``metrics``
    is known by its class, whatever its name.
    """
    name = monitor.removeprefix("val_")
    for entry in metrics:
        target = str(entry.get("_target_") or "") if isinstance(entry, Mapping) else ""
        if target.startswith("keras.metrics.") and metric_log_name(entry) == name:
            name = metric_log_name({"_target_": target})  # the class's own name, e.g. keras.metrics.AUC: auc
            break
    if name in LOWER_IS_BETTER or name.endswith("_loss"):
        return "min"
    if name in HIGHER_IS_BETTER or name.endswith("_accuracy"):
        return "max"
    return None


# Epochs or runs tied on the monitor (a small validation split: 0.994 from epoch 13 to 30, or 1.0 for
# several trials) are told apart by this, the lower first: the tied epoch or run that fits best.
TIE_BREAK = "val_loss"


def monitor_mode(monitor: str, mode: str = "auto", metrics: Sequence[Any] = ()) -> str:
    """``min`` or ``max`` for ``trainer.monitor``: ``mode`` when given, else what the metric is (``metric_direction``).

    Raises ConfigError for a metric of your own whose direction the name does not
    tell (``trainer.monitor_mode`` says it).
    """
    if mode in ("min", "max"):
        return mode
    if mode != "auto":
        raise ConfigError("trainer.monitor_mode", mode, "one of auto, min, max")
    direction = metric_direction(monitor, metrics)
    if direction is None:
        accepted = f"min or max: trainer.monitor={monitor} is a metric of your own, whether lower is better is yours"
        raise ConfigError("trainer.monitor_mode", mode, accepted)
    return direction


def metric_log_name(metric: str | Mapping) -> str:
    """The name Keras logs a trainer.metrics entry under.

    A ``_target_`` entry: its ``name`` key, else the target's last part in snake_case
    (``my_pkg.metrics.MacroF1`` -> ``macro_f1``), as Keras names a metric class.
    """
    if isinstance(metric, Mapping):
        if metric.get("name"):
            return str(metric["name"])
        last = str(metric.get("_target_")).rsplit(".", 1)[-1]
        return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", last)).lower()
    return {"top_k": "top_k_accuracy", "f1": "f1_score"}.get(metric, metric)


def input_size(model: Any) -> tuple[int, int]:
    """The ``model`` group's ``input_size`` as (height, width); one int means a square, null the model's own size."""
    size = model.input_size
    if size is None and model.name in MODELS:
        side = MODELS[model.name].default_size
        return side, side
    if _is_int(size):
        return size, size
    if isinstance(size, Sequence) and len(size) == 2 and all(_is_int(s) for s in size):
        return int(size[0]), int(size[1])
    raise ConfigError("model.input_size", size, "[height, width] in pixels, or one int")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

"""Checks on a composed run config, made before TensorFlow is imported.

First the schema (kfactory/schema.py) types every key; then the checks
here refuse values of the right type a run still cannot use (ranges, choices,
combinations). Every refusal is one line that names the key, the value received
and what is accepted, so a typo costs a second, not a run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from kfactory.data.cache_store import check_disk_room, fits_in_memory
from kfactory.data.label_task import settle_label_task
from kfactory.data.split_record import ON_CHANGED
from kfactory.errors import ConfigError, check_choice
from kfactory.paths import check_variables, expand_path
from kfactory.registry import (
    ACTIVATIONS,
    CROSSENTROPY_LOSSES,
    LOSSES,
    METRICS,
    MODELS,
    MULTILABEL_METRICS,
    OPTIMIZERS,
    PROBABILITY_ACTIVATIONS,
    input_size,
    metric_log_name,
    monitor_mode,
)
from kfactory.schema import apply_schema
from kfactory.targets import CUSTOM, LOSS_LABELS, check_custom_model, check_targets, is_custom_model, target_of

if TYPE_CHECKING:
    from kfactory.data.sources import ImageSource

TASKS = ("train", "eval", "predict", "export")
CACHE_MODES = ("auto", "memory", "disk", "none")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
DATA_SOURCES = ("digits", "folder", "csv", "keras", CUSTOM)
EXPORT_FORMATS = ("keras", "saved_model", "tflite")
KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")


PATH_KEYS = ("model.weights", "data.path", "data.csv", "ckpt_path", "predict.input")
WEIGHTS_SUFFIXES = (".h5", ".hdf5", ".keras")  # what keras.Model.load_weights reads
REQUIRED_BY_SOURCE = {"folder": "path", "csv": "csv"}  # null in the schema, required by these sources


def validate(cfg: DictConfig) -> DictConfig:
    """``cfg`` typed by the schema; raise ConfigError for the first value a run cannot use."""
    try:
        cfg = apply_schema(cfg)
        _validate(cfg)
    except MissingMandatoryValue as error:  # a ``???`` the user has not set, e.g. data.path
        raise ConfigError(error.full_key, "???", f"a value: add {error.full_key}=... to the command line") from None
    except InterpolationResolutionError as error:  # e.g. ${HOME} read as a config key, not the variable
        accepted = f"an interpolation that resolves ({str(error).splitlines()[0]}); environment variables: $NAME"
        raise ConfigError(error.full_key, "${...}", accepted) from None
    return cfg


def _validate(cfg: DictConfig) -> None:
    check_choice("task", cfg.task, TASKS)
    _check_paths(cfg)
    if not isinstance(cfg.resume, bool) and cfg.resume != "auto":  # 1 == True: compare types, not values
        raise ConfigError("resume", cfg.resume, "true, false or auto (resume if there is a run to resume)")
    check_choice("data.on_changed", cfg.data.on_changed, ON_CHANGED)
    if cfg.task == "train":
        source = settle_label_task(cfg)
        _check_model(cfg.model, cfg.finetune)
        _check_loss(cfg.loss, cfg.model.activation)
        _check_optimizer(cfg.optimizer)
        _check_trainer(cfg.trainer, cfg.data.task == "multilabel")
        _check_cross_validation(cfg.data, cfg.hparams_search)
        source = _check_data(cfg.data, cfg.hparams_search.cv_folds, source)
        if source is not None and cfg.data.cache == "memory":  # refused here, before TensorFlow is imported
            fits_in_memory(cfg.data.cache, len(source), input_size(cfg.model), cfg.data.cache_budget_gb)
        if source is not None and source.paths is not None:  # ... and memory or disk without room on the disk
            check_disk_room(cfg.data.cache, cfg.data.cache_dir, source.paths, input_size(cfg.model))
        _check_transfer(cfg)
        check_targets(cfg)  # imports the modules of your own parts (docs/guides/your-own-parts.md)
    else:
        _check_checkpoint(cfg)
    if cfg.task == "predict":
        _check_predict(cfg)
    if cfg.task == "export":
        _check_export(cfg)


def _check_paths(cfg: DictConfig) -> None:
    """Refuse a path whose ``$VARIABLE`` is not set, naming the variable (``~`` always expands)."""
    for key in PATH_KEYS:
        check_variables(key, OmegaConf.select(cfg, key, throw_on_missing=False))


def _check_number(key: str, value: float, low: float, high: float | None, what: str) -> None:
    """Refuse ``value`` outside ``[low, high)`` (the schema has made it a number)."""
    if value < low or (high is not None and value >= high):
        raise ConfigError(key, value, what)


def _check_model(model: DictConfig, finetune: DictConfig) -> None:
    if is_custom_model(model):
        input_size(model)  # required: a custom model has no size of its own
        check_custom_model(model, finetune)
        return
    check_choice("model.name", model.name, MODELS)
    spec = MODELS[model.name]
    height, width = input_size(model)
    if min(height, width) < spec.min_size:
        raise ConfigError("model.input_size", [height, width], f"{model.name} needs at least {spec.min_size} px a side")
    weights = model.weights
    if not spec.application and (weights == "imagenet" or model.include_top):
        key, value = ("model.weights", weights) if weights == "imagenet" else ("model.include_top", True)
        accepted = f"{model.name} has no ImageNet weights or top: model.weights=null or a weights file"
        raise ConfigError(key, value, accepted)
    if weights not in (None, "imagenet"):
        path = expand_path(weights)
        if not path.is_file():
            raise ConfigError("model.weights", weights, "imagenet, null, or the path of an existing weights file")
        if not path.name.lower().endswith(WEIGHTS_SUFFIXES):
            raise ConfigError("model.weights", weights, "a Keras weights file: .weights.h5, .h5 or .keras")
    if model.include_top and weights == "imagenet" and (height, width) != (spec.default_size,) * 2:
        raise ConfigError(
            "model.input_size",
            [height, width],
            f"with model.include_top=true and ImageNet weights, {model.name} takes only "
            f"[{spec.default_size}, {spec.default_size}]; use model.include_top=false for other sizes",
        )
    _check_number("model.dropout", model.dropout, 0, 1, "a number in [0, 1)")
    check_choice("model.activation", model.activation, ACTIVATIONS)
    if model.bn_momentum is not None:
        _check_number("model.bn_momentum", model.bn_momentum, 0, 1, "null or a number in [0, 1)")


def _check_loss(loss: DictConfig, activation: str) -> None:
    name = loss.name
    if name == CUSTOM:
        check_choice("loss.labels", loss.labels, LOSS_LABELS)
        return
    check_choice("loss.name", name, LOSSES)
    if loss.labels is not None:
        accepted = f"null with loss={name}, whose name says how labels are encoded (one_hot or sparse: loss=custom)"
        raise ConfigError("loss.labels", loss.labels, accepted)
    if name in CROSSENTROPY_LOSSES and activation not in PROBABILITY_ACTIVATIONS | {"linear"}:
        wanted = "sigmoid" if name.startswith("binary") else "softmax"
        raise ConfigError(
            "model.activation",
            activation,
            f"loss={name} needs probabilities: use model.activation={wanted} (or linear for logits)",
        )
    if "label_smoothing" in loss:  # a Keras argument of the crossentropy losses: not in the schema
        smoothing = loss.label_smoothing
        if not isinstance(smoothing, (int, float)) or isinstance(smoothing, bool) or not 0 <= smoothing < 1:
            raise ConfigError("loss.label_smoothing", smoothing, "a number in [0, 1)")


def _check_optimizer(optimizer: DictConfig) -> None:
    if optimizer.name != CUSTOM:
        check_choice("optimizer.name", optimizer.name, OPTIMIZERS)
    if optimizer.learning_rate <= 0:
        raise ConfigError("optimizer.learning_rate", optimizer.learning_rate, "a number > 0")


def _check_trainer(t: DictConfig, multilabel: bool = False) -> None:
    if t.epochs < 1:
        raise ConfigError("trainer.epochs", t.epochs, "an integer >= 1")
    check_choice("trainer.verbose", t.verbose, (0, 1, 2))
    for metric in t.metrics:
        if target_of(metric) is None:  # a _target_ entry is resolved by check_targets
            check_choice("trainer.metrics", metric, METRICS)
    for key in ("steps_per_epoch", "max_images_per_epoch", "validation_steps", "early_stopping", "threads"):
        if t[key] is not None and t[key] < 1:
            raise ConfigError(f"trainer.{key}", t[key], "null or an integer >= 1")
    if t.jit_compile != "auto" and not isinstance(t.jit_compile, bool):  # typed Any: auto, true or false
        raise ConfigError("trainer.jit_compile", t.jit_compile, "one of auto, true, false")
    if t.deterministic != "auto" and not isinstance(t.deterministic, bool):  # typed Any: 1 == True is no bool
        raise ConfigError("trainer.deterministic", t.deterministic, "true, false or auto (true where there is no GPU)")
    check_choice("trainer.precision", t.precision, PRECISIONS)
    _check_monitor(t, multilabel)
    _check_tensorboard(t.tensorboard)
    from kfactory.train.distribute import check_strategy  # no TensorFlow at import

    check_strategy(t)


def _check_tensorboard(board: DictConfig) -> None:
    minimums = {"histogram_freq": 0, "summary_freq": 0, "images": 0, "max_samples": 1, "pr_thresholds": 2}
    for key, low in minimums.items():
        if board[key] < low:
            raise ConfigError(f"trainer.tensorboard.{key}", board[key], f"an integer >= {low}")


def _check_monitor(trainer: DictConfig, multilabel: bool) -> None:
    names = ["loss", *(metric_log_name(m) for m in trainer.metrics), *(MULTILABEL_METRICS if multilabel else ())]
    accepted = [f"{split}{n}" for split in ("val_", "") for n in names]
    check_choice("trainer.monitor", trainer.monitor, tuple(accepted))
    monitor_mode(trainer.monitor, trainer.monitor_mode, trainer.metrics)


def _check_cross_validation(data: DictConfig, search: DictConfig) -> None:
    """``data.folds``/``data.fold`` (one fold per run) and ``hparams_search.cv_folds`` (all folds in one run)."""
    if search.cv_folds:
        if search.cv_folds < 2:
            raise ConfigError("hparams_search.cv_folds", search.cv_folds, "0 (one run) or an integer >= 2")
        if data.folds:
            accepted = "0 with hparams_search.cv_folds, which sets data.folds and data.fold for each fold it trains"
            raise ConfigError("data.folds", data.folds, accepted)
    if not data.folds:
        if data.fold:
            accepted = "0 without cross-validation; add data.folds=K (K >= 2) to validate on fold data.fold of K"
            raise ConfigError("data.fold", data.fold, accepted)
        return
    if data.folds < 2:
        raise ConfigError("data.folds", data.folds, "0 (no cross-validation) or an integer >= 2")
    if not 0 <= data.fold < data.folds:
        raise ConfigError("data.fold", data.fold, f"an integer from 0 to {data.folds - 1} (data.folds={data.folds})")


def _check_data(data: DictConfig, cv_folds: int, source: ImageSource | None = None) -> ImageSource | None:
    """``cv_folds``: hparams_search.cv_folds, the folds the run deals when data.folds does not.

    Returns the source of a folder or CSV, described (listed, not decoded) to check it.
    """
    folds, folds_key = (cv_folds, "hparams_search.cv_folds") if cv_folds else (data.folds, "data.folds")
    check_choice("data.source", data.source, DATA_SOURCES)
    if data.batch_size < 1:
        raise ConfigError("data.batch_size", data.batch_size, "an integer >= 1")
    for key in ("val_split", "test_split"):
        _check_number(f"data.{key}", data[key], 0, 1, "a fraction in [0, 1)")
    if not folds and data.val_split + data.test_split >= 1:  # with folds, val_split is not used
        total = data.val_split + data.test_split
        raise ConfigError("data.val_split + data.test_split", total, "a sum below 1, to leave training data")
    check_choice("data.cache", data.cache, CACHE_MODES)
    if data.cache_budget_gb is not None:
        _check_number("data.cache_budget_gb", data.cache_budget_gb, 0, None, "null or a number of GB >= 0")
    required = REQUIRED_BY_SOURCE.get(data.source)
    if required and data[required] is None:
        raise ConfigError(f"data.{required}", None, f"a value: add data.{required}=... to the command line")
    if data.source == "keras":
        check_choice("data.name", data.name, KERAS_DATASETS)
    elif data.source in ("folder", "csv"):
        from kfactory.data.sources import check_fold_sizes, describe_source  # lists files only, no TensorFlow

        source = source or describe_source(data)
        if folds:
            check_fold_sizes(source.labels, folds, data.test_split, source.class_names, folds_key)
        return source
    return None


def _check_transfer(cfg: DictConfig) -> None:
    """Fine-tuning phases, augmentation, schedule and class weights (modules import no TensorFlow)."""
    from kfactory.data.augment import check_augment
    from kfactory.data.class_weights import check_class_weight
    from kfactory.train.finetune import check_finetune
    from kfactory.train.schedules import check_schedule

    check_finetune(cfg.model, cfg.finetune, cfg.trainer.epochs)
    check_augment(cfg.data, cfg.loss)
    check_schedule(cfg.optimizer.schedule, cfg.trainer.epochs)
    check_class_weight(cfg.data)
    ema = cfg.trainer.ema
    if ema is not None and not 0 < ema < 1:
        raise ConfigError("trainer.ema", ema, "null, or the EMA momentum in (0, 1), e.g. 0.99")


def _check_checkpoint(cfg: DictConfig) -> None:
    from kfactory.model.checkpoint import find_model_file

    if find_model_file(cfg.ckpt_path).is_dir() and cfg.task != "predict":
        accepted = f"for task={cfg.task}, a run directory or .keras file (an exported SavedModel serves task=predict)"
        raise ConfigError("ckpt_path", cfg.ckpt_path, accepted)


def _check_export(cfg: DictConfig) -> None:
    export = cfg.export
    check_choice("export.format", export.format, EXPORT_FORMATS)
    if export.quantize and export.format != "tflite":
        raise ConfigError("export.quantize", export.quantize, "true only with export.format=tflite")
    if export.tolerance is not None:
        _check_number("export.tolerance", export.tolerance, 0, None, "null or a number >= 0")
    if export.check_input is not None and not expand_path(export.check_input).exists():
        raise ConfigError("export.check_input", export.check_input, "null, or an existing image, folder or CSV file")


def _check_predict(cfg: DictConfig) -> None:
    value = cfg.predict.input
    if value is None or not expand_path(value).exists():
        raise ConfigError("predict.input", value, "an existing image, folder of images, or CSV file")
    if cfg.predict.top_k < 1:
        raise ConfigError("predict.top_k", cfg.predict.top_k, "an integer >= 1")

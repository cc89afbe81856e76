"""The run config's schema: every key's type and default, once.

Hydra composes ``conf/`` on top of these defaults (registered in its ConfigStore
as plain values, so a preset file holds only what differs); ``apply_schema``
then merges the composed config into the typed dataclasses, before TensorFlow
is imported. Typing there, not at compose time, gives every wrong type the same
one-line refusal and exit status 2, in a single run and in a multirun job alike
(Hydra's own compose-time errors are several lines, exit 1, and end a whole sweep).

Four groups are open: ``optimizer`` and ``loss`` pass their extra keys to Keras
(``beta_1``, ``+optimizer.clipnorm=1.0``, ``label_smoothing``); ``model`` and
``data`` accept extra keys only with a ``_target_`` (a user's own builder or
source takes them). Everything else refuses a key it does not declare.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, ValidationError

from kfactory.errors import ConfigError

# OmegaConf 2.3 reads these annotations at runtime and understands typing.Optional,
# not ``X | None``.
# ruff: noqa: UP045


@dataclass
class ModelConfig:
    """``model``: a keras.applications backbone with a new head (see conf/model/)."""

    _target_: Optional[str] = None  # model=custom: your builder; it is given only this group's extra keys
    name: str = MISSING  # one of the registry's models (or custom), set by each conf/model/<name>.yaml
    weights: Optional[str] = "imagenet"  # imagenet | null (random) | a weights file
    include_top: bool = False  # keep the ImageNet classifier's hidden layers (VGG's fc1/fc2)
    input_size: Any = None  # [height, width], one int (a square) or null: the model's own size
    dropout: float = 0.0
    activation: str = "softmax"
    bn_momentum: Optional[float] = None  # null: the application's own
    freeze: Any = "all"  # base layers that train when pretrained: all frozen | none | top N layers | a layer name
    bn_trainable: bool = False  # true: a pretrained base's BatchNormalization also updates its statistics


@dataclass
class OptimizerConfig:
    """``optimizer``: a keras.optimizers class; its other keys are that class's arguments."""

    _target_: Optional[str] = None  # your optimizer class or factory (optimizer=custom, or beside a named one)
    name: str = MISSING
    learning_rate: float = 0.001
    schedule: Any = field(default_factory=lambda: {"name": "constant"})  # typed by SCHEDULES[name]


@dataclass
class LossConfig:
    """``loss``: a keras.losses class; its other keys are that class's arguments."""

    _target_: Optional[str] = None  # loss=custom: your loss class or factory
    name: str = MISSING
    labels: Optional[str] = None  # loss=custom: one_hot | sparse; a named loss encodes labels as its name says


@dataclass
class ConstantSchedule:
    """The optimizer's learning_rate throughout (per phase when fine-tuning)."""

    name: str = "constant"


@dataclass
class CosineSchedule:
    """Linear warm-up from 0 for warmup_epochs, then cosine decay to alpha * learning_rate."""

    name: str = "cosine"
    warmup_epochs: int = 0
    alpha: float = 0.0


@dataclass
class StepSchedule:
    """Multiply the learning rate by factor every step_epochs epochs."""

    name: str = "step"
    step_epochs: int = 10
    factor: float = 0.1


@dataclass
class ExponentialSchedule:
    """Multiply the learning rate by decay_rate per epoch, smoothly."""

    name: str = "exponential"
    decay_rate: float = 0.9


@dataclass
class PlateauSchedule:
    """ReduceLROnPlateau: multiply by factor when trainer.monitor stalls for patience epochs."""

    name: str = "plateau"
    factor: float = 0.1
    patience: int = 3
    min_lr: float = 0.0


SCHEDULES: dict[str, type] = {
    "constant": ConstantSchedule,
    "cosine": CosineSchedule,
    "step": StepSchedule,
    "exponential": ExponentialSchedule,
    "plateau": PlateauSchedule,
}


@dataclass
class TensorboardConfig:
    """``trainer.tensorboard``: what a run writes to <run dir>/tensorboard; nothing runs per batch."""

    histogram_freq: int = 1  # weight histograms every N epochs; 0 = none
    write_graph: bool = True
    summary_freq: int = 1  # every N epochs (and the last): PR curves, confusion matrix, images; 0 = never
    max_samples: int = 1000  # validation images predicted for those summaries
    pr_curves: bool = True  # one PR curve per class and a micro-averaged one
    pr_thresholds: int = 101  # points per PR curve
    confusion_matrix: bool = True
    images: int = 16  # validation images in a grid, misclassified first; 0 = none
    hparams: bool = True  # HParams dashboard: hyperparameters, overridden keys, final metrics


@dataclass
class TrainerConfig:
    """``trainer``: epochs, metrics, checkpointing and compute settings."""

    epochs: int = 15
    verbose: int = 1  # 0 silent, 1 progress bar, 2 one line per epoch
    metrics: list[Any] = field(default_factory=lambda: ["accuracy"])  # names (top_k, auc, f1...) or _target_ dicts
    callbacks: list[Any] = field(default_factory=list)  # extra Keras callbacks as _target_ dicts
    top_k: int = 5  # k for the top_k metric
    steps_per_epoch: Optional[int] = None  # null: the whole training split
    # an epoch trains on at most this many images, going on through the split where the last epoch ended
    # (a large folder is seen whole over several epochs); null: the whole split; steps_per_epoch, when set, decides
    max_images_per_epoch: Optional[int] = None
    validation_steps: Optional[int] = None
    early_stopping: Optional[int] = None  # patience in epochs; null disables
    monitor: str = "val_accuracy"  # picks the best checkpoint (a tie: the lower val_loss) and drives early stopping
    # whether a lower (min) or higher (max) monitor is better; auto: known from the metric (a loss, an error,
    # a crossentropy or hinge: min; accuracy, auc, f1...: max); a metric of your own needs min or max
    monitor_mode: str = "auto"
    jit_compile: Any = "auto"  # auto | true | false (XLA)
    precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16
    threads: Optional[int] = None  # null: all cores (cores / n_jobs under hydra/launcher=joblib)
    # deterministic ops: the same seed and settings train the same model on the same machine; auto: where
    # TensorFlow sees no GPU (on CPU they cost little; a GPU's deterministic kernels are slower)
    deterministic: Any = False  # false | true | auto
    strategy: str = "default"  # default | mirrored | tpu
    devices: Optional[list[str]] = None  # mirrored: e.g. ['/gpu:0', '/gpu:1']; null: all local GPUs
    cpu_devices: Optional[int] = None  # split the CPU into N logical devices
    tpu: Optional[str] = None  # the TPU's name or grpc:// address; null: the local TPU
    ema: Optional[float] = None  # e.g. 0.99: validate and keep an EMA of the weights
    tensorboard: TensorboardConfig = field(default_factory=TensorboardConfig)


@dataclass
class DataConfig:
    """``data``: where images come from and how batches are made (see conf/data/)."""

    _target_: Optional[str] = None  # data=custom: your loader; it is given only this group's extra keys
    source: str = MISSING  # digits | folder | csv | keras | custom, set by each preset
    path: Optional[str] = None  # folder: the class-per-sub-folder root
    csv: Optional[str] = None  # csv: the labels file
    path_column: str = "path"
    label_column: str = "label"
    task: str = "auto"  # csv: auto (multilabel if any label entry holds label_separator) | multiclass | multilabel
    label_separator: str = ";"  # csv, multilabel: between an image's labels, e.g. cat;outdoor
    name: Optional[str] = None  # keras: mnist | fashion_mnist | cifar10 | cifar100
    batch_size: int = 32  # the global batch
    val_split: float = 0.1  # not used with folds: there fold ``fold`` is the validation split
    test_split: float = 0.1  # drawn first; with folds the same test images for every fold
    # K-fold cross-validation: 0 off; K >= 2 deals the images left after the test split into K stratified,
    # seeded folds (seed), of which fold ``fold`` (0..K-1) validates and the others train. Sweep the folds
    # with -m data.fold='range(K)' data.folds=K; the sweep summary reports each group's mean and std.
    folds: int = 0
    fold: int = 0
    # auto | memory | disk | none. Files are decoded once into the shared decode cache (cache_dir), which every
    # run on the same files at the same size reuses; auto reads it at random, memory-mapped (held in the page
    # cache, shared by every process), when it fits cache_budget_gb, else streams it from disk in order; memory
    # refuses data that does not fit; disk always streams; none decodes every file every epoch. When the cache's
    # disk has no room for a new entry, auto reads the files as none does and memory and disk are refused.
    cache: str = "auto"
    cache_dir: Optional[str] = None  # null: $KFACTORY_CACHE_DIR, else ~/.cache/kfactory/decoded (XDG_CACHE_HOME)
    cache_budget_gb: Optional[float] = None  # memory for decoded images; null: half the memory available at start
    shuffle_buffer: int = 4096  # examples; a training stream from the disk cache shuffles at most 64 MB of them
    # refuse | use_remaining: when an image of a run's recorded split (splits.csv) is gone or changed since,
    # eval, resume and the folds of a cross-validation refuse, or leave it out, say so and use the rest
    on_changed: str = "refuse"
    class_weight: Any = None  # null | balanced | {class_name: weight}
    augment: list[Any] = field(default_factory=list)  # {name: <keras.layers layer>, its arguments...}, in order


@dataclass
class FinetuneConfig:
    """``finetune``: head_epochs > 0 trains the head first, then continues at a lower rate."""

    head_epochs: int = 0  # 0: one phase, trained as model.freeze says
    learning_rate_factor: float = 0.1  # phase 2 trains at learning_rate * this


@dataclass
class PredictConfig:
    """``predict``: what task=predict reads and writes."""

    input: Optional[str] = None  # an image, a folder of images, or a CSV
    top_k: int = 5
    annotate: bool = False  # also write each image with its top predictions drawn on it
    contact_sheet: int = 48  # with annotate: how many annotated images contact_sheet.png shows


@dataclass
class ExportConfig:
    """``export``: the model of ckpt_path in a format for serving or devices."""

    format: str = "saved_model"  # keras | saved_model | tflite
    quantize: bool = False  # tflite: dynamic-range quantisation
    dir: Optional[str] = None  # null: the export task's run directory
    check_input: Optional[str] = None  # tflite: images to compare with Keras on; null: random pixels
    tolerance: Optional[float] = None  # tflite: largest probability difference; null: 1e-4, or 0.1 quantised


@dataclass
class HparamsSearchConfig:
    """``hparams_search``: what an Optuna search (``-m hparams_search=optuna``) optimises."""

    # null: the value the trial returns (its best model's trainer.monitor); else keys of a run's metrics.json, one per
    # hydra.sweeper.directions entry, e.g. [val_accuracy, params]
    objectives: Optional[list[str]] = None
    # K >= 2: a trial (or any training run) trains the K folds of data.folds=K one after another, in
    # fold_0..fold_<K-1> of its directory, and returns their mean; its metrics.json holds the folds' means
    # (and <key>_std). 0: a trial is one run.
    cv_folds: int = 0


@dataclass
class LoadConfig:
    """``load``: what loading a saved model (task=eval, predict, export) may import."""

    # modules that define a model file's custom classes, imported before it loads, e.g. [my_pkg.layers];
    # kfactory never imports a module because a file names it
    modules: list[str] = field(default_factory=list)


@dataclass
class AutoConfig:
    """``auto``: experiment=auto, a search for the best model the data allows in a time budget."""

    # the whole command's wall time, e.g. 30m, 1h30m, 90s (at least 1m); experiment=auto passes it to
    # hydra.sweeper.budget. null: no search budget
    budget: Any = None
    # experiment=auto passes it to trainer.max_images_per_epoch: 10 images per second of the budget
    # (conf/experiment/auto.yaml); null: every epoch trains on the whole split
    max_images_per_epoch: Optional[int] = None


@dataclass
class RunConfig:
    """The whole run config (less ``hydra``)."""

    task: str = "train"  # train | eval | predict | export
    seed: int = 42
    # true: continue the run in hydra.run.dir from its last finished epoch; auto: that, or
    # start fresh (the default under submitit_slurm); typed Any, checked by validate
    resume: Any = False
    # DANGEROUS: load model files outside Keras' safe mode, and call the _target_s a run directory's saved config names
    unsafe_load: bool = False
    ckpt_path: Optional[str] = None  # eval/predict/export: a run directory or a model.keras file
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    hparams_search: HparamsSearchConfig = field(default_factory=HparamsSearchConfig)
    load: LoadConfig = field(default_factory=LoadConfig)
    auto: AutoConfig = field(default_factory=AutoConfig)


# group -> its schema, and whether extra keys need a ``_target_`` (False: always accepted)
OPEN_GROUPS: dict[str, tuple[type, bool]] = {
    "optimizer": (OptimizerConfig, False),
    "loss": (LossConfig, False),
    "model": (ModelConfig, True),
    "data": (DataConfig, True),
}


def register_schema() -> None:
    """Put the defaults in Hydra's ConfigStore: ``kfactory_schema`` and ``schema/schedule/<name>``."""
    store = ConfigStore.instance()
    store.store(name="kfactory_schema", node=_defaults(RunConfig))
    for name, schedule in SCHEDULES.items():
        store.store(group="schema/schedule", name=name, node=_defaults(schedule))


def _defaults(schema: type) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(schema))


def extra_keys(node: DictConfig, schema: type) -> dict[str, Any]:
    """The keys of ``node`` that ``schema`` does not declare (an open group's pass-through arguments)."""
    names = {f.name for f in dataclasses.fields(schema)}
    return {key: node[key] for key in node if key not in names}


def apply_schema(cfg: DictConfig) -> DictConfig:
    """``cfg`` merged into the typed schema; raise ConfigError (one line) for a wrong type or key."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)  # Hydra's own node (compose(..., return_hydra_config=True)): Hydra types it
    extras = {}
    for group, (schema, needs_target) in OPEN_GROUPS.items():
        node = plain.get(group)
        if not isinstance(node, dict):
            continue  # the merge below names the key and what it takes
        names = {f.name for f in dataclasses.fields(schema)}
        extras[group] = {key: node.pop(key) for key in list(node) if key not in names}
        if needs_target and extras[group] and node.get("_target_") is None:
            key, value = next(iter(extras[group].items()))
            accepted = f"a key of {group} ({', '.join(sorted(names))}); other keys only with {group}._target_"
            raise ConfigError(f"{group}.{key}", value, accepted)
    typed = _merge(RunConfig, plain, "")
    schedule = typed.optimizer.schedule
    if isinstance(schedule, DictConfig) and schedule.get("name") in SCHEDULES:  # else: check_schedule refuses
        typed.optimizer.schedule = _merge(SCHEDULES[schedule.name], schedule, "optimizer.schedule")
    for group, values in extras.items():
        OmegaConf.set_struct(typed[group], False)  # an open group takes its extra keys...
        typed[group].update(values)
        OmegaConf.set_struct(typed[group], True)  # ...and no more after validation
    if "hydra" in cfg:
        with open_dict(typed):
            typed.hydra = cfg.hydra
    return typed


def _merge(schema: type, values: Any, where: str) -> DictConfig:
    """``values`` merged into ``schema``; ``where``: the dotted key of ``values`` ('' for the root)."""
    _refuse_loose_bools(schema, values, where)
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), values)
    except (ValidationError, ConfigKeyError) as error:
        relative = str(error.full_key)
        value = OmegaConf.select(OmegaConf.create(values), relative, throw_on_missing=False)
        key = f"{where}.{relative}" if where else relative
        raise ConfigError(key, value, accepted_by(schema, relative, where)) from None


def _refuse_loose_bools(schema: type, values: Any, where: str) -> None:
    """Refuse ``1`` or ``yes`` for a bool key: OmegaConf would read them as true, the docs say true or false."""
    if not isinstance(values, dict):
        return
    for name, hint in typing.get_type_hints(schema).items():
        value, key = values.get(name), f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            _refuse_loose_bools(hint, value, key)
        elif hint is bool and name in values and not isinstance(value, bool) and not _is_interpolation(value):
            raise ConfigError(key, value, "true or false")


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("${")


def accepted_by(schema: type, key: str, where: str = "") -> str:
    """What ``schema`` (the node at dotted ``where``) accepts at its dotted ``key``, in words."""
    *parents, last = key.split(".")
    for part in parents:
        schema = typing.get_type_hints(schema).get(part, Any)
        if not dataclasses.is_dataclass(schema):
            return "a value of the type the schema gives"
    hints = typing.get_type_hints(schema)
    if last not in hints:
        node = ".".join(filter(None, [where, *parents])) or "the config"
        return f"a key of {node}: {', '.join(hints)}"
    return describe_type(hints[last])


def describe_type(hint: Any) -> str:
    """A type hint in the words of a refusal: ``null or an integer``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return f"null or {describe_type(inner)}"
    origin = typing.get_origin(hint) or hint
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list"}
    return words.get(origin, "a value of the schema's type")

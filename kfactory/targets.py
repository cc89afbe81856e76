"""Your own parts by ``_target_``: found and called with Hydra's engine, refused in one line.

A model, loss, optimizer, metric, callback or data source given as
``{_target_: my_pkg.module.name, key: value, ...}`` is called by
``hydra.utils.instantiate`` with its other keys as keyword arguments (so
``_partial_``, nested ``_target_`` entries and Hydra's target policy apply).
Every failure becomes a ConfigError naming the ``_target_`` key, its value and
the reason: the module does not import, the name is not callable, the call
failed, or it returned the wrong kind of object. A group's target (model, loss,
optimizer, data) is given only the keys its schema (kfactory/schema.py) does not
declare: the user's own ``+model.width=...``, never kfactory's keys.

A config read from a file (a run directory's ``.hydra/config.yaml``) is data:
its ``_target_`` entries are called only when the current command names the
same target or says ``unsafe_load=true`` (``check_saved_targets``).

This module imports no TensorFlow; resolving a target imports the user's module,
which may.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kfactory.errors import ConfigError
from kfactory.schema import extra_keys

TARGET = "_target_"
CUSTOM = "custom"  # the option name of model=custom, loss=custom, optimizer=custom, data=custom

CUSTOM_ACTIVATIONS = ("softmax", "sigmoid", "linear")  # what a custom model's outputs are
LOSS_LABELS = ("one_hot", "sparse")  # loss=custom: how labels are encoded for it


def target_of(entry: Any) -> str | None:
    """The ``_target_`` of a config entry, or None (also for a plain string such as a metric name)."""
    if isinstance(entry, Mapping | DictConfig):
        return entry.get(TARGET)
    return None


def is_custom_model(model: DictConfig) -> bool:
    """Whether the ``model`` group builds the user's model rather than a keras.applications one."""
    return model.name == CUSTOM


def resolve(key: str, path: Any) -> Callable[..., Any]:
    """The callable a dotted path names, imported; ConfigError if it does not import or is not callable."""
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(key, path, "a dotted path to a class or function, e.g. my_pkg.nets.build")
    from hydra.utils import get_object

    try:
        with _quiet("hydra.utils"):  # get_object logs its own error line; ours is the one line
            found = get_object(path)
    except Exception as error:
        reason = _first_line(error.__cause__ or error)
        accepted = f"an importable dotted path (module on PYTHONPATH or installed): {reason}"
        raise ConfigError(key, path, accepted) from None
    if not callable(found):
        raise ConfigError(key, path, f"a class or function (it names a {type(found).__name__})")
    return found


def build(
    key: str,
    group: Mapping,
    expected: type | tuple[type, ...],
    kind: str,
    schema: type | None = None,
    drop: Iterable[str] = (),
    **kwargs: Any,
) -> Any:
    """Call ``group``'s ``_target_`` with its own keys and ``kwargs``.

    Args:
        key: where ``group`` is in the config, e.g. ``model`` or ``trainer.callbacks[0]``.
        group: the entry with the ``_target_``.
        expected: the class(es) the returned object must be an instance of.
        kind: that kind, as the refusal names it, e.g. ``a keras.Model``.
        schema: the group's dataclass in kfactory.schema: the target is given only the keys it does not declare.
        drop: keys of an entry without a schema (a metric's ``name``) that kfactory reads itself.
        kwargs: arguments kfactory adds (``input_shape``, ``learning_rate``, ...).
    """
    target_key, path = f"{key}.{TARGET}", group[TARGET]
    resolve(target_key, path)  # an import error in one line, before instantiate's longer one
    config = OmegaConf.to_container(group, resolve=True) if OmegaConf.is_config(group) else dict(group)
    config = extra_keys(config, schema) if schema is not None else config
    config = {TARGET: path, **{k: v for k, v in config.items() if k not in set(drop)}}
    from hydra.utils import instantiate

    try:
        built = instantiate(config, _convert_="all", **kwargs)
    except Exception as error:
        reason = _first_line(error.__cause__ or error)
        raise ConfigError(target_key, path, f"a target that returns {kind}; calling it failed: {reason}") from error
    if not isinstance(built, expected):
        raise ConfigError(target_key, path, f"a target that returns {kind}, not a {type(built).__name__}")
    return built


def check_targets(cfg: DictConfig) -> None:
    """Resolve every ``_target_`` of a training config (imports the user's modules; kfactory's need no TensorFlow)."""
    for group, option in (("model", "name"), ("loss", "name"), ("optimizer", "name"), ("data", "source")):
        key = f"{group}.{TARGET}"
        if OmegaConf.is_missing(cfg[group], TARGET):  # model._target_=??? on the command line
            raise ConfigError(key, "???", f"a value: add {key}=my_pkg.module.name to the command line")
        target = cfg[group][TARGET]
        if target is None and cfg[group][option] == CUSTOM:  # model=custom etc. without model._target_=...
            raise ConfigError(key, None, f"a value with {group}={CUSTOM}: add {key}=my_pkg.module.name")
        if target is not None:
            resolve(key, target)
    for list_key in ("metrics", "callbacks"):
        for index, entry in enumerate(cfg.trainer[list_key]):
            if list_key == "callbacks" and target_of(entry) is None:
                accepted = "a {_target_: my_pkg.module.Callback, ...} entry, e.g. _target_: keras.callbacks.CSVLogger"
                raise ConfigError(f"trainer.callbacks[{index}]", entry, accepted)
            if isinstance(entry, Mapping | DictConfig):
                resolve(f"trainer.{list_key}[{index}].{TARGET}", target_of(entry))


def targets_in(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every ``_target_`` set in ``node``, e.g. ``('trainer.metrics[0]._target_', ...)``."""
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=False)  # read as written: no interpolation is resolved
    if isinstance(node, Mapping):
        for key, value in node.items():
            inner = f"{where}.{key}" if where else str(key)
            if key == TARGET and value is not None:
                yield inner, value
            else:
                yield from targets_in(value, inner)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from targets_in(value, f"{where}[{index}]")


def check_saved_targets(saved: DictConfig, current: DictConfig, path: Path) -> None:
    """Refuse, in one line, a ``_target_`` that the config file ``path`` names and the current command does not.

    Calling a saved target runs whatever code the file's author chose (any function
    of any installed package); it is called only if the current command names the
    same target (``data._target_=my_pkg.data.load``) or says ``unsafe_load=true``.
    Nothing is imported or called here.
    """
    if current.get("unsafe_load") is True:
        return
    named = {str(value) for _, value in targets_in(current)}
    for key, target in targets_in(saved):
        if str(target) not in named:
            accepted = f"a target the command names: {path} asks to call it; add {key}={target} or unsafe_load=true"
            raise ConfigError(key, target, f"{accepted} to call it (only for a run you trust)")


def check_custom_model(model: DictConfig, finetune: DictConfig) -> None:
    """Refuse keras.applications settings that a custom model cannot honour (no TensorFlow)."""
    if model.activation not in CUSTOM_ACTIVATIONS:
        accepted = "what the custom model outputs: softmax or sigmoid (probabilities) or linear (logits)"
        raise ConfigError("model.activation", model.activation, accepted)
    unused = "null with model=custom: your builder makes (or loads) its own weights"
    refused = {
        "weights": (model.weights is not None, unused),
        "include_top": (model.include_top, "false with model=custom: your builder makes its head"),
        "dropout": (bool(model.dropout), "0 with model=custom: add dropout in your builder (+model.rate=...)"),
        "freeze": (model.freeze != "none", "none with model=custom: freeze layers in your builder"),
    }
    for name, (bad, accepted) in refused.items():
        if bad:
            raise ConfigError(f"model.{name}", model[name], accepted)
    if finetune.head_epochs:
        accepted = "0 with model=custom: fine-tuning phases need an application"
        raise ConfigError("finetune.head_epochs", finetune.head_epochs, accepted)


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


@contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was

"""What kfactory needs from Keras and TensorFlow beyond their public API, in one place.

kfactory runs on the TensorFlow backend of the Keras minor series pyproject.toml
pins (``check_backend`` refuses another backend before anything is imported).
Every private Keras or TensorFlow internal it touches is reached through one
function here, and tests/test_framework.py holds one contract test per internal,
so a release that changes one fails that test by name:

- ``Model._symbolic_build``: ``symbolic_build``
- ``Trainer._initial_epoch``: ``set_initial_epoch``
- ``object.__setattr__`` past Keras's attribute tracking: ``set_untracked``
- ``tensorflow.python.framework.ops._gradient_registry``: ``drop_custom_gradients``
- ``TensorBoard._train_writer``: ``train_writer``; ``TensorBoard._log_weights`` (overridden): ``OVERRIDDEN``
- ``BackupAndRestore._current_epoch``, ``_last_batch_seen``: ``backup_position``;
  ``_training_metadata_path``: ``backup_metadata_path``; ``_save_model`` (overridden): ``OVERRIDDEN``

Keras and TensorFlow are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

from kfactory.errors import ConfigError

BACKEND = "tensorflow"  # the only KERAS_BACKEND kfactory runs on
TESTED_KERAS = "3.15"  # the minor series pyproject.toml pins and the contract tests check

# Private methods of Keras classes that kfactory's subclasses override, which Keras itself calls.
OVERRIDDEN: dict[str, tuple[str, ...]] = {
    "TensorBoard": ("_log_weights",),  # called with the epoch where weight histograms are due
    "BackupAndRestore": ("_save_model",),  # called where a backup is due (epoch end, or save_freq batches)
}


def check_backend(environ: MutableMapping[str, str] = os.environ) -> None:
    """Refuse a KERAS_BACKEND other than tensorflow in one line; set it where unset (over ~/.keras/keras.json)."""
    backend = environ.get("KERAS_BACKEND")
    if backend is not None and backend != BACKEND:
        accepted = f"{BACKEND} (or unset): kfactory trains with TensorFlow; run with KERAS_BACKEND={BACKEND}"
        raise ConfigError("KERAS_BACKEND", backend, accepted)
    environ["KERAS_BACKEND"] = BACKEND


def checked_overrides(cls: type) -> type:
    """Class decorator: fail at import, naming the internal, if a Keras base no longer has a private method ``cls``
    overrides (``OVERRIDDEN``): the override would silently never be called."""
    for base in cls.__mro__[1:]:
        for name in OVERRIDDEN.get(base.__name__, ()) if base.__module__.startswith("keras") else ():
            if name not in vars(base):
                raise RuntimeError(
                    f"keras.callbacks.{base.__name__}.{name} is gone in this Keras; kfactory {cls.__name__} "
                    f"overrides it and is tested with keras {TESTED_KERAS}.x"
                )
    return cls


def symbolic_build(model: Any, element_spec: Any) -> None:
    """Create the optimizer's and compiled metrics' variables from ``element_spec``'s shapes, as ``fit`` does
    under a distribution strategy (``Model._symbolic_build``)."""
    model._symbolic_build(data_batch=element_spec)


def set_initial_epoch(model: Any, epoch: int | None) -> None:
    """The epoch the next ``fit`` starts at, over its ``initial_epoch`` argument (None: the argument's).

    This is how Keras's BackupAndRestore moves the start of a resumed ``fit``.
    """
    model._initial_epoch = epoch


def set_untracked(obj: Any, name: str, value: Any) -> None:
    """Set an attribute of a Keras object without its tracking (not saved, not a tracked variable or layer)."""
    object.__setattr__(obj, name, value)


def drop_custom_gradients() -> int:
    """Forget every ``tf.custom_gradient`` TensorFlow registered globally while tracing; how many were dropped.

    The registry keeps each traced step (and its model) alive across jobs in one
    process (tensorflow/tensorflow#61791). A TensorFlow without it drops nothing.
    """
    try:
        from tensorflow.python.framework import ops

        registry = ops._gradient_registry._registry
    except (ImportError, AttributeError):  # pragma: no cover - a TensorFlow without it
        return 0
    names = [name for name in registry if name.startswith("CustomGradient-")]
    for name in names:
        del registry[name]
    return len(names)


def train_writer(callback: Any) -> Any:
    """The summary writer of a ``keras.callbacks.TensorBoard``'s ``train`` run (created on first use)."""
    return callback._train_writer


def backup_position(callback: Any) -> tuple[int, int]:
    """(epochs finished, batches seen in the epoch) that a ``keras.callbacks.BackupAndRestore`` is saving."""
    return callback._current_epoch, callback._last_batch_seen


def backup_metadata_path(callback: Any) -> str:
    """The file where a ``keras.callbacks.BackupAndRestore`` records the epoch of its backup."""
    return callback._training_metadata_path

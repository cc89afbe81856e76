"""Saving and finding trained models: atomic writes, metadata inside the file."""

from __future__ import annotations

import importlib
import json
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kfactory.errors import ConfigError
from kfactory.framework import set_untracked
from kfactory.paths import expand_path, replace_durably

if TYPE_CHECKING:
    import keras

MODEL_FILE = "model.keras"
METADATA_ENTRY = "kfactory.json"  # extra entry in the .keras zip; Keras ignores it
KERAS_ENTRY = "config.json"  # every .keras zip Keras writes holds its architecture here
# Beside a SavedModel, in the folder TF Serving keeps for extra files.
SAVED_MODEL_METADATA = f"assets.extra/{METADATA_ENTRY}"
# The serving signatures of an exported SavedModel (kfactory.use.export writes them).
BYTES_SIGNATURE = "serving_default"  # a batch of encoded JPEG/PNG images
PIXELS_SIGNATURE = "serving_pixels"  # a batch of uint8 RGB pixels at the input size


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file, then rename it over ``path``, durably (``replace_durably``).

    The temporary file is this process's own, so that parallel jobs writing one file never share it.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    replace_durably(tmp, path)


@contextmanager
def _without_training_state(model: keras.Model) -> Iterator[None]:
    """Hide the optimizer and compile settings from Keras's saver while the ``with`` block runs.

    The saver writes every variable it can reach, and the optimizer's slots are
    twice the weights for Adam; resuming reads them from the backup instead.
    Set without Keras's attribute tracking, and put back whatever happens.
    """
    optimizer, compiled = model.__dict__.get("optimizer"), model.__dict__.get("compiled", False)
    set_untracked(model, "optimizer", None)
    set_untracked(model, "compiled", False)
    try:
        yield
    finally:
        set_untracked(model, "optimizer", optimizer)
        set_untracked(model, "compiled", compiled)


def save_model(model: keras.Model, path: Path, metadata: dict[str, Any]) -> None:
    """Save ``model`` for use (architecture and weights, with ``metadata``) atomically to ``path``.

    The file holds no optimizer state and no compile settings: it is about the
    size of the weights, loads with plain ``keras.models.load_model`` without
    warnings and predicts; kfactory compiles it again where it evaluates.
    """
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    with _without_training_state(model):
        model.save(tmp)
    with zipfile.ZipFile(tmp, "a") as archive:
        archive.writestr(METADATA_ENTRY, json.dumps(metadata, indent=2))
    replace_durably(tmp, path)


def update_metadata(path: Path, values: dict[str, Any]) -> None:
    """Add ``values`` to the metadata inside the ``.keras`` file at ``path``, atomically."""
    rewrite_entries(path, {METADATA_ENTRY: json.dumps({**read_metadata(path), **values}, indent=2)})


def rewrite_entries(path: Path, entries: dict[str, str]) -> None:
    """Replace (or add) these entries of the zip at ``path``, keeping the others as they are."""
    rewritten = path.with_name(f"{path.name}.rewrite")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if item.filename not in entries:
                target.writestr(item, source.read(item.filename))
        for name, text in entries.items():
            target.writestr(name, text)
    replace_durably(rewritten, path)


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata kfactory stored with a model: in a ``.keras`` zip, or beside a SavedModel ({} if none)."""
    if path.is_dir():
        sidecar = path / SAVED_MODEL_METADATA
        return json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    with zipfile.ZipFile(path) as archive:
        if METADATA_ENTRY not in archive.namelist():
            return {}
        return json.loads(archive.read(METADATA_ENTRY))


def is_saved_model(path: Path) -> bool:
    """Whether ``path`` is a TensorFlow SavedModel directory."""
    return (path / "saved_model.pb").is_file()


def find_saved_model(folder: Path) -> Path | None:
    """A SavedModel in ``folder``: itself, or the newest numbered version under it or its ``saved_model/``."""
    for root in (folder, folder / "saved_model"):
        if is_saved_model(root):
            return root
        # TF Serving's layout: <base>/<version>/saved_model.pb
        versions = [p for p in root.glob("[0-9]*") if p.name.isdigit() and is_saved_model(p)] if root.is_dir() else []
        if versions:
            return max(versions, key=lambda p: int(p.name))
    return None


def find_model_file(ckpt_path: str | None) -> Path:
    """The model ``ckpt_path`` names: a run directory's ``model.keras``, a ``.keras`` file, or a SavedModel.

    A directory holding ``model.keras`` gives that file; otherwise an exported
    SavedModel directory (or a TF Serving base folder of numbered versions)
    gives the SavedModel directory. Reads only the file system: no TensorFlow.
    """
    accepted = "a run directory holding model.keras, a .keras file, or an exported SavedModel directory"
    if ckpt_path is None:
        raise ConfigError("ckpt_path", ckpt_path, accepted)
    path = expand_path(ckpt_path)
    if path.is_dir():
        if not (path / MODEL_FILE).is_file() and (saved := find_saved_model(path)) is not None:
            return saved
        path = path / MODEL_FILE
    if not path.is_file() or not zipfile.is_zipfile(path):
        raise ConfigError("ckpt_path", ckpt_path, accepted)
    with zipfile.ZipFile(path) as archive:
        if KERAS_ENTRY not in archive.namelist():  # a zip, but not a saved Keras model
            raise ConfigError("ckpt_path", ckpt_path, f"{accepted} ({path.name} is a zip without {KERAS_ENTRY})")
    return path


def import_modules(modules: Sequence[str]) -> None:
    """Import the modules ``load.modules`` names; ConfigError naming the first that does not import."""
    for index, module in enumerate(modules):
        try:
            importlib.import_module(module)
        except Exception as error:
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            accepted = f"a module on PYTHONPATH or installed ({reason})"
            raise ConfigError(f"load.modules[{index}]", module, accepted) from None


def load_model(path: Path, safe_mode: bool = True, modules: Sequence[str] = ()) -> keras.Model:
    """Load a saved model; safe mode refuses code embedded in the file (``unsafe_load=true`` allows it).

    ``modules`` (``load.modules``) are imported first, to register the file's custom
    classes; kfactory imports no module because the file names it.
    """
    import keras

    import_modules(modules)
    try:
        return keras.models.load_model(path, compile=False, safe_mode=safe_mode)
    except TypeError as error:  # a registered class whose module the command did not name
        if "Could not locate" not in str(error):
            raise
        missing = re.search(r"Could not locate class '([^']+)'", str(error))
        found = f"Keras could not locate class '{missing[1] if missing else '?'}'"
        accepted = f"the modules that define the custom classes of {path}, e.g. load.modules=[my_pkg.layers]: {found}"
        raise ConfigError("load.modules", list(modules), accepted) from error
    except ValueError as error:
        if safe_mode and "safe_mode" in str(error):
            first_line = str(error).splitlines()[0]
            raise ConfigError(
                "unsafe_load",
                False,
                f"true to load {path}, which holds Python code; only for a file you trust ({first_line})",
            ) from error
        raise

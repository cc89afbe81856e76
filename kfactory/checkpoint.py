"""Saving and finding trained models: atomic writes, metadata inside the file."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kfactory.config import ConfigError, expand_path

if TYPE_CHECKING:
    import keras

MODEL_FILE = "model.keras"
METADATA_ENTRY = "kfactory.json"  # extra entry in the .keras zip; Keras ignores it


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def save_model(model: keras.Model, path: Path, metadata: dict[str, Any]) -> None:
    """Save ``model`` with ``metadata`` (class names, …) atomically to ``path``."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    with zipfile.ZipFile(tmp, "a") as archive:
        archive.writestr(METADATA_ENTRY, json.dumps(metadata, indent=2))
    os.replace(tmp, path)


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata kfactory stored in a ``.keras`` file ({} if none)."""
    with zipfile.ZipFile(path) as archive:
        if METADATA_ENTRY not in archive.namelist():
            return {}
        return json.loads(archive.read(METADATA_ENTRY))


def find_model_file(ckpt_path: str | None) -> Path:
    """The ``model.keras`` that ``ckpt_path`` (a run directory or the file) names."""
    accepted = "a run directory holding model.keras, or a .keras file"
    if ckpt_path is None:
        raise ConfigError("ckpt_path", ckpt_path, accepted)
    path = expand_path(ckpt_path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file() or not zipfile.is_zipfile(path):
        raise ConfigError("ckpt_path", ckpt_path, accepted)
    return path


def load_model(path: Path, safe_mode: bool = True) -> keras.Model:
    """Load a saved model; safe mode refuses code embedded in the file."""
    import keras

    return keras.models.load_model(path, compile=False, safe_mode=safe_mode)

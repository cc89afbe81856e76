"""``model_card.md``: what an exported model is, was trained on, and scored."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from kfactory.schema import RunConfig

if TYPE_CHECKING:
    import keras

CARD_FILE = "model_card.md"

USAGE = {
    "keras": """```python
import keras  # no kfactory needed: preprocessing is inside the model
model = keras.models.load_model("{file}")
probabilities = model.predict(pixels)  # float RGB in [0, 255], shape (n, {height}, {width}, 3)
```""",
    "saved_model": """```python
import tensorflow as tf
served = tf.saved_model.load("{file}")
out = served.signatures["serving_default"](tf.constant([open("cat.jpg", "rb").read()]))  # JPEG/PNG bytes
out = served.signatures["serving_pixels"](pixels)  # uint8 RGB, shape (n, {height}, {width}, 3)
out["probabilities"], out["class_names"], out["top_class"]
```
TF Serving: `tensorflow_model_server --model_name=kfactory --model_base_path={base}`.""",
    "tflite": """```python
import tensorflow as tf
interpreter = tf.lite.Interpreter(model_path="{file}")  # input: float32 RGB in [0, 255], (1, {height}, {width}, 3)
```""",
}


def write_model_card(
    out_dir: Path,
    artefact: Path,
    fmt: str,
    source: Path,
    metadata: dict[str, Any],
    model: keras.Model,
    checks: dict[str, Any],
) -> Path:
    """Write ``model_card.md`` in ``out_dir`` for ``artefact``, exported from ``source``."""
    height, width = (int(s) for s in model.input_shape[1:3])
    names = metadata["class_names"]
    metrics_file = source.parent / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    lines = [
        f"# Model card: {metadata.get('model', model.name)}",
        "",
        f"- File: `{artefact.relative_to(out_dir)}` ({fmt})",
        f"- Exported from: `{source}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Architecture: {model.name}, {model.count_params():,} parameters",
        *_start_lines(metrics),
        f"- Input: {height}x{width} RGB pixels in [0, 255]; the preprocessing is inside the model",
        f"- Output: probabilities of {len(names)} classes (activation {metadata.get('activation', '?')},"
        f" loss {metadata.get('loss', '?')})",
        "",
        "## Classes",
        "",
        *_class_lines(names, metadata.get("thresholds")),
        "",
        "## Use",
        "",
        _usage(fmt, artefact, out_dir, height, width, "thresholds" in metadata),
        *_check_lines(checks),
        *_metrics_lines(metrics, metadata),
        *_config_lines(source.parent / ".hydra" / "config.yaml"),
    ]
    card = out_dir / CARD_FILE
    card.write_text("\n".join(lines) + "\n")
    return card


def _class_lines(names: list[str], thresholds: dict[str, float] | None) -> list[str]:
    """One line per class; a multi-label model's with the threshold its label is given at."""
    if thresholds is None:
        return [f"{i}. {name}" for i, name in enumerate(names)]
    return [f"{i}. {name} (threshold {thresholds[name]:g})" for i, name in enumerate(names)]


def _usage(fmt: str, artefact: Path, out_dir: Path, height: int, width: int, label_sets: bool = False) -> str:
    """How to load the artefact, paths relative to the card (TF Serving wants an absolute base path)."""
    base = artefact.parent.resolve()
    usage = USAGE[fmt].format(file=artefact.relative_to(out_dir), base=base, height=height, width=width)
    return usage.replace('out["top_class"]', 'out["labels"]  # "" where below the threshold') if label_sets else usage


def _check_lines(checks: dict[str, Any]) -> list[str]:
    if not checks:
        return []
    rows = [f"| {key} | {value} |" for key, value in checks.items()]
    return ["", "## Conversion check (TFLite interpreter vs Keras)", "", "| check | value |", "|---|---|", *rows]


def _start_lines(metrics: dict[str, Any]) -> list[str]:
    """What training started from, as the run resolved ``model.weights`` (runs from before it was recorded: none)."""
    if "weights" not in metrics:
        return []
    weights = metrics["weights"]
    said = "random initialization (model.weights=null)" if weights is None else f"model.weights={weights}"
    return [f"- Trained from: {said}"]


def _metrics_lines(metrics: dict[str, Any], metadata: dict[str, Any]) -> list[str]:
    """Final metrics of the training run (``metrics``, its metrics.json), else what the checkpoint recorded."""
    metrics = {k: v for k, v in metrics.items() if k != "weights"}  # no metric: the card's "Trained from"
    if not metrics:
        metrics = {k: v for k, v in metadata.items() if k not in ("class_names", "model", "input_size", "loss")}
        metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    rows = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    body = ["| metric | value |", "|---|---|", *rows] if rows else ["No metrics.json was found next to the model."]
    return ["", "## Final metrics", "", *body]


def _config_lines(path: Path) -> list[str]:
    """The training run's composed config, when the model sits in its run directory."""
    config = OmegaConf.load(path) if path.is_file() else None
    if config is None or config.get("task", RunConfig.task) != "train":  # a config saved before ``task`` existed
        return ["", "## Training config", "", "Not found: the model is not in its training run's directory."]
    return ["", "## Training config", "", "```yaml", OmegaConf.to_yaml(config).rstrip(), "```"]

"""Re-evaluate a trained model on its run's test split, with a per-class report."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from kfactory.data.label_task import settle_label_task
from kfactory.data.pipeline import make_splits
from kfactory.data.split_record import SPLITS_FILE, SplitRecord, read_split
from kfactory.model.build import to_probabilities
from kfactory.model.checkpoint import find_model_file, load_model, read_metadata, write_json_atomic
from kfactory.schema import apply_schema
from kfactory.targets import check_saved_targets
from kfactory.train.compile import compile_model
from kfactory.train.multilabel import class_scores, stored_thresholds

log = logging.getLogger(__name__)


def training_config(model_path: Path, fallback: DictConfig) -> DictConfig:
    """The config the model was trained with (its run's .hydra/config.yaml), else ``fallback``.

    The saved file is data: a ``_target_`` in it is called only if ``fallback`` (the
    current command) names the same target or says ``unsafe_load=true``. It goes
    through the schema too: a run saved before a key existed reads that key's default.
    """
    saved = model_path.parent / ".hydra" / "config.yaml"
    if saved.is_file():
        loaded = OmegaConf.load(saved)
        check_saved_targets(loaded, fallback, saved)
        cfg = apply_schema(loaded)
        settle_label_task(cfg)  # data.task=auto, and a multi-label run's head, as training settled them
        return cfg
    log.warning("No %s; evaluating on the data of the current config", saved)
    return fallback


def evaluate(cfg: DictConfig, run_dir: Path) -> float:
    """Evaluate ``cfg.ckpt_path`` on its test split (its validation split if it has none: ``val_*`` keys)."""
    model_path = find_model_file(cfg.ckpt_path)
    train_cfg = training_config(model_path, cfg)
    train_cfg.data.on_changed = cfg.data.on_changed  # this command's choice, not the training run's
    splits = make_splits(train_cfg, recorded=scored_split(model_path.parent))
    metadata = read_metadata(model_path)
    class_names = metadata.get("class_names", splits.class_names)
    model = load_model(model_path, safe_mode=not cfg.unsafe_load, modules=cfg.load.modules)
    compile_model(model, train_cfg, len(class_names), jit_compile=False)
    split = "test" if splits.test is not None else "val"  # a run trained with data.test_split=0
    data, labels = getattr(splits, split), splits.source.labels[splits.indices[split]]
    values = {f"{split}_{k}": float(v) for k, v in model.evaluate(data, verbose=0, return_dict=True).items()}
    multilabel = metadata.get("task") == "multilabel"
    probabilities = to_probabilities(model.predict(data, verbose=0), metadata.get("activation", "softmax"), multilabel)
    if multilabel:
        report = label_set_report(probabilities, labels, class_names, stored_thresholds(metadata, class_names))
    else:
        report = class_report(probabilities, labels, class_names)
    write_json_atomic(run_dir / "eval_metrics.json", values)
    report.to_csv(run_dir / "class_report.csv")
    shown = ", ".join(f"{k}={v:.4f}" for k, v in values.items())
    log.info("%s metrics of %s: %s", "Test" if split == "test" else "Validation", model_path, shown)
    log.info("Per-class report:\n%s", report.to_string(float_format=lambda v: f"{v:.3f}"))
    return values.get(f"{split}_accuracy", values.get(f"{split}_loss", float("nan")))


def scored_split(run_dir: Path) -> SplitRecord | None:
    """The split eval scores as ``run_dir`` recorded it: its test images, else (no test split) its validation ones.

    None for a run from before splits were recorded: its split is drawn again, as training drew it.
    """
    record = read_split(run_dir)
    if record is None:
        log.warning(
            "No %s in %s (a run from before splits were recorded): drawing its split again from the files there now",
            SPLITS_FILE,
            run_dir,
        )
        return None
    return record.only("test" if record.counts()["test"] else "val")


def class_report(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (from per-class probabilities), plus the macro average.

    scikit-learn's ``classification_report``; a class never predicted (or absent) scores 0.
    """
    from sklearn.metrics import classification_report

    report = classification_report(
        labels,
        probabilities.argmax(axis=-1),
        labels=range(len(class_names)),
        output_dict=True,
        zero_division=0.0,
    )  # keyed by class index, so a class named "accuracy" cannot meet the report's own rows
    rows = [report[str(index)] for index in range(len(class_names))] + [report["macro avg"]]
    table = pd.DataFrame(rows, index=pd.Index([*class_names, "macro avg"], name="class"))
    table = table.rename(columns={"f1-score": "f1"})[["precision", "recall", "f1", "support"]]
    table["support"] = table["support"].astype(int)
    return table


def label_set_report(
    probabilities: np.ndarray, labels: np.ndarray, class_names: list[str], thresholds: np.ndarray
) -> pd.DataFrame:
    """Per class of a multi-label model: its threshold, F1 there, average precision and support; the macro average."""
    scores = class_scores(labels, probabilities, thresholds)
    table = pd.DataFrame(
        {"threshold": thresholds, "f1": scores["f1"], "ap": scores["ap"], "support": scores["support"]},
        index=pd.Index(class_names, name="class"),
    )
    table.loc["macro avg"] = [np.nan, scores["f1"].mean(), np.nanmean(scores["ap"]), table["support"].sum()]
    table["support"] = table["support"].astype(int)
    return table

"""One training run: data, model, compile, fit, then evaluate the best model."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from kfactory.data.augment import augment_entries, write_augmented_images
from kfactory.data.class_weights import class_weights, record_class_counts
from kfactory.data.image_check import SKIPPED_FILE
from kfactory.data.pipeline import Splits, epoch_steps, make_dataset, make_splits, splits_read_whole
from kfactory.errors import RunStopped
from kfactory.model.build import build_model
from kfactory.model.checkpoint import MODEL_FILE, load_model, update_metadata, write_json_atomic
from kfactory.overrides import sweep_root
from kfactory.registry import input_size, monitor_mode
from kfactory.run.resume import drop_backup, restore_history
from kfactory.targets import is_custom_model
from kfactory.train.best_model import BestModelCheckpoint
from kfactory.train.callbacks import make_callbacks, stop_if_diverged
from kfactory.train.clock import RunClock
from kfactory.train.compile import compile_model
from kfactory.train.compute import (
    XlaChoice,
    build_before_fit,
    choose_jit_compile,
    configure_tensorflow,
    deterministic_ops,
)
from kfactory.train.deadline import deadline_epoch
from kfactory.train.diagnosis import AT_CHANCE, LEARNED, chance_diagnosis
from kfactory.train.distribute import make_strategy
from kfactory.train.final_summaries import write_final_summaries
from kfactory.train.finetune import fit_in_phases
from kfactory.train.multilabel import DEFAULT_THRESHOLD, threshold_metrics, tune_thresholds
from kfactory.train.pruning import pruned_at_chance, pruned_epoch
from kfactory.train.xla_probe import TIMED_FILE, XlaProbe, timed_before, timing_key

log = logging.getLogger(__name__)


def train(cfg: DictConfig, run_dir: Path) -> float:
    """Train ``cfg`` into ``run_dir`` and return the best ``trainer.monitor`` value."""
    started = time.time()
    configure_tensorflow(cfg.trainer, cfg.seed)
    splits = make_splits(cfg, run_dir)
    log.info("Data: %s", ", ".join(f"{k} {len(v)}" for k, v in splits.indices.items()))
    if cfg.data.source == "csv":
        log.info("%s", describe_task(cfg))
    if note := weights_note(cfg.model):
        log.info("%s", note)
    train_images = len(splits.indices["train"])
    capped = epoch_steps(cfg.trainer, train_images, cfg.data.batch_size)
    steps = capped or -(-train_images // cfg.data.batch_size)
    if capped and not cfg.trainer.steps_per_epoch:
        log.info(
            "Epochs of %d steps: %d of the %d training images each (trainer.max_images_per_epoch); "
            "each epoch goes on through the split where the last one ended",
            steps,
            min(cfg.trainer.max_images_per_epoch, train_images),
            train_images,
        )
    strategy = make_strategy(cfg.trainer)
    xla, probe = plan_xla(cfg, steps * cfg.trainer.epochs, distributed=strategy.num_replicas_in_sync > 1)
    with strategy.scope():  # variables and optimizer slots live on the strategy's devices
        model = build_model(cfg, len(splits.class_names))
    mode = monitor_mode(cfg.trainer.monitor, cfg.trainer.monitor_mode, cfg.trainer.metrics)
    checkpoint = BestModelCheckpoint(run_dir / MODEL_FILE, cfg.trainer.monitor, model_metadata(cfg, splits), mode)

    def compile_phase(learning_rate: Any) -> None:  # each fine-tuning phase recompiles, in the model's strategy
        jit = xla.jit if probe is None or probe.decided is None else probe.decided
        with model.distribute_strategy.scope():
            compile_model(model, cfg, len(splits.class_names), jit, learning_rate)
            build_before_fit(model, splits.train.element_spec)

    past = resume_history(cfg.resume, cfg.trainer.epochs, run_dir)
    if past and splits.drawn:
        log.warning("%s has no recorded split (a run from before splits were recorded): drawn again", run_dir)
    checkpoint.replay(past)
    clock = RunClock(started)
    callbacks = [clock, *([probe] if probe else []), *make_callbacks(cfg, run_dir, checkpoint, splits, past)]
    weights = describe_training(cfg, splits, run_dir)
    with splits_read_whole(splits, run_dir):
        history = fit_in_phases(model, cfg, splits, steps, callbacks, compile_phase, weights)
    stop_if_diverged(callbacks, cfg, checkpoint)
    epochs_run = len(past) + len(history.epoch)
    classes, from_scratch = len(splits.class_names), cfg.model.weights is None
    single_label = cfg.data.task != "multilabel"  # a label set's accuracy has another chance level
    learned = AT_CHANCE if pruned_at_chance(callbacks) else LEARNED  # the bar the pruning used, if it did
    if single_label and (
        stuck := chance_diagnosis(history.history, classes, model, steps * epochs_run, from_scratch, learned)
    ):
        log.warning("%s", stuck)
    if checkpoint.best is None:
        monitor = cfg.trainer.monitor
        raise RunStopped(f"no epoch produced a finite {monitor}; nothing to save (try a lower learning rate)")
    best = best_model(cfg, model, checkpoint, splits)
    with splits_read_whole(splits, run_dir):
        metrics = evaluate_best(cfg, best, checkpoint, splits)
    if cfg.data.task == "multilabel":
        metrics.update(store_thresholds(best, run_dir / MODEL_FILE, splits))
    metrics.update(best_epoch=checkpoint.best_epoch + 1, epochs_run=epochs_run)
    metrics["weights"] = OmegaConf.select(cfg, "model.weights")  # as resolved: what a search's winner started from
    metrics[f"best_{cfg.trainer.monitor}"] = checkpoint.best
    metrics["params"] = model.count_params()  # a search can weigh accuracy against size
    if single_label and (images := len(splits.indices.get("val", []))):
        metrics["validation_size"] = images  # val_accuracy's denominator: a search weighs how far apart two runs are
    if pruned := pruned_epoch(callbacks):
        metrics.update(pruned=True, pruned_epoch=pruned)
    if stopped := deadline_epoch(callbacks):
        metrics["deadline_epoch"] = stopped  # the search's budget ended training in this epoch
    write_final_summaries(cfg, run_dir / "tensorboard", metrics)
    metrics.update(clock.times())
    write_json_atomic(run_dir / "metrics.json", metrics)  # last: the run is complete
    drop_backup(run_dir)
    report(cfg, run_dir, metrics)
    if splits.skipped:
        log.warning("Skipped %d unreadable images; the list: %s", len(splits.skipped), run_dir / SKIPPED_FILE)
    # The saved model's value on the whole split, as the sweep summary ranks runs; the best epoch's when absent.
    return metrics.get(cfg.trainer.monitor, checkpoint.best)


def plan_xla(cfg: DictConfig, total_steps: int, distributed: bool) -> tuple[XlaChoice, XlaProbe | None]:
    """XLA on or off, and the probe that times both ways when that is the plan; in a sweep, an earlier
    job's timing of the same model, input size and batch on this kind of machine instead of a new one."""
    side, trainer = max(input_size(cfg.model)), cfg.trainer
    xla = choose_jit_compile(
        trainer.jit_compile,
        cfg.model.name,
        side,
        total_steps,
        deterministic=deterministic_ops(trainer.deterministic),
        distributed=distributed,
    )
    probe = None
    if xla.measure:
        variant = f", freeze {cfg.model.freeze}, {trainer.precision}"
        key, sweep = timing_key(cfg.model.name, side, cfg.data.batch_size, variant), sweep_root()
        record = sweep / TIMED_FILE if sweep else None
        earlier = timed_before(record, key) if record else None
        xla, probe = (earlier, None) if earlier else (xla, XlaProbe(record=record, key=key))
    log.info("XLA %s (%s)", "timed both ways" if probe else "on" if xla.jit else "off", xla.why)
    return xla, probe


def describe_task(cfg: DictConfig) -> str:
    """The label task a CSV was read as (data.task=auto decides from the data), and a multi-label run's head."""
    separator = cfg.data.label_separator
    if cfg.data.task != "multilabel":
        return f"Task: multiclass, one label per image (data.task={cfg.data.task}, separator '{separator}')"
    return (
        f"Task: multilabel, label sets split at '{separator}'; one {cfg.model.activation} unit per class, "
        f"loss={cfg.loss.name}, per-class thresholds tuned on the validation split"
    )


def weights_note(model: DictConfig) -> str | None:
    """Say so when a run starts from ImageNet weights, at which size, and how to train from scratch instead."""
    if model.weights != "imagenet":
        return None
    height, width = input_size(model)
    return (
        f"Model: {model.name} from ImageNet weights at {height}x{width} px; to train from scratch "
        "at your images' size instead: model.weights=null model.input_size=[H,W]"
    )


def describe_training(cfg: DictConfig, splits: Splits, run_dir: Path) -> dict[int, float] | None:
    """The class weights to train with; class_counts.csv, and with augmentation a preview in TensorBoard."""
    labels = splits.source.labels[splits.indices["train"]]
    weights = class_weights(cfg.data.class_weight, labels, splits.class_names)
    record_class_counts(labels, splits.class_names, weights, run_dir)
    if augment_entries(cfg.data):  # 8 training images, augmented: decoding only those
        preview = make_dataset(splits.source, splits.indices["train"][:8], cfg, training=True)
        write_augmented_images(preview, run_dir / "tensorboard")
    return weights


def resume_history(resume: bool | str, epochs: int, run_dir: Path) -> list[dict[str, float]]:
    """With ``resume=true|auto``, the finished epochs' history rows (the backup restores the rest)."""
    if not resume:
        return []
    past = restore_history(run_dir)
    if past:
        log.info("Resuming %s after epoch %d of %d", run_dir, len(past), epochs)
    else:
        log.info("resume=%s: no finished epoch in %s; starting at epoch 1", str(resume).lower(), run_dir)
    return past


def model_metadata(cfg: DictConfig, splits: Splits) -> dict[str, Any]:
    """What travels inside model.keras: enough to predict without the config."""
    metadata = {
        "class_names": splits.class_names,
        "model": cfg.model._target_ if is_custom_model(cfg.model) else cfg.model.name,
        "input_size": list(input_size(cfg.model)),
        "loss": cfg.loss._target_ or cfg.loss.name,
        "activation": cfg.model.activation,
    }
    if cfg.data.task == "multilabel":
        metadata.update(task="multilabel", label_separator=cfg.data.label_separator)
    return metadata


def evaluate_best(
    cfg: DictConfig, best: keras.Model, checkpoint: BestModelCheckpoint, splits: Splits
) -> dict[str, float]:
    """Validation and test metrics of the ``best`` model (``best_model``: the one in model.keras), as flat floats.

    Its validation metrics are the best epoch's logs when they covered the whole
    split (fit validates with the same model, data and metrics); the rest is
    evaluated, with the functions fit already built when ``best`` is the trained model.
    """
    metrics: dict[str, float] = {}
    known = checkpoint.best_logs if cfg.trainer.validation_steps is None else None
    for split, ds in (("val", splits.val), ("test", splits.test)):
        if ds is None:
            continue
        if split == "val" and known is not None and any(key.startswith("val_") for key in known):
            metrics.update({key: value for key, value in known.items() if key.startswith("val_")})
            continue
        started = time.perf_counter()
        values = best.evaluate(ds, verbose=0, return_dict=True)
        metrics.update({f"{split}_{k}": float(v) for k, v in values.items()})
        if split == "test" and (images := len(splits.indices.get("test", []))):
            # what an image costs the model in batches of data.batch_size: a search weighs it against accuracy
            metrics["test_ms_per_image"] = 1000 * (time.perf_counter() - started) / images
    return metrics


def best_model(cfg: DictConfig, model: keras.Model, checkpoint: BestModelCheckpoint, splits: Splits) -> keras.Model:
    """The trained model with the best epoch's weights from memory; after a resume past that epoch, the file's.

    Called once per run: the file is loaded and compiled at most once.
    """
    if checkpoint.best_weights is None:
        model = load_model(checkpoint.path)
        compile_model(model, cfg, len(splits.class_names), jit_compile=False)
    else:
        model.set_weights(checkpoint.best_weights)
    return model


def store_thresholds(model: keras.Model, model_path: Path, splits: Splits) -> dict[str, float]:
    """Tune per-class thresholds of the best ``model`` on the validation split, store them in model.keras.

    Returns their metrics, flat; each split is predicted once.
    """
    names = splits.class_names
    predicted = {split: predict_split(model, ds) for split, ds in (("val", splits.val), ("test", splits.test)) if ds}
    if "val" not in predicted:
        thresholds = np.full(len(names), DEFAULT_THRESHOLD)
        log.info("No validation split (data.val_split=0): every class keeps the threshold %s", DEFAULT_THRESHOLD)
    else:
        thresholds = tune_thresholds(*predicted["val"])
    update_metadata(model_path, {"thresholds": dict(zip(names, thresholds.tolist(), strict=True))})
    metrics = {f"threshold_{name}": float(t) for name, t in zip(names, thresholds, strict=True)}
    for split, (truth, probabilities) in predicted.items():
        metrics.update(threshold_metrics(split, truth, probabilities, thresholds))
    log.info(
        "Per-class thresholds (best validation F1): %s",
        ", ".join(f"{n} {t:g}" for n, t in zip(names, thresholds, strict=True)),
    )
    return metrics


def predict_split(model: keras.Model, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """(multi-hot labels, sigmoid probabilities) of a whole split, in the pipeline's order (Keras's traced predict)."""
    truth = np.concatenate([np.asarray(y) for _, y in dataset])
    return truth, np.asarray(model.predict(dataset, verbose=0), dtype=np.float64)


def report(cfg: DictConfig, run_dir: Path, metrics: dict[str, float]) -> None:
    """Log the final metrics, where the outputs are, and how to view them."""
    shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith(("val_", "test_")))
    log.info("Final metrics: %s", shown)
    log.info("Model: %s", run_dir / MODEL_FILE)
    log.info("Metrics: %s  History: %s", run_dir / "metrics.json", run_dir / "history.csv")
    log.info("View: tensorboard --logdir %s", run_dir / "tensorboard")

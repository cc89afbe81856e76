"""The ``kfactory`` task function: validate the config, then train, eval or predict."""

from __future__ import annotations

import copy
import json
import logging
import signal
import sys
import threading
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from kfactory.config.resolvers import register_resolvers
from kfactory.config.validate import validate
from kfactory.console import import_tensorflow
from kfactory.errors import ConfigError, RunStopped, Terminated, interrupt_status
from kfactory.framework import check_backend
from kfactory.model.checkpoint import write_json_atomic
from kfactory.overrides import override, rerun_command, split_override
from kfactory.run import budget as _budget  # noqa: F401  (its clock starts with the command: a search's budget)
from kfactory.run import lock as run_lock
from kfactory.run.gpus import assign_job_gpus
from kfactory.run.resume import (
    COMPLETE,
    METRICS_FILE,
    RESTART,
    check_run_dir,
    complete_run_metric,
    monitored_value,
    prepare_restart,
    resume_mode,
)
from kfactory.schema import register_schema

register_resolvers()  # before Hydra composes: hydra.sweep.subdir uses ${kf_job_dirname:...}
register_schema()  # before Hydra composes: conf/config.yaml starts from the schema's defaults

log = logging.getLogger("kfactory")

ERROR_FILE = "error.txt"  # written in a run directory whose job failed
FOLD_DIR = "fold_"  # hparams_search.cv_folds: fold i trains in <run dir>/fold_<i>


def kfactory(cfg: DictConfig) -> float | None:
    """Run ``cfg.task`` in the Hydra run directory; return the monitored metric.

    A training run holds the directory's lock while it runs; with ``resume=true``
    or ``auto`` it continues the run there, and a complete run returns its metric
    at once (so a requeued job can always pass ``resume=true``).

    A bad config exits with status 2 and one line naming the key; a run that
    stops on a fault it can name (a NaN loss) exits 1, also with one line; Ctrl-C
    and SIGTERM exit 130 and 143 with the command that resumes the run. In a multirun
    a failed job is recorded in its directory and returns None, so the other jobs
    carry on; the Optuna sweeper records a None as a failed trial.
    """
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    dir_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if multirun:
        assign_job_gpus(hydra_cfg.launcher, hydra_cfg.job.num)  # before TensorFlow is imported
    stop_on_sigterm()
    lock = None
    try:
        check_backend()  # before anything imports Keras
        cfg = validate(cfg)  # typed by the schema from here on
        if cfg.task == "train":
            lock = run_lock.acquire(run_dir, dir_key)  # one writer per run directory
            if cfg.hparams_search.cv_folds:
                return train_folds(cfg, run_dir, dir_key, hydra_cfg)
            if not plan_training(cfg, run_dir, dir_key, hydra_cfg):
                return complete_run_metric(run_dir, cfg.trainer.monitor)
        return run_task(cfg, run_dir)
    except (ConfigError, RunStopped) as error:
        if not multirun and getattr(error, "resume_with", None) is not None:
            log.error("%s; continue with: %s", error, resume_command(hydra_cfg, dir_key, run_dir, error.resume_with))
        else:
            log.error("%s", error)
        if not multirun:
            raise SystemExit(2 if isinstance(error, ConfigError) else 1) from None
        (run_dir / ERROR_FILE).write_text(f"{error}\n")
    except KeyboardInterrupt as interrupt:
        if multirun:
            raise
        what, status = interrupt_status(interrupt)
        resume = resume_command(hydra_cfg, dir_key, run_dir)
        log.error("%s. Finished epochs are kept; continue with: %s", what, resume)
        raise SystemExit(status) from None
    except Exception as error:
        if not multirun:
            raise
        log.error("Job failed: %s: %s", type(error).__name__, error)
        (run_dir / ERROR_FILE).write_text(traceback.format_exc())
    finally:
        if lock is not None:
            run_lock.release(lock)
        release_memory()  # also before a single run's exit: live tf.data threads can abort the interpreter's teardown
    return None


def resume_command(hydra_cfg: DictConfig, dir_key: str, run_dir: Path, extra: list[str] | None = None) -> str:
    """The command that continues this run in ``run_dir``: its overrides, ``resume=true`` and ``extra``."""
    again = [override(dir_key, str(run_dir)), "resume=true", *(extra or [])]
    keys = ("resume", *(split_override(o)[0] for o in extra or []))
    return rerun_command(list(hydra_cfg.overrides.task), keys, again)


def plan_training(cfg: DictConfig, run_dir: Path, dir_key: str, hydra_cfg: DictConfig) -> bool:
    """Settle ``cfg.resume`` from what ``run_dir`` holds; False when its run is already complete.

    Under a launcher that requeues jobs (submitit_slurm) ``resume`` is ``auto``
    unless the command line sets it, so a requeued job continues its run.
    """
    resume = resume_mode(cfg, hydra_cfg.launcher.get("_target_"), list(hydra_cfg.overrides.task))
    state = check_run_dir(cfg, run_dir, dir_key, resume)
    if state == COMPLETE:
        return False
    if state == RESTART:
        prepare_restart(run_dir)
    with open_dict(cfg):
        cfg.resume = resume
    return True


def train_folds(cfg: DictConfig, run_dir: Path, dir_key: str, hydra_cfg: DictConfig) -> float | None:
    """``hparams_search.cv_folds=K``: train folds 0..K-1 one after another, each a complete run in
    ``run_dir/fold_<i>``; write their means (kfactory.report.folds) as ``run_dir``'s metrics.json
    and return the mean monitored value.

    Each fold resumes, or is skipped when complete, as ``resume`` says; a pruned fold ends the
    run (the trial is pruned), and the means are then over the folds that ran.
    """
    from kfactory.data.split_record import share_with_fold
    from kfactory.report.folds import FOLDS_KEY, STD_SUFFIX, fold_means

    folds, done = cfg.hparams_search.cv_folds, []
    for fold in range(folds):
        fold_cfg, fold_dir = copy.deepcopy(cfg), run_dir / f"{FOLD_DIR}{fold}"
        fold_cfg.data.folds, fold_cfg.data.fold = folds, fold
        log.info("Fold %d of %d: %s", fold, folds, fold_dir)
        if plan_training(fold_cfg, fold_dir, dir_key, hydra_cfg):
            save_config(fold_cfg, fold_dir)
            share_with_fold(run_dir / f"{FOLD_DIR}0", fold_dir, fold)  # the split fold 0 drew and recorded
            run_task(fold_cfg, fold_dir)
            release_memory()  # before the next fold builds its model
        else:
            complete_run_metric(fold_dir, cfg.trainer.monitor)
        done.append(json.loads((fold_dir / METRICS_FILE).read_text()))
        if done[-1].get("pruned"):
            log.info("Fold %d was pruned; the folds after it are not trained", fold)
            break
        if done[-1].get("deadline_epoch"):
            log.info("Fold %d reached the search's deadline; the folds after it are not trained", fold)
            break
    metrics = fold_means(done)
    # The run's totals, so no spread beside them; the folds' validation images are every image validated once,
    # which a search's winner rule weighs the mean val_accuracy on.
    for key in ("epochs_run", "wall_time_s", "setup_s", "finish_s", "validation_size"):
        metrics.pop(f"{key}{STD_SUFFIX}", None)
        if key in metrics:  # every fold has it (not one written before these keys, nor one resumed with no epoch left)
            metrics[key] = sum(m[key] for m in done)
    metrics[FOLDS_KEY] = len(done)
    if "weights" in done[0]:  # what every fold started from (fold_means keeps numbers only)
        metrics["weights"] = done[0]["weights"]
    if done[-1].get("pruned"):
        metrics.update(pruned=True, pruned_epoch=done[-1]["pruned_epoch"], pruned_fold=len(done) - 1)
    write_json_atomic(run_dir / METRICS_FILE, metrics)
    monitor = cfg.trainer.monitor
    log.info("Mean of %d folds: %s=%.4f", len(done), monitor, metrics.get(monitor, float("nan")))
    return monitored_value(metrics, monitor)


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    """A fold's own .hydra/config.yaml, as Hydra writes a run's, so task=eval finds its data and fold."""
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")


def stop_on_sigterm() -> None:
    """Let SIGTERM end the run the way Ctrl-C does, unless a launcher already handles it."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def release_memory() -> None:
    """Drop the finished job's models, graphs and datasets.

    Hydra's basic launcher runs sweep jobs one after another in this process;
    without this, every job's model, optimizer and graphs stay in memory.
    """
    if "keras" not in sys.modules:  # nothing was built; keep the cold path TF-free
        return
    from kfactory.train.deferred import wait_for_all

    wait_for_all()  # figures and histograms still being written (a run cut short)
    from kfactory.train.compute import release_finished_job

    release_finished_job()


def run_task(cfg: DictConfig, run_dir: Path) -> float | None:
    """Import the task's module (and TensorFlow) only now, and run it."""
    import_tensorflow()
    if cfg.task == "train":
        from kfactory.train.loop import train

        return train(cfg, run_dir)
    if cfg.task == "eval":
        from kfactory.use.evaluate import evaluate

        return evaluate(cfg, run_dir)
    if cfg.task == "export":
        from kfactory.use.export import export

        return export(cfg, run_dir)
    from kfactory.use.predict import predict

    return predict(cfg, run_dir)

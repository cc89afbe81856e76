"""Multi-device training with ``tf.distribute``: ``trainer.strategy``.

``default`` trains on one device (the first GPU if any), ``mirrored`` copies the
model onto every local GPU (or the devices in ``trainer.devices``) and splits
each batch between them, ``tpu`` connects to a TPU (``trainer.tpu`` names it).
``data.batch_size`` is the global batch, split across replicas; the learning
rate is used as configured, never rescaled by the number of replicas.

The module imports TensorFlow only inside the functions that need it, so the
command line can validate ``trainer.strategy`` on its cold path.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from kfactory.errors import ConfigError

log = logging.getLogger(__name__)

STRATEGIES = ("default", "mirrored", "tpu")
MULTI_WORKER_REFUSAL = (
    "default, mirrored or tpu. multi_worker is not offered: with Keras 3 and TensorFlow 2.21, model.fit under "
    "tf.distribute.MultiWorkerMirroredStrategy fails (an open upstream Keras issue). Scale out across machines "
    "with a launcher instead, one job per node: hydra/launcher=submitit_slurm (pip install -e '.[slurm]') or "
    "hydra/launcher=ray (pip install -e '.[ray]')"
)


def check_strategy(trainer: DictConfig) -> None:
    """Refuse a strategy kfactory cannot run, before TensorFlow is imported."""
    name = trainer.strategy
    if name in ("multi_worker", "multi_worker_mirrored", "multiworkermirrored"):
        raise ConfigError("trainer.strategy", name, MULTI_WORKER_REFUSAL)
    if name not in STRATEGIES:
        raise ConfigError("trainer.strategy", name, "one of " + ", ".join(STRATEGIES))
    devices = trainer.devices
    if devices is not None:
        if name != "mirrored":
            raise ConfigError("trainer.devices", devices, "null unless trainer.strategy=mirrored")
        if not devices:  # the schema has made it a list of strings
            raise ConfigError("trainer.devices", devices, "null (all local GPUs) or a list like ['/gpu:0', '/gpu:1']")
    cpu_devices = trainer.cpu_devices
    if cpu_devices is not None and cpu_devices < 1:
        raise ConfigError("trainer.cpu_devices", cpu_devices, "null or an integer >= 1 (logical CPU devices)")


def split_cpu(count: int | None) -> None:
    """Split the CPU into ``count`` logical devices; must run before TensorFlow initialises."""
    if not count:
        return
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == count:
        return  # a reused worker process (joblib) already has this split
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError as error:
        raise ConfigError(
            "trainer.cpu_devices", count, f"a split made before TensorFlow initialises its devices ({error})"
        ) from error


def make_strategy(trainer: DictConfig) -> Any:
    """The ``tf.distribute.Strategy`` for ``trainer.strategy``; build and compile under its scope."""
    import tensorflow as tf

    name = trainer.strategy
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "tpu":
        return _tpu_strategy(trainer.tpu or "")
    devices = list(trainer.devices) if trainer.devices else None
    if devices is None and trainer.cpu_devices:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    log.info("MirroredStrategy: %d replicas on %s", strategy.num_replicas_in_sync, devices or "all local GPUs")
    return strategy


def _tpu_strategy(address: str) -> Any:
    """Connect to the TPU at ``address`` ('' = the local or Colab TPU)."""
    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)

"""OmegaConf resolvers the config uses; registered on import, before Hydra composes.

``${kf_job_dirname:...}`` (``hydra.sweep.subdir``) names a sweep job's directory
after the overrides that differ between the sweep's jobs, safe on any filesystem
and short enough to read as a TensorBoard run name. ``${kf_imagenet_or_null:}``
(experiment=auto's ``model.weights``) is ``imagenet`` when the model has ImageNet weights and they
can be downloaded, else ``null``;
``${kf_images_per_epoch:${auto.budget}}`` the images a trial's epoch trains on at most.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kfactory.overrides import split_override
from kfactory.registry import MODELS
from kfactory.run.budget import images_per_epoch

MAX_DIRNAME = 160  # characters; longer names shorten their values, then keep a prefix plus a short hash
SIGNIFICANT_DIGITS = 4  # floats in job names: enough to tell trials apart, short enough to read
MIN_VALUE = 3  # characters a shortened value keeps
_JOB = re.compile(r"(\d+)(_|$)")  # a job folder: its number, then its name
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)")  # has a '.' or an exponent
VARIED_KEYS_FILE = "varied_keys.txt"  # written at the sweep root by kfactory.report.sweep before the jobs run
JOB_OFFSET_FILE = "job_offset.txt"  # likewise: where this multirun's job numbers start (earlier jobs kept)
FOLD_KEY = "data.fold"  # what a cross-validation sweep varies; its jobs group by everything else
WEIGHTS_HOST = ("storage.googleapis.com", 443)  # where keras.applications downloads ImageNet weights
WEIGHTS_TIMEOUT_S = 2.0
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+@-]+")  # '/' and anything a shell or Windows would trip on


def safe_dirname(name: str, max_length: int = MAX_DIRNAME) -> str:
    """``name`` with unsafe runs of characters replaced by '_', shortened with a hash.

    >>> safe_dirname("model.weights=/data/w.h5,optimizer=sgd")
    'model.weights=_data_w.h5,optimizer=sgd'
    """
    name = str(name)
    safe = _UNSAFE.sub("_", name)
    if len(safe) <= max_length:
        return safe
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]  # of the original, so distinct inputs stay distinct
    return f"{safe[: max_length - len(digest) - 1]}-{digest}"


def read_varied_keys(sweep_dir: str | Path) -> set[str]:
    """The keys the sweep varies, as kfactory.report.sweep recorded them; empty if unknown."""
    path = Path(str(sweep_dir)) / VARIED_KEYS_FILE
    return set(path.read_text().split()) if path.exists() else set()


def job_dirname(overrides: Iterable[str], exclude_keys: Iterable[str], sweep_dir: str) -> str:
    """A job's ``key=value`` overrides, comma-joined like Hydra's override_dirname but in the order
    written, floats rounded to ``SIGNIFICANT_DIGITS``, keeping only the keys the sweep varies (all of
    them if none is known to vary); a long name shortens its values, never drops a key."""
    excluded = set(exclude_keys or ())
    kept = [str(o) for o in overrides if split_override(str(o))[0] not in excluded]
    varied = read_varied_keys(sweep_dir)
    if any(split_override(o)[0] in varied for o in kept):
        kept = [o for o in kept if split_override(o)[0] in varied]
    pairs = [(o.partition("=")[0].strip(), _UNSAFE.sub("_", round_float(split_override(o)[1]))) for o in kept]
    return safe_dirname(",".join(f"{k}={v}" for k, v in shorten_values(pairs, MAX_DIRNAME)))


def fold_group(overrides: Iterable[str], exclude_keys: Iterable[str], sweep_dir: str | Path) -> str:
    """A cross-validation group's name: ``cv/`` and the job's name without ``data.fold`` (``cv/model=vgg16``)."""
    kept = [
        str(o) for o in overrides if (key := split_override(str(o))[0]) != FOLD_KEY and not key.startswith("hydra.")
    ]
    return f"cv/{job_dirname(kept, exclude_keys, str(sweep_dir)) or 'all'}"


def round_float(value: str, digits: int = SIGNIFICANT_DIGITS) -> str:
    """``0.3005575058716044`` -> ``0.3006``; integers and non-numbers stay as written."""
    if not _FLOAT.fullmatch(value):
        return value
    rounded = f"{float(value):.{digits}g}"
    return value if float(rounded) == float(value) else rounded  # 0.0 and 1e-05 stay as written


def shorten_values(pairs: list[tuple[str, str]], max_length: int) -> list[tuple[str, str]]:
    """Cut the longest words, a character at a time, until ``key=value,...`` fits in ``max_length``.

    Numbers are never cut (a cut number reads as another number) and words keep ``MIN_VALUE``
    characters; a name still too long is left to safe_dirname's prefix and hash.
    """
    pairs = list(pairs)

    def length() -> int:
        return sum(len(k) + len(v) + 2 for k, v in pairs) - 1

    while pairs and length() > max_length:
        words = [j for j, (_, v) in enumerate(pairs) if len(v) > MIN_VALUE and not _NUMBER.fullmatch(v)]
        if not words:
            break
        i = max(words, key=lambda j: len(pairs[j][1]))
        pairs[i] = (pairs[i][0], pairs[i][1][:-1])
    return pairs


def job_number(num: int, sweep_dir: str) -> int:
    """Hydra's job number plus this multirun's offset: a multirun into a sweep folder that already
    holds jobs numbers its jobs after them, so no earlier job's folder is written into."""
    path = Path(str(sweep_dir)) / JOB_OFFSET_FILE
    return int(num) + (int(path.read_text()) if path.exists() else 0)


def next_job_number(sweep_dir: str | Path) -> int:
    """One past the highest job number among the folders of ``sweep_dir`` (0 if none)."""
    root = Path(str(sweep_dir))
    numbers = [int(m.group(1)) for p in root.iterdir() if (m := _JOB.match(p.name))] if root.is_dir() else []
    return max(numbers, default=-1) + 1


@functools.cache
def imagenet_reachable() -> bool:
    """Whether Keras can download the ImageNet weights (their host answers); ``KFACTORY_OFFLINE=1``: no."""
    if os.environ.get("KFACTORY_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(WEIGHTS_HOST, timeout=WEIGHTS_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def imagenet_or_null(*, _parent_: Any = None) -> str | None:
    """``imagenet`` when the model beside this key (``model.name``) has ImageNet weights and they can be
    downloaded, else null (kfactory's own networks, or no network)."""
    name = _parent_.get("name") if isinstance(_parent_, DictConfig) else None
    if name in MODELS and not MODELS[name].application:
        return None
    return "imagenet" if imagenet_reachable() else None


def register_resolvers() -> None:
    """Register kfactory's resolvers once (importing this module does it)."""
    if not OmegaConf.has_resolver("kf_job_dirname"):
        OmegaConf.register_new_resolver("kf_job_dirname", job_dirname)
    if not OmegaConf.has_resolver("kf_job_number"):
        OmegaConf.register_new_resolver("kf_job_number", job_number)
    if not OmegaConf.has_resolver("kf_imagenet_or_null"):
        OmegaConf.register_new_resolver("kf_imagenet_or_null", imagenet_or_null)
    if not OmegaConf.has_resolver("kf_images_per_epoch"):
        OmegaConf.register_new_resolver("kf_images_per_epoch", images_per_epoch)


register_resolvers()

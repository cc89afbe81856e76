"""OmegaConf resolvers the config uses; registered on import, before Hydra composes.

``${kf_job_dirname:...}`` (``hydra.sweep.subdir``) names a sweep job's directory
after the overrides that differ between the sweep's jobs, safe on any filesystem
and short enough to read as a TensorBoard run name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

from omegaconf import OmegaConf

from kfactory.overrides import split_override

MAX_DIRNAME = 80  # characters; longer names keep a prefix plus a short hash
VARIED_KEYS_FILE = "varied_keys.txt"  # written at the sweep root by kfactory.report.sweep before the jobs run
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
    """A job's ``key=value`` overrides, sorted and comma-joined like Hydra's override_dirname,
    keeping only the keys the sweep varies (all of them if none is known to vary)."""
    excluded = set(exclude_keys or ())
    kept = [str(o) for o in overrides if split_override(str(o))[0] not in excluded]
    varied = read_varied_keys(sweep_dir)
    if any(split_override(o)[0] in varied for o in kept):
        kept = [o for o in kept if split_override(o)[0] in varied]
    return safe_dirname(",".join(sorted(kept)))


def register_resolvers() -> None:
    """Register kfactory's resolvers once (importing this module does it)."""
    if not OmegaConf.has_resolver("kf_job_dirname"):
        OmegaConf.register_new_resolver("kf_job_dirname", job_dirname)


register_resolvers()

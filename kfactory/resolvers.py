"""OmegaConf resolvers the config uses; registered on import, before Hydra composes.

``${kf_dirname:...}`` turns a sweep job's override string into a directory name
that is safe on any filesystem and short enough to read as a TensorBoard run name.
"""

from __future__ import annotations

import hashlib
import re

from omegaconf import OmegaConf

MAX_DIRNAME = 80  # characters; longer names keep a prefix plus a short hash
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


def register_resolvers() -> None:
    """Register kfactory's resolvers once (importing this module does it)."""
    if not OmegaConf.has_resolver("kf_dirname"):
        OmegaConf.register_new_resolver("kf_dirname", safe_dirname)


register_resolvers()

"""Cross-validation results: each metric's mean and standard deviation over the folds.

Used for a group of sweep jobs that differ only in ``data.fold`` (a row of the sweep
summary, kfactory.report.sweep) and for the folds one run trains with
``hparams_search.cv_folds`` (its metrics.json, kfactory.app). The standard deviation is
numpy's (ddof=0), as scikit-learn's cross-validation reports it. No TensorFlow here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

FOLDS_KEY = "folds"  # how many folds a mean is over
STD_SUFFIX = "_std"


def fold_means(metrics: list[Mapping[str, Any]]) -> dict[str, float]:
    """Each key every fold has a finite number for: its mean, and its standard deviation as ``<key>_std``."""
    import numpy as np

    keys = dict.fromkeys(key for fold in metrics for key in fold)
    means: dict[str, float] = {}
    for key in keys:
        values = [fold.get(key) for fold in metrics]
        if values and all(is_number(v) for v in values):
            means[key] = float(np.mean(values))
            means[key + STD_SUFFIX] = float(np.std(values))
    return means


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool (``pruned: true`` is no metric)."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return False
    return math.isfinite(float(value))

"""Several labels per image: label sets read from text, the task they imply, and stratified splits.

A multi-label source holds its labels as a multi-hot float32 matrix (one row per
image, one column per class, class names sorted). No TensorFlow here.

Splits follow iterative stratification (Sechidis, Tsoumakas and Vlahavas, 2011):
the rarest remaining label is placed first, each of its images going to the split
that still wants most of that label, so even a rare label reaches every split
that asks for a share of it.
"""

from __future__ import annotations

import numpy as np

TASKS = ("auto", "multiclass", "multilabel")


def is_multilabel(labels: np.ndarray) -> bool:
    """Whether ``labels`` are label sets (a multi-hot matrix) rather than class indices."""
    return labels.ndim == 2


def detect_task(texts: list[str], separator: str, task: str) -> str:
    """``multilabel`` or ``multiclass``; ``auto``: multilabel when any entry holds ``separator``."""
    if task != "auto":
        return task
    return "multilabel" if any(separator in text for text in texts) else "multiclass"


def split_label_sets(texts: list[str], separator: str) -> list[list[str]]:
    """Each entry's labels: split at ``separator``, stripped, empty parts dropped (an empty entry: no label)."""
    return [[part.strip() for part in text.split(separator) if part.strip()] for text in texts]


def multi_hot(label_sets: list[list[str]]) -> tuple[list[str], np.ndarray]:
    """The sorted class names and a float32 (images, classes) matrix with 1 where an image has the class."""
    class_names = sorted({label for labels in label_sets for label in labels})
    index = {name: i for i, name in enumerate(class_names)}
    matrix = np.zeros((len(label_sets), len(class_names)), dtype=np.float32)
    for row, labels in enumerate(label_sets):
        matrix[row, [index[label] for label in labels]] = 1.0
    return class_names, matrix


def label_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class: class indices counted, or a multi-hot matrix's column sums."""
    if is_multilabel(labels):
        return labels.sum(axis=0).astype(np.int64)
    return np.bincount(labels, minlength=num_classes)


def iterative_split(
    labels: np.ndarray, val_split: float, test_split: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded (train, val, test) indices of a multi-hot matrix, each label spread by the split fractions."""
    rng = np.random.default_rng(seed)
    fractions = np.array([1.0 - val_split - test_split, val_split, test_split])
    positive = labels > 0.5
    wanted_total = fractions * len(labels)
    wanted = fractions[:, None] * positive.sum(axis=0)[None, :]  # (split, class)
    wanted_total[fractions == 0] = wanted[fractions == 0] = -np.inf  # a split of 0 takes nothing
    assigned = np.full(len(labels), -1)
    remaining = positive.copy()
    while remaining.any():
        counts = remaining.sum(axis=0).astype(float)
        counts[counts == 0] = np.inf
        label = int(np.argmin(counts))  # the rarest label still to place
        for image in rng.permutation(np.flatnonzero(remaining[:, label])):
            split = _choose(wanted[:, label], wanted_total, rng)
            assigned[image] = split
            wanted[split] -= positive[image]
            wanted_total[split] -= 1
            remaining[image] = False
    for image in rng.permutation(np.flatnonzero(assigned < 0)):  # images without any label
        split = _choose(wanted_total, wanted_total, rng)
        assigned[image] = split
        wanted_total[split] -= 1
    return tuple(rng.permutation(np.flatnonzero(assigned == split)) for split in range(3))  # type: ignore[return-value]


def label_set_folds(
    labels: np.ndarray, folds: int, fold: int, test_split: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded (train, val, test) indices of a multi-hot matrix for fold ``fold`` of ``folds``.

    The test split is ``iterative_split``'s with no validation split, whatever the fold; the
    rest is dealt into folds by iterstrat's ``MultilabelStratifiedKFold`` (iterative
    stratification, Sechidis et al. 2011), and fold ``fold`` validates.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    pool, _, test = iterative_split(labels, 0.0, test_split, seed)
    pool = np.sort(pool)  # the folds depend on the images and the seed, not on the split's order
    splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    train, val = list(splitter.split(np.zeros(len(pool)), labels[pool]))[fold]
    rng = np.random.default_rng(seed)
    return rng.permutation(pool[train]), rng.permutation(pool[val]), test


def _choose(wanted: np.ndarray, wanted_total: np.ndarray, rng: np.random.Generator) -> int:
    """The split that wants most; ties go to the one that wants most images overall, then by lot."""
    best = np.flatnonzero(wanted == wanted.max())
    if len(best) > 1:
        best = best[wanted_total[best] == wanted_total[best].max()]
    return int(rng.choice(best))

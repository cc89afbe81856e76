"""Label sets: read from a CSV, the task detected, splits stratified over every label."""

from __future__ import annotations

import numpy as np
import pytest

from kfactory.data.label_sets import detect_task, iterative_split, multi_hot, split_label_sets
from kfactory.data.sources import fold_indices, read_csv, split_indices
from kfactory.errors import ConfigError
from tests.conftest import write_multilabel_digits


def test_label_sets_become_a_multi_hot_matrix_with_sorted_names():
    names, matrix = multi_hot(split_label_sets(["outdoor;cat", "dog", "", " cat ; dog "], ";"))
    assert names == ["cat", "dog", "outdoor"]
    assert matrix.dtype == np.float32
    assert matrix.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 0]]


@pytest.mark.parametrize(
    ("texts", "task", "expected"),
    [
        (["cat;dog", "cat"], "auto", "multilabel"),
        (["cat", "dog"], "auto", "multiclass"),
        (["cat", "dog"], "multilabel", "multilabel"),
        (["cat;dog", "cat"], "multiclass", "multiclass"),
    ],
)
def test_auto_is_multilabel_when_any_entry_holds_the_separator(texts, task, expected):
    assert detect_task(texts, ";", task) == expected


def test_csv_of_label_sets_reads_as_multi_hot(tmp_path):
    csv = write_multilabel_digits(tmp_path, count=40, size=8)
    source = read_csv(str(csv), "path", "label")
    assert source.class_names == ["even", "ge5", "odd"]
    assert source.labels.shape == (40, 3)
    assert (source.labels[:, [0, 2]].sum(axis=1) == 1).all()  # even xor odd
    whole = read_csv(str(csv), "path", "label", task="multiclass")  # each set is one class, as before
    assert "odd;ge5" in whole.class_names and whole.labels.ndim == 1
    other = read_csv(str(csv), "path", "label", separator="|", task="multilabel")
    assert "odd;ge5" in other.class_names and other.labels.ndim == 2


def test_iterative_split_puts_every_label_in_every_split_and_is_seeded():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 6)) < [0.5, 0.3, 0.1, 0.05, 0.04, 0.03]).astype(np.float32)
    train, val, test = split_indices(labels, 0.2, 0.2, seed=3)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(200))
    assert abs(len(val) - 40) <= 3 and abs(len(test) - 40) <= 3
    for part in (train, val, test):
        assert (labels[part].sum(axis=0) > 0).all()
    # each label split about 60/20/20, the rarest (6 images) included
    counts = labels.sum(axis=0)
    assert np.all(np.abs(labels[val].sum(axis=0) - 0.2 * counts) <= 1)
    again = iterative_split(labels, 0.2, 0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    assert not np.array_equal(test, iterative_split(labels, 0.2, 0.2, seed=4)[2])


def test_a_split_of_zero_stays_empty():
    labels = np.eye(3, dtype=np.float32)[np.arange(30) % 3]
    train, val, test = iterative_split(labels, 0.2, 0.0, seed=0)
    assert len(test) == 0 and len(val) == 6 and len(train) == 24


def test_label_set_folds_partition_the_pool_stratified_with_the_test_split_fixed():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 4)) < [0.5, 0.3, 0.15, 0.08]).astype(np.float32)
    splits = [fold_indices(labels, 4, fold, 0.2, seed=3) for fold in range(4)]
    test = set(splits[0][2].tolist())
    assert all(set(s[2].tolist()) == test for s in splits) and abs(len(test) - 40) <= 3
    pool = set(range(200)) - test
    vals = [set(s[1].tolist()) for s in splits]
    assert set().union(*vals) == pool and sum(map(len, vals)) == len(pool)  # disjoint folds covering the pool
    for train, val, _ in splits:
        assert set(train.tolist()) | set(val.tolist()) == pool and not set(train.tolist()) & set(val.tolist())
    per_fold = np.array([labels[s[1]].sum(axis=0) for s in splits])  # folds x labels
    assert (per_fold.max(axis=0) - per_fold.min(axis=0) <= 2).all()  # each label spread evenly over the folds
    again = fold_indices(labels, 4, 2, 0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(splits[2], again, strict=True))
    assert set(fold_indices(labels, 4, 2, 0.2, seed=4)[1].tolist()) != vals[2]


def test_label_set_folds_refuse_more_folds_than_images():
    labels = np.eye(2, dtype=np.float32)[[0, 1, 0, 1, 0]]
    assert len(fold_indices(labels, 5, 4, 0.0, seed=0)[1]) == 1
    with pytest.raises(ConfigError, match=r"^data.folds=6 is not accepted: .*images left .* \(5\)"):
        fold_indices(labels, 6, 0, 0.0, seed=0)

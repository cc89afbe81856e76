"""Folder and CSV sources list files and labels; splits are stratified and seeded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kfactory.data.sources import (
    ImageSource,
    fold_indices,
    list_folder,
    load_digits,
    read_csv,
    split_indices,
    split_source,
)
from kfactory.errors import ConfigError
from tests.conftest import write_image_folder


def test_folder_source_lists_png_and_jpeg_by_class(tmp_path):
    write_image_folder(tmp_path / "imgs", {"brass": 3, "copper": 2}, fmt="png")
    write_image_folder(tmp_path / "imgs", {"steel": 4}, fmt="jpg")
    (tmp_path / "imgs" / "brass" / "notes.txt").write_text("not an image")
    source = list_folder(str(tmp_path / "imgs"))
    assert source.class_names == ["brass", "copper", "steel"]
    assert len(source) == 9 and source.images is None
    assert np.bincount(source.labels).tolist() == [3, 2, 4]
    assert all(p.endswith((".png", ".jpg")) for p in source.paths)


def test_folder_source_expands_home_and_variables(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "imgs", {"a": 1, "b": 1})
    monkeypatch.setenv("KF_DATA", str(tmp_path))
    assert list_folder("$KF_DATA/imgs").class_names == ["a", "b"]


def test_folder_with_one_class_is_refused(tmp_path):
    write_image_folder(tmp_path / "imgs", {"only": 2})
    with pytest.raises(ConfigError, match="data.path=.*at least two sub-folders"):
        list_folder(str(tmp_path / "imgs"))


def test_csv_source_resolves_paths_relative_to_the_csv(tmp_path):
    write_image_folder(tmp_path / "imgs", {"a": 2, "b": 2}, fmt="jpg")
    rows = [{"file": f"imgs/{c}/{c}_{i}.jpg", "kind": c} for c in "ab" for i in range(2)]
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    source = read_csv(str(tmp_path / "labels.csv"), "file", "kind")
    assert source.class_names == ["a", "b"]
    assert source.labels.tolist() == [0, 0, 1, 1]
    assert source.paths[0] == str(tmp_path / "imgs/a/a_0.jpg")


def test_csv_without_the_named_column_is_refused(tmp_path):
    pd.DataFrame({"path": ["x.png"], "y": ["a"]}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(ConfigError, match="data.label_column=label.*path, y"):
        read_csv(str(tmp_path / "l.csv"), "path", "label")


def test_csv_with_missing_files_says_how_many(tmp_path):
    pd.DataFrame({"path": [f"m{i}.png" for i in range(5)], "label": list("ababa")}).to_csv(
        tmp_path / "l.csv", index=False
    )
    with pytest.raises(ConfigError, match=r"5 missing: .*m0.png, .*m1.png, .*m2.png, \.\.\."):
        read_csv(str(tmp_path / "l.csv"), "path", "label")


def test_digits_are_uint8_grayscale_images():
    source = load_digits()
    assert source.images.shape == (1797, 8, 8, 1) and source.images.dtype == np.uint8
    assert source.images.max() == 255 and len(source.class_names) == 10


def test_splits_are_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    train, val, test = split_indices(labels, 0.1, 0.2, seed=7)
    assert len(set(train) | set(val) | set(test)) == len(labels) == len(train) + len(val) + len(test)
    assert np.bincount(labels[test]).tolist() == [20, 10, 6, 4]
    assert np.bincount(labels[val]).tolist() == [10, 5, 3, 2]
    again = split_indices(labels, 0.1, 0.2, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    other = split_indices(labels, 0.1, 0.2, seed=8)
    assert not np.array_equal(test, other[2])


def test_folds_partition_the_pool_stratified_with_the_test_split_fixed():
    labels = np.repeat(np.arange(4), [100, 50, 31, 22])
    splits = [fold_indices(labels, 5, fold, 0.2, seed=7) for fold in range(5)]
    test = set(splits[0][2])
    assert all(set(s[2]) == test for s in splits)  # the same test images whatever the fold
    assert test == set(split_indices(labels, 0.1, 0.2, seed=7)[2])  # and the same as without folds
    pool = set(range(len(labels))) - test
    vals = [set(s[1]) for s in splits]
    assert set().union(*vals) == pool and sum(map(len, vals)) == len(pool)  # disjoint folds covering the pool
    for train, val, _ in splits:
        assert set(train) | set(val) == pool and not set(train) & set(val)
    counts = np.array([np.bincount(labels[s[1]], minlength=4) for s in splits])  # folds x classes
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all()  # stratified: within one per class
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1
    again = fold_indices(labels, 5, 3, 0.2, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(splits[3], again, strict=True))
    assert set(fold_indices(labels, 5, 3, 0.2, seed=8)[1]) != vals[3]


def test_single_label_splits_and_folds_are_the_ones_earlier_runs_drew():
    """Pinned indices: an existing run's test images must not move when the split code changes."""
    labels = np.repeat(np.arange(3), [13, 9, 6])
    train, val, test = split_indices(labels, 0.2, 0.2, seed=5)
    assert train.tolist() == [8, 4, 27, 6, 14, 10, 5, 24, 13, 19, 23, 18, 11, 17, 22, 0]
    assert (val.tolist(), test.tolist()) == ([7, 12, 21, 2, 16, 25], [26, 3, 20, 1, 15, 9])
    train, val, test = fold_indices(labels, 3, 1, 0.2, seed=5)
    assert train.tolist() == [2, 13, 10, 8, 12, 19, 24, 5, 16, 23, 18, 0, 25, 27, 6]
    assert (val.tolist(), test.tolist()) == ([4, 21, 7, 22, 11, 14, 17], [9, 26, 3, 20, 1, 15])


def test_a_run_splits_by_fold_only_with_data_folds():
    from omegaconf import OmegaConf

    labels = np.repeat(np.arange(2), 30)
    source = ImageSource(["a", "b"], labels, images=np.zeros((60, 2, 2, 1), np.uint8))
    data = OmegaConf.create({"val_split": 0.5, "test_split": 0.1, "folds": 0, "fold": 0})
    assert [len(part) for part in split_source(source, data, 1)] == [24, 30, 6]  # half of each class validates
    data.update(folds=3, fold=2)
    assert [len(part) for part in split_source(source, data, 1)] == [36, 18, 6]  # val_split is not used


def test_folds_refuse_a_class_smaller_than_the_folds_naming_it():
    labels = np.repeat(np.arange(3), [20, 20, 5])  # class "owls": 5 images, 4 after a 0.2 test split
    fold_indices(labels, 4, 0, 0.2, seed=0, class_names=["cats", "dogs", "owls"])
    with pytest.raises(ConfigError, match=r"^data.folds=5 is not accepted: .*class 'owls' has 4"):
        fold_indices(labels, 5, 0, 0.2, seed=0, class_names=["cats", "dogs", "owls"])


@pytest.mark.parametrize(
    ("reader", "key"), [(list_folder, "data.path"), (lambda p: read_csv(p, "path", "label"), "data.csv")]
)
def test_an_unset_variable_is_named_wherever_the_source_is_read(reader, key, monkeypatch):
    # eval, predict and export read a training run's data.path here, after their own validation
    monkeypatch.delenv("KF_UNSET_PHOTOS", raising=False)
    with pytest.raises(ConfigError, match=rf"^{key}=\$KF_UNSET_PHOTOS/x is not accepted: .*\$KF_UNSET_PHOTOS is not"):
        reader("$KF_UNSET_PHOTOS/x")

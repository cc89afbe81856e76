"""Class weights from an imbalanced folder; counts written to the run directory."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from kfactory.data.class_weights import check_class_weight, class_weights, record_class_counts
from kfactory.data.sources import describe_source, split_indices
from kfactory.errors import ConfigError
from tests.conftest import compose_config, write_image_folder


def test_balanced_weights_for_an_imbalanced_folder(tmp_path):
    folder = write_image_folder(tmp_path / "images", {"common": 30, "rare": 10}, size=8)
    cfg = compose_config(["data=folder", f"data.path={folder}", "data.class_weight=balanced"])
    source = describe_source(cfg.data)
    train, _, _ = split_indices(source.labels, cfg.data.val_split, cfg.data.test_split, cfg.seed)
    labels = source.labels[train]
    weights = class_weights(cfg.data.class_weight, labels, source.class_names)
    counts = np.bincount(labels)
    assert counts[0] == 3 * counts[1]
    assert weights[1] == pytest.approx(3 * weights[0])
    assert weights[0] * counts[0] == pytest.approx(weights[1] * counts[1])  # each class weighs the same in total
    record_class_counts(labels, source.class_names, weights, tmp_path)
    with open(tmp_path / "class_counts.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["class"], int(r["train_count"])) for r in rows] == [("common", counts[0]), ("rare", counts[1])]


def test_named_weights_default_the_rest_to_one_and_unknown_names_are_refused():
    assert class_weights({"b": 2.5}, np.array([0, 1, 2]), ["a", "b", "c"]) == {0: 1.0, 1: 2.5, 2: 1.0}
    assert class_weights(None, np.array([0, 1]), ["a", "b"]) is None
    with pytest.raises(ConfigError, match="class names"):
        class_weights({"z": 2.0}, np.array([0, 1]), ["a", "b"])


def test_balanced_weights_are_scikit_learns_and_an_absent_class_weighs_zero():
    labels = np.array([0, 0, 0, 2])  # class 1 has no training image
    weights = class_weights("balanced", labels, ["a", "b", "c"])
    assert weights == pytest.approx({0: 4 / (2 * 3), 1: 0.0, 2: 4 / (2 * 1)})
    assert sum(weights[c] for c in labels) == pytest.approx(len(labels))  # the mean image weight stays 1


@pytest.mark.parametrize("value", ["sometimes", "{a: -1}", "[1, 2]"])
def test_bad_class_weight_settings_are_refused(value):
    with pytest.raises(ConfigError):
        check_class_weight(compose_config([f"data.class_weight={value}"]).data)

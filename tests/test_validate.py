"""Refusals: every bad value stops the run before work starts, in one line naming the key."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from kfactory.config.validate import validate
from kfactory.errors import ConfigError
from tests.conftest import write_image_folder


@pytest.fixture
def bad_inputs(tmp_path: Path) -> Path:
    """Files and folders the refusals below point at, under ``{tmp}``."""
    write_image_folder(tmp_path / "one_class", {"cats": 3})
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file.txt").write_text("not a folder\n")
    write_image_folder(tmp_path / "images", {"cats": 3, "dogs": 3})
    (tmp_path / "no_columns.csv").write_text("file,y\nimages/cats/cats_0.png,cats\n")
    rows = "".join(f"missing_{i}.png,cats\n" for i in range(5))
    (tmp_path / "missing.csv").write_text("path,label\nimages/cats/cats_0.png,cats\n" + rows)
    sets = "".join(
        f"images/{c}/{c}_{i}.png,{label}\n" for c in ("cats", "dogs") for i, label in enumerate(["cats;dogs", c])
    )
    (tmp_path / "sets.csv").write_text("path,label\n" + sets)
    (tmp_path / "weights.txt").write_text("not weights\n")
    with zipfile.ZipFile(tmp_path / "not_a_model.keras", "w") as archive:
        archive.writestr("hello.txt", "a zip, but no Keras model inside")
    return tmp_path


# (overrides, the key the message must name); {tmp} is the bad_inputs folder.
REFUSALS = [
    (["optimizer.learning_rate=0"], "optimizer.learning_rate"),
    (["optimizer.learning_rate=-0.1"], "optimizer.learning_rate"),
    (["trainer.epochs=0"], "trainer.epochs"),
    (["trainer.max_images_per_epoch=0"], "trainer.max_images_per_epoch"),
    (["data.batch_size=0"], "data.batch_size"),
    (["data.on_changed=evaluate_anyway"], "data.on_changed"),
    (["task=eval", "ckpt_path={tmp}/not_a_model.keras", "data.on_changed=skip"], "data.on_changed"),
    (["model.dropout=1.0"], "model.dropout"),
    (["model.dropout=-0.1"], "model.dropout"),
    (["model.activation=swishy"], "model.activation"),
    (["trainer.metrics=[accuracy,accurracy]"], "trainer.metrics"),
    (["model.activation=relu", "loss=categorical_crossentropy"], "model.activation"),
    (["data.val_split=0.5", "data.test_split=0.5"], "data.val_split + data.test_split"),
    (["model=inception_v3", "model.input_size=[74,74]"], "model.input_size"),
    (["model=xception", "model.input_size=[70,70]"], "model.input_size"),
    (["model=vgg16", "model.input_size=[31,31]"], "model.input_size"),
    (["model=small_cnn", "model.input_size=[7,7]"], "model.input_size"),
    (["model=small_cnn", "model.weights=imagenet"], "model.weights"),  # kfactory's own: no ImageNet weights
    (["model=small_cnn", "model.include_top=true"], "model.include_top"),
    (
        ["model=vgg16", "model.weights=imagenet", "model.include_top=true", "model.input_size=[64,64]"],
        "model.input_size",
    ),
    (["model.weights={tmp}/missing.weights.h5"], "model.weights"),
    (["model.weights={tmp}/weights.txt"], "model.weights"),
    (["model.weights='$KF_UNSET_VARIABLE/w.weights.h5'"], "model.weights"),
    (["data=folder"], "data.path"),
    (["data=folder", "data.path='${KF_UNSET_VARIABLE}/images'"], "data.path"),  # an OmegaConf interpolation
    (["data=folder", "data.path={tmp}/nowhere"], "data.path"),
    (["data=folder", "data.path={tmp}/empty"], "data.path"),
    (["data=folder", "data.path={tmp}/a_file.txt"], "data.path"),
    (["data=folder", "data.path={tmp}/one_class"], "data.path"),
    (["data=csv", "data.csv={tmp}/no_columns.csv"], "data.path_column"),
    (["data=csv", "data.csv={tmp}/missing.csv"], "data.csv"),
    (["task=eval", "ckpt_path={tmp}/empty"], "ckpt_path"),
    (["task=eval", "ckpt_path={tmp}/a_file.txt"], "ckpt_path"),
    (["task=eval", "ckpt_path={tmp}/not_a_model.keras"], "ckpt_path"),
    (["task=predict", "ckpt_path=null"], "ckpt_path"),
    (["data.folds=5", "data.fold=5"], "data.fold"),
    (["data.folds=5", "data.fold=-1"], "data.fold"),
    (["data.fold=2"], "data.fold"),  # a fold without data.folds
    (["data.folds=1"], "data.folds"),
    (["data.folds=-2"], "data.folds"),
    (["data=folder", "data.path={tmp}/images", "data.folds=4"], "data.folds"),  # 3 images a class
    (["hparams_search.cv_folds=1"], "hparams_search.cv_folds"),
    (["hparams_search.cv_folds=3", "data.folds=3"], "data.folds"),
    (["data=folder", "data.path={tmp}/images", "hparams_search.cv_folds=4"], "hparams_search.cv_folds"),
    (["data.task=both"], "data.task"),
    (["data.task=multilabel"], "data.task"),  # digits: one class per image
    (["trainer.monitor=val_f1_macro"], "trainer.monitor"),  # a multi-label metric, on digits
    (["data=csv", "data.csv={tmp}/sets.csv", "loss=sparse_categorical_crossentropy"], "loss.name"),
    (["data=csv", "data.csv={tmp}/sets.csv", "loss=categorical_focal_crossentropy"], "loss.name"),
    (["data=csv", "data.csv={tmp}/sets.csv", "loss=binary_crossentropy", "model.activation=relu"], "model.activation"),
    (["data=csv", "data.csv={tmp}/sets.csv", "data.class_weight=balanced"], "data.class_weight"),
    (["data=csv", "data.csv={tmp}/sets.csv", "trainer.metrics=[accuracy,top_k]"], "trainer.metrics"),
    (["data=csv", "data.csv={tmp}/sets.csv", "loss=custom", "loss._target_=x.y", "loss.labels=sparse"], "loss.labels"),
    (["data=csv", "data.csv={tmp}/sets.csv", "data.folds=5"], "data.folds"),  # 4 label sets: at most 4 folds
    (["resume=maybe"], "resume"),
    (["unsafe_load=1"], "unsafe_load"),
]


@pytest.mark.parametrize(("overrides", "key"), REFUSALS, ids=[" ".join(o) for o, _ in REFUSALS])
def test_validate_refuses_with_one_line_naming_the_key(cfg_factory, bad_inputs, overrides, key):
    cfg = cfg_factory([o.replace("{tmp}", str(bad_inputs)) for o in overrides])
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    message = str(caught.value)
    assert caught.value.key == key
    assert message.startswith(f"{key}=")
    assert "is not accepted" in message
    assert "\n" not in message


def test_csv_with_missing_files_says_how_many_and_shows_the_first(cfg_factory, bad_inputs):
    cfg = cfg_factory(["data=csv", f"data.csv={bad_inputs}/missing.csv"])
    with pytest.raises(ConfigError, match=r"5 missing: .*missing_0\.png, .*missing_1\.png, .*missing_2\.png, \.\.\."):
        validate(cfg)


def test_folds_accept_each_fold_and_leave_val_split_unused(cfg_factory):
    for fold in range(3):
        assert validate(cfg_factory(["data.folds=3", f"data.fold={fold}"])).data.fold == fold
    validate(cfg_factory(["data.folds=3", "data.val_split=0.5", "data.test_split=0.5"]))  # val_split is not used
    validate(cfg_factory(["hparams_search.cv_folds=3"]))


def test_label_sets_accept_folds(cfg_factory, bad_inputs):
    sets = ["data=csv", f"data.csv={bad_inputs}/sets.csv", "data.test_split=0"]
    assert validate(cfg_factory([*sets, "data.folds=4", "data.fold=3"])).data.task == "multilabel"
    assert validate(cfg_factory([*sets, "hparams_search.cv_folds=2"])).hparams_search.cv_folds == 2


def test_paths_expand_home_and_environment_variables(cfg_factory, bad_inputs, monkeypatch):
    monkeypatch.setenv("HOME", str(bad_inputs))
    monkeypatch.setenv("KF_DATA", str(bad_inputs))
    # Quoted, as Hydra's override grammar wants for ~ and $ (config files need no quotes).
    validate(cfg_factory(["data=folder", "data.path='~/images'"]))
    validate(cfg_factory(["data=folder", "data.path='$KF_DATA/images'"]))
    validate(cfg_factory(["data=folder", "data.path=${oc.env:KF_DATA}/images"]))


def test_label_sets_get_sigmoid_units_and_binary_crossentropy_unless_chosen_otherwise(cfg_factory, bad_inputs):
    sets = ["data=csv", f"data.csv={bad_inputs}/sets.csv"]
    cfg = validate(cfg_factory(sets))
    assert (cfg.data.task, cfg.model.activation, cfg.loss.name) == ("multilabel", "sigmoid", "binary_crossentropy")
    focal = validate(cfg_factory([*sets, "loss=binary_focal_crossentropy", "trainer.monitor=val_f1_macro"]))
    assert focal.loss.name == "binary_focal_crossentropy"
    assert validate(cfg_factory([*sets, "data.task=multiclass"])).loss.name == "categorical_crossentropy"


@pytest.mark.parametrize(
    ("chosen", "key"),
    [("model.activation=softmax", "model.activation"), ("loss=categorical_crossentropy", "loss.name")],
)
def test_a_softmax_or_categorical_loss_chosen_on_the_command_line_is_refused_with_label_sets(
    bad_inputs, tmp_path, chosen, key
):
    from tests.conftest import compose_config

    cfg = compose_config(["data=csv", f"data.csv={bad_inputs}/sets.csv", chosen], run_dir=tmp_path)
    with pytest.raises(ConfigError, match=f"^{key}=.*data.task=multilabel"):
        validate(cfg)

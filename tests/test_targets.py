"""Your own parts by ``_target_`` (kfactory/targets.py): used end to end, refused in one line."""

from __future__ import annotations

import json
import zipfile

import pandas as pd
import pytest

from kfactory.errors import ConfigError
from kfactory.schema import apply_schema
from tests.conftest import ROOT, compose_config, run_cli, write_image_folder

PARTS = "tests.user_parts"
ENV = {"PYTHONPATH": str(ROOT)}  # as a user's own package would be on the path
CUSTOM_MODEL = ["model=custom", f"model._target_={PARTS}.build_net", "+model.width=3"]


def run_overrides(tmp_path, images) -> list[str]:
    """Every part of a run made by the user: model, loss, optimizer, metric, callback, data."""
    return [
        *CUSTOM_MODEL,
        "model.input_size=[24,24]",
        "loss=custom",
        f"loss._target_={PARTS}.scaled_crossentropy",
        "+loss.scale=100",
        "optimizer=custom",
        f"optimizer._target_={PARTS}.make_sgd",
        "optimizer.learning_rate=0.01",
        "data=custom",
        f"data._target_={PARTS}.load_files",
        f"+data.root={images}",
        f"trainer.metrics=[accuracy,{{_target_:{PARTS}.Constant,name:seven}}]",
        "trainer.monitor=val_accuracy",
        f"trainer.callbacks=[{{_target_:{PARTS}.EpochFile,path:'{tmp_path / 'epochs.txt'}'}}]",
        "trainer.epochs=2",
        "trainer.steps_per_epoch=2",
        "trainer.verbose=0",
        "data.batch_size=8",
        "trainer.tensorboard.histogram_freq=0",
    ]


@pytest.mark.slow  # three CLI processes: train, eval and predict with a user's parts
def test_your_own_parts_train_evaluate_and_predict(tmp_path):
    images = write_image_folder(tmp_path / "images", {"cats": 10, "dogs": 10})
    (images / "dogs" / "broken.png").write_bytes(b"not an image")
    run_dir = tmp_path / "run"
    result = run_cli([*run_overrides(tmp_path, images), f"hydra.run.dir={run_dir}"], env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    history = pd.read_csv(run_dir / "history.csv")
    assert history["seven"].tolist() == [7.0, 7.0] and history["val_seven"].tolist() == [7.0, 7.0]
    assert (history["loss"] > 10).all()  # the loss is crossentropy times 100
    assert (tmp_path / "epochs.txt").read_text() == "epoch 0\nepoch 1\n"
    assert (run_dir / "skipped_images.txt").read_text().strip().endswith("broken.png")
    with zipfile.ZipFile(run_dir / "model.keras") as archive:
        assert json.loads(archive.read("kfactory.json"))["model"] == f"{PARTS}.build_net"

    # your own run: its saved targets may be called, and the module of its custom layer imported
    trusted = ["unsafe_load=true", f"load.modules=[{PARTS}]"]
    evaluated = run_cli(["task=eval", f"ckpt_path={run_dir}", *trusted, f"hydra.run.dir={tmp_path / 'eval'}"], env=ENV)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())["test_seven"] == 7.0

    predicted = run_cli(
        ["task=predict", f"ckpt_path={run_dir}", f"predict.input={images}", f"hydra.run.dir={tmp_path / 'predict'}"]
        + [f"load.modules=[{PARTS}]"],
        env=ENV,
    )
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    rows = pd.read_csv(tmp_path / "predict" / "predictions.csv")
    assert len(rows) == 20 and set(rows["label_1"]) <= {"cats", "dogs"}


def test_a_bad_target_stops_the_cli_with_one_line(tmp_path):
    result = run_cli([*CUSTOM_MODEL[:1], "model._target_=no_such_pkg.nets.build", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "model._target_=no_such_pkg.nets.build is not accepted" in errors[0]
    assert "No module named 'no_such_pkg'" in errors[0]


@pytest.mark.parametrize(
    ("overrides", "refusal"),
    [
        (["model._target_=no_such_pkg.build"], "model._target_=no_such_pkg.build is not accepted: an importable"),
        ([f"model._target_={PARTS}.missing"], f"model._target_={PARTS}.missing is not accepted: an importable"),
        ([f"model._target_={PARTS}.ENV"], "is not accepted: an importable"),
        ([f"model._target_={PARTS}.build_net", "model.weights=imagenet"], "model.weights=imagenet is not accepted"),
        ([f"model._target_={PARTS}.build_net", "model.activation=relu"], "model.activation=relu is not accepted"),
        ([f"model._target_={PARTS}.build_net", "finetune.head_epochs=1"], "finetune.head_epochs=1 is not accepted"),
        ([f"model._target_={PARTS}.build_net", "model.freeze=all"], "model.freeze=all is not accepted"),
        (["loss._target_=no_such_pkg.Loss"], "loss._target_=no_such_pkg.Loss is not accepted"),
        (["loss=custom", f"loss._target_={PARTS}.make_sgd", "loss.labels=dense"], "loss.labels=dense is not accepted"),
        (["optimizer._target_=keras.optimizers.Nope"], "optimizer._target_=keras.optimizers.Nope is not accepted"),
        (["trainer.metrics=[accuracy,{_target_:nope.Metric}]"], "trainer.metrics[1]._target_=nope.Metric is not"),
        (["trainer.metrics=[{_target_:keras.metrics.AUC,name:pr}]"], "trainer.monitor=val_accuracy is not accepted"),
        (["trainer.callbacks=[{_target_:nope.Callback}]"], "trainer.callbacks[0]._target_=nope.Callback is not"),
        (["trainer.callbacks=[early_stopping]"], "trainer.callbacks[0]=early_stopping is not accepted"),
        (["data=custom", "data._target_=nope.load"], "data._target_=nope.load is not accepted"),
        (["data=custom"], "data._target_=null is not accepted: a value with data=custom"),
        (["model=custom", "model.input_size=[32,32]"], "model._target_=null is not accepted: a value with model"),
        (["model=custom", f"model._target_={PARTS}.build_net", "model.input_size=null"], "model.input_size=null"),
    ],
)
def test_a_target_that_does_not_import_is_refused_before_tensorflow(overrides, refusal):
    from kfactory.config.validate import validate

    model = ["model=custom", "model.input_size=[32,32]"] if any(o.startswith("model.") for o in overrides) else []
    with pytest.raises(ConfigError) as caught:
        validate(compose_config([*model, *overrides]))
    assert refusal in str(caught.value) and "\n" not in str(caught.value)


def test_a_monitored_metric_of_your_own_is_accepted():
    from kfactory.config.validate import validate

    validate(compose_config(["trainer.metrics=[{_target_:keras.metrics.AUC,name:pr}]", "trainer.monitor=val_pr"]))


def typed(overrides: list[str]):
    """The composed config typed by the schema, as a run hands it to the parts' builders."""
    return apply_schema(compose_config(overrides))


def _build(what: str, target: str):
    """Build one part of ``what`` kind from ``target`` as training would."""
    from kfactory.model.build import build_model
    from kfactory.train.callbacks import user_callbacks
    from kfactory.train.compile import make_loss, make_metrics, make_optimizer

    if what == "model":
        return build_model(typed([*CUSTOM_MODEL[:1], f"model._target_={target}"]), 10)
    if what == "loss":
        return make_loss(typed(["loss=custom", f"loss._target_={target}"]).loss, "softmax")
    if what == "optimizer":
        return make_optimizer(typed(["optimizer=custom", f"optimizer._target_={target}"]).optimizer)
    if what == "metric":
        trainer = typed([f"trainer.metrics=[{{_target_:{target}}}]"]).trainer
        return make_metrics(trainer, "categorical_crossentropy", 10)
    if what == "callback":
        return user_callbacks(typed([f"trainer.callbacks=[{{_target_:{target}}}]"]).trainer)
    from kfactory.data.sources import describe_source

    return describe_source(typed(["data=custom", f"data._target_={target}"]).data)


@pytest.mark.parametrize(
    ("what", "target", "refusal"),
    [
        ("model", f"{PARTS}.not_a_model", "returns an uncompiled keras.Model, not a str"),
        ("model", f"{PARTS}.wrong_shape_net", "it maps (None, 32, 32, 3) to (None, 11)"),
        ("model", f"{PARTS}.make_sgd", "calling it failed: TypeError"),
        ("loss", f"{PARTS}.EpochFile", "calling it failed: TypeError"),
        ("optimizer", f"{PARTS}.not_a_model", "returns a keras.optimizers.Optimizer, not a str"),
        ("optimizer", "keras.losses.Hinge", "unexpected keyword argument 'learning_rate'"),
        ("metric", f"{PARTS}.not_a_model", "returns a keras.metrics.Metric, not a str"),
        ("callback", "keras.metrics.AUC", "returns a keras.callbacks.Callback, not a AUC"),
        ("data", f"{PARTS}.not_a_model", "(image paths or a uint8 array (N, H, W, C), labels[, class_names])"),
    ],
)
def test_a_target_that_returns_the_wrong_kind_is_refused(what, target, refusal):
    with pytest.raises(ConfigError) as caught:
        _build(what, target)
    message = str(caught.value)
    assert refusal in message and "._target_=" in message and "\n" not in message


def test_a_data_source_may_return_arrays_with_named_classes():
    from kfactory.data.sources import describe_source

    data = typed(["data=custom", f"data._target_={PARTS}.load_arrays", "+data.count=6"]).data
    source = describe_source(data)
    assert source.class_names == ["dark", "light"] and source.images.shape == (6, 16, 16, 3)
    assert source.labels.tolist() == [0, 1, 0, 1, 0, 1] and source.paths is None


@pytest.mark.parametrize(
    ("paths", "refusal"),
    [
        ("[]", "at least one image"),
        ("[/no/such/a.png,/no/such/b.png]", "paths of existing images (2 missing: /no/such/a.png, /no/such/b.png)"),
    ],
)
def test_a_data_source_without_images_is_refused(paths, refusal):
    from kfactory.data.sources import describe_source

    data = typed(["data=custom", f"data._target_={PARTS}.listing", f"+data.paths={paths}"]).data
    with pytest.raises(ConfigError) as caught:
        describe_source(data)
    message = str(caught.value)
    assert message.startswith(f"data._target_={PARTS}.listing is not accepted") and refusal in message


def test_a_saved_custom_model_needs_its_module_to_load(tmp_path):
    from kfactory.model.checkpoint import load_model, save_model
    from tests.user_parts import build_net

    path = tmp_path / "model.keras"
    save_model(build_net((16, 16, 3), 2), path, {"class_names": ["a", "b"]})
    assert load_model(path, modules=[PARTS]).layers[1].__class__.__name__ == "Scale"  # safe mode, module named
    moved = tmp_path / "moved.keras"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(moved, "w") as target:
        for item in source.namelist():
            data = source.read(item)
            if item == "config.json":
                data = data.replace(b'"module": "tests.user_parts"', b'"module": "gone_pkg.layers"')
                data = data.replace(b"kfactory_tests>Scale", b"gone_pkg>Scale")
            target.writestr(item, data)
    with pytest.raises(ConfigError) as caught:
        load_model(moved, modules=["json"])
    message = str(caught.value)
    assert message.startswith(
        f"load.modules=['json'] is not accepted: the modules that define the custom classes of {moved}"
    )
    assert message.endswith("Keras could not locate class 'Scale'")

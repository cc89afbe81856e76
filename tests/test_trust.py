"""Run directories and model files from elsewhere are data: nothing in them runs or imports without an opt-in."""

from __future__ import annotations

import sys
import uuid
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kfactory.errors import ConfigError
from kfactory.targets import check_saved_targets, targets_in
from kfactory.use.evaluate import training_config
from tests.conftest import ROOT, compose_config, run_cli
from tests.test_preflight import snapshot

# A module whose import leaves a mark: what a hostile file would make kfactory import.
SIDE_EFFECT = """
from pathlib import Path

Path({marker!r}).write_text("imported")


def load(**kwargs):
    Path({marker!r}).write_text("called")
    raise RuntimeError("a source that only leaves its mark")
"""


def hostile_module(tmp_path: Path, monkeypatch, body: str = SIDE_EFFECT) -> tuple[str, Path]:
    """A uniquely named module on sys.path that writes a marker file when imported; (its name, the marker)."""
    name, marker = f"hostile_{uuid.uuid4().hex[:8]}", tmp_path / "marker.txt"
    folder = tmp_path / "site"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(body.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(folder))
    return name, marker


def shared_run(tmp_path: Path, overrides: list[str]) -> Path:
    """A run directory as a colleague would send it: its saved config (the model file is not needed to refuse)."""
    run = tmp_path / "their_run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config(overrides), run / ".hydra" / "config.yaml")
    return run


def file_writing_run(tmp_path: Path, victim: Path) -> Path:
    return shared_run(tmp_path, ["data=custom", "data._target_=builtins.open", f"+data.file={victim}", "+data.mode=w"])


def test_a_saved_file_writing_target_is_refused_in_one_line_and_nothing_runs(tmp_path):
    victim = tmp_path / "bashrc"
    victim.write_text("precious\n")
    run = file_writing_run(tmp_path, victim)
    with pytest.raises(ConfigError) as refused:
        training_config(run / "model.keras", compose_config(["task=eval", f"ckpt_path={run}"]))
    message = str(refused.value)
    assert message.startswith("data._target_=builtins.open is not accepted: a target the command names: ")
    assert "data._target_=builtins.open or unsafe_load=true" in message and "\n" not in message
    assert victim.read_text() == "precious\n"


# The hostile target opens a file and nothing closes it: that it ran is what the test shows.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_with_unsafe_load_the_saved_target_is_called(tmp_path):
    from kfactory.data.sources import describe_source

    victim = tmp_path / "bashrc"
    victim.write_text("precious\n")
    run = file_writing_run(tmp_path, victim)
    cfg = training_config(run / "model.keras", compose_config(["task=eval", f"ckpt_path={run}", "unsafe_load=true"]))
    with pytest.raises(ConfigError, match="returns"):  # open() returns a file, not images: but it ran
        describe_source(cfg.data)
    assert victim.read_text() == ""  # what the opt-in allows: the sender's call, emptying the file


def test_a_saved_target_in_an_unimported_module_is_not_imported(tmp_path, monkeypatch):
    from kfactory.data.sources import describe_source

    module, marker = hostile_module(tmp_path, monkeypatch)
    run = shared_run(tmp_path, ["data=custom", f"data._target_={module}.load"])
    with pytest.raises(ConfigError, match=rf"^data._target_={module}.load is not accepted"):
        training_config(run / "model.keras", compose_config(["task=eval"]))
    assert not marker.exists() and module not in sys.modules
    named = compose_config(["task=eval", "data=custom", f"data._target_={module}.load"])  # the user names it
    cfg = training_config(run / "model.keras", named)
    with pytest.raises(ConfigError, match="a source that only leaves its mark"):
        describe_source(cfg.data)
    assert marker.read_text() == "called"


def test_every_saved_target_is_found_also_in_lists_and_nested_entries():
    saved = OmegaConf.create(
        {
            "loss": {"_target_": None},
            "trainer": {"metrics": ["accuracy", {"_target_": "a.Metric", "inner": {"_target_": "b.fn"}}]},
        }
    )
    assert list(targets_in(saved)) == [
        ("trainer.metrics[1]._target_", "a.Metric"),
        ("trainer.metrics[1].inner._target_", "b.fn"),
    ]
    current = OmegaConf.create({"trainer": {"metrics": [{"_target_": "a.Metric"}]}})
    with pytest.raises(ConfigError, match=r"^trainer.metrics\[1\].inner._target_=b.fn is not accepted"):
        check_saved_targets(saved, current, Path("config.yaml"))


def test_a_run_of_built_in_parts_needs_no_opt_in(tmp_path):
    run = shared_run(tmp_path, ["model=vgg16", "loss=hinge", "trainer.metrics=[accuracy,auc]"])
    assert training_config(run / "model.keras", compose_config(["task=eval"])).loss.name == "hinge"


@pytest.mark.slow  # the command line end to end, TensorFlow imported
def test_eval_of_a_hostile_run_directory_stops_in_one_line_and_changes_no_file(tmp_path):
    victim = tmp_path / "bashrc"
    victim.write_text("precious\n")
    run = file_writing_run(tmp_path, victim)
    tiny_model(run / "model.keras")
    before = snapshot(tmp_path)
    result = run_cli(["task=eval", f"ckpt_path={run}", f"hydra.run.dir={tmp_path / 'eval'}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "data._target_=builtins.open is not accepted" in errors[0]
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("eval/")} == before
    assert victim.read_text() == "precious\n"


def tiny_model(path: Path, layer_module: str | None = None) -> Path:
    """A saved model; with ``layer_module``, its custom layer claims to live in that module (as a sender may write)."""
    from kfactory.model.checkpoint import save_model
    from tests.user_parts import build_net

    save_model(build_net((16, 16, 3), 2), path, {"class_names": ["a", "b"]})
    if layer_module is None:
        return path
    rewritten = path.with_name("rewritten.keras")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(rewritten, "w") as target:
        for item in source.namelist():
            data = source.read(item)
            if item == "config.json":
                data = data.replace(b'"module": "tests.user_parts"', f'"module": "{layer_module}"'.encode())
                data = data.replace(b"kfactory_tests>Scale", b"hostile>Scale")
            target.writestr(item, data)
    rewritten.replace(path)
    return path


LAYER_MODULE = (
    SIDE_EFFECT
    + """
import keras


@keras.saving.register_keras_serializable(package="hostile")
class Scale(keras.layers.Layer):
    def __init__(self, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {{**super().get_config(), "factor": self.factor}}
"""
)


def test_a_model_file_naming_a_module_does_not_import_it(tmp_path, monkeypatch):
    from kfactory.model.checkpoint import load_model

    module, marker = hostile_module(tmp_path, monkeypatch, LAYER_MODULE)
    path = tiny_model(tmp_path / "model.keras", layer_module=module)
    with pytest.raises(ConfigError) as refused:
        load_model(path)
    message = str(refused.value)
    assert message.startswith("load.modules=[] is not accepted: the modules that define the custom classes of")
    assert "load.modules=[my_pkg.layers]" in message and "\n" not in message
    assert not marker.exists() and module not in sys.modules
    model = load_model(path, modules=[module])  # the user names the module: it loads, in safe mode
    assert type(model.layers[1]).__module__ == module and marker.read_text() == "imported"


def test_a_module_that_does_not_import_is_refused_by_its_key():
    from kfactory.model.checkpoint import import_modules

    with pytest.raises(ConfigError, match=r"^load.modules\[1\]=no_such_pkg.layers is not accepted: a module on"):
        import_modules(["json", "no_such_pkg.layers"])


@pytest.mark.slow  # the command line end to end, TensorFlow imported
def test_predict_of_a_hostile_model_file_imports_nothing(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    marker = tmp_path / "marker.txt"
    (site / "hostile_layers.py").write_text(LAYER_MODULE.format(marker=str(marker)))
    path = tiny_model(tmp_path / "their.keras", layer_module="hostile_layers")
    from tests.conftest import write_image_folder

    images = write_image_folder(tmp_path / "images", {"a": 1, "b": 1}, size=16)
    env = {"PYTHONPATH": f"{site}:{ROOT}"}  # the module is importable: only an opt-in may import it
    command = ["task=predict", f"ckpt_path={path}", f"predict.input={images}", f"hydra.run.dir={tmp_path / 'out'}"]
    refused = run_cli(command, cwd=tmp_path, env=env)
    assert refused.returncode == 2 and not marker.exists(), refused.stderr[-2000:]
    assert "load.modules=[] is not accepted" in refused.stdout + refused.stderr
    allowed = run_cli([*command, "load.modules=[hostile_layers]"], cwd=tmp_path, env=env)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert marker.read_text() == "imported" and (tmp_path / "out" / "predictions.csv").is_file()

"""The docs cannot drift: every documented command composes (and, slow, runs), and the reference is generated.

Commands are the ``python run.py ...`` and ``kfactory ...`` lines of the fenced shell blocks in README.md and
docs/. The default run composes each with Hydra's compose API and merges it into the schema, so a renamed key,
group or option fails in seconds; the slow run executes each at smoke size (``trainer=fast``, 32 px,
``model.weights=null``), with a small image folder and CSV standing in for ``$HOME/photos`` and every output
under ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from kfactory import schema
from tests.conftest import CONF_DIR, ROOT, TINY, write_image_folder

DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?:bash|sh|shell)[ \t]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S)

# Documented commands that need a service, by a piece of their text, with the reason: composed, not run.
COMPOSED_ONLY = {
    "hydra/launcher=submitit_slurm": "needs a Slurm cluster; tests/test_slurm.py runs such sweeps on a real one",
}
# Not even composed: the Ray launcher plugin is not installed beside the other extras.
NOT_COMPOSED = {
    "hydra/launcher=ray": "needs a Ray cluster and hydra-ray-launcher, which lives in its own environment "
    "(.venv-ray); tests/test_ray.py runs a Ray sweep there",
}


@dataclasses.dataclass(frozen=True)
class Command:
    """One documented command: where it is shown, the program (``run.py`` or ``kfactory``) and its arguments."""

    source: str
    program: str
    args: tuple[str, ...]

    @property
    def multirun(self) -> bool:
        return "-m" in self.args or "--multirun" in self.args or "experiment=auto" in self.args  # hydra.mode

    @property
    def overrides(self) -> list[str]:
        return [arg for arg in self.args if arg not in ("-m", "--multirun")]

    def __str__(self) -> str:
        return f"{self.source}: {self.program} {shlex.join(self.args)}"


def shell_blocks(text: str) -> list[str]:
    """The bodies of the fenced ``bash``/``sh``/``shell`` blocks of a Markdown text, dedented."""
    blocks = []
    for match in FENCE.finditer(text):
        indent = len(match["indent"])
        blocks.append("\n".join(line[indent:] for line in match["body"].splitlines()))
    return blocks


def block_commands(block: str, source: str) -> list[Command]:
    """The ``run.py`` and ``kfactory`` commands of one shell block (continuation lines joined, comments dropped)."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if len(words) >= 2 and Path(words[0]).name.startswith("python") and words[1] == "run.py":
                commands.append(Command(source, "run.py", tuple(words[2:])))
            elif words and words[0] == "kfactory":
                commands.append(Command(source, "kfactory", tuple(words[1:])))
    return commands


def documented_commands() -> list[Command]:
    """Every documented command, once, in the order the docs show them."""
    commands, seen = [], set()
    for path in DOC_FILES:
        for block in shell_blocks(path.read_text()):
            for command in block_commands(block, str(path.relative_to(ROOT))):
                key = (command.program, tuple(sorted(command.args)))  # Hydra applies overrides in any order alike
                if key not in seen:  # the README repeats some of the guides'
                    seen.add(key)
                    commands.append(command)
    return commands


def matches(command: Command, pieces: dict[str, str]) -> bool:
    return any(piece in " ".join(command.args) for piece in pieces)


COMMANDS = documented_commands()
COMPOSABLE = [command for command in COMMANDS if not matches(command, NOT_COMPOSED)]
RUNNABLE = [command for command in COMPOSABLE if not matches(command, COMPOSED_ONLY)]


def one_job(overrides: list[str]) -> list[str]:
    """The overrides of a sweep's first job: each sweep replaced by its first value (an interval by its start)."""
    chosen = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            chosen.append(override.input_line)
            continue
        if override.is_discrete_sweep():
            value = next(iter(override.sweep_string_iterator()))
        else:
            value = str(override.value().start)
        chosen.append(f"{override.get_key_element()}={value}")
    return chosen


def fill_placeholders(arg: str) -> str:
    """``<run>``, ``<export run>``: the docs' placeholders as plain names, which Hydra's grammar accepts."""
    return re.sub(r"<([\w ]+)>", lambda match: match[1].replace(" ", "_"), arg)


# --- fast: extraction and composition ---------------------------------------------------------------------------


def test_the_docs_show_commands_of_both_programs():
    programs = {command.program for command in COMMANDS}
    assert programs == {"run.py", "kfactory"}, programs
    assert len(RUNNABLE) >= 30, [str(c) for c in COMMANDS]


def test_a_shell_block_yields_its_commands_with_continuations_and_comments():
    block = (
        "python run.py -m model=a,b \\\n    'x=[1, 2]'   # a comment\n"
        "cd /else && kfactory trainer=fast\npip install x\ntensorboard --logdir outputs/\n"
    )
    commands = block_commands(block, "doc.md")
    assert [(c.program, c.args) for c in commands] == [
        ("run.py", ("-m", "model=a,b", "x=[1, 2]")),
        ("kfactory", ("trainer=fast",)),
    ]
    assert commands[0].multirun and commands[0].overrides == ["model=a,b", "x=[1, 2]"]


def test_indented_blocks_inside_list_items_are_read():
    text = "- item:\n\n  ```bash\n  python run.py seed=1\n  ```\n"
    assert shell_blocks(text) == ["python run.py seed=1"]


def test_every_command_that_is_not_run_is_still_documented():
    """An entry of COMPOSED_ONLY or NOT_COMPOSED that no command matches any more is stale."""
    for piece in [*COMPOSED_ONLY, *NOT_COMPOSED]:
        assert any(piece in " ".join(c.args) for c in COMMANDS), piece


def test_a_sweep_composes_as_its_first_job():
    sweeps = ["model=resnet50,vgg16", "data.fold=range(5)", "optimizer.learning_rate=tag(log,interval(1e-5,1e-3))"]
    assert one_job(sweeps) == [
        "model=resnet50",
        "data.fold=0",
        "optimizer.learning_rate=1e-05",
    ]


@pytest.mark.parametrize("command", COMPOSABLE, ids=str)
def test_documented_command_composes(command: Command):
    """The command's overrides compose into the real config (Hydra's node too) and pass the schema."""
    schema.register_schema()
    overrides = [fill_placeholders(arg) for arg in command.overrides]
    overrides = one_job(overrides) if command.multirun else overrides
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    typed = schema.apply_schema(cfg)
    assert typed.task in ("train", "eval", "predict", "export")


# --- the generated configuration reference ----------------------------------------------------------------------


def load_reference_hook():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "docs" / "hooks" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def schema_dataclasses() -> list[tuple[str, type]]:
    """(dotted prefix, dataclass) for the run config, every group in it and every schedule."""
    found, todo = [], [("", schema.RunConfig)]
    while todo:
        prefix, cls = todo.pop(0)
        found.append((prefix, cls))
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[field.name]):
                todo.append((f"{prefix}{field.name}.", hints[field.name]))
    return found + [("optimizer.schedule.", cls) for cls in schema.SCHEDULES.values()]


def test_the_reference_lists_every_schema_key_with_its_default():
    page = load_reference_hook().render_reference(ROOT)
    rows = {line.split("|")[1].strip().strip("`"): line for line in page.splitlines() if line.startswith("| `")}
    for prefix, cls in schema_dataclasses():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            key = f"{prefix}{field.name}"
            if dataclasses.is_dataclass(hints[field.name]):
                assert f"## `{key}`" in page, key
            else:
                assert key in rows, key
    assert "| `trainer.epochs` | int | `15` |" in rows["trainer.epochs"]
    assert "`imagenet`" in rows["model.weights"] and "a weights file" in rows["model.weights"]


def test_a_field_takes_its_trailing_comment_or_the_comment_block_above_it():
    source = (
        "class A:\n"
        "    x: int = 1  # the x | y\n"
        "    # first line\n"
        "    # second line\n"
        "    y: str = 'a'\n"
        "    z: float = 0.0\n"
    )
    hook = load_reference_hook()
    assert hook.field_comments(source) == {"A": {"x": "the x | y", "y": "first line second line", "z": ""}}
    assert hook._cell("a | b <c> _d_ `e_f`") == "a \\| b \\<c\\> \\_d\\_ `e_f`"


def test_the_site_builds_the_reference_with_the_hook_and_lists_it():
    config = (ROOT / "mkdocs.yml").read_text()
    assert "- docs/hooks/config_reference.py" in config
    hook = load_reference_hook()
    for page in (hook.REFERENCE_PAGE, hook.RESULTS_PAGE, hook.SCRIPTS_PAGE):
        assert f": {page}" in config, page
        assert not (ROOT / "docs" / page).exists(), f"{page} is generated; a file there would shadow it"


# --- slow: every command at smoke size ---------------------------------------------------------------------------

# Caps that replace a command's own value, or are added when it has none.
SMOKE_VALUES = {
    "trainer.verbose": "0",
    "trainer.steps_per_epoch": "2",
    "trainer.validation_steps": "1",
    "data.batch_size": "8",
    "model.weights": "null",
}


def smoke_args(command: Command, home: Path, run: Path | None, work: Path) -> list[str]:
    """The command's arguments with the docs' placeholders filled in and smoke caps applied."""
    args = []
    for arg in command.args:
        arg = arg.replace("$HOME", str(home)).replace("/data/photos", str(home / "photos"))
        args.append(arg.replace("outputs/runs/<run>", str(run)) if run else arg)
    keys = {arg.split("=", 1)[0].lstrip("+") for arg in args if "=" in arg}
    capped = [_cap(arg) for arg in args]
    if "trainer" not in keys:
        capped.append("trainer=fast")
    capped += [f"{key}={value}" for key, value in SMOKE_VALUES.items() if key not in keys]
    if "model.input_size" not in keys:
        capped.append("model.input_size=[32,32]")
    if ("hparams_search=optuna" in args or "experiment=auto" in args) and "hydra.sweeper.n_trials" not in keys:
        capped.append(f"hydra.sweeper.n_trials={SWEPT}")
    if "experiment=auto" in args and "trainer.epochs" not in keys:
        capped.append("trainer.epochs=2")  # the search's own 30 epochs are one of its parameters
    if "hydra.run.dir" not in keys:
        capped.append(f"hydra.run.dir={work / 'run'}")
    if "hydra.sweep.dir" not in keys:
        capped.append(f"hydra.sweep.dir={work / 'sweep'}")
    return capped


SWEPT = 1  # a documented sweep runs the first value of each swept key: still a multirun, in CI's time


def _cap(arg: str) -> str:
    key, _, value = arg.partition("=")
    if key in SMOKE_VALUES:
        return f"{key}={SMOKE_VALUES[key]}"
    if key == "trainer.epochs":
        return "trainer.epochs=2"
    if key == "hydra.sweeper.n_trials":
        return f"{key}={SWEPT}"
    if key == "auto.budget":
        return f"{key}=1m"  # the least budget; one trial at smoke size ends well within it
    if key == "hparams_search.cv_folds":
        return f"{key}=2"  # the fewest folds there are
    if value.startswith("range(") and value.endswith(")"):
        return f"{key}=range({SWEPT})"
    if "," in value and not any(c in value for c in "([{'\""):  # a plain list of values, not a function or a dict
        return f"{key}={','.join(value.split(',')[:SWEPT])}"
    return arg


def write_photos(home: Path) -> None:
    """What the docs call ``$HOME/photos`` (with ``labels.csv`` of label sets), ``new_photos`` and ``labelled``."""
    photos = write_image_folder(home / "photos", {"cats": 10, "dogs": 10}, size=32, fmt="jpg")
    rows = ["path,label"]
    for i, image in enumerate(sorted(photos.glob("*/*.jpg"))):
        labels = [image.parent.name[:-1]] + (["outdoor"] if i % 3 else [])
        rows.append(f"{image.relative_to(photos)},{';'.join(labels)}")
    (photos / "labels.csv").write_text("\n".join(rows) + "\n")
    write_image_folder(home / "new_photos", {"cats": 3, "dogs": 3}, size=32, seed=1)
    write_image_folder(home / "labelled", {"cats": 3, "dogs": 3}, size=32, seed=2)


MY_PKG_STAND_INS = {
    "losses.py": """import keras


def smooth_l1(y_true, y_pred):
    return keras.ops.mean(keras.losses.huber(y_true, y_pred))


class Weighted(keras.losses.SparseCategoricalCrossentropy):
    pass
""",
    "optim.py": """import keras


def make_sgd(learning_rate, momentum=0.0):
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)
""",
    "callbacks.py": """import keras


class Notify(keras.callbacks.Callback):
    def __init__(self, url):
        super().__init__()
        self.url = url  # the docs' example posts here; this stand-in only keeps it
""",
    "layers.py": """import keras


@keras.saving.register_keras_serializable(package="my_pkg")
class Scale(keras.layers.Layer):
    def call(self, x):
        return x * 2.0
""",
}


def write_my_pkg(root: Path) -> Path:
    """The docs' ``my_pkg``: the modules the docs show in full, stand-ins for those they only name."""
    package = root / "my_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for path in DOC_FILES:
        for match in re.finditer(r"```python\n# my_pkg/(\w+\.py)\n(.*?)```", path.read_text(), re.S):
            (package / match[1]).write_text(match[2])
    for name, text in MY_PKG_STAND_INS.items():
        if not (package / name).exists():
            (package / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def docs_world(tmp_path_factory) -> tuple[Path, Path]:
    """(a fake home with the photos, a folder holding my_pkg), once per module."""
    root = tmp_path_factory.mktemp("docs")
    write_photos(root / "home")
    return root / "home", write_my_pkg(root / "pkgs")


@pytest.fixture(scope="module")
def trained_run(docs_world, tmp_path_factory) -> Path:
    """What the docs call ``outputs/runs/<run>``: a tiny run trained on the photos, once per module."""
    home, _ = docs_world
    run = tmp_path_factory.mktemp("trained") / "run"
    args = ["data=folder", f"data.path={home / 'photos'}", "model=mobilenet_v2", "model.weights=null"]
    result = run_program("run.py", [*args, "model.input_size=[32,32]", *TINY, f"hydra.run.dir={run}"], run.parent, {})
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def run_program(program: str, args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    if program == "run.py":
        argv = [sys.executable, str(ROOT / "run.py"), *args]
    else:
        argv = [sys.executable, "-c", "import sys; from kfactory.cli import main; sys.argv[0] = 'kfactory'; main()"]
        argv += args
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=1200, env=full_env)


# What each task leaves somewhere under the command's working directory.
EXPECTED = {
    "train": "metrics.json",
    "eval": "eval_metrics.json",
    "predict": "predictions.csv",
    "export": "model_card.md",
}


@pytest.mark.slow
@pytest.mark.parametrize("command", RUNNABLE, ids=str)
def test_documented_command_runs_at_smoke_size(command: Command, docs_world, request, tmp_path: Path):
    home, packages = docs_world
    run = request.getfixturevalue("trained_run") if "<run>" in " ".join(command.args) else None
    work = tmp_path / "work"
    work.mkdir()
    args = smoke_args(command, home, run, work)
    env = {"HOME": str(home), "PYTHONPATH": os.pathsep.join([str(ROOT), str(packages)])}
    result = run_program(command.program, args, work, env)
    assert result.returncode == 0, f"{shlex.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    task = next((arg.split("=", 1)[1] for arg in args if arg.startswith("task=")), "train")
    assert list(work.rglob(EXPECTED[task])), f"no {EXPECTED[task]} under {work}: {shlex.join(args)}"

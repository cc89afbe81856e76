"""Shared fixtures: compose the real config, run the real CLI, write small image sets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from kfactory.schema import register_schema
from tests.slurm import slurm_cluster  # noqa: F401  (a fixture: the real single-node Slurm)

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"

# A run small enough for a test: two short epochs of a small model at 32 px.
TINY = [
    "trainer=fast",
    "trainer.verbose=0",
    "trainer.steps_per_epoch=2",
    "trainer.validation_steps=1",
    "data.batch_size=16",
]

# How far one model's float32 probabilities may move between two graphs or batch shapes of the same input:
# oneDNN picks its kernels by CPU and by shape, and measured differences reach ~5e-6 (more on other CPUs).
PROB_ATOL = 1e-4


def assert_same_top_labels(probabilities, first, second) -> None:
    """``first`` and ``second`` name the same top label wherever ``probabilities`` (rows of one side) show no near tie.

    A row whose top two probabilities lie within 2 * PROB_ATOL may flip between kernels; at most one
    such row is allowed, so the comparison still covers (nearly) every image.
    """
    top_two = np.sort(np.asarray(probabilities, dtype=np.float64), axis=-1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > 2 * PROB_ATOL
    assert (~clear).sum() <= 1, f"{(~clear).sum()} near ties: the model does not tell these images apart"
    assert (np.asarray(first)[clear] == np.asarray(second)[clear]).all()


@pytest.fixture(autouse=True, scope="session")
def decode_cache_dir(tmp_path_factory) -> Path:
    """The shared decode cache of every test (and the runs they start) lives in the session's temporary folder."""
    from kfactory.data.cache_store import CACHE_DIR_VARIABLE

    folder = tmp_path_factory.mktemp("decode_cache")
    previous = os.environ.get(CACHE_DIR_VARIABLE)
    os.environ[CACHE_DIR_VARIABLE] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(CACHE_DIR_VARIABLE, None)
    else:
        os.environ[CACHE_DIR_VARIABLE] = previous


def compose_config(overrides: list[str] | None = None, run_dir: Path | None = None) -> DictConfig:
    """The real composed config, as ``run.py`` would see it."""
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides or [], return_hydra_config=run_dir is not None)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
    return cfg


@pytest.fixture
def cfg_factory():
    """Compose the real config with overrides: ``cfg_factory(["model=vgg16"])``."""
    return compose_config


def run_cli(
    args: list[str], cwd: Path = ROOT, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python run.py ARGS`` and capture its output."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def hparams_session_groups(logdir: Path) -> list:
    """What TensorBoard's HParams dashboard lists for ``logdir``: its session groups, as its backend builds them."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    tb = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), data_provider=provider))
    request = api_pb2.ListSessionGroupsRequest(allowed_statuses=[api_pb2.STATUS_UNKNOWN], start_index=0, slice_size=50)
    return list(list_session_groups.Handler(context.RequestContext(), tb, "", request).run().session_groups)


def write_image_folder(root: Path, classes: dict[str, int], size: int = 24, fmt: str = "png", seed: int = 0) -> Path:
    """A class-per-sub-folder image set; each class has its own mean colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            base = np.full((size, size, 3), 40 + 160 * (index % 2), dtype=np.float64)
            base[..., index % 3] = 255 - 50 * index
            pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i}.{fmt}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two classes of 12 PNG images each."""
    return write_image_folder(tmp_path / "images", {"cats": 12, "dogs": 12})


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory of a tiny trained model, the class-folder tree it was trained on), once per session.

    Shared by the predict, export and standalone tests, none of which writes into it.
    """
    from tests.tiny_model import train_tiny_model, write_images

    root = tmp_path_factory.mktemp("trained")
    images = write_images(root / "images")
    train_tiny_model(root / "run", images)
    return root / "run", images


def write_multilabel_digits(root: Path, count: int = 300, size: int = 32) -> Path:
    """scikit-learn's digits as PNGs at ``size`` px in a CSV of label sets: even or odd, plus ge5 from 5 up.

    Returns the CSV (``path,label``, labels separated by ``;``, e.g. ``odd;ge5``).
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = root / "digits"
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["path,label"]
    for i in range(count):
        pixels = np.round(digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(pixels).resize((size, size), Image.NEAREST).save(folder / f"{i:04d}.png")
        digit = int(digits.target[i])
        labels = ["even" if digit % 2 == 0 else "odd"] + (["ge5"] if digit >= 5 else [])
        rows.append(f"digits/{i:04d}.png,{';'.join(labels)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"

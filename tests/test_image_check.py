"""Unreadable images are found in one pass, named, listed in the run directory and skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kfactory.config import ConfigError
from tests.conftest import TINY, compose_config, run_cli, write_image_folder


def add_broken_images(root: Path) -> list[Path]:
    """A truncated JPEG, a file of JPEG-looking garbage and a zero-byte PNG."""
    good = next((root / "cats").glob("*.jpg")).read_bytes()
    broken = [root / "cats" / "truncated.jpg", root / "dogs" / "garbage.jpg", root / "dogs" / "empty.png"]
    broken[0].write_bytes(good[: len(good) // 2])
    broken[1].write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 20)
    broken[2].write_bytes(b"")
    return broken


@pytest.fixture
def broken_folder(tmp_path: Path) -> tuple[Path, list[Path]]:
    root = write_image_folder(tmp_path / "images", {"cats": 10, "dogs": 10}, fmt="jpg")
    return root, add_broken_images(root)


def test_find_unreadable_names_exactly_the_broken_files(broken_folder):
    from kfactory.image_check import find_unreadable
    from kfactory.sources import list_folder

    root, broken = broken_folder
    source = list_folder(str(root))
    found = {source.paths[i] for i in find_unreadable(source.paths)}
    assert found == {str(p) for p in broken}


def test_drop_unreadable_keeps_labels_aligned_and_lists_the_files(broken_folder, tmp_path):
    from kfactory.image_check import SKIPPED_FILE, drop_unreadable
    from kfactory.sources import list_folder

    root, broken = broken_folder
    cfg = compose_config(["data=folder", f"data.path={root}"])
    kept, skipped = drop_unreadable(list_folder(str(root)), cfg.data, tmp_path)
    assert len(kept) == 20 and sorted(skipped) == sorted(map(str, broken))
    assert all(Path(p).parent.name == kept.class_names[y] for p, y in zip(kept.paths, kept.labels, strict=True))
    assert sorted((tmp_path / SKIPPED_FILE).read_text().split()) == sorted(map(str, broken))


def test_a_folder_of_only_unreadable_images_is_refused(tmp_path):
    from kfactory.image_check import drop_unreadable
    from kfactory.sources import list_folder

    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(b"")
    cfg = compose_config(["data=folder", f"data.path={tmp_path}"])
    with pytest.raises(ConfigError, match="data.path=.*none of its 2 files decodes"):
        drop_unreadable(list_folder(str(tmp_path)), cfg.data, None)


@pytest.mark.slow
def test_training_on_a_folder_with_broken_images_completes_and_lists_them(broken_folder, tmp_path):
    root, broken = broken_folder
    run_dir = tmp_path / "run"
    overrides = ["model=vgg16", "data=folder", f"data.path={root}", "model.input_size=[32,32]", "model.weights=null"]
    result = run_cli([*overrides, *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}"])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert sorted((run_dir / "skipped_images.txt").read_text().split()) == sorted(map(str, broken))
    assert "Skipping 3 of 23 images" in output and "Skipped 3 unreadable images" in output
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 1

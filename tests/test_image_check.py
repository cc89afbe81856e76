"""Unreadable images are found in one pass, named, listed in the run directory and skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kfactory.errors import ConfigError
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
    from kfactory.data.image_check import find_unreadable
    from kfactory.data.sources import list_folder

    root, broken = broken_folder
    source = list_folder(str(root))
    found = {source.paths[i] for i in find_unreadable(source.paths)}
    assert found == {str(p) for p in broken}


def test_drop_unreadable_keeps_labels_aligned_and_lists_the_files(broken_folder, tmp_path):
    from kfactory.data.image_check import SKIPPED_FILE, drop_unreadable
    from kfactory.data.sources import list_folder

    root, broken = broken_folder
    cfg = compose_config(["data=folder", f"data.path={root}"])
    kept, skipped = drop_unreadable(list_folder(str(root)), cfg.data, tmp_path)
    assert len(kept) == 20 and sorted(skipped) == sorted(map(str, broken))
    assert all(Path(p).parent.name == kept.class_names[y] for p, y in zip(kept.paths, kept.labels, strict=True))
    assert sorted((tmp_path / SKIPPED_FILE).read_text().split()) == sorted(map(str, broken))


def test_a_folder_of_only_unreadable_images_is_refused(tmp_path):
    from kfactory.data.image_check import drop_unreadable
    from kfactory.data.sources import list_folder

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


def _jpeg_bytes(height: int, width: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width] / width
    pixels = np.stack([np.sin(6 * x + 4 * y + p) for p in (0.0, 1.0, 2.0)], -1) * 100 + 128
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype("uint8")).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _full_decode(data: bytes, size: tuple[int, int]):
    import tensorflow as tf

    image = tf.image.resize(tf.io.decode_jpeg(data, channels=3), size)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8).numpy()


@pytest.mark.parametrize("side", [32, 100, 150])
def test_a_large_jpeg_is_decoded_shrunk_to_near_the_input_size(side):
    import numpy as np
    import tensorflow as tf

    from kfactory.data.image_check import _decode_jpeg_near, decode_image

    data = _jpeg_bytes(480, 640)  # covers 32 px 15 times (1/8 scale), 100 px 4 times (1/4), 150 px 3 times (1/2)
    shrunk = _decode_jpeg_near(tf.constant(data), (side, side)).shape
    assert shrunk == {32: (60, 80, 3), 100: (120, 160, 3), 150: (240, 320, 3)}[side]
    image = decode_image(tf.constant(data), (side, side)).numpy()
    assert image.shape == (side, side, 3) and image.dtype == np.uint8
    full = _full_decode(data, (side, side))
    assert np.abs(image.astype(int) - full).mean() < 6  # the same picture, filtered differently


def test_a_jpeg_under_twice_the_input_size_decodes_at_full_size():
    import numpy as np
    import tensorflow as tf

    from kfactory.data.image_check import decode_image

    data = _jpeg_bytes(120, 160)
    assert np.array_equal(decode_image(tf.constant(data), (64, 96)).numpy(), _full_decode(data, (64, 96)))


def test_the_check_pass_says_what_it_does_and_shows_progress_on_long_passes(
    broken_folder, tmp_path, caplog, capsys, monkeypatch
):
    import logging

    from kfactory.data import image_check
    from kfactory.data.sources import list_folder

    root, _ = broken_folder
    cfg = compose_config(["data=folder", f"data.path={root}", "data.cache=none"])
    monkeypatch.setattr(image_check, "PROGRESS_MIN_FILES", 10_000)
    with caplog.at_level(logging.INFO, logger="kfactory.data.image_check"):
        image_check.drop_unreadable(list_folder(str(root)), cfg.data, tmp_path)
    assert "Decoding 23 images once to find unreadable files" in caplog.text
    assert "23/23" not in capsys.readouterr().out  # a short pass: no progress bar
    monkeypatch.setattr(image_check, "PROGRESS_MIN_FILES", 10)
    image_check.drop_unreadable(list_folder(str(root)), cfg.data, tmp_path)
    assert "23/23" in capsys.readouterr().out

"""Predictions drawn on copies of the images, where the copies go, and the contact sheet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kfactory.use.annotate import (
    MIN_SIDE,
    RIGHT,
    UNKNOWN,
    WRONG,
    annotate_image,
    annotated_path,
    contact_sheet,
    input_root,
)

PREDICTIONS = [("cat", 0.9), ("dog", 0.1)]


def pixels_of(image: Image.Image, colour: tuple[int, int, int]) -> int:
    return int(np.all(np.asarray(image) == colour, axis=-1).sum())


@pytest.fixture
def grey(tmp_path: Path) -> Path:
    path = tmp_path / "grey.png"
    Image.new("RGB", (40, 30), (128, 128, 128)).save(path)
    return path


@pytest.mark.parametrize(
    ("true_label", "top", "absent"), [("cat", RIGHT, WRONG), ("dog", WRONG, RIGHT), (None, UNKNOWN, None)]
)
def test_the_top_line_is_green_when_right_red_when_wrong_white_when_unknown(grey, true_label, top, absent):
    image = annotate_image(str(grey), PREDICTIONS, true_label)
    assert pixels_of(image, top) > 20
    if absent is not None:
        assert pixels_of(image, absent) == 0
    else:
        assert pixels_of(image, RIGHT) == pixels_of(image, WRONG) == 0


def test_the_true_label_adds_a_line(grey):
    def box_rows(image: Image.Image) -> int:
        column = np.asarray(image)[:, 2]  # left edge: inside the darkened box, left of the text
        return int((column < 100).all(axis=-1).sum())

    assert box_rows(annotate_image(str(grey), PREDICTIONS, "cat")) > box_rows(annotate_image(str(grey), PREDICTIONS))


def test_small_images_are_enlarged_with_their_pixels_kept(tmp_path):
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(original).save(tmp_path / "small.png")
    image = annotate_image(str(tmp_path / "small.png"), PREDICTIONS, "cat")
    assert min(image.size) == MIN_SIDE and image.size == (round(40 * MIN_SIDE / 30), MIN_SIDE)  # aspect kept
    enlarged = np.asarray(image)
    assert (enlarged[-1, -1] == original[-1, -1]).all()  # the bottom-right corner: the input, not the label box
    assert (enlarged[-11:, -11:] == original[-1, -1]).all()  # nearest-neighbour: one input pixel, ~10x10


def test_large_images_keep_their_size(tmp_path):
    Image.new("RGB", (500, 400), (10, 20, 30)).save(tmp_path / "large.jpg")
    assert annotate_image(str(tmp_path / "large.jpg"), PREDICTIONS).size == (500, 400)


def test_annotated_copies_keep_the_class_sub_folders(tmp_path):
    files = ["/in/cats/a.png", "/in/dogs/b.png"]
    root = input_root(files)
    assert root == "/in"
    assert annotated_path(files[1], root, tmp_path) == tmp_path / "dogs" / "b.png"
    assert input_root(["/in/cats/a.png"]) == "/in/cats"
    assert annotated_path("/in/cats/a.png", input_root(["/in/cats/a.png"]), tmp_path) == tmp_path / "a.png"
    assert input_root([]) == ""
    assert annotated_path("/in/cats/a.png", "", tmp_path) == tmp_path / "a.png"


def test_input_root_of_relative_paths_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert input_root(["x/a.png", "x/y/b.png"]) == str(tmp_path / "x")


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def solid_images(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, size in enumerate(sizes):
        paths.append(folder / f"{i}.png")
        Image.new("RGB", size, COLOURS[i]).save(paths[-1])
    return paths


def test_contact_sheet_tiles_row_by_row(tmp_path):
    paths = solid_images(tmp_path / "in", [(20, 20)] * 5)
    out = contact_sheet(paths, tmp_path / "sheet.png", columns=2, thumb=16)
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (3 * 16, 2 * 16, 3)  # 5 images, 2 a row: 3 rows
    for i, colour in enumerate(COLOURS):
        row, column = divmod(i, 2)
        assert tuple(sheet[row * 16 + 8, column * 16 + 8]) == colour, i
    assert tuple(sheet[2 * 16 + 8, 16 + 8]) == (0, 0, 0)  # the empty slot stays black


def test_a_short_sheet_is_as_wide_as_its_images_and_thumbnails_are_centred(tmp_path):
    paths = solid_images(tmp_path / "in", [(32, 16), (16, 16)])
    sheet = np.asarray(Image.open(contact_sheet(paths, tmp_path / "sheet.png", columns=8, thumb=16)))
    assert sheet.shape == (16, 2 * 16, 3)
    column = sheet[:, 8]  # the wide image shrinks to 16x8, centred: 4 black rows above and below
    assert (column[:4] == 0).all() and (column[12:] == 0).all()
    assert (column[4:12] == COLOURS[0]).all()

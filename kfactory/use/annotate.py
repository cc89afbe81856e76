"""Draw predictions onto copies of the images, and a contact sheet of the first ones."""

from __future__ import annotations

import math
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

MIN_SIDE = 320  # small images are enlarged so the text stays readable
RIGHT, WRONG, UNKNOWN = (60, 200, 90), (230, 60, 60), (255, 255, 255)


def annotate_image(
    path: str, predictions: list[tuple[str, float]], true_label: str | None = None, min_side: int = MIN_SIDE
) -> Image.Image:
    """A copy of the image at ``path`` with ``(label, probability)`` lines drawn on it.

    The top line is green when it matches ``true_label``, red when it does not,
    white when the label is unknown.
    """
    with Image.open(path) as source:
        image = source.convert("RGB")
    scale = max(1.0, min_side / min(image.size))
    if scale > 1:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.NEAREST)  # keep the pixels the model saw visible
    lines = [f"{label}  {prob:.1%}" for label, prob in predictions]
    if true_label is not None:
        lines.append(f"true: {true_label}")
    font = ImageFont.load_default(size=max(12, min(image.size) // 14))
    draw = ImageDraw.Draw(image, "RGBA")
    box = draw.multiline_textbbox((6, 6), "\n".join(lines), font=font)
    draw.rectangle((0, 0, box[2] + 6, box[3] + 6), fill=(0, 0, 0, 160))
    top_colour = UNKNOWN if true_label is None else (RIGHT if predictions[0][0] == true_label else WRONG)
    y = 6
    for i, line in enumerate(lines):
        draw.text((6, y), line, font=font, fill=top_colour if i == 0 else UNKNOWN)
        y = draw.textbbox((6, y), line, font=font)[3] + 2
    return image


def annotated_path(path: str, root: str, out_dir: Path) -> Path:
    """Where the annotated copy of ``path`` goes: its path below ``root``, under ``out_dir``."""
    relative = os.path.relpath(path, root) if root else os.path.basename(path)
    return out_dir / relative


def input_root(files: list[str]) -> str:
    """The deepest folder holding all ``files`` (so class sub-folders are kept)."""
    folders = [os.path.dirname(os.path.abspath(f)) for f in files]
    return os.path.commonpath(folders) if folders else ""


def contact_sheet(paths: list[Path], out: Path, columns: int = 8, thumb: int = 192) -> Path:
    """Tile ``paths`` as ``thumb``-pixel squares, ``columns`` a row, into one PNG at ``out``."""
    rows = math.ceil(len(paths) / columns)
    sheet = Image.new("RGB", (min(columns, len(paths)) * thumb, rows * thumb), "black")
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            tile = image.convert("RGB")
        tile.thumbnail((thumb, thumb))
        x, y = (i % columns) * thumb, (i // columns) * thumb
        sheet.paste(tile, (x + (thumb - tile.width) // 2, y + (thumb - tile.height) // 2))
    sheet.save(out)
    return out

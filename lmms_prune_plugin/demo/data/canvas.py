"""Render item images on a fixed grid of 28x28 cells.

Qwen2-VL cuts an image into 14x14 patches and merges 2x2 patches into one visual token, so one
28x28 cell is exactly one visual token. Drawing one symbol per cell, on a canvas whose size is a
multiple of 28 in both directions, lets a small vision tower read the image token by token, and
every item type shares one image size (and one visual grid), which keeps batches simple.

An image is described by a JSON-able spec, stored with the document, so tasks render images on
the fly and no image files ship:

- ``{"type": "cells", "seed": int, "cells": [{"r": row, "c": col, "g": glyph, "color": name}]}``
  (a shape cell may add ``"size": 2`` to span 2x2 cells from (r, c); the spec may add
  ``"divider": true`` for a line between the left and right halves)
- ``{"type": "easyvqa", "split": "train" | "test", "image_id": int, "r": row, "c": col}``
"""

from __future__ import annotations

import functools
import os
import random
from typing import Any

from PIL import Image, ImageDraw, ImageFont

CELL = 28
COLS = 4
ROWS = 4
WIDTH = CELL * COLS
HEIGHT = CELL * ROWS
BACKGROUND = (255, 255, 255)

#: Named colours used by the synthetic items (easy-vqa's eight colour names).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 200, 30),
    "black": (25, 25, 25),
    "gray": (135, 135, 135),
    "teal": (0, 150, 150),
    "brown": (140, 80, 30),
}
#: Text glyphs (drawn with a font); "x" is drawn as the multiplication sign.
TEXT_GLYPHS: tuple[str, ...] = (
    *"0123456789",
    "+",
    "-",
    "x",
    "=",
    "?",
)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BARS: tuple[str, ...] = ("bar", "bar_half")
#: Every glyph a cell can hold; index 0 is the empty cell (used as a class id in training).
GLYPHS: tuple[str, ...] = ("", *TEXT_GLYPHS, *SHAPES, *BARS)
#: Dark ink colours for text glyphs (a little variety so the tower does not key on one colour).
INKS: tuple[tuple[int, int, int], ...] = ((20, 20, 20), (30, 30, 110), (90, 20, 20), (20, 70, 30))
#: easy-vqa's 64x64 images are scaled to 4x4 cells (the whole canvas).
EASYVQA_CELLS = 4


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    # DejaVu ships with matplotlib (a dependency), so rendering never needs system fonts.
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans-Bold.ttf")
    return ImageFont.truetype(path, size)


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(min(255, max(0, v + rng.randint(-amount, amount))) for v in rgb)  # type: ignore[return-value]


def _draw_cell(
    draw: ImageDraw.ImageDraw, cell: dict[str, Any], rng: random.Random, bar_seed: int
) -> None:
    x0, y0 = cell["c"] * CELL, cell["r"] * CELL
    glyph = cell["g"]
    # Symbols sit centred at one size: a small vision tower trained for minutes on CPU learns
    # fixed per-cell templates fast, while free placement and scale it hardly learns at all.
    if glyph in TEXT_GLYPHS:
        ink = _jitter(rng.choice(INKS), rng, 10)
        text = "\u00d7" if glyph == "x" else glyph
        draw.text((x0 + CELL / 2, y0 + CELL / 2), text, fill=ink, font=_font(22), anchor="mm")
        return
    if glyph in BARS:
        # One shade per bar (not per cell), so a bar reads as one block.
        fill = _jitter(COLORS[cell["color"]], random.Random(bar_seed + cell["c"]), 12)
    else:
        fill = _jitter(COLORS[cell["color"]], rng, 12)
    if glyph == "bar":  # full cell width minus a margin, full height: stacked cells join up
        draw.rectangle((x0 + 4, y0, x0 + CELL - 5, y0 + CELL - 1), fill=fill)
    elif glyph == "bar_half":  # the lower half of a cell: half a unit on top of a bar
        draw.rectangle((x0 + 4, y0 + CELL // 2, x0 + CELL - 5, y0 + CELL - 1), fill=fill)
    else:
        side = CELL * cell.get("size", 1)  # a shape may span size x size cells
        m = 4 * cell.get("size", 1)
        box = (x0 + m, y0 + m, x0 + side - 1 - m, y0 + side - 1 - m)
        if glyph == "circle":
            draw.ellipse(box, fill=fill)
        elif glyph == "square":
            draw.rectangle(box, fill=fill)
        elif glyph == "triangle":
            left, top, right, bottom = box
            draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)
        else:
            raise ValueError(f"unknown glyph {glyph!r}; allowed: {', '.join(GLYPHS[1:])}")


def render_cells(cells: list[dict[str, Any]], seed: int, divider: bool = False) -> Image.Image:
    """Draw ``cells`` (dicts with r, c, g and, for shapes and bars, color) on a blank canvas.

    ``divider`` draws a thin vertical line between the left and right halves: a reference that
    tells a vision tower with only relative positions which half a shape is in.
    """
    rng = random.Random(seed)
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    if divider:
        draw.rectangle((WIDTH // 2 - 1, 0, WIDTH // 2, HEIGHT - 1), fill=(150, 150, 150))
    for cell in cells:
        _draw_cell(draw, cell, rng, seed)
    return image


@functools.lru_cache(maxsize=2)
def _easyvqa_paths(split: str) -> dict[int, str]:
    import easy_vqa

    if split == "train":
        return easy_vqa.get_train_image_paths()
    if split == "test":
        return easy_vqa.get_test_image_paths()
    raise ValueError(f"split={split!r}; allowed: 'train', 'test'")


def render_easyvqa(split: str, image_id: int, r: int, c: int) -> Image.Image:
    """Paste easy-vqa image ``image_id`` of ``split``, scaled to 4x4 cells, at cell (r, c)."""
    side = EASYVQA_CELLS * CELL
    with Image.open(_easyvqa_paths(split)[image_id]) as src:
        tile = src.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    image.paste(tile, (c * CELL, r * CELL))
    return image


def render_spec(spec: dict[str, Any]) -> Image.Image:
    """Render an image spec (see the module docstring) to a ``WIDTH`` x ``HEIGHT`` RGB image."""
    if spec["type"] == "cells":
        return render_cells(spec["cells"], spec["seed"], spec.get("divider", False))
    if spec["type"] == "easyvqa":
        return render_easyvqa(spec["split"], spec["image_id"], spec["r"], spec["c"])
    raise ValueError(f"image spec type={spec['type']!r}; allowed: 'cells', 'easyvqa'")


def covered(cell: dict[str, Any]) -> list[tuple[int, int]]:
    """The (row, col) cells a cell spec draws on (several for a shape of size > 1)."""
    size = cell.get("size", 1)
    return [(cell["r"] + dr, cell["c"] + dc) for dr in range(size) for dc in range(size)]


def side_of(cell: dict[str, Any]) -> str:
    """Which half of the canvas a cell spec starts in: ``"left"`` or ``"right"``."""
    return "left" if cell["c"] < COLS // 2 else "right"

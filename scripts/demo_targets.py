"""Per-visual-token targets for auxiliary vision training (what each 28x28 cell shows).

Used only by ``scripts/train_demo.py``: a linear probe per merged visual token (one token per
cell) teaches the vision tower to read glyphs and colours before and during end-to-end training.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from lmms_prune_plugin.demo.data.canvas import COLORS, COLS, GLYPHS, ROWS, SHAPES, covered, side_of
from lmms_prune_plugin.demo.data.items import image_spec

IGNORE = -100
COLOR_NAMES: tuple[str, ...] = ("", *sorted(COLORS))  # index 0: no colour (text or empty)
EASYVQA_SHAPE_NAMES: tuple[str, ...] = ("circle", "rectangle", "triangle")
MAX_COUNT = 8


@functools.lru_cache(maxsize=2)
def easyvqa_attributes(split: str) -> dict[int, tuple[int, int]]:
    """image_id -> (colour index, shape index) read off easy-vqa's questions (IGNORE if unknown)."""
    import easy_vqa

    get = easy_vqa.get_train_questions if split == "train" else easy_vqa.get_test_questions
    colors = {c: i for i, c in enumerate(COLOR_NAMES[1:])}
    shapes = {s: i for i, s in enumerate(EASYVQA_SHAPE_NAMES)}
    found: dict[int, list[int]] = {}
    for question, answer, image_id in zip(*get(), strict=True):
        attrs = found.setdefault(int(image_id), [IGNORE, IGNORE])
        words = re.findall(r"[a-z]+", question)
        if answer in colors:  # "what color is the circle?" names the shape too
            attrs[0] = colors[answer]
            attrs[1] = next((shapes[w] for w in words if w in shapes), attrs[1])
        elif answer in shapes:  # "what is the red shape?" names the colour too
            attrs[1] = shapes[answer]
            attrs[0] = next((colors[w] for w in words if w in colors), attrs[0])
    return {k: (v[0], v[1]) for k, v in found.items()}


def token_targets(doc: dict[str, Any]) -> dict[str, Any]:
    """Targets of one document's image.

    Returns per-cell lists (row-major, ``ROWS * COLS`` long) ``glyph``, ``color`` and ``bar``
    (the value of the bar in the cell's column, bar charts only) and per-image
    ``counts`` (circles, squares, triangles), ``evqa_color`` and ``evqa_shape``; IGNORE marks
    what an image type does not define.
    """
    spec = image_spec(doc)
    n = ROWS * COLS
    if spec["type"] == "easyvqa":
        attrs = easyvqa_attributes(spec["split"]).get(spec["image_id"], (IGNORE, IGNORE))
        return {
            "glyph": [IGNORE] * n,
            "color": [IGNORE] * n,
            "bar": [IGNORE] * n,
            "counts": [IGNORE] * len(SHAPES),
            "evqa_color": attrs[0],
            "evqa_shape": attrs[1],
        }
    glyph, color = [0] * n, [0] * n
    column_value = [0] * COLS
    for cell in spec["cells"]:
        for r, c in covered(cell):
            glyph[r * COLS + c] = GLYPHS.index(cell["g"])
            color[r * COLS + c] = COLOR_NAMES.index(cell["color"])
        column_value[cell["c"]] += {"bar": 2, "bar_half": 1}.get(cell["g"], 0)
    is_chart = doc["kind"].startswith("bar_")
    bar = [column_value[i % COLS] if is_chart else IGNORE for i in range(n)]
    counts = [min(MAX_COUNT, sum(c["g"] == s for c in spec["cells"])) for s in SHAPES]
    return {
        "glyph": glyph,
        "color": color,
        "bar": bar,
        "counts": counts,
        "evqa_color": IGNORE,
        "evqa_shape": IGNORE,
    }


def cell_words(doc: dict[str, Any]) -> tuple[list[list[str]], list[str]]:
    """Words naming what each cell shows (row-major), and words naming the whole image.

    Used to pull each visual token towards the sum of the text embeddings of its words (a bar
    cell also names its bar's value), so the language model can treat visual tokens like the
    words of its questions and answers. Empty cells get no words.
    """
    spec = image_spec(doc)
    n = ROWS * COLS
    if spec["type"] == "easyvqa":
        color, shape = easyvqa_attributes(spec["split"]).get(spec["image_id"], (IGNORE, IGNORE))
        pooled = [COLOR_NAMES[color + 1]] if color != IGNORE else []
        pooled += [EASYVQA_SHAPE_NAMES[shape]] if shape != IGNORE else []
        return [[] for _ in range(n)], pooled
    words: list[list[str]] = [[] for _ in range(n)]
    column_value = [0] * COLS
    for cell in spec["cells"]:
        column_value[cell["c"]] += {"bar": 2, "bar_half": 1}.get(cell["g"], 0)
    for cell in spec["cells"]:
        if cell["g"] in SHAPES and spec.get("divider"):  # scenes: which half, too
            names = [cell["g"], cell["color"], side_of(cell)]
        elif cell["g"] in SHAPES:
            names = [cell["g"], cell["color"]]
        elif cell["g"] in ("bar", "bar_half"):
            names = [cell["color"], str(column_value[cell["c"]])]
        else:
            names = [cell["g"]]
        for r, c in covered(cell):
            words[r * COLS + c] = names
    return words, []

"""Non-math items: easy-vqa questions and simple synthetic scenes, answered by a word.

- ``easyvqa_color`` / ``easyvqa_shape`` / ``easyvqa_yesno``: questions of the easy-vqa package
  (coloured shapes on 64x64 images, MIT licence), grouped by the type of their answer. The image
  is scaled to the whole canvas.
- ``scene_color``: "What color is the square?" (the only square among 2-4 shapes).
- ``scene_side``: "Which side is the circle on?" (left: columns 0-1, right: columns 2-3).
- ``scene_shape``: "What shape is the red object?" (the only red one).
"""

from __future__ import annotations

import functools
import random
from typing import Any

from lmms_prune_plugin.demo.data.canvas import COLORS, COLS, EASYVQA_CELLS, ROWS, SHAPES, side_of
from lmms_prune_plugin.demo.data.items import make_doc, make_doc_from_spec

NONMATH_KINDS: tuple[str, ...] = (
    "easyvqa_color",
    "easyvqa_shape",
    "easyvqa_yesno",
    "scene_color",
    "scene_side",
    "scene_shape",
)
EASYVQA_COLORS = frozenset(COLORS)
EASYVQA_SHAPES = frozenset({"circle", "rectangle", "triangle"})


def _category(answer: str) -> str:
    if answer in EASYVQA_COLORS:
        return "easyvqa_color"
    if answer in EASYVQA_SHAPES:
        return "easyvqa_shape"
    return "easyvqa_yesno"


@functools.lru_cache(maxsize=6)
def easyvqa_pool(
    split: str, parity: int | None = None
) -> dict[str, tuple[tuple[str, str, int], ...]]:
    """easy-vqa (question, answer, image_id) triples of ``split`` grouped by answer category.

    ``parity`` keeps only images whose id has that parity, so two held-out sets drawn from the
    test split (benchmark and calibration) never share an image.
    """
    import easy_vqa

    if split == "train":
        questions, answers, image_ids = easy_vqa.get_train_questions()
    elif split == "test":
        questions, answers, image_ids = easy_vqa.get_test_questions()
    else:
        raise ValueError(f"split={split!r}; allowed: 'train', 'test'")
    pool: dict[str, list[tuple[str, str, int]]] = {k: [] for k in NONMATH_KINDS[:3]}
    for q, a, i in zip(questions, answers, image_ids, strict=True):
        if parity is None or i % 2 == parity:
            pool[_category(a)].append((q, a, int(i)))
    return {k: tuple(v) for k, v in pool.items()}


def _easyvqa(rng: random.Random, kind: str, split: str, parity: int | None) -> dict[str, Any]:
    question, answer, image_id = rng.choice(easyvqa_pool(split, parity)[kind])
    spec = {
        "type": "easyvqa",
        "split": split,
        "image_id": image_id,
        "r": rng.randint(0, ROWS - EASYVQA_CELLS),
        "c": rng.randint(0, COLS - EASYVQA_CELLS),
    }
    # easy-vqa asks in lower case; capitalise like the synthetic questions.
    question = question[0].upper() + question[1:]
    key = f"easyvqa:{split}:{image_id}:{question}"
    return make_doc_from_spec("nonmath", kind, question, answer, spec, key)


_QUADRANTS = [(r, c) for r in range(0, ROWS, 2) for c in range(0, COLS, 2)]


def _scene(rng: random.Random, shapes: list[str], colors: list[str]) -> list[dict]:
    """Shapes of 2x2 cells, one per quadrant: large enough to read at a glance."""
    slots = rng.sample(_QUADRANTS, len(shapes))
    return [
        {"r": r, "c": c, "g": s, "color": col, "size": 2}
        for (r, c), s, col in zip(slots, shapes, colors, strict=True)
    ]


def _one_object(rng: random.Random) -> tuple[list[dict], str, str]:
    shape, color = rng.choice(SHAPES), rng.choice(sorted(COLORS))
    return _scene(rng, [shape], [color]), shape, color


def _scene_color(rng: random.Random) -> dict[str, Any]:
    cells, shape, color = _one_object(rng)
    question = f"What color is the {shape}?"
    key = f"scene_color:{shape},{color}"
    return make_doc("nonmath", "scene_color", question, color, cells, rng, key, divider=True)


def _scene_side(rng: random.Random) -> dict[str, Any]:
    cells, shape, color = _one_object(rng)
    side = side_of(cells[0])
    question = f"Which side is the {shape} on?"
    key = f"scene_side:{shape},{color},{side}"
    return make_doc("nonmath", "scene_side", question, side, cells, rng, key, divider=True)


def _scene_shape(rng: random.Random) -> dict[str, Any]:
    cells, shape, color = _one_object(rng)
    question = f"What shape is the {color} object?"
    key = f"scene_shape:{shape},{color}"
    return make_doc("nonmath", "scene_shape", question, shape, cells, rng, key, divider=True)


_SCENES = {"scene_color": _scene_color, "scene_side": _scene_side, "scene_shape": _scene_shape}


def make_nonmath_item(
    rng: random.Random,
    kind: str | None = None,
    easyvqa_split: str = "train",
    easyvqa_parity: int | None = None,
) -> dict[str, Any]:
    """One non-math document of ``kind`` (one of :data:`NONMATH_KINDS`; random when None)."""
    kind = kind or rng.choice(NONMATH_KINDS)
    if kind in _SCENES:
        return _SCENES[kind](rng)
    if kind not in NONMATH_KINDS:
        raise ValueError(f"kind={kind!r}; allowed: {', '.join(NONMATH_KINDS)}")
    return _easyvqa(rng, kind, easyvqa_split, easyvqa_parity)


def nonmath_items(
    seed: int, n: int, easyvqa_split: str = "test", easyvqa_parity: int | None = None
) -> list[dict[str, Any]]:
    """``n`` non-math documents from ``seed``, kinds in turn (so each gets ~n/6 items)."""
    rng = random.Random(seed)
    kinds = NONMATH_KINDS
    return [
        make_nonmath_item(rng, kinds[i % len(kinds)], easyvqa_split, easyvqa_parity)
        for i in range(n)
    ]

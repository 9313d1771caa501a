"""Deterministic item generators for the demo model, its benchmarks and calibration sets.

Every item is a JSON-able document (question, answer, kind, image spec); images are rendered
from the document on demand (:func:`render_doc`) on a fixed grid of 28x28 cells.
"""

from lmms_prune_plugin.demo.data.canvas import CELL, COLS, HEIGHT, ROWS, WIDTH
from lmms_prune_plugin.demo.data.items import render_doc
from lmms_prune_plugin.demo.data.math_items import MATH_KINDS, math_items
from lmms_prune_plugin.demo.data.nonmath_items import NONMATH_KINDS, nonmath_items
from lmms_prune_plugin.demo.data.prompts import (
    POST_PROMPT,
    doc_to_text,
    is_correct,
    normalize_answer,
)
from lmms_prune_plugin.demo.data.splits import (
    HELD_OUT,
    TRAIN_SEED,
    held_out_docs,
    shuffled_docs,
    train_stream,
)

__all__ = [
    "CELL",
    "COLS",
    "HEIGHT",
    "HELD_OUT",
    "MATH_KINDS",
    "NONMATH_KINDS",
    "POST_PROMPT",
    "ROWS",
    "TRAIN_SEED",
    "WIDTH",
    "doc_to_text",
    "held_out_docs",
    "is_correct",
    "math_items",
    "nonmath_items",
    "normalize_answer",
    "render_doc",
    "shuffled_docs",
    "train_stream",
]

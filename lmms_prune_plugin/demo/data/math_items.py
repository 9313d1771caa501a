"""Math items: rendered arithmetic, bar charts and counting, each answered by a number.

Every item is a JSON-able document (see :func:`lmms_prune_plugin.demo.data.items.make_doc`) whose
``image`` field is a cell spec for :mod:`lmms_prune_plugin.demo.data.canvas`.

- ``arith``: "7 + 5 =" drawn one symbol per cell along a random row (+, - and x of single
  digits).
- ``bar_value``: a bar chart of 2-4 coloured bars of 1..8 half-cell units; "What is the value
  of the tallest bar?".
- ``bar_diff``: a chart of two bars; "What is the difference between the two bars?".
- ``count_sum``: two kinds of shapes (1-3 of each) scattered one per cell; "How many circles and
  squares are there in total?".

Every question is about the whole image (a maximum, a difference, a total), not about one
object picked out by the question: a transformer trained from scratch for minutes learns
such read-outs quickly, while picking one object by name takes it far longer.
"""

from __future__ import annotations

import random
from typing import Any

from lmms_prune_plugin.demo.data.canvas import COLORS, COLS, ROWS, SHAPES
from lmms_prune_plugin.demo.data.items import make_doc

MATH_KINDS: tuple[str, ...] = ("arith", "bar_value", "bar_diff", "count_sum")

_ARITH_QUESTIONS = (
    "What is the answer?",
    "Solve the problem in the image.",
    "What number should replace the question mark?",
)
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
_BAR_MAX = 2 * ROWS  # each cell of a bar is two units


def _arith(rng: random.Random) -> dict[str, Any]:
    op = rng.choice("+-x")
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if op == "-" and a < b:
        a, b = b, a
    answer = {"+": a + b, "-": a - b, "x": a * b}[op]
    symbols = [str(a), op, str(b), "="]
    r = rng.randrange(ROWS)  # the row varies; each symbol keeps its column
    cells = [{"r": r, "c": i, "g": g, "color": ""} for i, g in enumerate(symbols)]
    question = rng.choice(_ARITH_QUESTIONS)
    return make_doc(
        "math", "arith", question, str(answer), cells, rng, key=f"arith:{a}{op}{b}", op=op
    )


def _bar_chart(rng: random.Random, n: int) -> tuple[list[dict[str, Any]], list[int]]:
    colors = rng.sample(sorted(COLORS), n)
    cells, values = [], []
    for col, color in enumerate(colors):  # bars from the left edge, one per column
        value = rng.randint(1, _BAR_MAX)
        values.append(value)
        for unit in range(value // 2):
            cells.append({"r": ROWS - 1 - unit, "c": col, "g": "bar", "color": color})
        if value % 2:
            cells.append({"r": ROWS - 1 - value // 2, "c": col, "g": "bar_half", "color": color})
    return cells, values


def _bar_value(rng: random.Random) -> dict[str, Any]:
    cells, values = _bar_chart(rng, rng.randint(2, COLS))
    question = "What is the value of the tallest bar?"
    key = f"bar_value:{values}"
    return make_doc("math", "bar_value", question, str(max(values)), cells, rng, key=key)


def _bar_diff(rng: random.Random) -> dict[str, Any]:
    cells, values = _bar_chart(rng, 2)
    question = "What is the difference between the two bars?"
    key = f"bar_diff:{values}"
    answer = str(abs(values[0] - values[1]))
    return make_doc("math", "bar_diff", question, answer, cells, rng, key=key)


def _count_sum(rng: random.Random) -> dict[str, Any]:
    first, second = rng.sample(SHAPES, 2)
    counts = {first: rng.randint(1, 3), second: rng.randint(1, 3)}
    slots = rng.sample([(r, c) for r in range(ROWS) for c in range(COLS)], sum(counts.values()))
    shapes = [s for s in (first, second) for _ in range(counts[s])]
    cells = [
        {"r": r, "c": c, "g": s, "color": rng.choice(sorted(COLORS))}
        for (r, c), s in zip(slots, shapes, strict=True)
    ]
    question = f"How many {_PLURAL[first]} and {_PLURAL[second]} are there in total?"
    key = f"count_sum:{first}={counts[first]},{second}={counts[second]}"
    return make_doc("math", "count_sum", question, str(sum(counts.values())), cells, rng, key=key)


_MAKERS = {"arith": _arith, "bar_value": _bar_value, "bar_diff": _bar_diff, "count_sum": _count_sum}


def make_math_item(rng: random.Random, kind: str | None = None) -> dict[str, Any]:
    """One math document of ``kind`` (one of :data:`MATH_KINDS`; random when None)."""
    kind = kind or rng.choice(MATH_KINDS)
    if kind not in _MAKERS:
        raise ValueError(f"kind={kind!r}; allowed: {', '.join(MATH_KINDS)}")
    return _MAKERS[kind](rng)


def math_items(seed: int, n: int) -> list[dict[str, Any]]:
    """``n`` math documents from ``seed``, kinds in turn (so each kind gets ~n/4 items)."""
    rng = random.Random(seed)
    return [make_math_item(rng, MATH_KINDS[i % len(MATH_KINDS)]) for i in range(n)]

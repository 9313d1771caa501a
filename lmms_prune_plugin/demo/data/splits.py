"""Seeds and sizes of the training stream and of the held-out document sets.

Training draws synthetic items from :data:`TRAIN_SEED` and easy-vqa questions from easy-vqa's
*train* split. Every held-out set uses its own seed and easy-vqa's *test* split (benchmark on
even image ids, calibration on odd ones), so no held-out image is ever seen in training. The
underlying problems can still repeat with another rendering (single-digit arithmetic has only
255 distinct problems); ``scripts/train_demo.py`` measures and reports that overlap.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lmms_prune_plugin.demo.data.math_items import make_math_item, math_items
from lmms_prune_plugin.demo.data.nonmath_items import make_nonmath_item, nonmath_items

TRAIN_SEED = 0
#: Seed of the fixed permutation that gives each "shuffled" control doc another doc's image.
SHUFFLE_SEED = 3003


@dataclass(frozen=True)
class HeldOutSet:
    """A held-out document set: which generator, seed and size, and which task it feeds."""

    task: str
    domain: str
    seed: int
    size: int
    easyvqa_parity: int | None = None


HELD_OUT: dict[str, HeldOutSet] = {
    s.task: s
    for s in (
        HeldOutSet("prune_demo_math", "math", seed=1001, size=200),
        HeldOutSet("prune_demo_nonmath", "nonmath", seed=1002, size=204, easyvqa_parity=0),
        HeldOutSet("prune_calib_math", "math", seed=2001, size=96),
        HeldOutSet("prune_calib_nonmath", "nonmath", seed=2002, size=96, easyvqa_parity=1),
    )
}


def held_out_docs(task: str) -> list[dict[str, Any]]:
    """The documents of held-out ``task`` (one of :data:`HELD_OUT`), with ids."""
    if task not in HELD_OUT:
        raise ValueError(f"task={task!r}; allowed: {', '.join(HELD_OUT)}")
    s = HELD_OUT[task]
    if s.domain == "math":
        docs = math_items(s.seed, s.size)
    else:
        docs = nonmath_items(s.seed, s.size, "test", s.easyvqa_parity)
    return [{"id": f"{task}-{i:04d}", **d} for i, d in enumerate(docs)]


def shuffled_docs(docs: list[dict[str, Any]], seed: int = SHUFFLE_SEED) -> list[dict[str, Any]]:
    """Copies of ``docs`` where each doc carries the image of another doc (a derangement).

    The question and answer stay; only the image moves. A model that reads the image falls to
    chance on these; one that guesses from the question alone keeps its accuracy.
    """
    rng = random.Random(seed)
    n = len(docs)
    perm = list(range(n))
    while n > 1 and any(i == p for i, p in enumerate(perm)):
        rng.shuffle(perm)
    return [
        {**d, "image": docs[p]["image"], "image_from": docs[p]["id"]}
        for d, p in zip(docs, perm, strict=True)
    ]


def train_stream(
    seed: int = TRAIN_SEED,
    math_fraction: float = 0.5,
    math_weights: dict[str, float] | None = None,
) -> Iterator[dict[str, Any]]:
    """An endless stream of training documents (easy-vqa from its train split).

    ``math_weights`` (kind -> weight) oversamples the math kinds that take longest to learn;
    by default every kind is equally likely.
    """
    rng = random.Random(seed)
    kinds = sorted(math_weights) if math_weights else None
    weights = [math_weights[k] for k in kinds] if math_weights else None
    while True:
        if rng.random() < math_fraction:
            kind = rng.choices(kinds, weights)[0] if kinds else None
            yield make_math_item(rng, kind)
        else:
            yield make_nonmath_item(rng, easyvqa_split="train")

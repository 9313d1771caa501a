"""Task hooks of the lm-eval versions of the demo tasks, and the text-only word problems.

The image tasks read the same JSONL documents as the lmms-eval tasks (in
``lmms_prune_plugin/demo/tasks``) and render the same images; the prompt is the same question and
post prompt, with lm-eval's ``<image>`` placeholder in front, where lmms-eval's qwen2_vl wrapper
puts the image. The word problems are generated here from fixed seeds, so nothing is downloaded.

lm-eval calls a ``custom_dataset`` with the run's metadata (which holds every model_arg) as
keyword arguments: the loaders below take and ignore them.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

try:
    import lmms_prune_plugin  # noqa: F401
except ImportError:  # used from a checkout through --include_path, without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from lmms_prune_plugin.demo import TASKS_DIR  # noqa: E402
from lmms_prune_plugin.demo.data.prompts import POST_PROMPT  # noqa: E402
from lmms_prune_plugin.demo.data.task_utils import doc_to_visual, process_results  # noqa: E402

#: lm-eval's image placeholder (``lm_eval.models.hf_vlms.DEFAULT_IMAGE_PLACEHOLDER``).
IMAGE = "<image>"

__all__ = ["doc_to_image", "doc_to_text", "process_results"]


def _dataset(docs: list[dict[str, Any]], **splits: list[dict[str, Any]]):
    from datasets import Dataset, DatasetDict

    parts = {"test": docs, **splits}
    return DatasetDict({name: Dataset.from_list(rows) for name, rows in parts.items()})


def _jsonl(folder: str, name: str) -> list[dict[str, Any]]:
    path = Path(TASKS_DIR) / folder / name
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# -- image tasks: the demo's documents --------------------------------------------------------
def calib_math(**_: Any):
    """prune_calib_math: the lmms-eval calibration set's documents."""
    return _dataset(_jsonl("prune_calib", "prune_calib_math.jsonl"))


def calib_nonmath(**_: Any):
    """prune_calib_nonmath: the lmms-eval calibration set's documents."""
    return _dataset(_jsonl("prune_calib", "prune_calib_nonmath.jsonl"))


def demo_math(**_: Any):
    """prune_demo_math: the lmms-eval benchmark's documents."""
    return _dataset(_jsonl("prune_demo", "prune_demo_math.jsonl"))


def demo_nonmath(**_: Any):
    """prune_demo_nonmath: the lmms-eval benchmark's documents."""
    return _dataset(_jsonl("prune_demo", "prune_demo_nonmath.jsonl"))


def doc_to_image(doc: dict[str, Any]) -> list:
    """The document's single image, rendered (the same pixels as in lmms-eval)."""
    return doc_to_visual(doc)


def doc_to_text(doc: dict[str, Any]) -> str:
    """Image placeholder, question and the demo's post prompt."""
    return f"{IMAGE}{doc['question']}{POST_PROMPT}"


# -- text-only word problems ------------------------------------------------------------------
NAMES = ("Ada", "Ben", "Cleo", "Dev", "Emma", "Finn", "Gita", "Hugo", "Iris", "Jon")
ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "stamps", "shells", "books")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white")
THINGS = ("ball", "hat", "kite", "cup", "bike", "scarf", "box", "lamp")
PLACES = ("Paris", "Lima", "Oslo", "Cairo", "Delhi", "Tokyo", "Quito", "Rome")
ANIMALS = ("mouse", "cat", "dog", "horse", "elephant")  # smallest to largest


def _two_step(rng: random.Random) -> tuple[str, str, int]:
    name, item, friend = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(NAMES)
    a, b = rng.randint(5, 40), rng.randint(2, 20)
    c = rng.randint(1, a + b - 1)
    q = (
        f"{name} has {a} {item}. {name} buys {b} more and then gives {c} to {friend}. "
        f"How many {item} does {name} have now?"
    )
    return q, f"{a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}.", a + b - c


def _boxes(rng: random.Random) -> tuple[str, str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 12), rng.randint(2, 9)
    c = rng.randint(2, a * b - 1)
    q = (
        f"A box holds {a} {item}. {name} fills {b} boxes and then takes out {c} {item}. "
        f"How many {item} are left in the boxes?"
    )
    return q, f"{a} x {b} = {a * b}. {a * b} - {c} = {a * b - c}.", a * b - c


def _wages(rng: random.Random) -> tuple[str, str, int]:
    name = rng.choice(NAMES)
    a, b = rng.randint(3, 25), rng.randint(2, 7)
    c = rng.randint(1, a * b - 1)
    q = (
        f"{name} earns {a} dollars a day for {b} days and spends {c} dollars. "
        f"How many dollars does {name} have left?"
    )
    return q, f"{a} x {b} = {a * b}. {a * b} - {c} = {a * b - c}.", a * b - c


def _sharing(rng: random.Random) -> tuple[str, str, int]:
    item = rng.choice(ITEMS)
    b, k = rng.randint(2, 9), rng.randint(2, 12)
    extra = rng.randint(1, 9)
    q = (
        f"There are {b * k} {item} shared equally among {b} children. Each child then finds "
        f"{extra} more. How many {item} does each child have?"
    )
    return q, f"{b * k} / {b} = {k}. {k} + {extra} = {k + extra}.", k + extra


PROBLEMS = (_two_step, _boxes, _wages, _sharing)


def word_problems(seed: int, size: int) -> list[dict[str, Any]]:
    """``size`` GSM8K-style two-step arithmetic word problems drawn from ``seed``; the target is
    the worked solution and ``#### <answer>``, as in GSM8K."""
    rng = random.Random(seed)
    docs = []
    for i in range(size):
        make = PROBLEMS[i % len(PROBLEMS)]
        question, steps, answer = make(rng)
        docs.append(
            {
                "id": f"wp-{seed}-{i:04d}",
                "domain": "math",
                "kind": make.__name__[1:],
                "question": question,
                "answer": f"{steps}\n#### {answer}",
            }
        )
    return docs


def _fact(rng: random.Random) -> tuple[str, str, str]:
    name, kind = rng.choice(NAMES), rng.randrange(3)
    if kind == 0:
        colour, thing = rng.choice(COLOURS), rng.choice(THINGS)
        article = "an" if colour[0] in "aeiou" else "a"
        q = f"{name} has {article} {colour} {thing}. What colour is {name}'s {thing}?"
        return "colour", q, colour
    if kind == 1:
        place = rng.choice(PLACES)
        return "place", f"{name} lives in {place}. In which city does {name} live?", place
    small, big = sorted(rng.sample(range(len(ANIMALS)), 2))
    first, second = (
        (ANIMALS[big], ANIMALS[small]) if rng.random() < 0.5 else (ANIMALS[small], ANIMALS[big])
    )
    q = f"A {first} and a {second} stand side by side. Which of the two animals is smaller?"
    return "size", q, ANIMALS[small]


def reading_questions(seed: int, size: int) -> list[dict[str, Any]]:
    """``size`` one-sentence reading questions (colours, places, sizes), no arithmetic."""
    rng = random.Random(seed)
    docs = []
    for i in range(size):
        kind, question, answer = _fact(rng)
        docs.append(
            {
                "id": f"rq-{seed}-{i:04d}",
                "domain": "nonmath",
                "kind": kind,
                "question": question,
                "answer": answer,
            }
        )
    return docs


def calib_text_math(**_: Any):
    """prune_calib_text_math: 64 word problems (seed 3001), disjoint seeds from the benchmark."""
    return _dataset(word_problems(3001, 64))


def calib_text_nonmath(**_: Any):
    """prune_calib_text_nonmath: 64 reading questions (seed 3101)."""
    return _dataset(reading_questions(3101, 64))


def gsm_demo(**_: Any):
    """prune_gsm_demo: 100 word problems to evaluate (seed 3002), 8 few-shot examples (seed 3003)."""
    return _dataset(word_problems(3002, 100), train=word_problems(3003, 8))


def text_question(doc: dict[str, Any]) -> str:
    """GSM8K's prompt format."""
    return f"Question: {doc['question']}\nAnswer:"

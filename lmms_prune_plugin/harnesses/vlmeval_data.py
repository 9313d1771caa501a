"""The demo's benchmarks and calibration sets as VLMEvalKit TSVs (``$LMUData/<Name>.tsv``).

VLMEvalKit reads a TSV it does not know as a custom dataset: with option columns ``A``,
``B``, ... it is a multiple-choice set that ``--judge exact_matching`` scores without an API
(the prediction must name one option's letter or contain exactly one option's text), else a
VQA set (fine for calibration, which needs no scoring). Images are stored as base64 PNG, so
VLMEvalKit's dump (``images/<Name>/<index>.png``) holds exactly the rendered pixels.

Multiple-choice options: the answer and up to three distractors drawn from the answers of the
same kind of question in the same file (so a colour question offers colours), none containing
another as text (otherwise a correct bare answer such as "1" would also match "10" and count
as ambiguous). Which distractors, and where the answer goes, follow from a SHA-256 of the
document id: deterministic, and the same for every run and machine. Two-valued kinds
(yes/no, left/right) get two options, shapes three, the rest four.

Importing this module needs neither VLMEvalKit nor lmms-eval.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import string
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from lmms_prune_plugin.demo import TASKS_DIR

MAX_OPTIONS = 4


@dataclass(frozen=True)
class DemoSet:
    """One demo TSV: its VLMEvalKit name, the packaged JSONL it comes from, and its kind."""

    name: str
    source: str  # path below the demo task folder
    mcq: bool  # multiple choice (a benchmark) or VQA (a calibration set)


DEMO_SETS = (
    DemoSet("PruneDemo_Math", "prune_demo/prune_demo_math.jsonl", True),
    DemoSet("PruneDemo_Nonmath", "prune_demo/prune_demo_nonmath.jsonl", True),
    DemoSet("PruneCalib_Math", "prune_calib/prune_calib_math.jsonl", False),
    DemoSet("PruneCalib_Nonmath", "prune_calib/prune_calib_nonmath.jsonl", False),
)
#: The calibration sets per domain (the VLMEvalKit counterparts of prune_calib_math/_nonmath).
DEMO_CALIBRATION = {"math": "PruneCalib_Math", "nonmath": "PruneCalib_Nonmath"}
#: The benchmarks (the counterparts of the prune_demo group's tasks).
DEMO_BENCHMARKS = ("PruneDemo_Math", "PruneDemo_Nonmath")


def read_docs(source: str) -> list[dict]:
    """The packaged documents of ``source`` (a path below the demo task folder)."""
    path = Path(TASKS_DIR) / source
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _rank(doc_id: str, value: str) -> str:
    return hashlib.sha256(f"{doc_id}\0{value}".encode()).hexdigest()


def _clash(a: str, b: str) -> bool:
    """Whether exact matching could not tell ``a`` from ``b`` (one contains the other)."""
    a, b = a.lower(), b.lower()
    return a in b or b in a


def choose_options(doc_id: str, answer: str, pool: Iterable[str]) -> list[str]:
    """The options of one question: ``answer`` and distractors from ``pool``, in a fixed order
    that depends only on ``doc_id`` (see the module docstring). Pure."""
    chosen = [answer]
    for value in sorted(set(pool) - {answer}, key=lambda v: _rank(doc_id, v)):
        if len(chosen) == MAX_OPTIONS:
            break
        if not any(_clash(value, c) for c in chosen):
            chosen.append(value)
    if len(chosen) < 2:
        raise ValueError(f"document {doc_id!r}: no distractor for answer {answer!r} in its kind")
    order = sorted(chosen, key=lambda v: _rank(doc_id, "order:" + v))
    return order


def image_base64(doc: dict) -> str:
    """The document's rendered image as base64 PNG (lossless)."""
    from lmms_prune_plugin.demo.data.task_utils import doc_to_visual

    (image,) = doc_to_visual(doc)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def mcq_rows(docs: Sequence[dict]) -> list[dict]:
    """Rows of a multiple-choice TSV: question, options A-D, the answer's letter, its kind."""
    pools: dict[str, set[str]] = defaultdict(set)
    for doc in docs:
        pools[doc["kind"]].add(str(doc["answer"]))
    rows = []
    for i, doc in enumerate(docs):
        options = choose_options(doc["id"], str(doc["answer"]), pools[doc["kind"]])
        letters = dict(zip(string.ascii_uppercase, options, strict=False))
        answer = next(k for k, v in letters.items() if v == str(doc["answer"]))
        row = {"index": i, "image": image_base64(doc), "question": doc["question"]}
        row |= {k: letters.get(k, "") for k in string.ascii_uppercase[:MAX_OPTIONS]}
        rows.append(row | {"answer": answer, "category": doc["kind"], "id": doc["id"]})
    return rows


def vqa_rows(docs: Sequence[dict]) -> list[dict]:
    """Rows of a VQA TSV (the question alone, as in every VLMEvalKit TSV: a model's prompt
    adds its instructions)."""
    return [
        {
            "index": i,
            "image": image_base64(doc),
            "question": doc["question"],
            "answer": str(doc["answer"]),
            "category": doc["kind"],
            "id": doc["id"],
        }
        for i, doc in enumerate(docs)
    ]


def tsv_text(rows: Sequence[dict]) -> str:
    """Tab-separated text with a header, quoted where a field holds a tab, quote or newline."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def demo_tsv(demo: DemoSet) -> tuple[str, list[dict]]:
    """The TSV text of one demo set, and its rows."""
    docs = read_docs(demo.source)
    rows = mcq_rows(docs) if demo.mcq else vqa_rows(docs)
    return tsv_text(rows), rows


def write_demo_tsvs(root: str | Path, names: Iterable[str] | None = None) -> list[Path]:
    """Write the demo sets as ``<root>/<Name>.tsv`` (``$LMUData``); return their paths.

    A TSV already there with the same content is kept; one with other content is an error,
    and so is an image VLMEvalKit dumped earlier under ``<root>/images/<Name>`` that shows
    other pixels (VLMEvalKit would reuse it): nothing is overwritten or deleted. Every set is
    checked before any file is written."""
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"LMUData={str(root)!r} is not allowed: it is a file; give a folder")
    wanted = list(names) if names is not None else [d.name for d in DEMO_SETS]
    known = {d.name: d for d in DEMO_SETS}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a demo set; they are: {', '.join(known)}")
    todo = []
    for name in wanted:
        text, rows = demo_tsv(known[name])
        target = root / f"{name}.tsv"
        if target.exists() and target.read_text(encoding="utf-8") != text:
            raise ValueError(
                f"{target} exists with other content; it is not replaced: move it away or "
                "write the demo sets to another folder"
            )
        _check_dumped_images(root / "images" / name, rows)
        todo.append((target, text))
    root.mkdir(parents=True, exist_ok=True)
    for target, text in todo:
        if not target.exists():
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(target)
    return [t for t, _ in todo]


def _pixels(image: Image.Image) -> tuple:
    image = image.convert("RGB")
    return image.size, image.tobytes()


def _check_dumped_images(folder: Path, rows: Sequence[dict]) -> None:
    """Images VLMEvalKit dumped from an earlier TSV of this name must show these pixels."""
    if not folder.is_dir():
        return
    for row in rows:
        path = folder / f"{row['index']}.png"
        if not path.exists():
            continue
        with Image.open(path) as dumped:
            have = _pixels(dumped)
        want = _pixels(Image.open(io.BytesIO(base64.b64decode(row["image"]))))
        if have != want:
            raise ValueError(
                f"{path} shows other pixels than row {row['index']} of the demo set, and "
                f"VLMEvalKit would reuse it; move {folder} away or write the demo sets to "
                "another folder"
            )

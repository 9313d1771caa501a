"""The ``prune_train`` task: documents of the demo's *training* stream, for healing.

Healing a pruned model needs data that is never scored: these documents come from
:data:`~lmms_prune_plugin.demo.data.splits.TRAIN_SEED` (the seed the demo model was trained
from, with its math mix) and easy-vqa's train split, so no document, image or rendering of a
``prune_demo_*`` benchmark or ``prune_calib_*`` calibration set appears among them.

Usage::

    python -m lmms_prune_plugin.demo.data.train_task            # write prune_train.jsonl
    python -m lmms_prune_plugin.demo.data.train_task --check    # fail if it is out of date
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from .. import TASKS_DIR
from .splits import TRAIN_SEED, train_stream

TRAIN_TASK = "prune_train"
TRAIN_SIZE = 2048
#: The demo model's training mix (scripts/train_demo.py): math is the harder half.
MATH_FRACTION = 0.6
MATH_WEIGHTS = {"arith": 0.55, "bar_diff": 0.2, "bar_value": 0.1, "count_sum": 0.15}
TRAIN_FILE = Path(TASKS_DIR) / TRAIN_TASK / f"{TRAIN_TASK}.jsonl"


def train_docs(size: int = TRAIN_SIZE) -> list[dict[str, Any]]:
    """The first ``size`` documents of the training stream, with ids."""
    stream = train_stream(TRAIN_SEED, MATH_FRACTION, MATH_WEIGHTS)
    return [
        {"id": f"{TRAIN_TASK}-{i:05d}", **d} for i, d in enumerate(itertools.islice(stream, size))
    ]


def to_jsonl(docs: list[dict[str, Any]]) -> str:
    """One sorted-key JSON object per line (the format of every demo task file)."""
    return "".join(json.dumps(d, sort_keys=True, ensure_ascii=False) + "\n" for d in docs)


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` verify) the task's JSONL file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only verify the file is current")
    args = parser.parse_args(argv)
    text = to_jsonl(train_docs())
    if args.check:
        if not TRAIN_FILE.exists() or TRAIN_FILE.read_text(encoding="utf-8") != text:
            print(f"out of date (run python -m {__spec__.name}): {TRAIN_FILE}")
            return 1
        return 0
    TRAIN_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {TRAIN_SIZE} docs to {TRAIN_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

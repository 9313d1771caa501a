"""The ``prune_train`` task: documents of the demo's *training* stream, for healing.

Healing a pruned model needs data that is never scored: these documents come from
:data:`~lmms_prune_plugin.demo.data.splits.TRAIN_SEED` (the seed the demo model was trained
from, with its math mix) and easy-vqa's train split, so no document, image or rendering of a
``prune_demo_*`` benchmark or ``prune_calib_*`` calibration set appears among them.

Its file is written and checked with every other demo task file by
``python -m lmms_prune_plugin.demo.build_tasks [--check]``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from lmms_prune_plugin.demo import TASKS_DIR
from lmms_prune_plugin.demo.data.splits import TRAIN_SEED, train_stream

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

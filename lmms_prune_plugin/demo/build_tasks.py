"""Regenerate the JSONL documents of the ``prune_demo`` and ``prune_calib`` tasks.

Usage::

    python -m lmms_prune_plugin.demo.build_tasks            # write next to the task YAMLs
    python -m lmms_prune_plugin.demo.build_tasks --check    # fail if a file is out of date

The output is a pure function of the seeds in :mod:`lmms_prune_plugin.demo.data.splits` (and of the
easy-vqa package), so rerunning it rewrites byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lmms_prune_plugin.demo import TASKS_DIR
from lmms_prune_plugin.demo.data.splits import HELD_OUT, held_out_docs, shuffled_docs
from lmms_prune_plugin.demo.data.train_task import TRAIN_FILE, train_docs


def _folder(task: str) -> Path:
    return Path(TASKS_DIR) / ("prune_calib" if task.startswith("prune_calib") else "prune_demo")


def task_files() -> dict[Path, list[dict[str, Any]]]:
    """Every JSONL file the tasks read, mapped to its documents.

    Besides the four held-out sets, ``prune_demo_*_shuffled`` hold the benchmark documents with
    images moved between documents (a control: accuracy there should fall to chance).
    """
    files: dict[Path, list[dict[str, Any]]] = {}
    for task in HELD_OUT:
        docs = held_out_docs(task)
        files[_folder(task) / f"{task}.jsonl"] = docs
        if task.startswith("prune_demo"):
            files[_folder(task) / f"{task}_shuffled.jsonl"] = shuffled_docs(docs)
    files[TRAIN_FILE] = train_docs()  # prune_train: the training stream, for healing
    return files


def to_jsonl(docs: list[dict[str, Any]]) -> str:
    """One sorted-key JSON object per line."""
    return "".join(json.dumps(d, sort_keys=True, ensure_ascii=False) + "\n" for d in docs)


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` verify) every task JSONL file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only verify the files are current")
    args = parser.parse_args(argv)
    stale = []
    for path, docs in task_files().items():
        text = to_jsonl(docs)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {len(docs):4d} docs to {path}")
    if stale:
        print("out of date (run python -m lmms_prune_plugin.demo.build_tasks):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

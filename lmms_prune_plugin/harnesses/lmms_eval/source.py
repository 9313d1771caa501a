"""lmms-eval as a calibration source: a task's requests through the base wrapper's own
``generate_until`` (its chat template, image processing and batching)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lmms_prune_plugin.core.cache import folder_fingerprint, key
from lmms_prune_plugin.harnesses.base import CalibrationDocs
from lmms_prune_plugin.harnesses.lmms_eval.requests import (
    CalibrationRequests,
    build_requests,
    resolve_task_name,
)


class LmmsEvalSource:
    """A :class:`~lmms_prune_plugin.harnesses.base.CalibrationSource` over an lmms-eval wrapper
    and the task folders (ours, then ``include_path``)."""

    harness = "lmms-eval"

    def __init__(self, wrapper: Any, task_paths: list[str]) -> None:
        self.wrapper, self.task_paths = wrapper, list(task_paths)
        self._task_manager = None
        self._data_key: str | None = None

    @property
    def batch_size(self) -> int:
        return int(getattr(self.wrapper, "batch_size", 1) or 1)

    def data_key(self) -> str:
        """Our task folders by content; lmms-eval's own tasks by its version."""
        if self._data_key is None:
            from importlib.metadata import version

            parts = [folder_fingerprint(p) for p in self.task_paths if Path(p).is_dir()]
            self._data_key = key(folders=parts, lmms_eval=version("lmms_eval"))
        return self._data_key

    def _manager(self, task: str):
        """A TaskManager that knows ``task``: our folders alone index in milliseconds, all of
        lmms-eval's tasks take seconds, so the full index is built only when needed."""
        from lmms_eval.tasks import TaskManager

        if self._task_manager is None:
            self._task_manager = TaskManager(include_path=self.task_paths, include_defaults=False)
        if resolve_task_name(task) not in self._task_manager.all_tasks:
            self._task_manager = TaskManager(include_path=self.task_paths)
        return self._task_manager

    def documents(
        self, task: str, limit: int | None, rank: int, world: int, param: str
    ) -> CalibrationDocs:
        task_type = "simple" if getattr(self.wrapper, "is_simple", True) else "chat"
        reqs = build_requests(task, self._manager(task), task_type, limit, rank, world, param=param)
        if world > 1:
            print(
                f"lmms-prune: rank {rank}/{world} calibrates {len(reqs.requests)} of "
                f"{reqs.total} {param.removeprefix('calib_')} samples ({task})",
                file=sys.stderr,
            )
        return CalibrationDocs(reqs.task, reqs, len(reqs.requests), reqs.total, reqs.fingerprint)

    def run(self, docs: CalibrationDocs, batch_size: int) -> None:
        """The wrapper's own ``generate_until`` on copies of the requests, with the task's
        documents in its ``task_dict`` (the wrapper batches by its own batch size)."""
        calib: CalibrationRequests = docs.payload
        saved = dict(self.wrapper.task_dict)
        self.wrapper.task_dict.update(calib.datasets)
        try:
            self.wrapper.generate_until(calib.for_pass())
        finally:
            self.wrapper.task_dict.clear()
            self.wrapper.task_dict.update(saved)

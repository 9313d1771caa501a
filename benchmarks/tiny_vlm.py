"""The tiny vision-language checkpoints and calibration tasks of parts 3 and 4."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARCH = "qwen2_5_vl"
TEST_TASKS = Path(__file__).resolve().parent.parent / "tests" / "tasks"
SETS = {"math": "prune_test_colours", "nonmath": "prune_test_colours_b"}


def calibration_args(limit: int) -> dict[str, Any]:
    """``pruned_vlm`` arguments for the test suite's calibration tasks (offline, a few images)."""
    return {
        "calib_math": SETS["math"],
        "calib_nonmath": SETS["nonmath"],
        "include_path": str(TEST_TASKS),
        "calib_limit": limit,
    }


def calibrator(wrapper, checkpoint: Path, limit: int, cache=None):
    """A ``Calibrator`` built with the arguments ``pruned_vlm`` gives its own.

    lmms-eval's default ``TaskManager`` indexes every task it ships (seconds of CPU); all the
    tasks here live under the include paths, so the calibrator gets one that indexes only those.
    """
    from .package import Calibrator, weights_fingerprint

    key = weights_fingerprint(str(checkpoint))
    cal = Calibrator(wrapper, wrapper.model, SETS, limit, "all", str(TEST_TASKS), cache, key)
    if hasattr(cal, "_task_manager") and hasattr(cal, "task_paths"):
        from lmms_eval.tasks import TaskManager

        cal._task_manager = TaskManager(include_path=list(cal.task_paths), include_defaults=False)
    return cal

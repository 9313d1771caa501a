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


def planner(wrapper, checkpoint: Path, limit: int):
    """A ``Planner`` on the wrapper's model with the test suite's calibration tasks, no disk cache
    (every forward a sweep needs is run and counted)."""
    from .package import CalibrationConfig, LmmsEvalSource, ModelIdentity, Planner

    config = CalibrationConfig.parse(**calibration_args(limit), plan_cache=False)
    identity = ModelIdentity.of(wrapper.model, str(checkpoint), None)
    source = LmmsEvalSource(wrapper, config.task_paths)
    return Planner(source, wrapper.model, identity, config, run_key=str(checkpoint))

"""The demo's offline calibration sets, registered like any plugin's (the core names them only
as the default ``calib_math`` / ``calib_nonmath``)."""

from lmms_prune_plugin.core.calibration import CalibrationSet
from lmms_prune_plugin.core.hookspecs import hookimpl
from lmms_prune_plugin.demo import TASKS_DIR


@hookimpl
def register_calibration_sets(register):
    register(
        CalibrationSet(
            "prune_calib_math",
            "math",
            "prune_calib_math",
            True,
            "generated arithmetic, bar charts, counting",
            TASKS_DIR,
        )
    )
    register(
        CalibrationSet(
            "prune_calib_nonmath",
            "nonmath",
            "prune_calib_nonmath",
            True,
            "easy-vqa shapes and simple scenes",
            TASKS_DIR,
        )
    )

"""Every name the benchmarks take from ``lmms_prune_plugin``, in one place.

The benchmarks go through the package's highest-level entry points (the ``pruned_vlm`` model
class, ``remove_decoder_layers_``, ``LayerCapture``) plus the few pieces a sweep and the
plan-cache set-up need. Names are imported on first use (``from .package import X`` inside a
function), so a part that does not need lmms-eval does not import it. When the package moves a
name, the change is one line here.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it.
WHERE: dict[str, str] = {
    "LayerCapture": "lmms_prune_plugin.core.capture",
    "remove_decoder_layers_": "lmms_prune_plugin.surgery.layers",
    "find_decoder_layers": "lmms_prune_plugin.surgery.layers",
    "PrunedVLM": "lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm",
    "save_tiny_vlm": "lmms_prune_plugin.testing",
    "wrapper_kwargs": "lmms_prune_plugin.testing",
    "CalibrationConfig": "lmms_prune_plugin.core.calibration",
    "Calibrator": "lmms_prune_plugin.core.calibration",
    "build_requests": "lmms_prune_plugin.harnesses.lmms_eval.requests",
    "Planner": "lmms_prune_plugin.core.planner",
    "LmmsEvalSource": "lmms_prune_plugin.harnesses.lmms_eval.source",
    "PruneOptions": "lmms_prune_plugin.core.planner",
    "ModelIdentity": "lmms_prune_plugin.core.plan",
    "get_criterion": "lmms_prune_plugin.core.plugins",
    "resolve_budget": "lmms_prune_plugin.core.strategies",
    "TASKS_DIR": "lmms_prune_plugin.demo",
    # The cached path's own steps, timed one by one in the plan-cache profile.
    "weights_fingerprint": "lmms_prune_plugin.core.cache",
    "files_fingerprint": "lmms_prune_plugin.core.cache",
    "folder_fingerprint": "lmms_prune_plugin.core.cache",
    "pick_wrapper": "lmms_prune_plugin.harnesses.lmms_eval.base",
    "read_config": "lmms_prune_plugin.harnesses.lmms_eval.base",
    "plan_removal": "lmms_prune_plugin.surgery.layers",
    "forget_removal_checks": "lmms_prune_plugin.surgery.layers",
    "removal_checks_in": "lmms_prune_plugin.surgery.layers",
    # Healing's data preparation (part 6).
    "HealOptions": "lmms_prune_plugin.core.heal",
    "add_continuations_": "lmms_prune_plugin.core.heal",
    "training_data_for": "lmms_prune_plugin.harnesses.lmms_eval.training",
    "wrapper_tokenizer": "lmms_prune_plugin.harnesses.lmms_eval.training",
}


def __getattr__(name: str) -> Any:
    if name not in WHERE:
        raise AttributeError(name)
    obj = getattr(importlib.import_module(WHERE[name]), name)
    globals()[name] = obj
    return obj

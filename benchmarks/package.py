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

# name -> modules to look in, first found wins.
WHERE: dict[str, tuple[str, ...]] = {
    "LayerCapture": ("lmms_prune_plugin.capture",),
    "remove_decoder_layers_": ("lmms_prune_plugin.layers",),
    "find_decoder_layers": ("lmms_prune_plugin.layers",),
    "PrunedVLM": ("lmms_prune_plugin.models.pruned_vlm",),
    "save_tiny_vlm": ("lmms_prune_plugin.tiny",),
    "wrapper_kwargs": ("lmms_prune_plugin.tiny",),
    "Cache": ("lmms_prune_plugin.cache",),
    "weights_fingerprint": ("lmms_prune_plugin.cache",),
    "Calibrator": ("lmms_prune_plugin.calibration",),
    "domains_for": ("lmms_prune_plugin.calibration",),
    "PruneOptions": ("lmms_prune_plugin.pipeline",),
    "make_plan": ("lmms_prune_plugin.pipeline", "lmms_prune_plugin.planner"),
    "ModelIdentity": ("lmms_prune_plugin.plan",),
    "get_criterion": ("lmms_prune_plugin.plugins",),
    "resolve_budget": ("lmms_prune_plugin.strategies",),
    "TASKS_DIR": ("lmms_prune_plugin.demo", "lmms_prune_plugin"),
    # Internals timed one by one in the plan-cache profile; absent ones are skipped there.
    "pick_wrapper": ("lmms_prune_plugin.models.pruned_vlm",),
    "folder_hash": ("lmms_prune_plugin.calibration",),
}


def __getattr__(name: str) -> Any:
    if name not in WHERE:
        raise AttributeError(name)
    for module in WHERE[name]:
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        globals()[name] = obj
        return obj
    raise ImportError(f"lmms_prune_plugin has no {name} (looked in {', '.join(WHERE[name])})")

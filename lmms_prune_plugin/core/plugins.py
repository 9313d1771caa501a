"""The plugin manager: built-ins register exactly like third-party plugins."""

from __future__ import annotations

import importlib
import os
from typing import Any

import pluggy

from lmms_prune_plugin.core import hookspecs

DEFAULT_PLUGINS = ("lmms_prune_plugin.core.builtins", "lmms_prune_plugin.demo.plugin")

pm = pluggy.PluginManager(hookspecs.PROJECT)
pm.add_hookspecs(hookspecs)

for _name in DEFAULT_PLUGINS:
    pm.register(importlib.import_module(_name), _name)

# Tests set LMMS_PRUNE_LOAD_ENTRYPOINTS=0 so installed third-party plugins do not leak in.
if os.environ.get("LMMS_PRUNE_LOAD_ENTRYPOINTS", "1") != "0":
    pm.load_setuptools_entrypoints(hookspecs.PROJECT)


def _collect(hook_name: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def register(item: Any) -> None:
        if item.name in found:
            raise ValueError(f"{hook_name}: the name {item.name!r} is registered twice")
        found[item.name] = item

    getattr(pm.hook, hook_name)(register=register)
    return dict(sorted(found.items()))


def get_criteria() -> dict:
    """All registered criteria by name."""
    return _collect("register_criteria")


def get_strategies() -> dict:
    """All registered strategies by name."""
    return _collect("register_strategies")


def get_calibration_sets() -> dict:
    """All registered calibration sets by name."""
    return _collect("register_calibration_sets")


def get_layer_rules() -> tuple:
    """Every registered layer rule, names unique; field-specific rules before pattern rules."""
    rules = list(_collect("register_layer_rules").values())
    return tuple(sorted(rules, key=lambda r: (not r.specific, r.name)))


def get_criterion(name: str):
    """The criterion called ``name``; the error lists the registered names."""
    return _lookup(get_criteria(), "criterion", name)


def get_strategy(name: str):
    """The strategy called ``name``; the error lists the registered names."""
    return _lookup(get_strategies(), "strategy", name)


def _lookup(registry: dict, kind: str, name: Any):
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"{kind}={name!r} is not registered; choose one of: {', '.join(registry)}")
    return registry[name]

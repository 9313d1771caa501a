"""Loading a checkpoint to prune, the same in every harness: its config read without running
any code, options that contradict a plan file, the plan file to write, a one-line summary."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmms_prune_plugin.core.args import check_writable, is_none
from lmms_prune_plugin.core.plan import PrunePlan
from lmms_prune_plugin.surgery.checkpoint import local_folder, read_local_config

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def check_plan_alone(plan: object, given: Mapping[str, Any]) -> None:
    """A plan decides every removed layer: options that would make another plan contradict it."""
    if is_none(plan) or not given:
        return
    names = ", ".join(f"{k}={v!r}" for k, v in given.items())
    raise ValueError(
        f"plan={plan!r} is not allowed together with {names}: the plan file already fixes which "
        "layers are removed; give either plan= or the pruning options, not both"
    )


def check_save_plan(path: str | None) -> Path | None:
    """``save_plan`` may create a file or replace a plan, never anything else; checked now."""
    if path is None:
        return None
    target = Path(str(path)).expanduser()
    if target.is_symlink():  # replacing it would drop the link and leave its target stale
        raise ValueError(
            f"save_plan={path!r} is not allowed: it is a symbolic link; give the file it points to"
        )
    if target.is_dir():
        raise ValueError(f"save_plan={path!r} is not allowed: it is a folder; give a file path")
    if target.exists():
        try:
            PrunePlan.load(target)
        except ValueError as err:
            raise ValueError(
                f"save_plan={path!r} is not allowed: the file exists and is not a plan, so it is "
                "not replaced; give a new path or remove it"
            ) from err
    return check_writable("save_plan", target)


def read_checkpoint_config(pretrained: str, revision: str | None) -> dict:
    """The checkpoint's raw config.json (no config class, no remote code), or one clear line
    saying why there is none."""
    local = Path(pretrained).expanduser()
    if local.exists():
        if not (local.is_dir() and (local / "config.json").is_file()):
            raise ValueError(
                f"pretrained={pretrained!r} is not allowed: it is not a checkpoint folder "
                "(no config.json)"
            )
    elif not _HUB_ID.match(pretrained) or pretrained.startswith((".", "~")):
        raise ValueError(
            f"pretrained={pretrained!r} is not allowed: no such folder, and not a hub id (org/name)"
        )
    folder = local_folder(pretrained)
    try:
        if folder is not None:
            config = read_local_config(folder)
        else:
            from transformers import PretrainedConfig

            config = PretrainedConfig.get_config_dict(pretrained, revision=revision)[0]
    except OSError as err:
        raise ValueError(
            f"pretrained={pretrained!r}: no such local folder, and its config could not be "
            f"fetched from the hub (offline, unknown id or revision?): {str(err).splitlines()[0]}"
        ) from err
    if not config.get("model_type"):
        # Neither the wrapper nor the architecture check could be chosen: every wrapper would
        # guess, and fail deep inside or load something else.
        raise ValueError(
            f"pretrained={pretrained!r} is not allowed: its config.json has no model_type, so its "
            "architecture is unknown; add the model_type of its transformers config class"
        )
    return config


def text_depth(config: Mapping[str, Any]) -> int | None:
    """num_hidden_layers of the text decoder, from a raw config dict (None if not stated)."""
    for sub in ("text_config", "llm_config", "language_config"):
        n = config.get(sub).get("num_hidden_layers") if isinstance(config.get(sub), dict) else None
        if isinstance(n, int):
            return n
    n = config.get("num_hidden_layers")
    return n if isinstance(n, int) else None


def describe(plan: PrunePlan) -> str:
    """A short human summary of a plan."""
    m, kept = plan.model, plan.model.num_layers - len(plan.removed)
    if not plan.removed:
        return f"lmms-prune: {m.name_or_path} ({m.architecture}) loaded unpruned, {kept} layers"
    scores = ", ".join(f"{i}:{plan.scores[i]:.4f}" for i in plan.removed) if plan.scores else "-"
    return (
        f"lmms-prune: {m.name_or_path} ({m.architecture}) {m.num_layers} -> {kept} layers | "
        f"criterion={plan.criterion} strategy={plan.strategy} budget={plan.budget} | "
        f"removed {list(plan.removed)} (scores {scores})"
    )


def refused_config(pretrained: str, err: Exception) -> ValueError | None:
    """transformers' strict config classes (``layer_types`` shorter than
    ``num_hidden_layers``, a string depth, ...) refuse a config with their own validation
    error, raised while the config is parsed, before any weight is read: name the file."""
    if "ValidationError" not in type(err).__name__:
        return None
    lines = str(err).strip().splitlines() or [type(err).__name__]
    tail = f" {lines[-1]}" if len(lines) > 1 else ""
    return ValueError(
        f"pretrained={pretrained!r} is not allowed: transformers refuses its config.json "
        f"({lines[0]}{tail}); repair that file (num_hidden_layers, layer_types, ...)"
    )


def named_params(cls: type) -> list[str]:
    """Named ``__init__`` parameters of ``cls``, and of its parents for as long as each
    ``__init__`` passes ``**kwargs`` on (wrappers that extend another wrapper)."""
    named: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        named += [
            p
            for p, v in params.items()
            if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL) and p != "self" and p not in named
        ]
        if not any(v.kind == v.VAR_KEYWORD for v in params.values()):
            break
    return named

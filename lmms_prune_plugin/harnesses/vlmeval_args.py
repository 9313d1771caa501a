"""Arguments of the VLMEvalKit launcher and pruned model that can be checked without VLMEvalKit:
pruning options, the checkpoint's depth, model keyword arguments, the plan file's place."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loguru import logger

from lmms_prune_plugin.core.args import is_none
from lmms_prune_plugin.core.plan import PrunePlan
from lmms_prune_plugin.core.planner import PruneOptions, check_options
from lmms_prune_plugin.surgery.checkpoint import local_folder, read_local_config


def parse_prune(prune: str | Mapping[str, Any] | None) -> PruneOptions:
    """``criterion=math,budget=4`` (or a mapping) as :class:`PruneOptions`."""
    if prune is None or (isinstance(prune, str) and is_none(prune)):
        raise ValueError("prune is required: give pruning options such as criterion=math,budget=4")
    values = dict(prune) if isinstance(prune, Mapping) else parse_spec(str(prune))
    return PruneOptions.parse(**values)


def parse_spec(text: str, name: str = "--prune") -> dict[str, str]:
    """``k=v,k=v`` as a dict; an item without ``=``, an empty one or a repeated key is an error."""
    out: dict[str, str] = {}
    for item in text.split(","):
        k, sep, v = item.partition("=")
        k, v = k.strip(), v.strip()
        if not sep or not k or not v:
            raise ValueError(
                f"{name}={text!r} is not allowed: {item!r} is not key=value; write e.g. "
                "criterion=math,budget=4"
            )
        if k in out:
            raise ValueError(f"{name}={text!r} is not allowed: {k} is given twice")
        out[k] = v
    return out


def plan_target(output_dir: str | None) -> Path | None:
    """``<output_dir>/plan.json``; a file there that is not a plan is never replaced."""
    if output_dir is None:
        return None
    target = Path(output_dir) / "plan.json"
    if target.is_dir() or (target.exists() and not _is_plan(target)):
        raise ValueError(
            f"{target} exists and is not a plan file, so it is not replaced; move it away or "
            "give another --name"
        )
    return target


def _is_plan(path: Path) -> bool:
    try:
        PrunePlan.load(path)
    except (ValueError, OSError):
        return False
    return True


def check_reuse(target: Path, plan: PrunePlan, reuse: bool) -> None:
    """With ``--reuse`` VLMEvalKit keeps the predictions in the folder: they must come from a
    model pruned the same way."""
    if not (reuse and target.exists()):
        return
    old = PrunePlan.load(target)
    if (old.model.fingerprint, old.removed) != (plan.model.fingerprint, plan.removed):
        raise ValueError(
            f"--reuse is not allowed here: the predictions in {target.parent} come from a model "
            f"with layers {list(old.removed)} removed ({old.model.name_or_path}), this one removes "
            f"{list(plan.removed)}; drop --reuse or give another --name"
        )
    logger.info(f"lmms-prune: {target} names the same removed layers; predictions are reused")


def text_depth(config: Mapping[str, Any]) -> int | None:
    """num_hidden_layers of the text decoder in a raw config.json, or None if not stated."""
    for sub in ("text_config", "llm_config", "language_config"):
        inner = config.get(sub)
        if isinstance(inner, Mapping) and isinstance(inner.get("num_hidden_layers"), int):
            return inner["num_hidden_layers"]
    n = config.get("num_hidden_layers")
    return n if isinstance(n, int) else None


def check_depth(pretrained: str, options: PruneOptions, sets: Mapping[str, str]) -> None:
    """The budget and domains against a local checkpoint's depth, before anything loads (the
    planner checks again on the loaded model); a path that does not exist is named."""
    folder = local_folder(pretrained)
    if folder is None:
        if pretrained.startswith((".", "/", "~")) or pretrained.count("/") > 1:
            raise ValueError(f"--pretrained={pretrained!r} is not allowed: no such folder")
        return  # a hub id: checked once loaded
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"--pretrained={pretrained!r} is not allowed: it is not a checkpoint folder (no config.json)"
        )
    depth = text_depth(read_local_config(folder, "--pretrained"))
    if depth is not None:
        check_options(options, depth, sets)


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of the model class: ``--model-args`` (a JSON object) and the HFChat
    flags."""
    try:
        kwargs = json.loads(args.model_args)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"--model-args={args.model_args!r} is not allowed: not JSON ({err})"
        ) from err
    if not isinstance(kwargs, dict):
        raise ValueError(f"--model-args={args.model_args!r} is not allowed: give a JSON object")
    for flag, name, value in (
        ("--max-new-tokens", "max_new_tokens", args.max_new_tokens),
        ("--trust-remote-code", "trust_remote_code", args.trust_remote_code or None),
    ):
        if value is None:
            continue
        if name in kwargs:
            raise ValueError(f"{flag} is not allowed together with {name} in --model-args")
        kwargs[name] = value
    return kwargs

"""``pruned_vlm``'s model_args: each checked before the model is loaded, where the information
exists (paths, booleans, the budget against the checkpoint's depth, remote code, revisions,
arguments the base wrapper does not take), into one :class:`LoadRequest`.

pruned_vlm's own arguments are the fields of three option records: :class:`LoadOptions` here,
:class:`~lmms_prune_plugin.core.calibration.CalibrationConfig`'s model_args and
:class:`~lmms_prune_plugin.core.planner.PruneOptions`; everything else goes to the base wrapper.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmms_prune_plugin.core.args import closest, reject_empty
from lmms_prune_plugin.core.calibration import CALIBRATION_ARGS, CalibrationConfig
from lmms_prune_plugin.core.loading import (
    check_plan_alone,
    check_save_plan,
    named_params,
    read_checkpoint_config,
    text_depth,
)
from lmms_prune_plugin.core.options import OptionRecord, option
from lmms_prune_plugin.core.plan import PrunePlan
from lmms_prune_plugin.core.planner import PruneOptions, check_options, prune_option_names
from lmms_prune_plugin.core.plugins import get_criterion
from lmms_prune_plugin.harnesses.lmms_eval import engine as engines
from lmms_prune_plugin.harnesses.lmms_eval.base import (
    FALLBACK_WRAPPER,
    REVISION_WRAPPERS,
    always_trusts,
    pick_wrapper,
    ships_code,
    wrapper_class,
)
from lmms_prune_plugin.harnesses.lmms_eval.task_folders import check_task_folder
from lmms_prune_plugin.surgery.checkpoint import check_weight_files


@dataclass(frozen=True)
class LoadOptions(OptionRecord):
    """What to load, and what to do with a plan file."""

    title = "loading options"
    pretrained: str | None = option(
        None, "hub id or local checkpoint folder (default: the packaged demo model)", none=True
    )
    base: str | None = option(
        None, "lmms-eval wrapper that loads it (default: chosen by model_type)", none=True
    )
    plan: str | None = option(None, "apply this plan file instead of calibrating", none=True)
    save_plan: str | None = option(None, "also write the plan to this file", none=True)
    plan_strict: bool = option(True, "refuse a plan made for another checkpoint")
    revision: str | None = option(None, "hub revision (not with a local folder)", none=True)
    trust_remote_code: bool = option(False, "run code the checkpoint ships")
    engine: str = option("hf", "what evaluates the pruned model", choices=engines.ENGINES)


#: The arguments ``pruned_vlm`` itself takes (everything else goes to the base wrapper).
OWN_ARGS = (*LoadOptions.names(), *CALIBRATION_ARGS, *prune_option_names())


@dataclass
class LoadRequest:
    """Everything decided from the model_args before loading."""

    load: LoadOptions
    options: PruneOptions
    calibration: CalibrationConfig
    pretrained: str
    config: dict
    stored: list[str]  # tensor names of a local checkpoint's safetensors files
    base_name: str
    base_kwargs: dict[str, Any]
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    plan_file: PrunePlan | None = None
    save_to: Path | None = None
    demo: bool = False


def parse_model_args(kwargs: dict[str, Any], simple: bool) -> LoadRequest:
    """Split and check the model_args; nothing is loaded, nothing is written."""
    for name in OWN_ARGS:
        if name in kwargs:
            reject_empty(name, kwargs[name])
    own = {k: kwargs.pop(k) for k in LoadOptions.names() if k in kwargs}
    load = LoadOptions.parse(**own)
    given = {k: kwargs.pop(k) for k in prune_option_names() if k in kwargs}
    # calibration options would be ignored with a plan (plan_cache is harmless)
    calibrating = {k: kwargs[k] for k in CALIBRATION_ARGS if k in kwargs and k != "plan_cache"}
    check_plan_alone(load.plan, given | calibrating)
    calibration = CalibrationConfig.parse(
        **{k: kwargs.pop(k) for k in CALIBRATION_ARGS if k in kwargs}
    )
    if calibration.include_path is not None:  # lmms-eval parses every YAML below it
        check_task_folder("include_path", calibration.include_path)
    plan_file = PrunePlan.load(load.plan) if load.plan is not None else None
    save_to = check_save_plan(load.save_plan)
    if calibration.cache() is not None and plan_file is None:
        calibration.cache().check_writable()
    pretrained, base_kwargs = _default_model(load.pretrained, kwargs)
    config = read_checkpoint_config(pretrained, load.revision)
    req = LoadRequest(
        load,
        PruneOptions.parse(**given),
        calibration,
        pretrained,
        config,
        check_weight_files(pretrained),
        load.base or pick_wrapper(config),
        base_kwargs,
        plan_file=plan_file,
        save_to=save_to,
        demo=load.pretrained is None,
    )
    if plan_file is None:
        _check_options_before_loading(req)
    _check_base(req, simple)
    return req


def _check_options_before_loading(req: LoadRequest) -> None:
    """The budget against the config's depth (checked again, exactly, after loading)."""
    depth = text_depth(req.config)
    if depth is not None:
        check_options(req.options, depth, req.calibration.sets)
    elif req.options.budget != 0:
        get_criterion(req.options.criterion).resolve_domains(req.calibration.sets)


def _check_base(req: LoadRequest, simple: bool) -> None:
    """Which arguments go to the base wrapper, the engine, or nowhere (refused)."""
    load, kwargs = req.load, req.base_kwargs
    if load.trust_remote_code:  # off unless the user turns it on; then the base wrapper gets it
        kwargs["trust_remote_code"] = True
    if load.engine != "hf":  # vLLM's arguments go to the engine, the rest to the base
        engines.check_engine(load.engine)
        req.base_kwargs, req.engine_kwargs = engines.split_base_and_engine_args(
            req.base_name, simple, kwargs
        )
    _check_revision(req.base_name, req.pretrained, load.revision, req.base_kwargs)
    _check_remote_code(
        req.base_name,
        simple,
        req.pretrained,
        load.revision,
        load.trust_remote_code,
        req.base_kwargs,
    )
    _check_base_kwargs(req.base_name, simple, req.base_kwargs)
    _check_device(req.base_name, simple, req.base_kwargs)


def _check_device(base: str, simple: bool, kwargs: dict) -> None:
    """A CUDA device (given, or the wrapper's default) on a machine without one would fail only
    in the first forward, after loading, with torch's words: name ``device`` now."""
    import torch

    if torch.cuda.is_available():
        return
    param = inspect.signature(wrapper_class(base, simple).__init__).parameters.get("device")
    device = kwargs.get("device", param.default if param is not None else None)
    if isinstance(device, str) and device.startswith("cuda"):
        given = "" if "device" in kwargs else f" (the default of base={base!r})"
        raise ValueError(
            f"device={device!r}{given} is not allowed: this machine has no CUDA device; "
            "pass device=cpu (with device_map=cpu)"
        )


def _default_model(pretrained: str | None, base_kwargs: dict) -> tuple[str, dict]:
    """No ``pretrained``: the packaged demo model, with the wrapper settings it needs."""
    if pretrained is not None:
        return str(pretrained), base_kwargs
    from lmms_prune_plugin.demo.model import DEMO_MODEL_DIR, check_demo_model, demo_model_args

    check_demo_model(DEMO_MODEL_DIR)
    return str(DEMO_MODEL_DIR), demo_model_args() | base_kwargs


def _check_base_kwargs(base: str, simple: bool, kwargs: dict) -> None:
    """An argument neither ours nor a named parameter of the base wrapper is a typo: name it."""
    cls = wrapper_class(base, simple)  # an unknown base: the error lists the choices
    named = named_params(cls)
    # (A wrapper that always trusts no longer has the argument here: _check_remote_code.)
    if "trust_remote_code" in kwargs and "trust_remote_code" not in named:
        raise ValueError(
            f"trust_remote_code=true is not allowed with base={base!r}: that wrapper loads the "
            "checkpoint with its own classes and takes no remote code; drop it, or choose "
            "base=hf_vlm to run the checkpoint's own code"
        )
    unknown = [k for k in kwargs if k not in named]
    if unknown:
        k = unknown[0]
        raise ValueError(
            f"{k}={kwargs[k]!r} is not an argument of pruned_vlm or of its base wrapper {base!r}"
            f"{closest(k, [*OWN_ARGS, *named])}; pruned_vlm takes {', '.join(OWN_ARGS)}; "
            f"{base} takes {', '.join(named)}"
        )


def _check_remote_code(
    base: str, simple: bool, pretrained: str, revision: str | None, trust: bool, kwargs: dict
) -> None:
    """Remote code runs only when the user says so: a wrapper that defaults to
    trust_remote_code=True (gemma3, gemma4) is given false, and one that trusts whatever it is
    given is refused for a checkpoint that ships code (``auto_map`` in its config, processor or
    tokenizer files)."""
    cls = wrapper_class(base, simple)
    takes = "trust_remote_code" in named_params(cls)
    if takes:
        kwargs["trust_remote_code"] = trust
    forced = always_trusts(base, cls)
    if forced is None:
        return
    if trust:
        if not takes:
            kwargs.pop("trust_remote_code", None)  # asked for, and the wrapper does it anyway
        return
    code = ships_code(pretrained, revision)
    if code:
        raise ValueError(
            f"base={base!r} loads with trust_remote_code=True whatever it is given ({forced}), "
            f"and this checkpoint ships its own code (auto_map in {', '.join(code)}); pass "
            f"trust_remote_code=true to run that code, or choose base={FALLBACK_WRAPPER!r}"
        )


def _check_revision(base: str, pretrained: str, revision: str | None, kwargs: dict) -> None:
    """A revision reaches the base wrapper, or is refused: a wrapper that does not load model and
    processor at it would load the default branch while the plan and results name the revision,
    and a local folder has no revisions."""
    if revision is None:
        return
    if Path(pretrained).expanduser().exists():
        raise ValueError(
            f"revision={revision!r} is not allowed with pretrained={pretrained!r}: it is a local "
            "folder, which has no revisions; drop revision"
        )
    if base not in REVISION_WRAPPERS:
        raise ValueError(
            f"revision={revision!r} is not allowed with base={base!r}: that wrapper does not load "
            "the model and its processor at a revision and would load the default one; choose "
            f"base= one of {', '.join(REVISION_WRAPPERS)}, or download that revision to a folder "
            "and pass the folder as pretrained"
        )
    kwargs["revision"] = revision

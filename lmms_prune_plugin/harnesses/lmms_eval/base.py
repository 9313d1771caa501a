"""Which lmms-eval wrapper loads a checkpoint, and building it. The base of ``pruned_vlm``."""

from __future__ import annotations

import ast
import functools
import inspect
import json
import sys
from pathlib import Path
from typing import Any

# model_type -> lmms-eval wrapper, checked on tiny checkpoints with transformers 5.24.
WRAPPERS: dict[str, str] = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "llava_onevision": "llava_hf",
    "llava": "llava_hf",
    "llava_next": "llava_hf",
    "gemma3": "gemma3",
    "gemma4": "gemma4",
    "idefics2": "idefics2",
    "internvl": "internvl_hf",
    "mllama": "llama_vision",
    "mistral3": "mistral3_vl",
    "glm4v_moe": "glm4v",  # not glm4v: that wrapper picks the MoE class unless the path says "Flash"
    "qwen3_5": "qwen3_5",
}
#: Wrappers that load the model and the processor at ``revision`` (read in their source); any
#: other would load the default branch while the plan and results name the revision.
REVISION_WRAPPERS: dict[str, str] = {
    "hf_vlm": "lmms_prune_plugin/harnesses/lmms_eval/hf_vlm.py (model and processor)",
    "idefics2": "lmms_eval/models/simple/idefics2.py:74-75 (model and processor)",
    "internvl_hf": "lmms_eval/models/chat/internvl_hf.py:100-115 (model and processor)",
    # Its config read without the revision (:93) only picks the class, checked after loading.
    "llava_hf": "lmms_eval/models/simple/llava_hf.py:97,100 (model and processor)",
}
#: lmms-eval wrappers that load with trust_remote_code=True whatever they are given (checked;
#: any other wrapper whose module, or a parent's, passes ``trust_remote_code=True`` in a call
#: or a dict counts too).
REMOTE_CODE_ALWAYS: dict[str, str] = {
    "qwen3_vl": "lmms_eval/models/simple/qwen3_vl.py:36 (AutoConfig)",
    "qwen3_5": "lmms_eval/models/simple/qwen3_vl.py:36 (AutoConfig)",
    "mistral3_vl": "lmms_eval/models/simple/mistral3_vl.py:79,89 (model and processor)",
}
FALLBACK_WRAPPER = "hf_vlm"  # ours: AutoModelForImageTextToText + the processor's chat template
# The files whose auto_map makes transformers import code from the checkpoint.
CODE_MAPS = (
    "config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "video_preprocessor_config.json",
)
# Modules whose classes are no wrapper's own code.
_NOT_WRAPPERS = ("lmms_eval.api.", "lmms_prune_plugin.", "abc", "builtins", "typing")


def read_config(pretrained: str, revision: str | None = None) -> dict:
    """The checkpoint's raw ``config.json`` as a dict: no config class, no remote code runs."""
    from transformers import PretrainedConfig

    return PretrainedConfig.get_config_dict(pretrained, revision=revision)[0]


def pick_wrapper(config: dict) -> str:
    """The lmms-eval wrapper for the checkpoint's ``model_type``, else our generic one."""
    return WRAPPERS.get(config.get("model_type", ""), FALLBACK_WRAPPER)


def wrapper_class(name: str, simple: bool) -> type:
    """lmms-eval's wrapper class ``name`` of the same kind (chat/simple) as ours; nothing loads."""
    from lmms_eval import models

    available = models.list_available_models(include_aliases=True)
    if name not in available or name == "pruned_vlm":
        choices = ", ".join(sorted(a for a in available if a != "pruned_vlm"))
        raise ValueError(f"base={name!r} is not an lmms-eval model; choose one of: {choices}")
    try:
        return models.get_model(name, force_simple=simple)
    except ImportError as err:  # a wrapper's optional dependency (phi4_multimodal: librosa)
        raise ValueError(
            f"base={name!r} cannot be used: lmms-eval's wrapper does not import ({err}); install "
            f"what it needs, or choose another base such as {FALLBACK_WRAPPER!r}"
        ) from err


@functools.cache  # a module's source does not change within a process: parse it once
def always_trusts(name: str, cls: type) -> str | None:
    """Where wrapper ``name`` passes ``trust_remote_code=True`` whatever it is given, else None:
    the known ones, then any whose module (or a parent wrapper's) passes the literal ``True`` in
    a call or a dict (a parameter default is not that: the wrapper honours what it is given)."""
    if name in REMOTE_CODE_ALWAYS:
        return REMOTE_CODE_ALWAYS[name]
    for klass in cls.__mro__:
        module = sys.modules.get(klass.__module__)
        if module is None or klass.__module__.startswith(_NOT_WRAPPERS):
            continue
        try:
            tree = ast.parse(inspect.getsource(module))
        except (OSError, TypeError, SyntaxError):
            continue
        line = _literal_trust(tree)
        if line is not None:
            return f"{klass.__module__.replace('.', '/')}.py:{line}"
    return None


def _literal_trust(tree: ast.AST) -> int | None:
    """The first line that passes ``trust_remote_code=True`` or ``{"trust_remote_code": True}``."""

    def true(node: ast.AST | None) -> bool:
        return isinstance(node, ast.Constant) and node.value is True

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if any(k.arg == "trust_remote_code" and true(k.value) for k in node.keywords):
                return node.lineno
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "trust_remote_code"
                    and true(value)
                ):
                    return node.lineno
    return None


def ships_code(pretrained: str, revision: str | None = None) -> list[str]:
    """The checkpoint's files that map a class to its own code (``auto_map``): config,
    processor, tokenizer, and, in a local folder, every other top-level ``*config.json``."""
    local = Path(pretrained).expanduser()
    if local.is_dir():
        paths = sorted(local.glob("*config.json"))
    else:
        from transformers.utils import cached_file

        paths = []
        for name in CODE_MAPS:
            found = cached_file(
                pretrained,
                name,
                revision=revision,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
            if found:
                paths.append(Path(found))
    out = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and _has_auto_map(data):
            out.append(path.name)
    return out


def _has_auto_map(data: dict) -> bool:
    # A processor config may nest its parts' configs (image_processor, video_processor).
    return "auto_map" in data or any(isinstance(v, dict) and "auto_map" in v for v in data.values())


def build_wrapper(name: str, simple: bool, **kwargs: Any):
    """Construct lmms-eval's wrapper ``name`` (this loads the model)."""
    return wrapper_class(name, simple)(**kwargs)


def unwrap(model):
    """The transformers model under accelerate / DDP wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model

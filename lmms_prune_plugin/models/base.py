"""Which lmms-eval wrapper loads a checkpoint, and building it. The base of ``pruned_vlm``."""

from __future__ import annotations

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
#: lmms-eval wrappers that load with trust_remote_code=True whatever they are given.
REMOTE_CODE_ALWAYS: dict[str, str] = {
    "qwen3_vl": "lmms_eval/models/simple/qwen3_vl.py:36 (AutoConfig)",
    "qwen3_5": "lmms_eval/models/simple/qwen3_vl.py:36 (AutoConfig)",
    "mistral3_vl": "lmms_eval/models/simple/mistral3_vl.py:79,89 (model and processor)",
}
FALLBACK_WRAPPER = "hf_vlm"  # ours: AutoModelForImageTextToText + the processor's chat template


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


def build_wrapper(name: str, simple: bool, **kwargs: Any):
    """Construct lmms-eval's wrapper ``name`` (this loads the model)."""
    return wrapper_class(name, simple)(**kwargs)


def unwrap(model):
    """The transformers model under accelerate / DDP wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model

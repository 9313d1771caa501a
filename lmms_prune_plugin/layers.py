"""Find a VLM's text-decoder layers and remove some of them. The one place that cuts a model."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

# Transformers 5.x layouts, most specific first.
KNOWN_PATHS = (
    "model.language_model.layers",  # Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA(-OneVision), Gemma3, ...
    "model.text_model.layers",  # Idefics3, SmolVLM
    "language_model.model.layers",  # older LLaVA-style layouts
    "language_model.layers",
    "text_model.layers",
    "model.layers",  # plain causal LMs
    "layers",
)
_VISION_WORDS = ("visual", "vision", "image", "audio", "projector")


@dataclass(frozen=True)
class DecoderLayers:
    """Where the decoder layers live: ``path`` from the root model, the list, and its owner."""

    path: str
    layers: nn.ModuleList
    owner: nn.Module

    def __len__(self) -> int:
        return len(self.layers)


def _get(model: nn.Module, path: str):
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def builtin_layers_path(model: nn.Module) -> str | None:
    """Known layouts first, then any text ``.layers`` ModuleList outside the vision tower."""
    for path in KNOWN_PATHS:
        if isinstance(_get(model, path), nn.ModuleList) and len(_get(model, path)) > 0:
            return path
    candidates = [
        name
        for name, module in model.named_modules()
        if name.split(".")[-1] == "layers"
        and isinstance(module, nn.ModuleList)
        and len(module) > 0
        and not any(w in name.lower() for w in _VISION_WORDS)
    ]
    # The shallowest match is the text model's own list, not a nested sub-block.
    return min(candidates, key=lambda n: (n.count("."), n)) if candidates else None


def find_decoder_layers(model: nn.Module) -> DecoderLayers:
    """Locate the text-decoder ``ModuleList``; plugins may answer for unknown architectures."""
    from .plugins import pm

    path = pm.hook.locate_decoder_layers(model=model)
    layers = _get(model, path) if path else None
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"model={type(model).__name__}: its text-decoder layers could not be found (tried "
            f"{', '.join(KNOWN_PATHS)} and any non-vision '.layers' list); implement the "
            "'locate_decoder_layers' hook for this architecture"
        )
    owner_path = path.rsplit(".", 1)[0] if "." in path else ""
    owner = _get(model, owner_path) if owner_path else model
    return DecoderLayers(path=path, layers=layers, owner=owner)


def text_configs(model: nn.Module, decoder: DecoderLayers) -> list:
    """Every distinct config object that describes the text decoder (top-level text_config and the owner's)."""
    configs = []
    root = getattr(model, "config", None)
    if root is not None:
        configs.append(root.get_text_config() if hasattr(root, "get_text_config") else root)
    owner_cfg = getattr(decoder.owner, "config", None)
    if owner_cfg is not None:
        configs.append(
            owner_cfg.get_text_config() if hasattr(owner_cfg, "get_text_config") else owner_cfg
        )
    unique = []
    for c in configs:
        if all(c is not u for u in unique):
            unique.append(c)
    return unique


def validate_removal(num_layers: int, indices: Iterable[int]) -> tuple[int, ...]:
    """Sorted unique indices, or an error naming what is wrong; nothing is touched."""
    indices = list(indices)
    bad = [
        i
        for i in indices
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers
    ]
    if bad:
        raise ValueError(
            f"layers={bad!r} are not allowed; indices must be integers in [0, {num_layers - 1}]"
        )
    if len(set(indices)) != len(indices):
        raise ValueError(f"layers={indices!r} repeats an index")
    if len(indices) >= num_layers:
        raise ValueError(
            f"layers={indices!r} would remove all {num_layers} layers; keep at least one"
        )
    return tuple(sorted(indices))


def remove_decoder_layers_(model: nn.Module, indices: Iterable[int]) -> tuple[int, ...]:
    """Remove the given text-decoder layers from ``model`` in place; returns the removed indices.

    Rebuilds the ModuleList, renumbers every ``layer_idx`` (the KV cache is indexed by it) and
    slices each per-layer list of the text config, so the result is an ordinary smaller model.
    """
    decoder = find_decoder_layers(model)
    old = len(decoder.layers)
    removed = validate_removal(old, indices)
    if not removed:
        return removed
    configs = text_configs(model, decoder)
    keep = [i for i in range(old) if i not in set(removed)]

    kept_layers = [decoder.layers[i] for i in keep]
    for new_idx, layer in enumerate(kept_layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx
    setattr(decoder.owner, decoder.path.rsplit(".", 1)[-1], nn.ModuleList(kept_layers))

    for config in configs:
        for key, value in list(vars(config).items()):
            # Per-layer lists are named after layers (layer_types, no_rope_layers, ...).
            if "layer" in key and isinstance(value, list | tuple) and len(value) == old:
                setattr(config, key, type(value)(value[i] for i in keep))
        config.num_hidden_layers = len(keep)
    return removed


@contextmanager
def decoder_layers_removed(model: nn.Module, indices: Iterable[int]):
    """Remove layers for the duration of the block, then put the original decoder back.

    Lets a sweep evaluate many plans on one loaded model: the removed modules are kept, and
    the list, every ``layer_idx`` and the text config are restored exactly.
    """
    decoder = find_decoder_layers(model)
    configs = text_configs(model, decoder)
    saved_cfg = [
        {k: v for k, v in vars(c).items() if k == "num_hidden_layers" or "layer" in k}
        for c in configs
    ]
    saved_idx = [
        (m, m.layer_idx)
        for layer in decoder.layers
        for m in layer.modules()
        if isinstance(getattr(m, "layer_idx", None), int)
    ]
    remove_decoder_layers_(model, indices)
    try:
        yield model
    finally:
        setattr(decoder.owner, decoder.path.rsplit(".", 1)[-1], decoder.layers)
        for m, idx in saved_idx:
            m.layer_idx = idx
        for c, values in zip(configs, saved_cfg, strict=True):
            for k, v in values.items():
                setattr(c, k, v)

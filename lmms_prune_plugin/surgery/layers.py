"""Find a VLM's text-decoder layers and remove some of them. The one place that cuts a model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from loguru import logger
from torch import nn

from lmms_prune_plugin.surgery import structure
from lmms_prune_plugin.surgery.structure import Edit

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
    from lmms_prune_plugin.core.plugins import pm

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


def plan_removal(model: nn.Module, indices: Iterable[int]) -> structure.Removal:
    """Every edit that removing ``indices`` makes, checked against the same class built on the
    meta device from the edited config; nothing is changed. Raises
    :class:`~.structure.RefusedRemoval` (a ``ValueError``) naming the architecture, the fields
    and the hook when they differ.

    The check's verdict depends only on the model class, its config, the removed layers, the
    layer rules and the library versions: an exact one is remembered in the process and in the
    cache folder (:func:`removal_checks_in`), so the same removal is checked once.
    """
    decoder = find_decoder_layers(model)
    old = len(decoder.layers)
    removed = validate_removal(old, indices)
    removal = structure.Removal()
    if not removed:
        return removal
    keep = [i for i in range(old) if i not in set(removed)]
    configs = text_configs(model, decoder)
    arch = _arch(model)
    from lmms_prune_plugin.core.plugins import get_layer_rules

    rules = get_layer_rules()
    for config in configs:
        structure.plan_config_edits(config, old, keep, rules, arch, removal)
    rename = _renamer(decoder.path, keep)
    check = _check_key(model, decoder.path, configs, removed, rules)
    known = _known_check(check)
    if known is not None and not _replayed(model, known, old, keep, arch, removal):
        known = None
    if known is None:
        reference = _reference(model, removal, removed)
        types = structure.model_types(*configs, getattr(model, "config", None))
        modules = dict(reference.named_modules(remove_duplicate=False))
        sites = structure.plan_module_edits(
            model, modules, rename, old, keep, rules, types, arch, removal
        )
    _renumber_edits(decoder, keep, removal)
    kept = nn.ModuleList([decoder.layers[i] for i in keep])
    attr = decoder.path.rsplit(".", 1)[-1]
    removal.edits.append(Edit(decoder.owner, attr, kept, decoder.layers, decoder.path))
    if known is None:
        _verify(model, reference, rename, removed, removal)  # raises on any difference
        _remember_check(check, {"verdict": EXACT, "sites": sites})
    return removal


def _replayed(model: nn.Module, known: dict, old: int, keep, arch: str, removal) -> bool:
    """Make a remembered check's module edits again; False (reported) if its modules are not
    this model's, so the removal is checked afresh."""
    again = structure.Removal()
    try:
        structure.replay_module_edits(model, known["sites"], old, keep, arch, again)
    except (AttributeError, TypeError) as err:
        logger.warning(
            f"lmms-prune: a remembered removal check names modules this model does not have "
            f"({err}); checking the removal again"
        )
        return False
    removal.edits.extend(again.edits)
    return True


def _renumber_edits(decoder: DecoderLayers, keep: list[int], removal: structure.Removal) -> None:
    """Every ``layer_idx`` of the kept layers set to the layer's new position."""
    for new_idx, i in enumerate(keep):
        for name, module in decoder.layers[i].named_modules():
            idx = vars(module).get("layer_idx")  # a plain attribute: no Module.__getattr__ miss
            if isinstance(idx, int) and idx != new_idx:
                what = f"{decoder.path}.{i}.{name}.layer_idx".replace("..", ".")
                removal.edits.append(Edit(module, "layer_idx", new_idx, idx, what))


def remove_decoder_layers_(model: nn.Module, indices: Iterable[int]) -> tuple[int, ...]:
    """Remove the given text-decoder layers from ``model`` in place; returns the removed indices.

    Rebuilds the ModuleList, renumbers every ``layer_idx`` (the KV cache is indexed by it) and
    carries the layer structure of the config and modules along (see :mod:`.structure`), so the
    result is an ordinary smaller model. The edits are checked first against the same class
    built on the meta device from the edited config; on any difference nothing is changed.
    """
    decoder = find_decoder_layers(model)
    removed = validate_removal(len(decoder.layers), indices)
    structure.apply(plan_removal(model, removed).edits)
    return removed


@contextmanager
def decoder_layers_removed(model: nn.Module, indices: Iterable[int]):
    """Remove layers for the duration of the block, then put the original decoder back.

    Lets a sweep evaluate many plans on one loaded model: every edit keeps what it replaced
    (the removed modules, each ``layer_idx``, config fields, weight tables), and the edits are
    undone in reverse order.
    """
    removal = plan_removal(model, indices)
    structure.apply(removal.edits)
    try:
        yield model
    finally:
        structure.undo(removal.edits)


# -- the verdict, remembered -------------------------------------------------------------------
REMOVAL_CHECK_KIND = "removal-check"
EXACT = "exact"
_DEFAULT = "default"
_CHECKED: dict[str, dict] = {}  # exact verdicts of this process, by key
_STORES: list = [_DEFAULT]  # where verdicts are kept on disk: the innermost removal_checks_in


@contextmanager
def removal_checks_in(cache) -> Iterator[None]:
    """Within the block, exact removal checks are kept in ``cache`` (a :class:`~.cache.Cache`)
    or, with None, in this process only. Outside any block: the default cache folder."""
    _STORES.append(cache)
    try:
        yield
    finally:
        _STORES.pop()


def forget_removal_checks() -> None:
    """Forget the verdicts this process remembers (entries on disk stay)."""
    _CHECKED.clear()


def _store():
    store = _STORES[-1]
    if store is _DEFAULT:
        from lmms_prune_plugin.core.cache import Cache

        return Cache()
    return store


def _config_content(config) -> object:
    if not hasattr(config, "to_dict"):
        return repr(config)
    data = config.to_dict()
    data.pop("_name_or_path", None)  # where it was loaded from: not what it builds
    return data


def _check_key(model: nn.Module, path: str, configs: list, removed, rules) -> str:
    """What the check's verdict depends on: class, configs, removed layers, where the layers
    are, the layer rules and the versions of torch, transformers and this package."""
    import torch
    import transformers

    from lmms_prune_plugin.core.cache import key

    cls = type(model)
    return key(
        kind=REMOVAL_CHECK_KIND,
        cls=f"{cls.__module__}.{cls.__qualname__}",
        path=path,
        config=_config_content(getattr(model, "config", None)),
        text_configs=[_config_content(c) for c in configs],
        removed=list(removed),
        rules=[repr(r) for r in rules],
        torch=torch.__version__,
        transformers=transformers.__version__,
    )


def _well_formed(entry: dict) -> bool:
    sites = entry.get("sites")
    return (
        entry.get("verdict") == EXACT
        and isinstance(sites, dict)
        and isinstance(sites.get("attributes"), dict)
        and all(isinstance(a, dict) for a in sites["attributes"].values())
        and isinstance(sites.get("tables"), list)
        and all(isinstance(t, str) for t in sites["tables"])
    )


def _known_check(k: str) -> dict | None:
    """A remembered exact verdict for key ``k``: from this process, else from the cache folder
    (an entry that is not one is reported and the removal checked again)."""
    if k in _CHECKED:
        return _CHECKED[k]
    store = _store()
    entry = store.get(REMOVAL_CHECK_KIND, k) if store is not None else None
    if entry is None:
        return None
    if not _well_formed(entry):
        logger.warning(
            f"lmms-prune: cache entry {store.path(REMOVAL_CHECK_KIND, k)} is not an exact "
            "removal check; checking the removal again"
        )
        return None
    _CHECKED[k] = entry
    return entry


def _remember_check(k: str, entry: dict) -> None:
    _CHECKED[k] = entry
    store = _store()
    if store is None:
        return
    try:
        store.put(REMOVAL_CHECK_KIND, k, entry)
    except (OSError, TypeError, ValueError) as err:  # read-only folder, a value JSON cannot hold
        logger.debug(f"lmms-prune: removal check not written to the cache ({err})")


# -- verification ----------------------------------------------------------------------------
_PLAIN = (int, float, str, bool, type(None))


def _arch(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    return f"{type(model).__name__} (model_type={getattr(cfg, 'model_type', None)!r})"


def _plain_attrs(module: nn.Module) -> dict[str, object]:
    """Public attributes of plain values: what a module copied from the config at init."""
    out = {}
    for k, v in vars(module).items():
        if k.startswith("_") or k == "training":
            continue
        if isinstance(v, _PLAIN) or (
            isinstance(v, list | tuple) and all(isinstance(x, _PLAIN) for x in v)
        ):
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


_ADAPTER_PARTS = {
    "lora_A",
    "lora_B",
    "lora_embedding_A",
    "lora_embedding_B",
    "lora_dropout",
    "lora_magnitude_vector",
}


def _adapter_part(name: str, module: nn.Module) -> bool:
    """PEFT LoRA adapters attached for healing are merged away before a model is saved: the
    comparison sees the base layers they wrap, under the base layers' names."""
    if _ADAPTER_PARTS & set(name.split(".")):
        return True
    return hasattr(module, "base_layer") and hasattr(module, "lora_A")


def _snapshot(model: nn.Module, rename=lambda n: n, edited=None) -> dict[str, dict]:
    """Module types and plain attributes, parameter and buffer shapes, by (renamed) name."""
    edited = edited or {}
    modules, attrs, tensors = {}, {}, {}
    for name, module in model.named_modules(remove_duplicate=False):
        if _adapter_part(name, module):
            continue
        new = rename(name.replace(".base_layer", ""))
        if new is None:
            continue
        modules[new] = type(module).__name__
        values = _plain_attrs(module)
        for attr, value in edited.get(id(module), {}).items():
            values[attr] = value
        attrs[new] = values
        for pname, t in [*module._parameters.items(), *module._buffers.items()]:
            if t is not None:
                shape = edited.get(id(module), {}).get(pname, t)
                shape = tuple(shape.shape) if hasattr(shape, "shape") else shape
                tensors[f"{new}.{pname}" if new else pname] = shape
    return {"modules": modules, "attributes": attrs, "tensors": tensors}


def _renamer(path: str, keep):
    """Module/parameter name now -> name after keeping ``keep`` (None: removed)."""
    prefix = path + "."
    new_of = {old: new for new, old in enumerate(keep)}

    def rename(name: str) -> str | None:
        if not name.startswith(prefix):
            return name
        head, _, rest = name[len(prefix) :].partition(".")
        if not head.isdigit():
            return name
        if int(head) not in new_of:
            return None
        return f"{prefix}{new_of[int(head)]}" + (f".{rest}" if rest else "")

    return rename


def _reference(model: nn.Module, removal, removed) -> nn.Module:
    """``type(model)`` built on the meta device (no memory) from the edited config."""
    import copy

    import torch
    from transformers.initialization import no_init_weights

    arch = _arch(model)
    if not hasattr(type(model), "_from_config") or getattr(model, "config", None) is None:
        raise structure.RefusedRemoval(
            f"{arch} is not a transformers model built from a config, so the removal cannot be "
            "checked against a rebuilt model; refusing rather than risk a silent difference"
        )
    cfg = copy.deepcopy(model.config)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for edit in removal.edits:
        if isinstance(edit.what, str) and edit.what.startswith("config."):
            setattr(text, edit.attr, copy.deepcopy(edit.new))
    try:
        # Shapes, names and attributes are compared, never values: skip weight initialisation
        # (half the build time of a large model, even on the meta device).
        with torch.device("meta"), no_init_weights():
            return type(model)._from_config(cfg)
    except Exception as err:  # any failure to build is a refusal, never a silent pass
        raise structure.RefusedRemoval(
            f"{arch}: removing layers {list(removed)} gives a config that does not build the "
            f"model ({type(err).__name__}: {err}). {_fields_note(model, removal)}"
        ) from err


def _verify(model: nn.Module, reference: nn.Module, rename, removed, removal) -> None:
    """Compare what ``model`` will hold after ``removal`` with ``reference``; refuse on any
    difference in module types, plain module attributes, parameter or buffer names and shapes."""
    edited: dict[int, dict] = {}
    for e in removal.edits:
        if isinstance(e.target, nn.Module):
            edited.setdefault(id(e.target), {})[e.attr] = (
                e.new if not isinstance(e.new, list | tuple) else list(e.new)
            )
    problems = _differences(_snapshot(model, rename, edited), _snapshot(reference))
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise structure.RefusedRemoval(
            f"{_arch(model)}: removing layers {list(removed)} would give a model that differs "
            "from the same class built from the edited config, so a saved copy would reload as "
            f"another model: {'; '.join(problems[:4])}{more}. {_fields_note(model, removal)}"
        )


def _fields_note(model: nn.Module, removal) -> str:
    return (
        f"Config fields the rules changed: {_fields(removal)}; layer fields no rule handles: "
        f"{_unhandled(model, removal)}. Nothing was changed; implement the "
        "'register_layer_rules' hook (a LayerRule) for this architecture"
    )


def _fields(removal) -> str:
    return ", ".join(f"{k} ({r})" for k, r in removal.config_fields.items()) or "none"


def _unhandled(model: nn.Module, removal) -> str:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    cfg = cfg or model.config
    n = getattr(cfg, "num_hidden_layers", None)
    names = []
    for k, v in vars(cfg).items():
        if k.startswith("_") or k in removal.handled or k == "num_hidden_layers":
            continue
        if "layer" in k or (
            isinstance(v, list | tuple)
            and v
            and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
            and isinstance(n, int)
            and max(v) < n
        ):
            names.append(f"{k}={v!r}")
    return ", ".join(names) or "none"


def _differences(expected: dict, got: dict) -> list[str]:
    out = []
    for name in sorted(set(expected["tensors"]) | set(got["tensors"])):
        a, b = expected["tensors"].get(name), got["tensors"].get(name)
        if a is None:
            out.append(f"a reload would add {name} {list(b)}")
        elif b is None:
            out.append(f"a reload would drop {name} {list(a)}")
        elif a != b:
            out.append(f"{name} is {list(a)} but a reload builds {list(b)}")
    for name in sorted(set(expected["modules"]) | set(got["modules"])):
        a, b = expected["modules"].get(name), got["modules"].get(name)
        if a != b:
            out.append(f"module {name or '(root)'} is {a} but a reload builds {b}")
        elif a is not None:
            ea, ga = expected["attributes"][name], got["attributes"][name]
            for attr in sorted(set(ea) & set(ga)):
                if ea[attr] != ga[attr]:
                    out.append(f"{name}.{attr} is {ea[attr]!r} but a reload builds {ga[attr]!r}")
    return out

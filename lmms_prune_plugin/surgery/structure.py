"""How a text decoder's layer structure is written down, and how it follows a layer removal.

Architectures record which layer is which in many ways: per-layer value lists (``layer_types``,
Gemma3n's ``intermediate_size``), lists of layer indices (Mllama ``cross_attention_layers``,
Llama4 ``moe_layers``), integers that mark a prefix, suffix or interval of the stack
(GLM-4V-MoE ``first_k_dense_replace``, Gemma3n ``num_kv_shared_layers``, interleave steps),
dicts keyed by layer index (Gemma4 ``per_layer_config``), module attributes copied from the
config at init, and weight tables with one slice per layer (Gemma3n/Gemma4 per-layer inputs).

Each :class:`LayerRule` says which fields or modules carry one of these, and is registered through
the ``register_layer_rules`` hook (the built-ins exactly like a plugin's). :func:`plan_edits`
turns the rules into a list of :class:`Edit` s without touching anything; ``layers.py`` checks
them against a model built from the edited config before applying them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: What a rule's fields hold, and how they follow the removal.
RULE_KINDS: dict[str, str] = {
    "values": "list with one value per layer: the kept layers' values",
    "indices": "list of layer indices: renumbered, removed indices dropped",
    "prefix": "int k, the first k layers are special: k = kept layers among them",
    "suffix": "int n, the last n layers are special: n = kept layers among them",
    "interval": "int s, layers i with (i+1) % s == 0 are special: recomputed if the kept ones fit",
    "keyed": "dict keyed by layer index: keys renumbered, removed ones dropped",
    "attribute": "module attribute copied from the config field of that name at init: updated",
    "table": "module whose weight holds one slice per layer (Embedding: columns, Linear: rows)",
}


@dataclass(frozen=True)
class LayerRule:
    """One way layer structure is recorded.

    ``fields``: config field names (``fnmatch`` patterns allowed) for the config kinds, module
    attribute names for ``attribute``, module names (last dotted part) for ``table``.
    ``model_types``: text or top-level ``model_type`` values it applies to; empty = every model.
    ``superseded_by`` (``interval`` only): a config field that, when set, overrides the
    interval, so a kept set that no longer fits it is harmless.
    """

    name: str
    kind: str
    fields: tuple[str, ...]
    model_types: tuple[str, ...] = ()
    superseded_by: str | None = None
    description: str = ""

    def __post_init__(self):
        if self.kind not in RULE_KINDS:
            raise ValueError(
                f"LayerRule {self.name!r}: kind={self.kind!r} is not allowed; choose one of: "
                f"{', '.join(RULE_KINDS)}"
            )

    @property
    def specific(self) -> bool:
        return not any(ch in f for f in self.fields for ch in "*?[")

    def applies_to(self, model_types: set[str]) -> bool:
        return not self.model_types or bool(model_types & set(self.model_types))

    def matches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, f) for f in self.fields)


BUILTIN_LAYER_RULES: tuple[LayerRule, ...] = (
    LayerRule(
        "layer_indices",
        "indices",
        ("cross_attention_layers", "moe_layers", "mlp_only_layers", "full_attn_idxs"),
        description="Mllama cross-attention, Llama4 MoE, Qwen3-(VL-)MoE dense, LFM2 attention",
    ),
    LayerRule(
        "dense_prefix",
        "prefix",
        ("first_k_dense_replace", "max_window_layers"),
        description="GLM-4(V)-MoE / DeepSeek dense layers first; Qwen2 sliding-window prefix",
    ),
    LayerRule(
        "kv_shared_suffix",
        "suffix",
        ("num_kv_shared_layers",),
        description="Gemma3n/Gemma4: the last n layers reuse the KV cache of earlier ones",
    ),
    LayerRule(
        "moe_interval",
        "interval",
        ("interleave_moe_layer_step",),
        superseded_by="moe_layers",
        description="Llama4: every s-th layer is MoE unless moe_layers lists them",
    ),
    LayerRule(
        "no_rope_interval",
        "interval",
        ("no_rope_layer_interval",),
        superseded_by="no_rope_layers",
        description="Llama4: every s-th layer has no RoPE unless no_rope_layers lists them",
    ),
    LayerRule(
        "sparse_interval",
        "interval",
        ("decoder_sparse_step",),
        description="Qwen-MoE: every s-th layer is sparse",
    ),
    LayerRule(
        "layer_dicts",
        "keyed",
        ("per_layer_config",),
        description="Gemma4: per-layer overrides keyed by layer index",
    ),
    LayerRule(
        "per_layer_values",
        "values",
        ("intermediate_size", "activation_sparsity_pattern"),
        description="Gemma3n: lists with one value per layer whose names do not say so",
    ),
    LayerRule(
        "layer_lists",
        "values",
        ("*layer*",),
        description="any list named after layers with one entry per layer (layer_types, ...)",
    ),
    LayerRule(
        "init_copies",
        "attribute",
        ("cross_attention_layers", "first_kv_shared_layer_idx"),
        description="Mllama's copy of cross_attention_layers, Gemma4's first KV-shared layer",
    ),
    LayerRule(
        "per_layer_tables",
        "table",
        ("embed_tokens_per_layer", "per_layer_model_projection"),
        description="Gemma3n/Gemma4 per-layer input embeddings and projection",
    ),
)


@dataclass
class Edit:
    """``setattr(target, attr, new)``; ``old`` is what :func:`undo` puts back."""

    target: Any
    attr: str
    new: Any
    old: Any
    what: str  # for error messages: "text_config.moe_layers", "model.language_model.layers"


@dataclass
class Removal:
    """The edits of one removal, with the config fields each rule changed."""

    edits: list[Edit] = field(default_factory=list)
    config_fields: dict[str, str] = field(default_factory=dict)  # field -> rule name
    handled: set[str] = field(default_factory=set)  # config fields some rule answers for


def apply(edits: Sequence[Edit]) -> None:
    """Apply edits in order."""
    for e in edits:
        setattr(e.target, e.attr, e.new)


def undo(edits: Sequence[Edit]) -> None:
    """Put back what :func:`apply` changed, in reverse order."""
    for e in reversed(edits):
        setattr(e.target, e.attr, e.old)


class RefusedRemoval(ValueError):
    """A removal the rules cannot express; nothing was changed."""


def model_types(*configs) -> set[str]:
    """The ``model_type`` values of the given configs (None skipped)."""
    return {getattr(c, "model_type", "") for c in configs if c is not None} - {""}


def _kept_map(keep: Sequence[int]) -> dict[int, int]:
    return {old: new for new, old in enumerate(keep)}


def _interval_members(step: int, n: int) -> set[int]:
    return {i for i in range(n) if (i + 1) % step == 0}


def _config_value(rule: LayerRule, key: str, value, num_layers: int, keep: Sequence[int], arch):
    """The value of config field ``key`` after keeping ``keep``, or ``value`` if unchanged."""
    new_of = _kept_map(keep)
    n = len(keep)
    if rule.kind == "values":
        if isinstance(value, list | tuple) and len(value) == num_layers:
            return type(value)(value[i] for i in keep)
        return value
    if rule.kind == "indices":
        if not isinstance(value, list | tuple):
            return value
        return type(value)(new_of[i] for i in value if i in new_of)
    if rule.kind == "keyed":
        if not isinstance(value, dict):
            return value
        out = {}
        for k, v in value.items():
            idx = int(k)
            if idx in new_of:
                out[type(k)(new_of[idx])] = v
        return out
    if not isinstance(value, int) or isinstance(value, bool):
        return value
    if rule.kind == "prefix":
        return sum(1 for i in keep if i < value)
    if rule.kind == "suffix":
        return sum(1 for i in keep if i >= num_layers - value)
    # interval
    if value <= 0:
        return value
    members = {new_of[i] for i in _interval_members(value, num_layers) if i in new_of}
    if _interval_members(value, n) == members:
        return value
    for step in range(1, n + 2):
        if _interval_members(step, n) == members:
            return step
    raise RefusedRemoval(
        f"{arch}: config field {key}={value} marks layers "
        f"{sorted(_interval_members(value, num_layers))}; the kept ones {sorted(members)} "
        f"(new numbering) fit no interval, so a reload would build other layers. Remove other "
        "layers, or implement the 'register_layer_rules' hook for this architecture"
    )


def _config_fields(config) -> list[tuple[str, Any]]:
    """Public config fields, plus ``per_layer_config`` of transformers' heterogeneous configs
    (a property over ``_heterogeneity_spec``, as a plain ``{layer: overrides}`` dict)."""
    import copy

    fields = [(k, v) for k, v in vars(config).items() if not k.startswith("_")]
    fields = [(k, v) for k, v in fields if k != "num_hidden_layers"]
    spec = vars(config).get("_heterogeneity_spec")
    if spec is not None:
        fields.append(("per_layer_config", copy.deepcopy(dict(spec.per_layer_overrides))))
    return fields


def plan_config_edits(
    config, num_layers: int, keep: Sequence[int], rules: Sequence[LayerRule], arch: str, removal
) -> None:
    """Add to ``removal`` the edits of one text config; nothing is changed."""
    types = model_types(config)
    for key, value in _config_fields(config):
        for rule in rules:
            if rule.kind in ("attribute", "table") or not rule.applies_to(types):
                continue
            if not rule.matches(key):
                continue
            if rule.kind != "values" or (
                isinstance(value, list | tuple) and len(value) == num_layers
            ):
                removal.handled.add(key)
            if rule.kind == "interval" and rule.superseded_by:
                if getattr(config, rule.superseded_by, None) is not None:
                    try:
                        new = _config_value(rule, key, value, num_layers, keep, arch)
                    except RefusedRemoval:
                        break  # overridden by the explicit list: the stale step is never read
                else:
                    new = _config_value(rule, key, value, num_layers, keep, arch)
            else:
                new = _config_value(rule, key, value, num_layers, keep, arch)
            if new is not value and new != value:
                removal.edits.append(Edit(config, key, new, value, f"config.{key}"))
                removal.config_fields[key] = rule.name
            break
    removal.edits.append(
        Edit(config, "num_hidden_layers", len(keep), num_layers, "config.num_hidden_layers")
    )


def plan_module_edits(
    root: nn.Module,
    reference: dict[str, nn.Module],
    rename,
    num_layers: int,
    keep: Sequence[int],
    rules: Sequence[LayerRule],
    types: set[str],
    arch: str,
    removal: Removal,
) -> dict[str, Any]:
    """Add to ``removal`` the module attribute and weight table edits under ``root``.

    ``reference``: the modules, by name, of the same class built from the edited config;
    ``rename`` maps a module name of ``root`` to its name after the removal (None: removed).
    Returns where the edits were made (:func:`replay_module_edits` makes them again without a
    reference): ``{"attributes": {module name: {attr: new value}}, "tables": [module names]}``.
    """
    attr_rules = [r for r in rules if r.kind == "attribute" and r.applies_to(types)]
    table_rules = [r for r in rules if r.kind == "table" and r.applies_to(types)]
    sites: dict[str, Any] = {"attributes": {}, "tables": []}
    for name, module in root.named_modules():
        new_name = rename(name)
        if new_name is None:
            continue
        ref = reference.get(new_name)
        for rule in attr_rules:
            for attr in rule.fields:
                if attr in vars(module) and ref is not None and attr in vars(ref):
                    old, new = getattr(module, attr), getattr(ref, attr)
                    if new != old:
                        removal.edits.append(Edit(module, attr, new, old, f"{name}.{attr}"))
                        sites["attributes"].setdefault(name, {})[attr] = new
        last = name.rsplit(".", 1)[-1]
        if any(rule.matches(last) for rule in table_rules):
            removal.edits.extend(_table_edits(name, module, num_layers, keep, arch))
            sites["tables"].append(name)
    return sites


def replay_module_edits(
    root: nn.Module,
    sites: dict[str, Any],
    num_layers: int,
    keep: Sequence[int],
    arch: str,
    removal: Removal,
) -> None:
    """The edits :func:`plan_module_edits` made at ``sites``, made again on a model of the same
    class and config (a verified removal remembered): only those modules are visited."""
    for name, attrs in sites["attributes"].items():
        module = root.get_submodule(name)
        for attr, new in attrs.items():
            old = getattr(module, attr)
            new = type(old)(new) if isinstance(old, tuple) and isinstance(new, list) else new
            if new != old:
                removal.edits.append(Edit(module, attr, new, old, f"{name}.{attr}"))
    for name in sites["tables"]:
        removal.edits.extend(_table_edits(name, root.get_submodule(name), num_layers, keep, arch))


def _table_edits(name: str, module: nn.Module, num_layers: int, keep, arch) -> list[Edit]:
    """Slice a weight table with one block per layer along its layer axis."""
    if isinstance(module, nn.Embedding):
        axis, size_attr = 1, "embedding_dim"
    elif isinstance(module, nn.Linear):
        axis, size_attr = 0, "out_features"
    else:
        raise RefusedRemoval(
            f"{arch}: per-layer table {name} is a {type(module).__name__}, not an Embedding or "
            "Linear; implement the 'register_layer_rules' hook for this architecture"
        )
    size = getattr(module, size_attr)
    if size % num_layers:
        raise RefusedRemoval(
            f"{arch}: per-layer table {name} has {size_attr}={size}, not a multiple of "
            f"{num_layers} layers; implement the 'register_layer_rules' hook for this architecture"
        )
    block = size // num_layers
    index = torch.tensor([i * block + j for i in keep for j in range(block)], dtype=torch.long)
    edits = []
    for pname, param in list(module.named_parameters(recurse=False)):
        if param.dim() <= axis or param.shape[axis] != size:
            continue
        new = nn.Parameter(
            param.detach().index_select(axis, index.to(param.device)),
            requires_grad=param.requires_grad,
        )
        edits.append(Edit(module, pname, new, param, f"{name}.{pname}"))
    edits.append(Edit(module, size_attr, block * len(keep), size, f"{name}.{size_attr}"))
    return edits

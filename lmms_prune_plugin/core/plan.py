"""PrunePlan: what was removed from which model and why, as JSON; applying it checks the model first."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lmms_prune_plugin import __version__
from lmms_prune_plugin.core.files import atomic_write_text
from lmms_prune_plugin.surgery.layers import (
    find_decoder_layers,
    remove_decoder_layers_,
    validate_removal,
)

PLAN_FORMAT = 1


@dataclass(frozen=True)
class ModelIdentity:
    """Enough to tell whether a plan belongs to a loaded model."""

    name_or_path: str
    architecture: str
    model_type: str
    num_layers: int
    layers_path: str
    revision: str | None = None
    fingerprint: str = ""  # of the checkpoint's weights (cache.weights_fingerprint); "" if unknown

    @classmethod
    def of(
        cls,
        model: nn.Module,
        name_or_path: str | None = None,
        revision: str | None = None,
        fingerprint: str = "",
    ) -> ModelIdentity:
        cfg = getattr(model, "config", None)
        decoder = find_decoder_layers(model)
        return cls(
            name_or_path=str(
                name_or_path or getattr(cfg, "_name_or_path", "") or type(model).__name__
            ),
            architecture=type(model).__name__,
            model_type=str(getattr(cfg, "model_type", "")),
            num_layers=len(decoder),
            layers_path=decoder.path,
            revision=revision,
            fingerprint=fingerprint,
        )

    def mismatch(self, other: ModelIdentity) -> list[str]:
        """Structural differences that make a plan unusable on ``other``, whatever the user says."""
        keys = ("architecture", "model_type", "num_layers", "layers_path")
        return [
            f"{k}: plan has {getattr(self, k)!r}, model has {getattr(other, k)!r}"
            for k in keys
            if getattr(self, k) != getattr(other, k)
        ]

    def checkpoint_mismatch(self, other: ModelIdentity) -> list[str]:
        """Whether ``other`` is another checkpoint: by weights fingerprint when both have one (a
        local copy of the same weights matches), else by name and revision."""
        if self.fingerprint and other.fingerprint:
            if self.fingerprint != other.fingerprint:
                return [
                    f"weights: plan is for {self.name_or_path!r} (fingerprint {self.fingerprint[:12]}), "
                    f"model is {other.name_or_path!r} (fingerprint {other.fingerprint[:12]})"
                ]
            return []
        return [
            f"{k}: plan has {getattr(self, k)!r}, model has {getattr(other, k)!r}"
            for k in ("name_or_path", "revision")
            if getattr(self, k) != getattr(other, k)
        ]


@dataclass(frozen=True)
class CalibrationIdentity:
    """Which data the scores came from: the harness that built the model inputs, set names per
    domain, sample counts and a content hash."""

    sets: Mapping[str, str] = field(default_factory=dict)
    samples: Mapping[str, int] = field(default_factory=dict)
    content_hash: str = ""
    harness: str = "lmms-eval"  # plans written before other harnesses were lmms-eval's


@dataclass(frozen=True)
class PrunePlan:
    """A complete, reproducible pruning decision."""

    model: ModelIdentity
    criterion: str
    criterion_options: Mapping[str, Any]
    strategy: str
    strategy_options: Mapping[str, Any]
    budget: int | float
    scores: tuple[float, ...]
    removed: tuple[int, ...]
    calibration: CalibrationIdentity = field(default_factory=CalibrationIdentity)
    token_selection: str = "all"
    package_version: str = __version__
    format: int = PLAN_FORMAT

    def __post_init__(self) -> None:
        from lmms_prune_plugin.core.strategies import resolve_budget

        n = self.model.num_layers
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"model.num_layers={n!r} is not a layer count")
        validate_removal(n, list(self.removed))
        if list(self.removed) != sorted(self.removed):
            raise ValueError(f"removed={list(self.removed)!r} is not sorted")
        k = resolve_budget(self.budget, n)
        if len(self.removed) != k:
            raise ValueError(
                f"removed={list(self.removed)!r} holds {len(self.removed)} layers, but budget="
                f"{self.budget!r} removes {k} of {n}"
            )
        if self.scores and len(self.scores) != n:
            raise ValueError(f"plan has {len(self.scores)} scores for {n} layers")
        bad = [
            x
            for x in self.scores
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x)
        ]
        if bad:
            raise ValueError(f"scores must be finite numbers; got {bad[:3]!r}")

    def problem_for(self, model: ModelIdentity, options) -> str | None:
        """Why this (cached) plan does not answer ``options`` on ``model``, or None."""
        problems = self.model.mismatch(model) + self.model.checkpoint_mismatch(model)
        want = (options.criterion, options.strategy_name, options.budget)
        have = (self.criterion, self.strategy, self.budget)
        if have != want:
            problems.append(f"it is for criterion/strategy/budget {have}, not {want}")
        return "; ".join(problems) or None

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping) -> PrunePlan:
        try:
            if data.get("format") != PLAN_FORMAT:
                raise ValueError(
                    f"format={data.get('format')!r}, this version reads format {PLAN_FORMAT}"
                )
            return cls(
                model=ModelIdentity(**data["model"]),
                criterion=_typed(data, "criterion", str),
                criterion_options=_typed(data, "criterion_options", dict),
                strategy=_typed(data, "strategy", str),
                strategy_options=_typed(data, "strategy_options", dict),
                budget=_typed(data, "budget", int | float),
                scores=tuple(_typed(data, "scores", list)),
                removed=tuple(_typed(data, "removed", list)),
                calibration=CalibrationIdentity(**data.get("calibration", {})),
                token_selection=str(data.get("token_selection", "all")),
                package_version=str(data.get("package_version", "")),
                format=int(data["format"]),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"not a valid prune plan: {err!r}") from err

    @classmethod
    def from_json(cls, text: str) -> PrunePlan:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: readers never see a half-written plan."""
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> PrunePlan:
        """Read a plan file; a missing, corrupt or foreign file gives an error naming it."""
        from lmms_prune_plugin.core.args import read_small_file

        path = Path(path)
        text = read_small_file(
            "plan", path, "prune plan"
        )  # a folder, /dev/zero or a huge file: refused
        try:
            return cls.from_json(text)
        except (json.JSONDecodeError, ValueError, RecursionError) as err:
            raise ValueError(f"plan={str(path)!r} is not a valid prune plan: {err}") from err

    def check_model(
        self, model: nn.Module, identity: ModelIdentity | None = None, strict: bool = True
    ) -> None:
        """Raise if ``model`` is not the model this plan was made for. Touches nothing.

        A different architecture or layer layout always refuses. Which checkpoint ``model`` was
        loaded from only the caller knows: given its ``identity``, another checkpoint of the same
        layout refuses too, unless ``strict`` is False.
        """
        known = identity is not None
        identity = identity or ModelIdentity.of(model)
        problems = self.model.mismatch(identity)
        if strict and known:
            problems += self.model.checkpoint_mismatch(identity)
        if problems:
            hint = (
                ""
                if not strict or self.model.mismatch(identity)
                else "; pass plan_strict=false to apply it anyway"
            )
            raise ValueError(
                f"plan for {self.model.name_or_path!r} does not fit this model ({'; '.join(problems)}){hint}"
            )

    def apply_(
        self, model: nn.Module, identity: ModelIdentity | None = None, strict: bool = True
    ) -> nn.Module:
        """Check the model, then remove the planned layers in place."""
        self.check_model(model, identity, strict)
        remove_decoder_layers_(model, self.removed)
        return model


def _typed(data: Mapping, name: str, kind) -> Any:
    """``data[name]`` if it is of ``kind`` (bools are not numbers), else a ValueError naming it."""
    value = data[name]
    if isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{name}={value!r} is not allowed in a plan")
    if not isinstance(value, kind):
        raise ValueError(f"{name}={value!r} is not allowed in a plan")
    return value


def content_hash(items: Sequence[Any]) -> str:
    """Stable sha256 of JSON-able items (documents, prompts, image bytes as hex)."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item, sort_keys=True, default=str).encode())
    return h.hexdigest()

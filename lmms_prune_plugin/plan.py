"""PrunePlan: what was removed from which model and why, as JSON; applying it checks the model first."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from . import __version__
from .layers import find_decoder_layers, remove_decoder_layers_, validate_removal

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

    @classmethod
    def of(
        cls, model: nn.Module, name_or_path: str | None = None, revision: str | None = None
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
        )

    def mismatch(self, other: ModelIdentity) -> list[str]:
        """Fields that differ in a way that makes a plan unusable (the name may differ: local copies)."""
        keys = ("architecture", "model_type", "num_layers", "layers_path")
        return [
            f"{k}: plan has {getattr(self, k)!r}, model has {getattr(other, k)!r}"
            for k in keys
            if getattr(self, k) != getattr(other, k)
        ]


@dataclass(frozen=True)
class CalibrationIdentity:
    """Which data the scores came from: set names per domain, sample counts and a content hash."""

    sets: Mapping[str, str] = field(default_factory=dict)
    samples: Mapping[str, int] = field(default_factory=dict)
    content_hash: str = ""


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
        validate_removal(self.model.num_layers, list(self.removed))
        if self.scores and len(self.scores) != self.model.num_layers:
            raise ValueError(
                f"plan has {len(self.scores)} scores for {self.model.num_layers} layers"
            )

    @property
    def kept(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.model.num_layers) if i not in set(self.removed))

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
                criterion=str(data["criterion"]),
                criterion_options=dict(data["criterion_options"]),
                strategy=str(data["strategy"]),
                strategy_options=dict(data["strategy_options"]),
                budget=data["budget"],
                scores=tuple(float(x) for x in data["scores"]),
                removed=tuple(int(i) for i in data["removed"]),
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
        path = Path(path)
        try:
            return cls.from_json(path.read_text())
        except FileNotFoundError as err:
            raise ValueError(f"plan={str(path)!r}: no such file") from err
        except (json.JSONDecodeError, ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"plan={str(path)!r} is not a valid prune plan: {err}") from err

    def check_model(self, model: nn.Module) -> None:
        """Raise if ``model`` is not the model this plan was made for. Touches nothing."""
        problems = self.model.mismatch(ModelIdentity.of(model))
        if problems:
            raise ValueError(
                f"plan for {self.model.name_or_path!r} does not fit this model ({'; '.join(problems)})"
            )

    def apply_(self, model: nn.Module) -> nn.Module:
        """Check the model, then remove the planned layers in place."""
        self.check_model(model)
        remove_decoder_layers_(model, self.removed)
        return model


def content_hash(items: Sequence[Any]) -> str:
    """Stable sha256 of JSON-able items (documents, prompts, image bytes as hex)."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item, sort_keys=True, default=str).encode())
    return h.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

"""Write a pruned checkpoint that plain transformers (and lmms-eval's own wrappers) load."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .plan import PrunePlan


def export_pruned(
    pretrained: str,
    plan: PrunePlan,
    out: str | Path,
    force: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Load ``pretrained`` in its stored dtype, apply ``plan``, save weights, config, processor,
    ``plan.json`` and a model card to ``out``.

    The folder is written next to ``out`` and moved into place at the end, so a failure leaves
    whatever was there intact. An ``out`` holding anything but this same export needs ``force``.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = Path(out)
    _check_target(out, plan, force)
    model = AutoModelForImageTextToText.from_pretrained(
        pretrained, dtype="auto", revision=revision, trust_remote_code=trust_remote_code
    )
    plan.apply_(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor = AutoProcessor.from_pretrained(
            pretrained, revision=revision, trust_remote_code=trust_remote_code
        )
        processor.save_pretrained(tmp)
        plan.save(tmp / "plan.json")
        (tmp / "README.md").write_text(model_card(plan, pretrained))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_target(out: Path, plan: PrunePlan, force: bool) -> None:
    if force or not out.exists() or not any(out.iterdir()):
        return
    existing = out / "plan.json"
    if existing.exists():
        try:
            same = json.loads(existing.read_text()) == plan.to_dict()
        except (OSError, json.JSONDecodeError):
            same = False
        if same:
            return
        raise ValueError(
            f"out={str(out)!r} already holds a different export (its plan.json differs); pass --force to replace it"
        )
    raise ValueError(
        f"out={str(out)!r} is not empty and holds no export of ours; pass --force to replace it"
    )


def model_card(plan: PrunePlan, pretrained: str) -> str:
    """A short Markdown model card: base model, removed layers, criterion."""
    kept = plan.model.num_layers - len(plan.removed)
    cal = plan.calibration
    sets = (
        ", ".join(f"{d}: {t} ({cal.samples.get(d, '?')} samples)" for d, t in cal.sets.items())
        or "none"
    )
    return f"""---
base_model: {pretrained}
tags: [lmms-prune, layer-pruning, vision-language-model]
---
# {Path(str(pretrained)).name} pruned to {kept} of {plan.model.num_layers} decoder layers

Made with lmms-prune {plan.package_version} from `{pretrained}` ({plan.model.architecture}).

| | |
|---|---|
| removed text-decoder layers | {list(plan.removed)} |
| criterion | {plan.criterion} {json.dumps(dict(plan.criterion_options))} |
| strategy | {plan.strategy} {json.dumps(dict(plan.strategy_options))} |
| budget | {plan.budget} |
| calibration | {sets} |
| tokens measured | {plan.token_selection} |

It is an ordinary `{plan.model.architecture}` checkpoint: `num_hidden_layers` and every per-layer
list of the text config were updated, so `AutoModelForImageTextToText.from_pretrained` (and
anything that reads the config) loads it without this package. `plan.json` holds the full plan,
including every layer's score.
"""

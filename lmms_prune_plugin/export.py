"""Write a pruned checkpoint that plain transformers (and lmms-eval's own wrappers) load."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .plan import PrunePlan

MARKER = ".lmms-prune-export"  # in every folder an export writes; what --force may replace


def export_pruned(
    pretrained: str,
    plan: PrunePlan,
    out: str | Path,
    force: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
    strict: bool = True,
) -> Path:
    """Load ``pretrained`` in its stored dtype, apply ``plan``, save weights, config, processor,
    ``plan.json`` and a model card to ``out``.

    The folder is written next to ``out`` and moved into place at the end, so a failure leaves
    whatever was there intact; leftovers of an interrupted export are removed on the next one.
    ``out`` may already hold this same export; another export of ours is replaced only with
    ``force``, and a folder that is not an export of ours never is.
    """
    from transformers import AutoModelForImageTextToText

    from .cache import weights_fingerprint
    from .plan import ModelIdentity

    out = Path(out)
    check_target(out, plan, force)
    _remove_leftovers(out)
    model = AutoModelForImageTextToText.from_pretrained(
        pretrained, dtype="auto", revision=revision, trust_remote_code=trust_remote_code
    )
    identity = ModelIdentity.of(
        model, pretrained, revision, weights_fingerprint(pretrained, revision)
    )
    plan.apply_(model, identity, strict)
    return save_export(model, plan, out, pretrained, force, revision, trust_remote_code)


def save_export(
    model,
    plan: PrunePlan,
    out: str | Path,
    pretrained: str,
    force: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
    healing: dict | None = None,
) -> Path:
    """Write an already pruned in-memory ``model`` with ``pretrained``'s processor, ``plan.json``
    and a model card (plus ``healing.json`` when ``healing`` says how it was healed)."""
    from transformers import AutoProcessor

    out = Path(out)
    check_target(out, plan, force)
    _remove_leftovers(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        (tmp / MARKER).write_text(plan.to_json())
        model.save_pretrained(tmp, safe_serialization=True)
        processor = AutoProcessor.from_pretrained(
            pretrained, revision=revision, trust_remote_code=trust_remote_code
        )
        processor.save_pretrained(tmp)
        plan.save(tmp / "plan.json")
        if healing is not None:
            (tmp / "healing.json").write_text(json.dumps(healing, indent=2, sort_keys=True))
        (tmp / "README.md").write_text(model_card(plan, pretrained, healing))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _is_ours(folder: Path) -> bool:
    if (folder / MARKER).is_file():
        return True
    try:  # exports written before the marker: a valid plan and our model card
        PrunePlan.load(folder / "plan.json")
        return "lmms-prune" in (folder / "README.md").read_text()
    except (OSError, ValueError):
        return False


def _remove_leftovers(out: Path) -> None:
    """Temporary folders of an interrupted export to ``out`` (ours: they hold the marker)."""
    if not out.parent.is_dir():
        return
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        if tmp.is_dir() and _is_ours(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def check_target(out: Path, plan: PrunePlan | None, force: bool) -> None:
    """Refuse before any work: a file, an unwritable place, or a folder that is not ours.

    ``plan=None`` checks only what does not depend on the plan (before one is made).
    """
    from .args import check_writable

    if out.exists() and not out.is_dir():
        raise ValueError(f"out={str(out)!r} is not allowed: it is a file; give a folder")
    check_writable("out", out)
    if not out.exists() or not any(out.iterdir()):
        return
    if not _is_ours(out):
        raise ValueError(
            f"out={str(out)!r} is not empty and holds no export of lmms-prune; it is never "
            "replaced (not even with --force): give a new or empty folder"
        )
    if plan is None or force:
        return
    try:
        same = json.loads((out / "plan.json").read_text()) == plan.to_dict()
    except (OSError, json.JSONDecodeError):
        same = False
    if not same:
        raise ValueError(
            f"out={str(out)!r} already holds a different export (its plan.json differs); pass --force to replace it"
        )


def model_card(plan: PrunePlan, pretrained: str, healing: dict | None = None) -> str:
    """A short Markdown model card: base model, removed layers, criterion, and any healing."""
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
""" + (_healing_card(healing) if healing else "")


def _healing_card(h: dict) -> str:
    """The model card's healing section (``h`` is :meth:`.heal.HealResult.summary`)."""
    o, d = h["options"], h["data"]
    curve = ", ".join(f"{step}: {loss:.4f}" for step, loss in h["loss_curve"])
    targets = ", ".join(o["target_modules"])
    return f"""
## Healing

After the layers were removed, LoRA adapters on the kept layers were trained and merged into
their weights, so the checkpoint has no adapters. `healing.json` holds every detail.

| | |
|---|---|
| method | {h["method"]} (rank {o["rank"]}, alpha {o["alpha"]}, modules {targets}) |
| objective | {"KL divergence to the unpruned model (self-distillation)" if o["objective"] == "distill" else "cross-entropy on the task's targets"} |
| data | {", ".join(d["tasks"])} ({d["samples"]} samples, content hash {d["fingerprint"][:12]}) |
| steps | {o["steps"]} x batch {o["batch_size"]} x {h["world_size"]} process(es), lr {o["lr"]}, seed {o["seed"]} |
| loss | {h["loss_first"]:.4f} at step 1, {h["loss_last"]:.4f} at the end (min {h["loss_min"]:.4f}) |
| loss curve (step: loss) | {curve} |
| time | {h["seconds"]:.0f} s |
"""

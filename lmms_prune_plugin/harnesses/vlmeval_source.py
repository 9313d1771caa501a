"""VLMEvalKit as a calibration source: the messages VLMEvalKit builds, fed to its model.

A calibration set is any VLMEvalKit dataset (an ``$LMUData/<Name>.tsv`` of one's own, or a
named benchmark). Its first ``limit`` lines become messages exactly as VLMEvalKit's inference
builds them (``dataset.build_prompt(line)``, or the model's ``build_prompt(line, dataset)``
when ``model.use_custom_prompt(dataset)``; images dumped where VLMEvalKit dumps them), and
each message goes through the model's own ``generate`` with one new token, so the statistics
are measured on what evaluation feeds the model.

Nothing here imports VLMEvalKit at module level; only :meth:`VLMEvalSource.documents` does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from lmms_prune_plugin.core.cache import FileHashes, key
from lmms_prune_plugin.core.calibration import CalibrationConfig
from lmms_prune_plugin.core.distributed import process_group
from lmms_prune_plugin.core.plan import ModelIdentity, PrunePlan, content_hash
from lmms_prune_plugin.core.planner import PruneOptions
from lmms_prune_plugin.harnesses.base import CalibrationDocs
from lmms_prune_plugin.surgery.layers import find_decoder_layers

HARNESS = "vlmeval"
#: Attributes where VLMEvalKit's model classes keep their transformers model, in order.
HF_MODEL_ATTRS = ("model", "hf_model", "llm", "vlm", "language_model")


def lmu_root() -> Path:
    """VLMEvalKit's data folder: ``$LMUData`` if it exists, else ``~/LMUData``."""
    env = os.environ.get("LMUData")
    return Path(env) if env and os.path.exists(env) else Path.home() / "LMUData"


def find_hf_model(model: Any, name: str = "model") -> nn.Module:
    """The transformers model inside a VLMEvalKit model (the first of :data:`HF_MODEL_ATTRS`
    whose decoder layers can be found)."""
    if isinstance(model, nn.Module):
        candidates = [model]
    else:
        candidates = [getattr(model, a, None) for a in HF_MODEL_ATTRS]
    for found in candidates:
        if isinstance(found, nn.Module):
            try:
                find_decoder_layers(found)
            except (ValueError, AttributeError, TypeError):
                continue
            return found
    raise ValueError(
        f"{name}={type(model).__name__}: no transformers model with text-decoder layers found "
        f"in its attributes {', '.join(HF_MODEL_ATTRS)}; layer pruning needs a model loaded "
        "in this process (not an API or vLLM model)"
    )


@contextmanager
def one_new_token(hf_model: nn.Module) -> Iterator[None]:
    """Every ``hf_model.generate`` call inside makes one new token (calibration needs only the
    prefill), whatever generation settings the VLMEvalKit class passes. Nests: a ``generate``
    set on the instance before (the core's prefill-only one) is what it calls and restores."""
    before = vars(hf_model).get("generate")
    original = hf_model.generate

    def generate(*args, **kwargs):
        kwargs.pop("min_new_tokens", None)
        kwargs.pop("max_length", None)
        return original(*args, **(kwargs | {"max_new_tokens": 1}))

    hf_model.generate = generate
    try:
        yield
    finally:
        if before is None:
            del hf_model.generate  # the class's method shows again
        else:
            hf_model.generate = before


def build_messages(model: Any, dataset: Any, line: Any) -> list[dict]:
    """The message VLMEvalKit's inference builds for ``line`` (vlmeval/inference.py)."""
    name = dataset.dataset_name
    if getattr(dataset, "force_use_dataset_prompt", False):
        return dataset.build_prompt(line)
    if hasattr(model, "use_custom_prompt") and model.use_custom_prompt(name):
        return model.build_prompt(line, dataset=name)
    return dataset.build_prompt(line)


def _message_key(message: Any) -> list:
    """A message for hashing: texts as they are, images and other files by content."""
    items = message if isinstance(message, list) else [message]
    out = []
    for item in items:
        if (
            isinstance(item, dict)
            and item.get("type") != "text"
            and os.path.isfile(str(item.get("value")))
        ):
            out.append([item["type"], FileHashes(remember=False).digest(item["value"])])
        else:
            out.append(item if isinstance(item, dict | str) else repr(item))
    return out


def _has_image(message: Any) -> bool:
    items = message if isinstance(message, list) else [message]
    return any(isinstance(i, dict) and i.get("type") == "image" for i in items)


def vlmeval_version() -> str:
    """The installed VLMEvalKit's distribution and version (PyPI's ms-vlmeval or a clone)."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("ms-vlmeval", "vlmeval", "nvidia-vlmeval"):
        try:
            return f"{dist}=={version(dist)}"
        except PackageNotFoundError:
            continue
    return "vlmeval==unknown"


class VLMEvalSource:
    """A :class:`~lmms_prune_plugin.harnesses.base.CalibrationSource` over a VLMEvalKit model.

    ``model`` is the VLMEvalKit model that evaluation will call (its prompts, its image
    handling, its ``generate``); ``hf_model`` the transformers model inside it, which capture
    hooks; ``sets`` the calibration dataset names, whose TSVs make up :meth:`data_key`.
    """

    harness = HARNESS

    def __init__(self, model: Any, hf_model: nn.Module | None = None, sets: Iterable[str] = ()):
        self.model = model
        self.hf_model = hf_model if hf_model is not None else find_hf_model(model)
        self.sets = tuple(dict.fromkeys(sets))

    def data_key(self) -> str:
        """The calibration TSVs by content, the data folder and VLMEvalKit's version."""
        root, hashes = lmu_root(), FileHashes()
        files = {}
        for name in sorted(self.sets):
            tsv = root / f"{name}.tsv"
            files[name] = hashes.digest(tsv) if tsv.is_file() else "no local TSV"
        hashes.save()
        return key(harness=HARNESS, vlmeval=vlmeval_version(), root=str(root), files=files)

    def documents(
        self, task: str, limit: int | None, rank: int, world: int, param: str
    ) -> CalibrationDocs:
        """The first ``limit`` lines of dataset ``task`` as VLMEvalKit messages (this rank's
        share, every ``world``-th one); the fingerprint covers every line of every rank."""
        dataset = load_dataset(task, param)
        data = dataset.data if limit is None else dataset.data.iloc[:limit]
        if hasattr(self.model, "set_dump_image"):  # as inference does before building prompts
            self.model.set_dump_image(dataset.dump_image)
        lines = [data.iloc[i] for i in range(len(data))]
        messages = [
            (str(line["index"]), build_messages(self.model, dataset, line)) for line in lines
        ]
        if not messages:
            raise ValueError(f"{param}={task!r}: the dataset has no lines (limit={limit})")
        if not any(_has_image(m) for _, m in messages[:8]):
            raise ValueError(
                f"{param}={task!r}: its first messages carry no image; calibration measures a "
                "vision-language forward, give an image dataset"
            )
        fingerprint = content_hash([[i, _message_key(m)] for i, m in messages])
        share = messages[rank::world]
        return CalibrationDocs(task, (task, share), len(share), len(messages), fingerprint)

    def run(self, docs: CalibrationDocs, batch_size: int) -> None:
        """Each message through the model's own ``generate`` (VLMEvalKit models take one
        message at a time, so ``batch_size`` does not apply), one new token each."""
        name, messages = docs.payload
        quiet = process_group()[0] != 0
        with torch.inference_mode(), one_new_token(self.hf_model):
            for _, message in tqdm(
                messages, desc=f"lmms-prune: calibrating on {name}", disable=quiet
            ):
                self.model.generate(message=message, dataset=name)


def load_dataset(task: str, param: str) -> Any:
    """VLMEvalKit's dataset ``task``; errors name ``param`` and the data folder."""
    from vlmeval.dataset import build_dataset

    root = lmu_root()
    try:
        dataset = build_dataset(task)
    except Exception as err:  # a known benchmark that cannot be downloaded, a malformed TSV...
        raise ValueError(
            f"{param}={task!r}: VLMEvalKit could not load it ({type(err).__name__}: {err}); "
            f"offline, only TSVs already in {root} load"
        ) from err
    if dataset is None:
        raise ValueError(
            f"{param}={task!r} is not allowed: VLMEvalKit knows no dataset of that name and "
            f"{root / (task + '.tsv')} does not exist (or has no question column); give a "
            "VLMEvalKit dataset, or write the demo sets with "
            f"`python scripts/vlmeval_demo_data.py {root}`"
        )
    if getattr(dataset, "MODALITY", "IMAGE") != "IMAGE":
        raise ValueError(f"{param}={task!r} is a {dataset.MODALITY} dataset; give an image one")
    return dataset


# -- planning ---------------------------------------------------------------------------------
def build_plan(
    source: VLMEvalSource,
    model: nn.Module,
    identity: ModelIdentity,
    config: CalibrationConfig,
    options: PruneOptions,
    run_key: str,
) -> PrunePlan:
    """The plan for ``options``, calibrated through ``source`` by the core planner (its checks,
    plan and calibration caches, one-shot and adaptive criteria)."""
    from lmms_prune_plugin.core.planner import Planner

    return Planner(source, model, identity, config, run_key).plan(options)


def describe_removed(plan: PrunePlan) -> str:
    """The removed layers in words ("removes layers 5, 7, 8 and 9 of 12", as the README says)."""
    n, removed = plan.model.num_layers, list(plan.removed)
    if not removed:
        return f"removes no layer of {n}"
    words = ", ".join(map(str, removed[:-1])) + (" and " if len(removed) > 1 else "")
    return f"removes layer{'s' if len(removed) > 1 else ''} {words}{removed[-1]} of {n}"


def mapping_text(values: Mapping[str, Any]) -> str:
    """``k=v,k=v`` (for names and messages)."""
    return ",".join(f"{k}={v}" for k, v in values.items())

"""Training examples for healing: model inputs (a batch of one each) and the answers to train
on, and how they are batched. Where the prompts come from is a harness's business
(:mod:`lmms_prune_plugin.harnesses.lmms_eval.training` for lmms-eval tasks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Example:
    """One prompt's model inputs (batch of one) and, once known, the answer tokens to train on."""

    inputs: dict[str, torch.Tensor]
    task: str
    doc_id: int
    target: str | None = None  # the task's doc_to_target, for supervised training
    answer: torch.Tensor | None = None  # token ids appended to the prompt (1-D)

    @property
    def prompt_len(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


@dataclass
class TrainingData:
    """This rank's examples and what identifies the whole set (over every rank)."""

    examples: list[Example]
    tasks: tuple[str, ...]
    total: int
    fingerprint: str


def _per_token(value: torch.Tensor, prompt_len: int) -> bool:
    """Shaped like ``input_ids`` (batch of one, one entry per token): padded, not concatenated."""
    return value.dim() >= 2 and tuple(value.shape[:2]) == (1, prompt_len)


def _stack_key(e: Example) -> tuple:
    """What must agree for examples to share a batch: the names of their tensors, and the
    trailing shapes and dtypes of those concatenated along the first axis (pixels, grids)."""
    return tuple(
        (k, str(v.dtype), "token" if _per_token(v, e.prompt_len) else tuple(v.shape[1:]))
        for k, v in sorted(e.inputs.items())
    )


def prompt_batches(examples: Sequence[Example], batch_size: int) -> list[list[Example]]:
    """Examples in batches of at most ``batch_size`` that can be stacked, prompts of similar
    length together (less padding); every example in exactly one batch."""
    groups: dict[tuple, list[Example]] = {}
    for e in sorted(examples, key=lambda e: e.prompt_len):
        groups.setdefault(_stack_key(e), []).append(e)
    return [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def collate_prompts(examples: Sequence[Example], pad_id: int) -> tuple[dict, int]:
    """Pad the prompts alone on the left into one batch for ``generate`` (each row continues
    from its last real token, as an unpadded prompt does). Returns the inputs and their width.

    Tensors shaped like ``input_ids`` are left-padded (``input_ids`` with ``pad_id``, the rest,
    ``attention_mask`` included, with zeros); every other tensor is concatenated along its first
    axis. Examples must share :func:`_stack_key` (see :func:`prompt_batches`).
    """
    if len({_stack_key(e) for e in examples}) > 1:
        raise ValueError("examples with different tensors or image shapes cannot share a batch")
    width = max(e.prompt_len for e in examples)
    batch: dict[str, list] = {}
    for e in examples:
        p = e.prompt_len
        for key, value in e.inputs.items():
            if _per_token(value, p):
                fill = pad_id if key == "input_ids" else 0
                padded = torch.full((1, width, *value.shape[2:]), fill, dtype=value.dtype)
                padded[:, width - p :] = value
                value = padded
            batch.setdefault(key, []).append(value)
        if "attention_mask" not in e.inputs:
            mask = torch.zeros((1, width), dtype=torch.long)
            mask[0, width - p :] = 1
            batch.setdefault("attention_mask", []).append(mask)
    return {k: torch.cat(v, dim=0) for k, v in batch.items()}, width


def collate(
    examples: Sequence[Example], pad_id: int
) -> tuple[dict, list[tuple[int, int]], torch.Tensor]:
    """Pad prompt + answer sequences on the right into one batch.

    Returns the model inputs, the (row, position) of every logit that predicts an answer token,
    and those answer tokens. Tensors shaped like ``input_ids`` are padded (``attention_mask``
    with zeros); every other tensor (pixels, image grids) is concatenated along its first axis.
    """
    seqs = []
    for e in examples:
        if e.answer is None or e.answer.numel() == 0:
            raise ValueError(f"example {e.task}:{e.doc_id} has no answer tokens to train on")
        seqs.append(torch.cat([e.inputs["input_ids"][0], e.answer.to(e.inputs["input_ids"])]))
    width = max(len(s) for s in seqs)
    batch: dict[str, list] = {}
    positions, labels = [], []
    for row, (e, seq) in enumerate(zip(examples, seqs, strict=True)):
        p, n = e.prompt_len, len(seq)
        for key, value in e.inputs.items():
            if key == "input_ids":
                padded = torch.full((width,), pad_id, dtype=value.dtype)
                padded[:n] = seq
            elif _per_token(value, p):
                extra = 1 if key == "attention_mask" else 0
                padded = torch.zeros((width, *value.shape[2:]), dtype=value.dtype)
                padded[:p] = value[0]
                padded[p:n] = extra
            else:
                batch.setdefault(key, []).append(value)
                continue
            batch.setdefault(key, []).append(padded[None])
        if "attention_mask" not in e.inputs:
            mask = torch.zeros((1, width), dtype=torch.long)
            mask[0, :n] = 1
            batch.setdefault("attention_mask", []).append(mask)
        positions += [(row, i) for i in range(p - 1, n - 1)]
        labels.append(seq[p:])
    inputs = {k: torch.cat(v, dim=0) for k, v in batch.items()}
    return inputs, positions, torch.cat(labels)

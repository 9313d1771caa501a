"""Training examples for healing: an lmms-eval task's prompts as model inputs, plus answers.

Prompts come from :func:`.requests.build_requests`, exactly as calibration gets them, and go
through the base wrapper's own ``generate_until``: its chat template, image processing and
processor build the tensors. The tensors are taken at the wrapper's call to ``generate`` (which
is answered without running the model), so training sees the token ids and pixels that
evaluation sees, for any wrapper that calls ``model.generate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .plan import content_hash
from .requests import CalibrationRequests, build_requests, resolve_task_name


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


def _doc_target(task, doc) -> str | None:
    """A document's reference answer as text (a choice index becomes the choice), or None."""
    try:
        target = task.doc_to_target(doc)
    except Exception:  # no doc_to_target configured, or it cannot read this document
        return None
    if isinstance(target, list):
        target = target[0] if target else None
    if isinstance(target, int) and not isinstance(target, bool):
        try:
            target = task.doc_to_choice(doc)[target]
        except Exception:
            pass
    if target is None or isinstance(target, bool):
        return None
    text = str(target).strip()
    return text or None


def _targets(task_names: Sequence[str], task_manager, task_type: str) -> dict:
    """(task, doc_id) -> target text for every document of the named tasks."""
    from lmms_eval.evaluator_utils import get_task_list
    from lmms_eval.tasks import get_task_dict

    task_dict = get_task_dict([resolve_task_name(t) for t in task_names], task_manager, task_type)
    out = {}
    for o in get_task_list(task_dict):
        t = o.task
        if t is None:
            continue
        split = t.config.test_split or t.config.validation_split
        for i, doc in enumerate(t.dataset[split]):
            out[(o.task_name, i)] = _doc_target(t, doc)
    return out


@contextmanager
def _generate_recorded(model: torch.nn.Module, record: list, answer_ids):
    """Replace ``model.generate`` for the block: record its tensor inputs, answer a call index."""

    def fake_generate(*args, **kwargs):
        if args and isinstance(args[0], torch.Tensor):
            kwargs = {"input_ids": args[0], **kwargs}
        inputs = {k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        ids = inputs.get("input_ids")
        if ids is None or ids.shape[0] != 1:
            raise ValueError(
                "data: the base wrapper called generate with "
                f"{'no input_ids' if ids is None else f'a batch of {ids.shape[0]}'}; training "
                "data needs one prompt per call (batch_size=1 in the wrapper's model_args)"
            )
        record.append(inputs)
        reply = torch.tensor([answer_ids(len(record) - 1)], dtype=ids.dtype, device=ids.device)
        return torch.cat([ids, reply], dim=1)

    had = "generate" in vars(model)
    saved = vars(model).get("generate")
    model.generate = fake_generate
    try:
        yield
    finally:
        if had:
            model.generate = saved
        else:
            del model.generate


@contextmanager
def _one_prompt_per_call(wrapper):
    """Batch size 1 for the block (lmms-eval wrappers keep it in ``batch_size_per_gpu``), so
    each generate call holds one unpadded prompt, as evaluation with batch size 1 builds it."""
    name = next(
        (n for n in ("batch_size_per_gpu", "batch_size") if isinstance(vars(wrapper).get(n), int)),
        None,
    )
    saved = getattr(wrapper, name) if name else None
    if name:
        setattr(wrapper, name, 1)
    try:
        yield
    finally:
        if name:
            setattr(wrapper, name, saved)


def wrapper_tokenizer(wrapper):
    """The base wrapper's tokenizer (its own, or its processor's)."""
    tokenizer = getattr(wrapper, "tokenizer", None)
    return tokenizer if tokenizer is not None else wrapper.processor.tokenizer


def capture_inputs(wrapper, model: torch.nn.Module, reqs: CalibrationRequests) -> list[dict]:
    """The tensors the wrapper builds for each request, in request order."""
    tokenizer = wrapper_tokenizer(wrapper)
    record: list[dict] = []
    # Each call answers with its own index; the wrapper returns answers in request order.
    answer_ids = lambda i: tokenizer.encode(f" {i} ", add_special_tokens=False)  # noqa: E731
    saved = dict(wrapper.task_dict)
    wrapper.task_dict.update(reqs.datasets)
    try:
        with (
            torch.no_grad(),
            _one_prompt_per_call(wrapper),
            _generate_recorded(model, record, answer_ids),
        ):
            answers = wrapper.generate_until(list(reqs.requests))
    finally:
        wrapper.task_dict.clear()
        wrapper.task_dict.update(saved)
    order = []
    for a in answers:
        text = getattr(a, "text", a)
        try:
            order.append(int(str(text).strip()))
        except ValueError as err:
            raise ValueError(
                f"data: the base wrapper turned a recorded prompt into {text!r}; it does not "
                "return what generate returned, so its inputs cannot be used for training"
            ) from err
    if sorted(order) != list(range(len(record))):
        raise ValueError(
            f"data: {len(record)} generate calls for {len(answers)} requests; expected one each"
        )
    return [record[i] for i in order]


def build_training_data(
    wrapper,
    model: torch.nn.Module,
    tasks: Sequence[str],
    task_manager,
    limit: int | None,
    rank: int = 0,
    world_size: int = 1,
    need_targets: bool = False,
) -> TrainingData:
    """Examples from every task in ``tasks`` (``limit`` samples each), this rank's share.

    With ``need_targets``, every document must have a reference answer (``doc_to_target``).
    """
    task_type = "simple" if getattr(wrapper, "is_simple", True) else "chat"
    examples, hashes, total = [], [], 0
    for name in tasks:
        reqs = build_requests(name, task_manager, task_type, limit, rank, world_size, param="data")
        targets = _targets([name], task_manager, task_type) if need_targets else {}
        inputs = capture_inputs(wrapper, model, reqs)
        for inst, x in zip(reqs.requests, inputs, strict=True):
            doc_id, task = inst.args[3], inst.args[4]
            target = targets.get((task, doc_id))
            if need_targets and target is None:
                raise ValueError(
                    f"data={name!r}: document {doc_id} of task {task!r} has no target "
                    "(doc_to_target gave nothing); --objective sft needs the task's answers, "
                    "--objective distill does not"
                )
            examples.append(Example(x, task, doc_id, target))
        hashes.append([name, reqs.fingerprint])
        total += reqs.total
    return TrainingData(examples, tuple(tasks), total, content_hash(hashes))


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

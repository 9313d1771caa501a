"""Healing data and the whole heal run for a ``pruned_vlm`` of lmms-eval: an lmms-eval task's
prompts as model inputs, plus answers.

Prompts come from :func:`.requests.build_requests`, exactly as calibration gets them, and go
through the base wrapper's own ``generate_until``: its chat template, image processing and
processor build the tensors. The tensors are taken at the wrapper's call to ``generate`` (which
is answered without running the model), so training sees the token ids and pixels that
evaluation sees, for any wrapper that calls ``model.generate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch

from lmms_prune_plugin.core.calibration import generate_replaced
from lmms_prune_plugin.core.distributed import is_main
from lmms_prune_plugin.core.heal import (
    HealOptions,
    heal_,
    lora_targets,
    merge_,
    text_hidden_size,
)
from lmms_prune_plugin.core.plan import PrunePlan, content_hash
from lmms_prune_plugin.core.training_data import Example, TrainingData
from lmms_prune_plugin.harnesses.lmms_eval.requests import (
    CalibrationRequests,
    build_requests,
    resolve_task_name,
)
from lmms_prune_plugin.surgery.layers import removal_checks_in


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

    with generate_replaced(model, fake_generate):
        yield


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


# -- the whole run ----------------------------------------------------------------------------
def task_manager_for(tasks: Sequence[str], paths: Sequence[str]):
    """A TaskManager that knows ``tasks``: our folders alone when they suffice (fast)."""
    from lmms_eval.tasks import TaskManager

    tm = TaskManager(include_path=list(paths), include_defaults=False)
    if all(resolve_task_name(t) in tm.all_tasks for t in tasks):
        return tm
    return TaskManager(include_path=list(paths))


def training_data_for(lm, opts: HealOptions) -> TrainingData:
    """``opts.data`` through ``lm``'s base wrapper (a loaded, unpruned ``pruned_vlm``)."""
    from lmms_prune_plugin.core.distributed import process_group

    rank, world = process_group()
    tm = task_manager_for(opts.data, lm.calibration.task_paths)
    return build_training_data(
        lm.base,
        lm.hf_model,
        opts.data,
        tm,
        opts.limit,
        rank,
        world,
        need_targets=opts.objective == "sft",
    )


def heal_and_export(
    lm,
    plan: PrunePlan,
    opts: HealOptions,
    out,
    force: bool = False,
    strict: bool = True,
    trust_remote_code: bool = False,
):
    """Heal ``lm``'s model (unpruned ``pruned_vlm``) for ``plan``, merge, export to ``out``.

    Returns the export folder (None on ranks other than the main one) and the result.
    """
    from lmms_prune_plugin.surgery.export import save_export

    if not plan.removed:
        raise ValueError(
            f"budget={plan.budget!r}: the plan removes no layers, so there is nothing to heal"
        )
    plan.check_model(lm.hf_model, lm.identity, strict)
    opts.check_hidden_size(text_hidden_size(lm.hf_model.config))
    lora_targets(lm.hf_model, plan.removed, opts.target_modules)  # fails before any data work
    data = training_data_for(lm, opts)
    # Every step removes the plan's layers for the student: checked once, kept with the run's plans.
    with removal_checks_in(lm.calibration.cache()):
        peft_model, result = heal_(lm.hf_model, wrapper_tokenizer(lm.base), plan, data, opts)
        model = merge_(peft_model)
        plan.apply_(model, lm.identity, strict)
    if not is_main():
        return None, result
    path = save_export(
        model,
        plan,
        out,
        lm.pretrained,
        force,
        lm.revision,
        trust_remote_code,
        healing=result.summary(),
    )
    return path, result

"""Healing: LoRA on the decoder layers a plan keeps, trained to undo what pruning lost.

The model stays whole in memory. The *student* is the model inside
:func:`~.layers.decoder_layers_removed` with its adapters on; the *teacher* (self-distillation)
is the same model outside it with its adapters off, i.e. exactly the unpruned checkpoint. So
the teacher costs no second copy of the weights. ``sft`` trains on the task's own answers
instead. After training the adapters are merged into the kept layers and the plan is applied,
which leaves an ordinary checkpoint of the pruned architecture.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from loguru import logger
from tqdm import tqdm

from lmms_prune_plugin.core.distributed import is_main
from lmms_prune_plugin.core.options import OptionRecord, option
from lmms_prune_plugin.core.plan import PrunePlan
from lmms_prune_plugin.core.training_data import (
    Example,
    TrainingData,
    collate,
    collate_prompts,
    prompt_batches,
)
from lmms_prune_plugin.surgery.layers import (
    decoder_layers_removed,
    find_decoder_layers,
)

OBJECTIVES = ("distill", "sft")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_DATA = ("prune_train",)


@dataclass(frozen=True)
class HealOptions(OptionRecord):
    """What healing trains, on what, and how long. Validated on construction."""

    title = "healing (LoRA on the kept layers; see docs/healing.md)"
    objective: str = option(
        "distill", "distill: KL to the unpruned model; sft: task targets", choices=OBJECTIVES
    )
    data: tuple[str, ...] = option(DEFAULT_DATA, "lmms-eval task(s) to train on, comma list")
    limit: int | None = option(
        2048, "samples per data task (over all ranks), or none", minimum=1, flag="data_limit"
    )
    rank: int = option(8, "LoRA rank")
    alpha: float = option(16.0, "LoRA alpha, scale = alpha / rank", flag="lora_alpha")
    target_modules: tuple[str, ...] = option(DEFAULT_TARGETS, "linear modules to adapt, comma list")
    lr: float = option(2e-3, "peak learning rate")
    steps: int = option(300, "optimizer steps")
    batch_size: int = option(16, "samples per step and process")
    seed: int = option(0, "adapter init and data order", flag="heal_seed")
    continuation_tokens: int = option(8, "teacher tokens distilled after each prompt")

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective={self.objective!r} is not allowed; choose one of: {', '.join(OBJECTIVES)}"
            )
        for name, minimum in (
            ("rank", 1),
            ("steps", 1),
            ("batch_size", 1),
            ("continuation_tokens", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name}={value!r} is not allowed; give an integer >= {minimum}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit={self.limit!r} is not allowed; give an integer >= 1 or none")
        for name in ("alpha", "lr"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}={value!r} is not allowed; give a positive number")
        if not self.data or not all(isinstance(d, str) and d for d in self.data):
            raise ValueError(f"data={self.data!r} is not allowed; give one or more task names")
        if not self.target_modules:
            raise ValueError("target_modules=() is not allowed; give one or more module names")

    def check_hidden_size(self, hidden: int | None) -> None:
        """A LoRA rank above the hidden size adds nothing a full update would not."""
        if hidden is not None and self.rank > hidden:
            raise ValueError(
                f"rank={self.rank} is not allowed: the text decoder's hidden size is {hidden}; "
                f"give a rank in [1, {hidden}]"
            )

    def to_dict(self) -> dict:
        return asdict(self) | {"data": list(self.data), "target_modules": list(self.target_modules)}


def text_hidden_size(config) -> int | None:
    """The text decoder's hidden size from a config object or a raw config dict."""
    if isinstance(config, dict):
        for sub in ("text_config", "llm_config", "language_config"):
            if isinstance(config.get(sub), dict) and "hidden_size" in config[sub]:
                return int(config[sub]["hidden_size"])
        return config.get("hidden_size")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "hidden_size", None)


# -- adapters ---------------------------------------------------------------------------------
def lora_targets(model: torch.nn.Module, removed: Sequence[int], names: Sequence[str]) -> list[str]:
    """Full names of the linear modules called ``names`` inside the layers the plan keeps."""
    decoder = find_decoder_layers(model)
    kept = [i for i in range(len(decoder.layers)) if i not in set(removed)]
    found, seen = [], set()
    for i in kept:
        for sub, module in decoder.layers[i].named_modules():
            last = sub.rsplit(".", 1)[-1]
            if isinstance(module, torch.nn.Linear) and last in names:
                found.append(f"{decoder.path}.{i}.{sub}")
                seen.add(last)
    missing = [n for n in names if n not in seen]
    if missing:
        linear = sorted(
            {
                s.rsplit(".", 1)[-1]
                for s, m in decoder.layers[0].named_modules()
                if isinstance(m, torch.nn.Linear)
            }
        )
        raise ValueError(
            f"target_modules={list(names)!r}: no linear module named {missing!r} in the decoder "
            f"layers; this model's layers have: {', '.join(linear)}"
        )
    return found


def attach_lora_(model: torch.nn.Module, removed: Sequence[int], opts: HealOptions):
    """Wrap ``model`` (in place) with fresh LoRA adapters on the kept layers; base frozen."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(opts.seed)  # adapter initialisation
    config = LoraConfig(
        r=opts.rank,
        lora_alpha=opts.alpha,
        lora_dropout=0.0,
        target_modules=lora_targets(model, removed, opts.target_modules),
        bias="none",
    )
    return get_peft_model(model, config)


def teacher_logits(peft_model, inputs: dict) -> torch.Tensor:
    """The unpruned model's logits: every layer in place, adapters off. No gradients."""
    with torch.no_grad(), peft_model.disable_adapter():
        return peft_model.get_base_model()(**inputs, use_cache=False).logits


def student_logits(peft_model, removed: Sequence[int], inputs: dict) -> torch.Tensor:
    """The pruned model's logits with its adapters on."""
    model = peft_model.get_base_model()
    with decoder_layers_removed(model, removed):
        return model(**inputs, use_cache=False).logits


# -- answers ----------------------------------------------------------------------------------
def _eos_ids(model, tokenizer) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])


def add_continuations_(
    model, examples: Sequence[Example], tokenizer, max_new_tokens: int, batch_size: int = 16
) -> None:
    """Each example's answer: the unpruned model's greedy continuation (through its first EOS).

    Prompts go to ``generate`` ``batch_size`` at a time, left-padded (each row continues from
    its last real token, so the tokens are those of one prompt at a time); prompts whose images
    cannot be stacked go in separate batches. Run before adapters are attached, so ``model`` is
    the teacher itself.
    """
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [0])[0]
    bar = tqdm(total=len(examples), desc="teacher answers", disable=not is_main(), leave=False)
    for batch in prompt_batches(examples, batch_size):
        inputs, width = collate_prompts(batch, pad)
        with torch.no_grad():
            out = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos or None,
                pad_token_id=pad,
            )
        for e, new in zip(batch, out[:, width:], strict=True):
            stops = [i for i, t in enumerate(new.tolist()) if t in eos]
            e.answer = new[: stops[0] + 1].clone() if stops else new.clone()
        bar.update(len(batch))
    bar.close()


def add_targets_(model, examples: Sequence[Example], tokenizer) -> None:
    """Each example's answer: the task's target text, then the end-of-turn token (all targets
    tokenized in one call)."""
    eos = _eos_ids(model, tokenizer)[:1]
    if not examples:
        return
    ids = tokenizer([e.target for e in examples], add_special_tokens=False)["input_ids"]
    for e, row in zip(examples, ids, strict=True):
        e.answer = torch.tensor(list(row) + eos, dtype=torch.long)


# -- training ---------------------------------------------------------------------------------
@dataclass
class HealResult:
    """What healing did: options, data, loss per step, time."""

    options: dict
    data: dict
    removed: list[int]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    trainable_parameters: int = 0
    world_size: int = 1

    def summary(self) -> dict:
        n = len(self.losses)
        marks = sorted({0, *(round(i * (n - 1) / 9) for i in range(10))}) if n else []
        return {
            "method": f"LoRA, {self.options['objective']}",
            "options": self.options,
            "data": self.data,
            "removed": self.removed,
            "loss_first": self.losses[0] if n else None,
            "loss_last": self.losses[-1] if n else None,
            "loss_min": min(self.losses) if n else None,
            "loss_curve": [[i + 1, round(self.losses[i], 6)] for i in marks],  # [step, loss]
            "seconds": round(self.seconds, 1),
            "trainable_parameters": self.trainable_parameters,
            "world_size": self.world_size,
        }


def _lr_at(step: int, total: int, peak: float) -> float:
    """Short linear warm-up, then cosine decay to a tenth of the peak."""
    warm = max(1, total // 20)
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _all_mean(values: torch.Tensor) -> torch.Tensor:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def _batches(n: int, size: int, seed: int):
    """Endless batches of indices: a new seeded shuffle each pass."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        batch = []
        while len(batch) < size:
            if not order:
                order = list(range(n))
                rng.shuffle(order)
            batch.append(order.pop())
        yield batch


def loss_on(
    peft_model, removed: Sequence[int], batch: Sequence[Example], objective: str, pad_id: int
) -> torch.Tensor:
    """The healing loss of one batch: KL(teacher || student) or cross-entropy, per answer token."""
    inputs, positions, labels = collate(batch, pad_id)
    rows = torch.tensor([r for r, _ in positions])
    cols = torch.tensor([c for _, c in positions])
    student = student_logits(peft_model, removed, inputs)[rows, cols].float()
    if objective == "sft":
        return F.cross_entropy(student, labels)
    teacher = teacher_logits(peft_model, inputs)[rows, cols].float()
    return F.kl_div(
        F.log_softmax(student, -1),
        F.log_softmax(teacher, -1),
        log_target=True,
        reduction="batchmean",
    )


def _add_answers(model, data: TrainingData, tokenizer, opts: HealOptions) -> None:
    """What to train on, once per data set (the teacher is fixed): the task's targets (sft) or
    the unpruned model's continuations (distill), a batch of prompts at a time."""
    if all(e.answer is not None for e in data.examples):
        return
    if opts.objective == "sft":
        add_targets_(model, data.examples, tokenizer)
    else:
        add_continuations_(
            model, data.examples, tokenizer, opts.continuation_tokens, opts.batch_size
        )


def heal_(
    model: torch.nn.Module, tokenizer, plan: PrunePlan, data: TrainingData, opts: HealOptions
):
    """Train LoRA adapters so that ``model`` without ``plan.removed`` behaves like ``model``.

    ``model`` must be unpruned (it is its own teacher). Returns the peft model (adapters still
    separate: evaluate inside ``decoder_layers_removed``, then :func:`merge_` or :func:`unload_`)
    and a :class:`HealResult`.
    """
    from lmms_prune_plugin.core.distributed import process_group

    removed = list(plan.removed)
    if len(find_decoder_layers(model)) != plan.model.num_layers:
        raise ValueError(
            f"the model has {len(find_decoder_layers(model))} decoder layers, the plan is for "
            f"{plan.model.num_layers}; healing needs the unpruned model (it is the teacher)"
        )
    if not data.examples:
        raise ValueError(f"data={list(data.tasks)!r} gave this process no training examples")
    _, world = process_group()
    model.eval()  # no dropout: deterministic, and the teacher is the model as evaluated
    _add_answers(model, data, tokenizer, opts)
    peft_model = attach_lora_(model, removed, opts)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=0.0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    result = HealResult(
        opts.to_dict(),
        {"tasks": list(data.tasks), "samples": data.total, "fingerprint": data.fingerprint},
        removed,
        trainable_parameters=sum(p.numel() for p in params),
        world_size=world,
    )
    batches = _batches(len(data.examples), opts.batch_size, opts.seed)
    start = time.perf_counter()
    bar = tqdm(range(opts.steps), desc="heal", disable=not is_main())
    for step in bar:
        batch = [data.examples[i] for i in next(batches)]
        loss = loss_on(peft_model, removed, batch, opts.objective, pad)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for p in params:  # data parallel: every rank steps with the mean gradient
            if p.grad is not None:
                _all_mean(p.grad)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, opts.steps, opts.lr)
        optimizer.step()
        value = float(_all_mean(loss.detach().clone()))
        if not math.isfinite(value):
            raise ValueError(
                f"healing diverged at step {step + 1} (loss {value}); lower lr={opts.lr}"
            )
        result.losses.append(value)
        bar.set_postfix(loss=f"{value:.4f}")
    result.seconds = time.perf_counter() - start
    logger.info(
        f"lmms-prune: healed {len(removed)} removed layers in {opts.steps} steps, loss "
        f"{result.losses[0]:.4f} -> {result.losses[-1]:.4f} ({result.seconds:.0f} s)"
    )
    return peft_model, result


def merge_(peft_model) -> torch.nn.Module:
    """Fold the adapters into the base weights; returns the plain transformers model."""
    return peft_model.merge_and_unload()


def unload_(peft_model) -> torch.nn.Module:
    """Drop the adapters; the base weights are as they were before healing."""
    return peft_model.unload()

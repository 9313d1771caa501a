"""Part 6: the teacher's answers for healing, a batch at a time vs. one prompt at a time.

Healing by distillation first asks the unpruned model for a greedy continuation of every
training prompt (``add_continuations_``). The prompts are the demo's ``prune_train`` documents
as its base wrapper builds them (``training_data_for``). *one at a time*: ``generate`` on each
unpadded prompt alone; *batched*: ``batch_size`` left-padded prompts a call. Both give the same
tokens (checked before timing); the ratio one at a time / batched is the speed-up.
"""

from __future__ import annotations

from typing import Any

from .common import Adaptive, interleaved, log, progress

CLOCK = "cpu"


def answers(model, examples, tokenizer, new_tokens: int, batch_size: int) -> list[list[int]]:
    from .package import add_continuations_

    add_continuations_(model, examples, tokenizer, new_tokens, batch_size)
    return [e.answer.tolist() for e in examples]


def run(prompts: int, new_tokens: int, batch_size: int, plan: Adaptive) -> dict[str, Any]:
    """Time both ways on the packaged demo model (interleaved rounds)."""
    from .package import HealOptions, PrunedVLM, training_data_for, wrapper_tokenizer

    lm = PrunedVLM(budget=0, plan_cache=False)
    data = training_data_for(lm, HealOptions(limit=prompts, continuation_tokens=new_tokens))
    model, tok = lm.hf_model.eval(), wrapper_tokenizer(lm.base)
    examples = data.examples
    log(f"[heal prep] {len(examples)} prompts of {data.tasks[0]}, {new_tokens} new tokens")
    one = answers(model, examples, tok, new_tokens, 1)
    many = answers(model, examples, tok, new_tokens, batch_size)
    identical = sum(a == b for a, b in zip(one, many, strict=True))
    variants = {
        "one_at_a_time": lambda: answers(model, examples, tok, new_tokens, 1),
        "batched": lambda: answers(model, examples, tok, new_tokens, batch_size),
    }
    bar = progress(plan.max_rounds, "teacher answers")
    times = interleaved(variants, [("one_at_a_time", "batched")], plan, CLOCK, bar=bar, seed=7)
    bar.close()
    log(f"[heal prep] {times.rounds} rounds ({times.stopped}, {times.seconds:.0f} s)")
    summary = times.summary()["variants"]
    n = len(examples)
    return {
        "model": {"class": type(model).__name__, "dtype": str(model.dtype)},
        "task": data.tasks[0],
        "prompts": n,
        "new_tokens": new_tokens,
        "batch_size": batch_size,
        "identical_answers": identical,
        "prompts_per_s": {
            v: {c: n / summary[v][c]["median_s"] for c in ("cpu", "wall")} for v in variants
        },
        "speedup": times.ratios("one_at_a_time", "batched"),
        "time": times.to_dict(),
    }

"""Loglikelihood of a continuation given an image-text prompt, as lmms-eval's tasks expect it.

lmms-eval 0.7.3's multiple-choice tasks take the ``argmin`` of the first element of each answer:
a model must return a **loss** (the negative log-likelihood), not a log-probability. Its
evaluator turns a ``(float, bool)`` answer into a string (``unwrap_generation_output``); a
``GenerationResult`` whose ``text`` is the tuple passes through unchanged, so that is returned.
"""

from __future__ import annotations

import torch
from lmms_eval.api.instance import GenerationResult, Instance
from tqdm import tqdm


def conversation(ctx: str, visuals: list) -> list[dict]:
    """One user turn: the images, then the text."""
    content = [{"type": "image"} for _ in visuals] + [{"type": "text", "text": ctx}]
    return [{"role": "user", "content": content}]


def continuation_loss(
    model, processor, ctx: str, visuals: list, continuation: str
) -> tuple[float, bool]:
    """(negative log-likelihood of ``continuation`` after the chat prompt, whether it is greedy).

    The continuation is tokenized on its own and appended to the prompt's ids, so the boundary
    between prompt and answer is exact whatever the tokenizer merges.
    """
    prompt = processor.apply_chat_template(
        conversation(ctx, visuals), add_generation_prompt=True, tokenize=False
    )
    kwargs = {"images": [visuals]} if visuals else {}
    inputs = processor(text=[prompt], return_tensors="pt", **kwargs)
    tok = getattr(processor, "tokenizer", processor)
    cont = tok(continuation, add_special_tokens=False, return_tensors="pt").input_ids
    if cont.shape[1] == 0:
        raise ValueError(f"continuation {continuation!r} encodes to no tokens")
    n = inputs["input_ids"].shape[1]
    for name, value in list(inputs.items()):
        # Every per-token tensor grows with the answer: the ids, the mask (ones), and token-type
        # tensors such as mm_token_type_ids (zeros: the answer is text).
        if torch.is_tensor(value) and value.dim() == 2 and tuple(value.shape) == (1, n):
            fill = {"input_ids": cont, "attention_mask": torch.ones_like(cont)}
            tail = fill.get(name, torch.zeros_like(cont))
            inputs[name] = torch.cat([value, tail.to(value.dtype)], dim=1)
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(**inputs.to(device)).logits[0, n - 1 : -1].float()
    target = cont[0].to(device)
    logprobs = torch.log_softmax(logits, dim=-1).gather(1, target[:, None])
    return -float(logprobs.sum()), bool((logits.argmax(-1) == target).all())


def loglikelihood(
    model, processor, task_dict: dict, requests: list[Instance], rank: int = 0
) -> list[GenerationResult]:
    """lmms-eval simple-style loglikelihood requests ``(ctx, continuation, doc_to_visual,
    doc_id, task, split)`` scored one by one."""
    out = []
    for req in tqdm(requests, disable=rank != 0, desc="loglikelihood"):
        ctx, continuation, doc_to_visual, doc_id, task, split = req.args
        doc = task_dict[task][split][doc_id]
        if callable(continuation):
            continuation = continuation(doc)
        visuals = [v for v in (doc_to_visual(doc) if doc_to_visual else []) or [] if v is not None]
        out.append(
            GenerationResult(text=continuation_loss(model, processor, ctx, visuals, continuation))
        )
    return out

"""Part 2: prefill and decode latency of a Qwen2 causal LM after removing k of its L layers.

Each pruned variant is a deep copy of the same random model with ``remove_decoder_layers_``
applied. Prefill is one forward over ``seq_len`` tokens that builds the KV cache and computes the
logits of the last position only (what ``generate`` does); decode is ``generate`` of exactly
``new_tokens`` tokens after a short prompt, reported per token.

The decoder-only ideal speed-up is L / (L - k). The whole-model ideal also counts what pruning
cannot shrink (embedding lookup, final norm, lm_head), timed on their own with the same shapes:
ideal = T0 / (F + (T0 - F) (L - k) / L), with T0 the unpruned time and F that fixed part.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from .common import (
    DecoderSpec,
    build_decoder,
    interleaved,
    log,
    median,
    progress,
    ratio,
    reps_for,
    summarize,
    timed,
    token_ids,
)

PROMPT_LEN = 16


def removed_layers(num_layers: int, k: int) -> list[int]:
    """The k layers just before the last one: where similarity criteria usually cut.

    Which layers go does not change the cost; every decoder layer has the same shape.
    """
    return list(range(num_layers - 1 - k, num_layers - 1))


def prefill(model, ids: torch.Tensor) -> None:
    model(input_ids=ids, use_cache=True, logits_to_keep=1)


def decode(model, prompt: torch.Tensor, new_tokens: int) -> None:
    out = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    assert out.shape[1] == prompt.shape[1] + new_tokens


def fixed_prefill(model, ids: torch.Tensor) -> None:
    """What a prefill does outside the decoder layers: embed all tokens, norm + lm_head on the last."""
    h = model.model.embed_tokens(ids)
    model.lm_head(model.model.norm(h[:, -1:]))


def fixed_decode(model, prompt: torch.Tensor, new_tokens: int) -> None:
    """The same outside-the-layers work for ``new_tokens`` single-token steps."""
    tok = prompt[:, -1:]
    for _ in range(new_tokens):
        h = model.model.embed_tokens(tok)
        tok = model.lm_head(model.model.norm(h)).argmax(-1)


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least squares y = a + b x; returns (a, b)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def _phase(
    name: str,
    variants: dict[str, Any],
    budget_s: float,
    min_reps: int,
    max_reps: int,
) -> tuple[dict[str, list[float]], int]:
    """Warm every variant up once (that prices a round), then time them interleaved."""
    with torch.inference_mode():
        round_s = sum(timed(fn)[0] for fn in variants.values())
        reps = reps_for(round_s, budget_s, min_reps, max_reps)
        bar = progress(reps * len(variants), f"pruning {name}")
        times = interleaved(variants, reps, bar)
        bar.close()
    return times, reps


def run(
    spec: DecoderSpec,
    ks: Sequence[int],
    seq_len: int,
    new_tokens: int,
    budget_s: float,
    min_reps: int,
    max_reps: int,
) -> dict[str, Any]:
    L = spec.num_layers
    ks = sorted(set([0, *ks]))
    log(
        f"[pruning] building a {L}-layer Qwen2ForCausalLM (hidden {spec.hidden_size}) and {len(ks) - 1} pruned copies"
    )
    base = build_decoder(spec, causal_lm=True)
    base.generation_config.eos_token_id = None  # exactly new_tokens tokens, never an early stop
    models = {}
    for k in ks:
        m = copy.deepcopy(base) if k else base
        if k:
            from lmms_prune_plugin.layers import remove_decoder_layers_

            remove_decoder_layers_(m, removed_layers(L, k))
        assert len(m.model.layers) == L - k
        models[k] = m

    ids = token_ids(spec, seq_len)
    prompt = token_ids(spec, PROMPT_LEN, seed=2)
    pre = {f"k={k}": (lambda m=m: prefill(m, ids)) for k, m in models.items()}
    pre["fixed"] = lambda: fixed_prefill(base, ids)
    dec = {f"k={k}": (lambda m=m: decode(m, prompt, new_tokens)) for k, m in models.items()}
    dec["fixed"] = lambda: fixed_decode(base, prompt, new_tokens)

    pre_times, pre_reps = _phase("prefill", pre, budget_s * 0.6, min_reps, max_reps)
    dec_times, dec_reps = _phase("decode", dec, budget_s * 0.4, min_reps, max_reps)
    pre_s, dec_s = summarize(pre_times), summarize(dec_times)

    def phase_rows(stats: dict[str, dict[str, float]], per: float) -> tuple[list[dict], dict]:
        t0 = stats["k=0"]["median_s"] / per
        fixed = min(stats["fixed"]["median_s"] / per, t0)
        rows = []
        for k in ks:
            t = stats[f"k={k}"]["median_s"] / per
            ideal_dec = L / (L - k)
            ideal_model = t0 / (fixed + (t0 - fixed) * (L - k) / L)
            speedup = ratio(t0, t)
            rows.append(
                {
                    "k": k,
                    "kept": L - k,
                    "seconds": t,
                    "speedup": speedup,
                    "ideal_decoder": ideal_dec,
                    "ideal_model": ideal_model,
                    "ratio_to_ideal_decoder": speedup / ideal_dec,
                    "ratio_to_ideal_model": speedup / ideal_model,
                }
            )
        a, b = linear_fit([L - k for k in ks], [stats[f"k={k}"]["median_s"] / per for k in ks])
        return rows, {"fixed_s": fixed, "fit_intercept_s": a, "fit_per_layer_s": b, "t0_s": t0}

    pre_rows, pre_fixed = phase_rows(pre_s, 1.0)
    dec_rows, dec_fixed = phase_rows(dec_s, float(new_tokens))
    worst_prefill = min((r["ratio_to_ideal_decoder"] for r in pre_rows if r["k"]), default=1.0)
    worst_decode = min((r["ratio_to_ideal_decoder"] for r in dec_rows if r["k"]), default=1.0)
    return {
        "model": spec.to_dict()
        | {
            "decoder_params": spec.decoder_params(),
            "class": "Qwen2ForCausalLM",
            "dtype": "float32",
        },
        "removed": {k: removed_layers(L, k) for k in ks},
        "prefill": {
            "seq_len": seq_len,
            "reps": pre_reps,
            "rows": pre_rows,
            "fixed": pre_fixed,
            "time": pre_s,
        },
        "decode": {
            "prompt_len": PROMPT_LEN,
            "new_tokens": new_tokens,
            "reps": dec_reps,
            "rows": dec_rows,
            "fixed": dec_fixed,
            "time": dec_s,
        },
        "target": {
            "min_ratio_to_ideal_decoder": 0.9,
            "worst_prefill": worst_prefill,
            "worst_decode": worst_decode,
            "met_prefill": worst_prefill >= 0.9,
            "met_decode": worst_decode >= 0.9,
            "median_decode_ratio_to_ideal_model": median(
                [r["ratio_to_ideal_model"] for r in dec_rows]
            ),
        },
    }

"""Part 2: prefill and decode latency of a Qwen2 causal LM after removing k of its L layers.

Each pruned variant is a deep copy of the same random model with ``remove_decoder_layers_``
applied. Prefill is one forward over ``seq_len`` tokens that builds the KV cache and computes the
logits of the last position only (what ``generate`` does); decode is ``generate`` of exactly
``new_tokens`` tokens after a short prompt, reported per token.

The decoder-only ideal speed-up is L / (L - k). The whole-model ideal also counts what pruning
cannot shrink (embedding lookup, final norm, lm_head), timed on their own with the same shapes:
ideal = T0 / (F + (T0 - F) (L - k) / L), with T0 the unpruned time and F that fixed part.

Every variant, the unpruned one included, is a structural copy of one model that shares its
parameter tensors: a pruned variant runs a subset of the very same weight memory. Separate deep
copies put each variant's weights in different memory, and on this virtual machine the original
model ran 5-25% slower per decoded token than an identical deep copy of itself (and a fresh
copy's first calls several times slower); with the unpruned reference being the original and
the pruned ones copies, that difference went into the speed-ups. A second unpruned copy
(``k=0 (A/A)``) is timed in the decode rounds: its ratio to ``k=0`` should be 1, and its
interval shows what the method cannot resolve.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from .common import (
    Adaptive,
    DecoderSpec,
    Timings,
    build_decoder,
    interleaved,
    log,
    progress,
    token_ids,
)
from .stats import INCONCLUSIVE, MET, MISSED, scale, verdict

PROMPT_LEN = 16
MIN_RATIO_TO_IDEAL = 0.9  # speed-up / (L / (L - k))
CLOCK = "cpu"  # the clock the targets are judged on (see benchmarks/README.md, Method)
AA = "k=0 (A/A)"


def removed_layers(num_layers: int, k: int) -> list[int]:
    """The k layers just before the last one: where similarity criteria usually cut.

    Which layers go does not change the cost; every decoder layer has the same shape.
    """
    return list(range(num_layers - 1 - k, num_layers - 1))


def prefill(model, ids: torch.Tensor) -> None:
    model(input_ids=ids, use_cache=True, logits_to_keep=1)


def decode(model, prompt: torch.Tensor, new_tokens: int) -> int:
    """``generate`` exactly ``new_tokens`` greedy tokens; returns how many it produced."""
    out = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    produced = out.shape[1] - prompt.shape[1]
    assert produced == new_tokens, f"generate produced {produced} tokens, not {new_tokens}"
    return produced


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


def shared_copy(model, drop: Sequence[int] = ()):
    """A copy of ``model`` whose modules are new but whose parameters and buffers are the same
    tensors, with ``drop`` removed by ``remove_decoder_layers_``."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    copy_ = copy.deepcopy(model, memo)
    if drop:
        from .package import remove_decoder_layers_

        remove_decoder_layers_(copy_, list(drop))
    return copy_


def _phase(
    name: str, variants: dict[str, Any], pairs: list[tuple[str, str]], plan: Adaptive
) -> Timings:
    bar = progress(plan.max_rounds, f"pruning {name}")
    with torch.inference_mode():
        times = interleaved(variants, pairs, plan, CLOCK, bar=bar)
    bar.close()
    log(f"[pruning] {name}: {times.rounds} rounds ({times.stopped}, {times.seconds:.0f} s)")
    return times


def _rows(times: Timings, ks: Sequence[int], L: int, per: float) -> tuple[list[dict], dict]:
    """Speed-up rows with intervals (both clocks) and the fixed-part fit (target clock)."""
    med = {n: v[CLOCK]["median_s"] / per for n, v in times.summary()["variants"].items()}
    t0 = med["k=0"]
    fixed = min(med["fixed"], t0)
    rows = []
    for k in ks:
        ideal_dec = L / (L - k)
        ideal_model = t0 / (fixed + (t0 - fixed) * (L - k) / L)
        speedup = {c: times.ratio("k=0", f"k={k}", c) for c in ("cpu", "wall")}
        rows.append(
            {
                "k": k,
                "kept": L - k,
                "seconds": med[f"k={k}"],
                "wall_seconds": times.summary()["variants"][f"k={k}"]["wall"]["median_s"] / per,
                "speedup": speedup,
                "ideal_decoder": ideal_dec,
                "ideal_model": ideal_model,
                "ratio_to_ideal_decoder": {c: scale(e, 1 / ideal_dec) for c, e in speedup.items()},
                "ratio_to_ideal_model": {c: scale(e, 1 / ideal_model) for c, e in speedup.items()},
            }
        )
    a, b = linear_fit([L - k for k in ks], [med[f"k={k}"] for k in ks])
    return rows, {"fixed_s": fixed, "fit_intercept_s": a, "fit_per_layer_s": b, "t0_s": t0}


def _judge(rows: list[dict], clock: str) -> dict[str, Any]:
    """Met only if met at every k; missed if missed at any k; else inconclusive."""
    per_k = {
        r["k"]: verdict(r["ratio_to_ideal_decoder"][clock], MIN_RATIO_TO_IDEAL, at_most=False)
        for r in rows
        if r["k"]
    }
    v = list(per_k.values())
    overall = MISSED if MISSED in v else MET if all(x == MET for x in v) else INCONCLUSIVE
    return {"verdict": overall, "per_k": per_k}


def run(
    spec: DecoderSpec,
    ks: Sequence[int],
    seq_len: int,
    new_tokens: int,
    prefill_plan: Adaptive,
    decode_plan: Adaptive,
) -> dict[str, Any]:
    L = spec.num_layers
    ks = sorted(set([0, *ks]))
    log(
        f"[pruning] a {L}-layer Qwen2ForCausalLM (hidden {spec.hidden_size}) and {len(ks) - 1} "
        "pruned views of its weights"
    )
    base = build_decoder(spec, causal_lm=True)
    base.generation_config.eos_token_id = None  # exactly new_tokens tokens, never an early stop
    models = {f"k={k}": shared_copy(base, removed_layers(L, k)) for k in ks}
    models[AA] = shared_copy(base)
    for k in ks:
        assert len(models[f"k={k}"].model.layers) == L - k
    keep = models["k=0"]
    del base

    ids = token_ids(spec, seq_len)
    prompt = token_ids(spec, PROMPT_LEN, seed=2)
    produced: dict[str, set[int]] = {n: set() for n in models}

    def decoding(name: str):
        def fn() -> None:
            produced[name].add(decode(models[name], prompt, new_tokens))

        return fn

    pre = {f"k={k}": (lambda m=models[f"k={k}"]: prefill(m, ids)) for k in ks}
    pre["fixed"] = lambda: fixed_prefill(keep, ids)
    dec = {name: decoding(name) for name in models}
    dec["fixed"] = lambda: fixed_decode(keep, prompt, new_tokens)
    pairs = [("k=0", f"k={k}") for k in ks if k]

    pre_times = _phase("prefill", pre, pairs, prefill_plan)
    dec_times = _phase("decode", dec, [*pairs, (AA, "k=0")], decode_plan)
    tokens = {n: sorted(v) for n, v in produced.items()}
    assert all(v == [new_tokens] for v in tokens.values()), tokens

    pre_rows, pre_fixed = _rows(pre_times, ks, L, 1.0)
    dec_rows, dec_fixed = _rows(dec_times, ks, L, float(new_tokens))
    aa = dec_times.ratios(AA, "k=0")
    return {
        "model": spec.to_dict()
        | {
            "decoder_params": spec.decoder_params(),
            "class": "Qwen2ForCausalLM",
            "dtype": "float32",
            "weights": "shared by every variant",
        },
        "removed": {k: removed_layers(L, k) for k in ks},
        "prefill": {
            "seq_len": seq_len,
            "rows": pre_rows,
            "fixed": pre_fixed,
            "time": pre_times.to_dict(),
        },
        "decode": {
            "prompt_len": PROMPT_LEN,
            "new_tokens": new_tokens,
            "tokens_generated": tokens,
            "rows": dec_rows,
            "fixed": dec_fixed,
            "time": dec_times.to_dict(),
            "aa_control": aa,
        },
        "target": {
            "min_ratio_to_ideal_decoder": MIN_RATIO_TO_IDEAL,
            "clock": CLOCK,
            "prefill": {c: _judge(pre_rows, c) for c in ("cpu", "wall")},
            "decode": {c: _judge(dec_rows, c) for c in ("cpu", "wall")},
        },
    }

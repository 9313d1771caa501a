"""Part 2: prefill and decode latency of a Qwen2 causal LM after removing k of its L layers.

Each pruned variant is a view of the same random model's weights with ``remove_decoder_layers_``
applied (see below). Prefill is one forward over ``seq_len`` tokens that builds the KV cache and computes the
logits of the last position only (what ``generate`` does); decode is ``generate`` of exactly
``new_tokens`` tokens after a short prompt, reported per token.

The decoder-only ideal speed-up is L / (L - k). What pruning cannot shrink (embedding lookup,
final norm, lm_head and, in decode, ``generate``'s own per-token work) is timed in the same
rounds as a copy with no decoder layer at all, run exactly like the others; with F its time and
T0 the unpruned one, the best any removal of k layers can give is the whole-model ideal
T0 / (F + (T0 - F) (L - k) / L). Both ideals are computed per round, so their intervals come
from the same paired rounds as the speed-ups; the whole-model ideal over the decoder ideal is the
*ceiling*: the share of L / (L - k) that removing k layers can reach on this model and machine
if time is that fixed part plus an equal cost per layer (a model: ``_judge`` checks that the
measurements do not exceed it before it calls a k unreachable).

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
from dataclasses import replace
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
from .stats import INCONCLUSIVE, MET, MISSED, estimate, scale, verdict

PROMPT_LEN = 16
MIN_RATIO_TO_IDEAL = 0.9  # speed-up / (L / (L - k))
CLOCK = "cpu"  # the clock the targets are judged on (see benchmarks/README.md, Method)
AA = "k=0 (A/A)"
NONE = "no layers"


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


def no_layers_copy(model):
    """A shared copy with every decoder layer gone: what pruning cannot shrink, run the way the
    pruned variants run (built here: ``remove_decoder_layers_`` always keeps one layer)."""
    copy_ = shared_copy(model)
    copy_.model.layers = torch.nn.ModuleList()
    copy_.config.num_hidden_layers = 0
    if getattr(copy_.config, "layer_types", None) is not None:
        copy_.config.layer_types = []
    return copy_


def model_ideal_shares(
    t0: Sequence[float], tk: Sequence[float], fixed: Sequence[float], kept_share: float
) -> list[float]:
    """Per round: the measured speed-up T0 / Tk over the whole-model ideal
    T0 / (F + (T0 - F) kept_share), i.e. (F + (T0 - F) kept_share) / Tk."""
    return [(f + (a - f) * kept_share) / b for a, b, f in zip(t0, tk, fixed)]


def ceiling_shares(t0: Sequence[float], fixed: Sequence[float], kept_share: float) -> list[float]:
    """Per round: the whole-model ideal over the decoder ideal 1 / kept_share."""
    return [a * kept_share / (f + (a - f) * kept_share) for a, f in zip(t0, fixed)]


def _phase(
    name: str, variants: dict[str, Any], pairs: list[tuple[str, str]], plan: Adaptive, seed: int
) -> Timings:
    bar = progress(plan.max_rounds, f"pruning {name}")
    with torch.inference_mode():
        times = interleaved(variants, pairs, plan, CLOCK, bar=bar, seed=seed)
    bar.close()
    log(f"[pruning] {name}: {times.rounds} rounds ({times.stopped}, {times.seconds:.0f} s)")
    return times


def _rows(times: Timings, ks: Sequence[int], L: int, per: float) -> tuple[list[dict], dict]:
    """Speed-up rows with intervals (both clocks), the ideals and the fixed part."""
    summary = times.summary()["variants"]
    med = {n: v[CLOCK]["median_s"] / per for n, v in summary.items()}
    rows = []
    for k in ks:
        share = (L - k) / L
        ideal_dec = 1 / share
        by_model, ceiling = {}, {}
        for c in ("cpu", "wall"):
            t = times.of(c)
            groups = times.group_labels(len(t["k=0"]))
            by_model[c] = estimate(
                model_ideal_shares(t["k=0"], t[f"k={k}"], t[NONE], share), groups=groups
            )
            ceiling[c] = estimate(ceiling_shares(t["k=0"], t[NONE], share), groups=groups)
        speedup = {c: times.ratio("k=0", f"k={k}", c) for c in ("cpu", "wall")}
        rows.append(
            {
                "k": k,
                "kept": L - k,
                "seconds": med[f"k={k}"],
                "wall_seconds": summary[f"k={k}"]["wall"]["median_s"] / per,
                "speedup": speedup,
                "ideal_decoder": ideal_dec,
                "ideal_model": ceiling[CLOCK]["value"] * ideal_dec,
                "ceiling": ceiling,
                "ratio_to_ideal_decoder": {c: scale(e, share) for c, e in speedup.items()},
                "ratio_to_ideal_model": by_model,
            }
        )
    t0 = med["k=0"]
    a, b = linear_fit([L - k for k in ks], [med[f"k={k}"] for k in ks])
    return rows, {
        "fixed_s": med[NONE],
        "fixed_share": med[NONE] / t0,
        "fit_intercept_s": a,
        "fit_per_layer_s": b,
        "t0_s": t0,
    }


def _judge(rows: list[dict], clock: str) -> dict[str, Any]:
    """Met only if met at every k; missed if missed at any k; else inconclusive.

    ``unreachable``: the k whose ceiling interval lies wholly below the limit, where no removal
    of k layers could meet the target because of the part pruning cannot shrink; none while
    ``above_ceiling`` lists a k whose measured share lies wholly above its ceiling (there the
    model of a fixed part plus an equal cost per layer does not hold).
    """
    per_k = {
        r["k"]: verdict(r["ratio_to_ideal_decoder"][clock], MIN_RATIO_TO_IDEAL, at_most=False)
        for r in rows
        if r["k"]
    }
    v = list(per_k.values())
    overall = MISSED if MISSED in v else MET if all(x == MET for x in v) else INCONCLUSIVE
    above = [
        r["k"]
        for r in rows
        if r["k"] and r["ratio_to_ideal_decoder"][clock]["lo"] > r["ceiling"][clock]["hi"]
    ]
    unreachable = [
        r["k"]
        for r in rows
        if r["k"] and not above and r["ceiling"][clock]["hi"] < MIN_RATIO_TO_IDEAL
    ]
    return {"verdict": overall, "per_k": per_k, "unreachable": unreachable, "above_ceiling": above}


def views(spec: DecoderSpec, ks: Sequence[int]) -> dict[str, Any]:
    """A freshly allocated model with seeded weights, and its views: each k, the A/A copy and
    the view with no layers."""
    L = spec.num_layers
    base = build_decoder(spec, causal_lm=True)
    base.generation_config.eos_token_id = None  # exactly new_tokens tokens, never an early stop
    models = {f"k={k}": shared_copy(base, removed_layers(L, k)) for k in ks}
    models[AA] = shared_copy(base)
    models[NONE] = no_layers_copy(base)
    for k in ks:
        assert len(models[f"k={k}"].model.layers) == L - k
    return models


def run(
    spec: DecoderSpec,
    ks: Sequence[int],
    seq_len: int,
    new_tokens: int,
    prefill_plan: Adaptive,
    decode_plan: Adaptive,
    allocations: int = 1,
) -> dict[str, Any]:
    """Prefill then decode rounds on each of ``allocations`` separate allocations of the same
    seeded weights, one after the other, each with its share of every time cap. Where the
    weights sit in memory, and which state the host is in for a stretch of seconds, moved whole
    runs by several percent; the rounds of one allocation cannot show that, the groups can."""
    L = spec.num_layers
    ks = sorted(set([0, *ks]))
    log(
        f"[pruning] a {L}-layer Qwen2ForCausalLM (hidden {spec.hidden_size}) and {len(ks) - 1} "
        f"pruned views of its weights, on {allocations} allocation(s) of them"
    )
    ids = token_ids(spec, seq_len)
    prompt = token_ids(spec, PROMPT_LEN, seed=2)
    produced: dict[str, set[int]] = {n: set() for n in [*(f"k={k}" for k in ks), AA, NONE]}

    def decoding(model, name: str):
        def fn() -> None:
            produced[name].add(decode(model, prompt, new_tokens))

        return fn

    pairs = [("k=0", f"k={k}") for k in ks if k]
    pre_share = replace(prefill_plan, cap_s=prefill_plan.cap_s / allocations)
    dec_share = replace(decode_plan, cap_s=decode_plan.cap_s / allocations)
    pre_parts, dec_parts = [], []
    for a in range(allocations):
        models = views(spec, ks)
        of = f"{a + 1}/{allocations}"
        pre = {n: (lambda m=m: prefill(m, ids)) for n, m in models.items() if n != AA}
        pre_parts.append(_phase(f"prefill {of}", pre, pairs, pre_share, seed=2 * a))
        dec = {n: decoding(m, n) for n, m in models.items()}
        dec_parts.append(_phase(f"decode {of}", dec, [*pairs, (AA, "k=0")], dec_share, 2 * a + 1))
        del models, pre, dec
    pre_times, dec_times = Timings.concat(pre_parts), Timings.concat(dec_parts)
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
            "weights": "shared by every variant of an allocation",
        },
        "removed": {k: removed_layers(L, k) for k in ks},
        "allocations": allocations,
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

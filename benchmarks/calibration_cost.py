"""Part 1: what calibration costs with streaming capture vs. keeping every hidden state.

Three ways to get per-layer cos(h_in, h_out) from the same prefill forward of a Qwen2 decoder:

* ``capture``: our ``LayerCapture`` hooks (a running sum per layer, nothing kept);
* ``plain``: the same forward without hooks (the floor);
* ``hidden_states``: ``output_hidden_states=True`` and cosines computed afterwards, as
  ShortGPT-style scripts do (every layer's output is alive at the end of the forward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .common import (
    DecoderSpec,
    build_decoder,
    interleaved,
    log,
    median,
    paired_ratios,
    progress,
    ratio,
    reps_for,
    summarize,
    timed,
    token_ids,
)
from .memory import MB, MMAP_THRESHOLD, MemoryProbe


def run_plain(model, ids: torch.Tensor) -> None:
    model(input_ids=ids, use_cache=False)


def run_capture(model, ids: torch.Tensor) -> list[float]:
    from lmms_prune_plugin.capture import LayerCapture

    with LayerCapture(model) as cap:
        model(input_ids=ids, use_cache=False)
    return cap.statistics().similarity()


def run_hidden_states(model, ids: torch.Tensor) -> list[float]:
    out = model(input_ids=ids, use_cache=False, output_hidden_states=True)
    hs = out.hidden_states
    return [
        F.cosine_similarity(hs[i].float(), hs[i + 1].float(), dim=-1).mean().item()
        for i in range(len(hs) - 1)
    ]


VARIANTS: dict[str, Callable[[Any, torch.Tensor], Any]] = {
    "plain": run_plain,
    "capture": run_capture,
    "hidden_states": run_hidden_states,
}


def check_similarity(model, spec: DecoderSpec, seq_len: int) -> dict[str, Any]:
    """Capture's per-layer similarity vs. the hidden-states reference on the same input.

    The last layer is left out: some transformers versions return the final-norm output as the
    last hidden state, so the reference's last cosine is not the last layer's own.
    """
    ids = token_ids(spec, seq_len)
    with torch.inference_mode():
        ours = run_capture(model, ids)
        ref = run_hidden_states(model, ids)
    n = spec.num_layers - 1
    diff = max(abs(a - b) for a, b in zip(ours[:n], ref[:n]))
    return {
        "seq_len": seq_len,
        "layers_compared": n,
        "max_abs_diff": diff,
        "tolerance": 1e-4,
        "ok": diff <= 1e-4,
    }


def measure_memory(
    spec: DecoderSpec, seq_lens: Sequence[int], depth_check: bool, probe: MemoryProbe
) -> dict[str, Any]:
    """Peak RSS over the post-load baseline for each (variant, seq_len), one fresh process each."""
    jobs = [(v, s, spec.num_layers) for s in seq_lens for v in VARIANTS]
    half = max(1, spec.num_layers // 2)
    if depth_check:  # same longest sequence, half the layers: what grows with depth?
        jobs += [(v, seq_lens[-1], half) for v in ("capture", "hidden_states", "plain")]
    out: dict[str, Any] = {"rows": [], "method": None}
    bar = progress(len(jobs), "calibration memory")
    for variant, seq, layers in jobs:
        bar.set_postfix(variant=variant, seq=seq, layers=layers)
        job = {
            "spec": spec.to_dict(),
            "variant": variant,
            "seq_len": seq,
            "layers": layers,
            "threads": torch.get_num_threads(),
        }
        res = probe.measure(job)
        out["method"] = res["method"]
        out["rows"].append({"variant": variant, "seq_len": seq, "layers": layers, **res})
        bar.update(1)
    bar.close()
    probe.close()  # the helper holds its models: free them before timing
    return out


def run(
    spec: DecoderSpec,
    seq_lens: Sequence[int],
    budget_s: float,
    min_reps: int,
    max_reps: int,
    depth_check: bool = True,
    probe: MemoryProbe | None = None,
) -> dict[str, Any]:
    """Time (interleaved, medians) and measure memory of the three variants at each length."""
    seq_lens = sorted(seq_lens)
    log("[calibration] memory: one fresh process per variant and length")
    memory = measure_memory(spec, seq_lens, depth_check, probe or MemoryProbe())

    log(
        f"[calibration] building a {spec.num_layers}-layer Qwen2 decoder (hidden {spec.hidden_size})"
    )
    model = build_decoder(spec)
    correctness = check_similarity(model, spec, seq_lens[0])
    log("[calibration] warm-up")

    # Warm up: every variant once at the shortest length, the plain forward once at each length
    # (first calls at a new shape pay one-time kernel setup); that also prices a round.
    inputs = {s: token_ids(spec, s) for s in seq_lens}
    with torch.inference_mode():
        for fn in VARIANTS.values():
            fn(model, inputs[seq_lens[0]])
        warm = {s: timed(lambda s=s: run_plain(model, inputs[s]))[0] for s in seq_lens}
    share = budget_s / len(seq_lens)
    reps = {s: reps_for(3.1 * warm[s], share, min_reps, max_reps) for s in seq_lens}
    log(
        f"[calibration] repetitions per length: {reps} (one plain forward: "
        + ", ".join(f"{s}: {t:.2f}s" for s, t in warm.items())
        + ")"
    )

    rows = []
    bar = progress(sum(3 * r for r in reps.values()), "calibration time")
    for s in seq_lens:
        bar.set_postfix(seq=s)
        ids = inputs[s]
        variants = {name: (lambda fn=fn, ids=ids: fn(model, ids)) for name, fn in VARIANTS.items()}
        with torch.inference_mode():
            times = interleaved(variants, reps[s], bar)
        stats = summarize(times)
        mem = {
            r["variant"]: r
            for r in memory["rows"]
            if r["seq_len"] == s and r["layers"] == spec.num_layers
        }
        delta = {v: mem[v]["delta_mb"] for v in VARIANTS}
        rows.append(
            {
                "seq_len": s,
                "reps": reps[s],
                "time": stats,
                "ratio_capture": ratio(stats["capture"]["median_s"], stats["plain"]["median_s"]),
                "ratio_hidden_states": ratio(
                    stats["hidden_states"]["median_s"], stats["plain"]["median_s"]
                ),
                "paired_ratio_capture": median(paired_ratios(times, "capture", "plain")),
                "paired_ratio_hidden_states": median(
                    paired_ratios(times, "hidden_states", "plain")
                ),
                "peak_mb": delta,
                "extra_mb": {v: delta[v] - delta["plain"] for v in ("capture", "hidden_states")},
                # What the returned tuple holds besides the output: embeddings + L-1 layer outputs.
                "expected_hidden_states_mb": spec.num_layers * s * spec.hidden_size * 4 / MB,
            }
        )
    bar.close()

    depth = None
    if depth_check:
        s = seq_lens[-1]
        by = {
            (r["variant"], r["layers"]): r["delta_mb"] for r in memory["rows"] if r["seq_len"] == s
        }
        half = max(1, spec.num_layers // 2)
        depth = {
            "seq_len": s,
            "layers": [half, spec.num_layers],
            "extra_mb": {
                v: [by[(v, n)] - by[("plain", n)] for n in (half, spec.num_layers)]
                for v in ("capture", "hidden_states")
            },
        }
    worst = max(r["ratio_capture"] for r in rows)
    # Extra memory in units of one hidden state (seq x hidden x 4 B): the reference keeps about L
    # of them; streaming capture should stay at a transient or two, whatever the depth.
    last = rows[-1]
    unit = last["seq_len"] * spec.hidden_size * 4 / MB
    units = {v: last["extra_mb"][v] / unit for v in ("capture", "hidden_states")}
    depth_units = (
        (depth["extra_mb"]["capture"][1] - depth["extra_mb"]["capture"][0]) / unit
        if depth
        else None
    )
    flat = {
        "seq_len": last["seq_len"],
        "hidden_state_mb": unit,
        "extra_hidden_states_units": units,
        "capture_growth_with_depth_units": depth_units,
        "value": f"{units['capture']:.2f} vs. {units['hidden_states']:.2f} hidden states at seq {last['seq_len']}"
        + (
            f"; +{depth_units:.2f} from {depth['layers'][0]} to {depth['layers'][1]} layers"
            if depth
            else ""
        ),
        "met": units["capture"] <= 2.0 and (depth_units is None or abs(depth_units) <= 1.0),
    }
    return {
        "model": spec.to_dict()
        | {"decoder_params": spec.decoder_params(), "class": "Qwen2Model", "dtype": "float32"},
        "memory_method": memory["method"],
        "mmap_threshold_kb": MMAP_THRESHOLD // 1024,
        "rows": rows,
        "depth_check": depth,
        "correctness": correctness,
        "capture_memory_flat": flat,
        "memory_runs": memory["rows"],
        "target": {
            "capture_time_ratio_max": 1.10,
            "worst_capture_ratio": worst,
            "met": worst <= 1.10,
        },
    }

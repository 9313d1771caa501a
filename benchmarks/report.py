"""Render the results dict as Markdown."""

from __future__ import annotations

import math
from typing import Any


def _f(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def _x(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{_f(x, digits)}x"


def _yes(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of every part that ran: what was asked, what was measured, met or not."""
    out = []
    cal = res.get("calibration_cost")
    if cal:
        out.append(
            {
                "target": "capture time <= 1.10x hook-free forward (worst length)",
                "value": _x(cal["target"]["worst_capture_ratio"]),
                "met": cal["target"]["met"],
            }
        )
        c = cal["correctness"]
        out.append(
            {
                "target": f"capture similarity = hidden-states reference, layers 0..L-2 (tol {c['tolerance']:g})",
                "value": f"max diff {c['max_abs_diff']:.1e}",
                "met": c["ok"],
            }
        )
        grows = cal.get("capture_memory_flat")
        if grows is not None:
            out.append(
                {
                    "target": "capture extra memory does not grow with seq x layers",
                    "value": grows["value"],
                    "met": grows["met"],
                }
            )
    pr = res.get("pruning_speedup")
    if pr:
        t = pr["target"]
        out.append(
            {
                "target": "prefill speed-up >= 90% of ideal L/(L-k) (worst k)",
                "value": f"{100 * t['worst_prefill']:.0f}%",
                "met": t["met_prefill"],
            }
        )
        out.append(
            {
                "target": "decode speed-up >= 90% of ideal L/(L-k) (worst k)",
                "value": f"{100 * t['worst_decode']:.0f}%",
                "met": t["met_decode"],
            }
        )
    pc = res.get("plan_cache")
    if pc:
        out.append(
            {
                "target": "cached pruned_vlm load <= 1.02x plain wrapper load",
                "value": _x(pc["ratio"]),
                "met": pc["target"]["met"],
            }
        )
    sw = res.get("sweep")
    if sw:
        out.append(
            {
                "target": "sweep: exactly one calibration pass per domain",
                "value": f"{sw['sweep']['calibrator_forwards']} forwards for {sw['target']['forwards']} samples",
                "met": sw["target"]["met"],
            }
        )
    return out


def _calibration(cal: dict[str, Any]) -> list[str]:
    m = cal["model"]
    lines = [
        "## 1. Calibration cost: streaming capture vs. keeping all hidden states",
        "",
        f"Random `{m['class']}` (Qwen2 config, {m['dtype']}): {m['num_layers']} layers, hidden {m['hidden_size']}, "
        f"intermediate {m['intermediate_size']}, {m['num_heads']} heads / {m['num_kv_heads']} KV heads, "
        f"{m['decoder_params'] / 1e6:.0f}M decoder parameters; batch 1, `use_cache=False`, `torch.inference_mode()`. "
        "*plain*: the forward with no hooks; *capture*: the same forward inside `LayerCapture(model)`, "
        "then `.statistics()`; *hidden states*: `output_hidden_states=True`, then per-layer cosines "
        "computed from the returned tuple (ShortGPT-style scripts).",
        "",
    ]
    rows = []
    for r in cal["rows"]:
        rows.append(
            [
                str(r["seq_len"]),
                str(r["reps"]),
                _f(r["time"]["plain"]["median_s"], 3),
                _x(r["ratio_capture"]),
                _x(r["ratio_hidden_states"]),
                _f(r["peak_mb"]["plain"], 1),
                _f(r["peak_mb"]["capture"], 1),
                _f(r["peak_mb"]["hidden_states"], 1),
                _f(r["extra_mb"]["capture"], 1),
                _f(r["extra_mb"]["hidden_states"], 1),
                _f(r["expected_hidden_states_mb"], 1),
            ]
        )
    lines += _table(
        [
            "seq len",
            "reps",
            "plain (s)",
            "capture / plain",
            "hidden states / plain",
            "peak plain (MB)",
            "peak capture (MB)",
            "peak hidden states (MB)",
            "extra capture (MB)",
            "extra hidden states (MB)",
            "kept states L x seq x hidden x 4 B (MB)",
        ],
        rows,
    )
    d = cal.get("depth_check")
    if d:
        (h, f) = d["layers"]
        lines += [
            f"Depth check at seq {d['seq_len']}: extra memory over plain with {h} vs. {f} layers: "
            f"capture {_f(d['extra_mb']['capture'][0], 1)} vs. {_f(d['extra_mb']['capture'][1], 1)} MB, "
            f"hidden states {_f(d['extra_mb']['hidden_states'][0], 1)} vs. {_f(d['extra_mb']['hidden_states'][1], 1)} MB.",
            "",
        ]
    c = cal["correctness"]
    lines += [
        f"Correctness (seq {c['seq_len']}): capture's per-layer similarity vs. the hidden-states reference, "
        f"layers 0..{c['layers_compared'] - 1}: max |diff| = {c['max_abs_diff']:.2e} (tolerance {c['tolerance']:g}).",
        "",
        f"Memory: *peak* = peak RSS during one forward minus the RSS just before it ({cal['memory_method']}), "
        "each (variant, length) in a fresh process forked from a helper that holds the model, after a "
        "16-token warm-up forward; glibc's mmap threshold is fixed at "
        f"{cal.get('mmap_threshold_kb', 128)} KB there, so every tensor buffer leaves RSS when freed and "
        "the peak follows live tensors rather than what the allocator keeps. *extra* = a variant's peak "
        "minus plain's. The last column is what the returned hidden states hold (embeddings and every "
        "layer's output, float32); about two of them are alive at plain's peak anyway, so the expected "
        "extra is roughly (L - 2) x seq x hidden x 4 B.",
        "",
    ]
    return lines


def _pruning(pr: dict[str, Any]) -> list[str]:
    m = pr["model"]
    L = m["num_layers"]
    pre, dec = pr["prefill"], pr["decode"]
    lines = [
        "## 2. Speed-up from pruning",
        "",
        f"Random `{m['class']}`: {L} layers, hidden {m['hidden_size']}, intermediate {m['intermediate_size']}, "
        f"vocab {m['vocab_size']}, float32; k layers removed with `remove_decoder_layers_` "
        f"(removed: {', '.join(f'k={k}: {v}' for k, v in pr['removed'].items() if v)}). "
        f"Prefill: one forward over {pre['seq_len']} tokens building the KV cache, logits of the last "
        f"position only ({pre['reps']} reps). Decode: `generate` of exactly {dec['new_tokens']} tokens "
        f"after a {dec['prompt_len']}-token prompt, per token ({dec['reps']} reps). "
        "Ideal (decoder) = L/(L-k); ideal (model) also counts the parts pruning cannot shrink "
        "(embedding, final norm, lm_head), timed on their own.",
        "",
    ]
    for name, phase, unit, scale in (
        ("Prefill", pre, "s", 1.0),
        ("Decode", dec, "ms/token", 1000.0),
    ):
        rows = [
            [
                str(r["k"]),
                str(r["kept"]),
                _f(r["seconds"] * scale, 3),
                _x(r["speedup"], 2),
                _x(r["ideal_decoder"], 2),
                f"{100 * r['ratio_to_ideal_decoder']:.0f}%",
                _x(r["ideal_model"], 2),
                f"{100 * r['ratio_to_ideal_model']:.0f}%",
            ]
            for r in phase["rows"]
        ]
        lines += [f"{name}:", ""]
        lines += _table(
            [
                "k removed",
                "layers",
                f"time ({unit})",
                "speed-up",
                "ideal (decoder)",
                "of ideal (decoder)",
                "ideal (model)",
                "of ideal (model)",
            ],
            rows,
        )
        fx = phase["fixed"]
        lines += [
            f"{name} fixed part (embedding + norm + lm_head): {_f(fx['fixed_s'] * scale, 3)} {unit} of "
            f"{_f(fx['t0_s'] * scale, 3)}; a linear fit t = a + b x layers gives a = {_f(fx['fit_intercept_s'] * scale, 3)}, "
            f"b = {_f(fx['fit_per_layer_s'] * scale, 3)} {unit} per layer.",
            "",
        ]
    return lines


def _plan_cache(pc: dict[str, Any]) -> list[str]:
    ck = pc["checkpoint"]
    t = pc["time"]
    lines = [
        "## 3. Load time with a cached plan",
        "",
        f"Checkpoint: random `{ck['arch']}` with {ck['num_layers']} text layers, hidden {ck['hidden_size']} "
        f"({ck['safetensors_mb']:.0f} MB of safetensors). *plain*: `lmms_eval.models.get_model('{ck['arch']}')(pretrained=...)`; "
        "*cached*: `PrunedVLM(pretrained=..., criterion='math', budget=2, <calibration args>)` with its plan "
        f"already in `LMMS_PRUNE_CACHE` (removes {pc['removed']}). {pc['reps']} interleaved reps after one warm-up each. "
        f"Set-up: calibration statistics cached first, then one load that made and stored the plan "
        f"({_f(pc['plan_fill_s'], 2)} s, {pc['plan_fill_calibration_forwards']} calibration forwards).",
        "",
    ]
    lines += _table(
        ["variant", "median (s)", "min (s)", "max (s)"],
        [
            [n, _f(t[n]["median_s"], 3), _f(t[n]["min_s"], 3), _f(t[n]["max_s"], 3)]
            for n in ("plain", "cached")
        ],
    )
    prof = pc["profile"]
    lines += [
        f"cached / plain = {_x(pc['ratio'])} (median of per-round ratios {_x(pc['paired_ratio'])}); "
        f"extra {_f(pc['extra_ms'], 1)} ms; calibration forwards on cached loads: {pc['cached_calibration_forwards']}; "
        f"lmms-eval TaskManager built on the cached path: {'yes' if prof['task_manager_built'] else 'no'}.",
        "",
        "Where the cached path spends its time (cProfile, ms per construction, cumulative; profiling inflates Python-heavy code):",
        "",
    ]
    lines += _table(
        ["function", "ms"],
        [[f"`{r['function']}`", _f(r["ms"], 1)] for r in prof["own_functions_ms"][:8]],
    )
    if pc.get("direct_ms"):
        lines += ["Steps of the cached path timed directly (median of 5):", ""]
        lines += _table(["step", "ms"], [[k, _f(v, 2)] for k, v in pc["direct_ms"].items()])
    if pc.get("task_manager_ms"):
        lines += ["Finding the calibration tasks on a calibrating (uncached) load, timed once:", ""]
        lines += _table(["step", "ms"], [[k, _f(v, 0)] for k, v in pc["task_manager_ms"].items()])
    return lines


def _sweep(sw: dict[str, Any]) -> list[str]:
    s = sw["sweep"]
    lines = [
        "## 4. Calibration passes of a sweep",
        "",
        f"{len(sw['criteria'])} criteria ({', '.join(sw['criteria'])}) x {len(sw['budgets'])} budgets "
        f"({', '.join(map(str, sw['budgets']))}) = {sw['cells']} cells on a {sw['model']['num_layers']}-layer "
        f"`{sw['model']['arch']}`; calibration samples per domain: {sw['samples_per_domain']}. One `Calibrator`, "
        f"one `statistics(domains={tuple(s['domains'])}, block_sizes={tuple(s['block_sizes'])})`, then `make_plan` per cell "
        f"({s['distinct_removals']} distinct removals among {s['plans']} plans). Forwards counted by the calibrator and by a "
        "hook on the text model.",
        "",
    ]
    rows = [
        [
            "sweep (union of domains and block sizes, once)",
            str(s["calibrator_forwards"]),
            str(s["hooked_forwards"]),
        ]
    ]
    if sw.get("one_by_one"):
        o = sw["one_by_one"]
        rows.append(
            [
                "cells one by one, same calibrator (each asks only for its own block size)",
                str(o["calibrator_forwards"]),
                str(o["hooked_forwards"]),
            ]
        )
    rows.append(
        ["every cell calibrating the domains it reads (no sharing)", str(sw["naive_forwards"]), "-"]
    )
    lines += _table(["how", "forwards (calibrator)", "forwards (hook)"], rows)
    lines += [f"Passes per domain over the calibration set: {_f(sw['passes_per_domain'], 2)}.", ""]
    return lines


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# lmms-prune benchmarks",
        "",
        f"- Date: {res['date']}; mode: {res['mode']}; wall time {res['wall_s']:.0f} s",
        f"- Machine: {m['cpu']}, {m['cores']} cores (torch threads: {m['torch_threads']}); torch {m['torch']}, "
        f"transformers {m['transformers']}, Python {m['python']}",
        "- Method: every comparison runs in one process, variants interleaved (order rotated each round) "
        "after a warm-up; times are medians. Absolute times depend on the machine and its load, so "
        "read the ratios.",
        "",
        "## Targets",
        "",
    ]
    lines += _table(
        ["target", "measured", "met"],
        [[t["target"], t["value"], _yes(t["met"])] for t in res["targets"]],
    )
    for key, fn in (
        ("calibration_cost", _calibration),
        ("pruning_speedup", _pruning),
        ("plan_cache", _plan_cache),
        ("sweep", _sweep),
    ):
        if res.get(key):
            lines += fn(res[key])
    return "\n".join(lines).rstrip() + "\n"

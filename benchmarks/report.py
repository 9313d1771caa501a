"""Render the results dict as Markdown."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
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


def ci(est: dict[str, Any] | None, digits: int = 3, unit: str = "x", pct: bool = False) -> str:
    """``1.020x [1.010, 1.031]``: the estimate and its 95% interval (``pct``: in percent)."""
    if not est:
        return "-"
    if not all(math.isfinite(est[k]) for k in ("lo", "hi")):
        v = f"{100 * est['value']:.0f}%" if pct else f"{_f(est['value'], digits)}{unit}"
        return f"{v} [no 95% interval from {est.get('n', 0)} rounds]"
    if pct:
        return f"{100 * est['value']:.0f}% [{100 * est['lo']:.0f}, {100 * est['hi']:.0f}]"
    return f"{_f(est['value'], digits)}{unit} [{_f(est['lo'], digits)}, {_f(est['hi'], digits)}]"


def _verdict(v: str) -> str:
    return {"met": "met", "missed": "**missed**", "inconclusive": "*inconclusive*"}.get(v, v)


def ratio_list(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Every timed ratio of a run with both clocks' estimates, keyed for comparing runs.

    ``limit``/``at_most`` are set where the ratio is judged against a target.
    """
    out = []
    cal = res.get("calibration_cost")
    if cal:
        for r in cal["rows"]:
            s = r["seq_len"]
            out.append(
                {
                    "key": f"capture / plain, seq {s}",
                    "est": r["ratio_capture"],
                    "limit": cal["target"]["capture_time_ratio_max"],
                    "at_most": True,
                }
            )
            out.append({"key": f"hidden states / plain, seq {s}", "est": r["ratio_hidden_states"]})
    pr = res.get("pruning_speedup")
    if pr:
        lim = pr["target"]["min_ratio_to_ideal_decoder"]
        for phase in ("prefill", "decode"):
            for r in pr[phase]["rows"]:
                if r["k"]:
                    out.append(
                        {
                            "key": f"{phase} speed-up / ideal, k = {r['k']}",
                            "est": r["ratio_to_ideal_decoder"],
                            "limit": lim,
                            "at_most": False,
                            "pct": True,
                        }
                    )
                    out.append(
                        {
                            "key": f"{phase} speed-up / whole-model ideal, k = {r['k']}",
                            "est": r["ratio_to_ideal_model"],
                            "pct": True,
                        }
                    )
        out.append(
            {"key": "decode A/A control (k = 0 copy / k = 0)", "est": pr["decode"]["aa_control"]}
        )
    pc = res.get("plan_cache")
    if pc:
        out.append(
            {
                "key": "cached pruned_vlm load / plain load",
                "est": pc["ratio"],
                "limit": pc["target"]["max_ratio"],
                "at_most": True,
            }
        )
    return out + _end_to_end_ratios(res)


def _end_to_end_ratios(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Parts 5 and 6 (absent from runs made before they existed)."""
    out = []
    ce = res.get("calibration_e2e")
    if ce:
        for m in ce["models"]:
            for r in m["rows"]:
                out.append(
                    {
                        "key": f"calibration e2e / bound, {m['name']}, batch {r['batch_size']}",
                        "est": r["ratio"],
                        "limit": ce["target"]["max_ratio"],
                        "at_most": True,
                    }
                )
    hp = res.get("heal_prep")
    if hp:
        key = f"teacher answers one at a time / batch {hp['batch_size']}"
        out.append({"key": key, "est": hp["speedup"]})
    return out


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of every part that ran: what was asked, what was measured, and the verdict.

    Timed targets carry ``verdict`` on their own clock (``clock``) and ``wall_verdict``; a
    verdict is ``met`` only when every interval is on the right side of the limit.
    """
    parts = (
        ("calibration_cost", _calibration_targets),
        ("pruning_speedup", _pruning_targets),
        ("plan_cache", _plan_cache_targets),
        ("sweep", _sweep_targets),
        ("calibration_e2e", lambda ce: [_e2e_target(ce)]),
    )
    return [t for key, fn in parts if res.get(key) for t in fn(res[key])]


def _calibration_targets(cal: dict[str, Any]) -> list[dict[str, Any]]:
    """Part 1: capture's time, correctness and memory."""
    out = []
    t = cal["target"]
    out.append(
        {
            "target": f"capture time <= {t['capture_time_ratio_max']:.2f}x hook-free forward (every length)",
            "clock": t["clock"],
            "value": "; ".join(
                f"{r['seq_len']}: {ci(r['ratio_capture'][t['clock']])}" for r in cal["rows"]
            ),
            "wall_value": "; ".join(
                f"{r['seq_len']}: {ci(r['ratio_capture']['wall'])}" for r in cal["rows"]
            ),
            "verdict": t["verdict"][t["clock"]],
            "wall_verdict": t["verdict"]["wall"],
        }
    )
    c = cal["correctness"]
    out.append(
        {
            "target": f"capture similarity = hidden-states reference, layers 0..L-2 (tol {c['tolerance']:g})",
            "value": f"max diff {c['max_abs_diff']:.1e}",
            "verdict": "met" if c["ok"] else "missed",
        }
    )
    grows = cal.get("capture_memory_flat")
    if grows is not None:
        out.append(
            {
                "target": "capture extra memory does not grow with seq x layers",
                "value": grows["value"],
                "verdict": "met" if grows["met"] else "missed",
            }
        )
    return out


def _pruning_targets(pr: dict[str, Any]) -> list[dict[str, Any]]:
    """Part 2: prefill and decode speed-ups over L/(L-k)."""
    out = []
    t = pr["target"]
    lim = int(round(100 * t["min_ratio_to_ideal_decoder"]))
    for phase in ("prefill", "decode"):

        def value(clock: str, phase: str = phase) -> str:
            return "; ".join(
                f"k={r['k']}: {ci(r['ratio_to_ideal_decoder'][clock], pct=True)}"
                for r in pr[phase]["rows"]
                if r["k"]
            )

        judged = t[phase][t["clock"]]
        cause = "; ".join(
            f"k={r['k']} cannot reach it: ceiling {ci(r['ceiling'][t['clock']], pct=True)} "
            f"(what pruning cannot shrink is {100 * pr[phase]['fixed']['fixed_share']:.0f}% "
            f"of the unpruned time); measured {ci(r['ratio_to_ideal_model'][t['clock']], pct=True)} "
            "of that whole-model ideal"
            for r in pr[phase]["rows"]
            if r["k"] in judged.get("unreachable", ())
        )
        if judged.get("above_ceiling"):
            cause += (
                f"measured above the ceiling at k={judged['above_ceiling']}: the model of a "
                "fixed part plus an equal cost per layer does not hold, no k is called unreachable"
            )
        out.append(
            {
                "target": f"{phase} speed-up >= {lim}% of ideal L/(L-k) (every k)",
                "clock": t["clock"],
                "value": value(t["clock"]) + (f". {cause}" if cause else ""),
                "wall_value": value("wall"),
                "verdict": t[phase][t["clock"]]["verdict"],
                "wall_verdict": t[phase]["wall"]["verdict"],
            }
        )
    return out


def _plan_cache_targets(pc: dict[str, Any]) -> list[dict[str, Any]]:
    """Part 3: the load with a cached plan."""
    out = []
    t = pc["target"]
    out.append(
        {
            "target": f"cached pruned_vlm load <= {t['max_ratio']:.2f}x plain wrapper load",
            "clock": t["clock"],
            "value": ci(pc["ratio"][t["clock"]]),
            "wall_value": ci(pc["ratio"]["wall"]),
            "verdict": t["verdict"][t["clock"]],
            "wall_verdict": t["verdict"]["wall"],
        }
    )
    return out


def _sweep_targets(sw: dict[str, Any]) -> list[dict[str, Any]]:
    """Part 4: one calibration pass per domain."""
    out = []
    out.append(
        {
            "target": "sweep: exactly one calibration pass per domain",
            "value": f"{sw['sweep']['calibrator_forwards']} forwards for {sw['target']['forwards']} samples",
            "verdict": "met" if sw["target"]["met"] else "missed",
        }
    )
    return out


def _e2e_target(ce: dict[str, Any]) -> dict[str, Any]:
    t = ce["target"]

    def value(clock: str) -> str:
        return "; ".join(
            f"{m['name']}, batch {r['batch_size']}: {ci(r['ratio'][clock])}"
            for m in ce["models"]
            for r in m["rows"]
        )

    return {
        "target": f"calibration through pruned_vlm <= {t['max_ratio']:.2f}x the processor and "
        "one batched forward (every model and batch size)",
        "clock": t["clock"],
        "value": value(t["clock"]),
        "wall_value": value("wall"),
        "verdict": t["verdict"][t["clock"]],
        "wall_verdict": t["verdict"]["wall"],
    }


def targets_table(res: dict[str, Any]) -> list[str]:
    """The targets as a Markdown table: CPU-time and wall-time estimates with 95% intervals."""
    rows = [
        [
            t["target"],
            t.get("clock", "-"),
            t["value"],
            _verdict(t["verdict"]),
            t.get("wall_value", "-"),
            _verdict(t["wall_verdict"]) if "wall_verdict" in t else "-",
        ]
        for t in res["targets"]
    ]
    return _table(
        [
            "target",
            "judged on",
            "measured (median of per-round ratios [95% interval])",
            "verdict",
            "wall time [95% interval]",
            "verdict on wall time",
        ],
        rows,
    )


def _timing(t: dict[str, Any]) -> str:
    groups = t.get("groups", 1)
    where = f" on {groups} allocations of the weights" if groups > 1 else ""
    return (
        f"{t['rounds']} rounds{where}, stopped by {t['stopped']} after {t['seconds']:.0f} s"
        f" (host steal {t['steal_s']:.1f} s)"
    )


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
        v = r["time"]["variants"]
        rows.append(
            [
                str(r["seq_len"]),
                str(r["time"]["rounds"]),
                _f(v["plain"]["cpu"]["median_s"], 3),
                _f(v["plain"]["wall"]["median_s"], 3),
                ci(r["ratio_capture"]["cpu"]),
                ci(r["ratio_capture"]["wall"]),
                ci(r["ratio_hidden_states"]["cpu"]),
                _f(r["peak_mb"]["plain"], 1),
                _f(r["extra_mb"]["capture"], 1),
                _f(r["extra_mb"]["hidden_states"], 1),
                _f(r["expected_hidden_states_mb"], 1),
            ]
        )
    lines += _table(
        [
            "seq len",
            "rounds",
            "plain CPU (s)",
            "plain wall (s)",
            "capture / plain, CPU",
            "capture / plain, wall",
            "hidden states / plain, CPU",
            "peak plain (MB)",
            "extra capture (MB)",
            "extra hidden states (MB)",
            "kept states L x seq x hidden x 4 B (MB)",
        ],
        rows,
    )
    lines += [
        "Rounds per length: "
        + "; ".join(f"seq {r['seq_len']}: {_timing(r['time'])}" for r in cal["rows"])
        + ". *hidden states* is timed in the first rounds only (it decides no target). "
        "CPU seconds are process CPU time of every thread.",
        "",
    ]
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
        f"Every variant of an allocation shares its weight tensors. "
        f"Prefill: one forward over {pre['seq_len']} tokens building the KV cache, logits of the last "
        f"position only. Decode: `generate` of exactly {dec['new_tokens']} tokens "
        f"(`min_new_tokens` = `max_new_tokens`, no EOS) after a {dec['prompt_len']}-token prompt, per token. "
        "Ideal (decoder) = L/(L-k). What pruning cannot shrink (embedding, final norm, lm_head and, "
        "in decode, `generate`'s own per-token work) is timed in the same rounds as a view with no "
        "decoder layer; the ideal (model) T0 / (F + (T0 - F)(L-k)/L) counts it, per round. "
        "Ceiling = ideal (model) / ideal (decoder): the share of L/(L-k) no removal can exceed here.",
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
                _f(r["wall_seconds"] * scale, 3),
                ci(r["speedup"]["cpu"], 2),
                _x(r["ideal_decoder"], 2),
                ci(r["ratio_to_ideal_decoder"]["cpu"], pct=True),
                ci(r["ratio_to_ideal_decoder"]["wall"], pct=True),
                ci(r["ceiling"]["cpu"], pct=True),
                ci(r["ratio_to_ideal_model"]["cpu"], pct=True),
            ]
            for r in phase["rows"]
        ]
        lines += [f"{name} ({_timing(phase['time'])}):", ""]
        lines += _table(
            [
                "k removed",
                "layers",
                f"CPU ({unit})",
                f"wall ({unit})",
                "speed-up, CPU",
                "ideal (decoder)",
                "of ideal (decoder), CPU",
                "of ideal (decoder), wall",
                "ceiling, CPU",
                "of ideal (model), CPU",
            ],
            rows,
        )
        fx = phase["fixed"]
        lines += [
            f"{name} fixed part (the view with no decoder layer): {_f(fx['fixed_s'] * scale, 3)} {unit} of "
            f"{_f(fx['t0_s'] * scale, 3)} (CPU, {100 * fx['fixed_share']:.1f}%); a linear fit t = a + b x layers gives a = {_f(fx['fit_intercept_s'] * scale, 3)}, "
            f"b = {_f(fx['fit_per_layer_s'] * scale, 3)} {unit} per layer.",
            "",
        ]
    aa = dec["aa_control"]
    lines += [
        f"Decode A/A control (a second unpruned view of the same weights / k = 0, timed in the same "
        f"rounds; 1 by construction): CPU {ci(aa['cpu'])}, wall {ci(aa['wall'])}. Tokens generated "
        f"per call, every variant and round: {sorted({n for v in dec['tokens_generated'].values() for n in v})}.",
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
        f"already in `LMMS_PRUNE_CACHE` (removes {pc['removed']}). Interleaved rounds after one warm-up round. "
        f"Set-up: calibration statistics cached first, then one load that made and stored the plan "
        f"({_f(pc['plan_fill_s'], 2)} s, {pc['plan_fill_calibration_forwards']} calibration forwards).",
        "",
    ]
    v = t["variants"]
    lines += _table(
        ["variant", "CPU median (s)", "wall median (s)", "wall min (s)", "wall max (s)"],
        [
            [
                n,
                _f(v[n]["cpu"]["median_s"], 3),
                _f(v[n]["wall"]["median_s"], 3),
                _f(v[n]["wall"]["min_s"], 3),
                _f(v[n]["wall"]["max_s"], 3),
            ]
            for n in ("plain", "cached")
        ],
    )
    prof = pc["profile"]
    lines += [
        f"cached / plain: CPU {ci(pc['ratio']['cpu'])}, wall {ci(pc['ratio']['wall'])} "
        f"({_timing(t)}); extra {_f(pc['extra_ms']['cpu'], 1)} ms CPU, {_f(pc['extra_ms']['wall'], 1)} ms wall "
        f"(difference of medians); calibration forwards on cached loads: {pc['cached_calibration_forwards']}; "
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
        f"`{sw['model']['arch']}`; calibration samples per domain: {sw['samples_per_domain']}. One `Planner`, "
        f"one `plans(...)` call for every cell (domains {tuple(s['domains'])}, block sizes {tuple(s['block_sizes'])}) "
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
                "cells one by one, one planner (each asks only for its own plan)",
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


def _calibration_e2e(ce: dict[str, Any]) -> list[str]:
    lines = [
        "## 5. Calibration end to end",
        "",
        "*e2e*: one calibration pass of `pruned_vlm` built with `batch_size` (lmms-eval's "
        "`--batch_size`): the task's requests, the base wrapper's `generate_until` (its chat "
        "template, image handling and processor, as many documents a call as its batch size), "
        "the capture hooks and the statistics. *bound*: the same documents in the same batches "
        "through the processor (chat template, one processor call a batch) and one batched "
        "forward of the model inside `LayerCapture`, no harness. Docs/s at the median time of "
        "each variant; the ratio is the median of the per-round ratios e2e / bound.",
        "",
    ]
    rows = []
    for m in ce["models"]:
        for r in m["rows"]:
            d, w = r["docs_per_s"], r["work"]
            rows.append(
                [
                    f"{m['name']} ({m['model']['num_layers']} layers, "
                    f"hidden {m['model']['hidden_size']})",
                    str(r["batch_size"]),
                    str(r["docs"]),
                    _f(d["e2e"]["cpu"], 1),
                    _f(d["bound"]["cpu"], 1),
                    _f(d["e2e"]["wall"], 1),
                    _f(d["bound"]["wall"], 1),
                    ci(r["ratio"]["cpu"]),
                    ci(r["ratio"]["wall"]),
                    f"{_yes(w['ok'])} ({w['tokens'][0]} tokens, {w['forwards'][0]} forwards)",
                ]
            )
    lines += _table(
        [
            "model",
            "batch",
            "docs",
            "e2e docs/s (CPU)",
            "bound docs/s (CPU)",
            "e2e docs/s (wall)",
            "bound docs/s (wall)",
            "e2e / bound, CPU",
            "e2e / bound, wall",
            "same tokens and forwards",
        ],
        rows,
    )
    lines += [
        "Rounds: " + "; ".join(f"{m['name']}: {_timing(m['time'])}" for m in ce["models"]) + ".",
        "",
    ]
    return lines


def _heal_prep(hp: dict[str, Any]) -> list[str]:
    rate = hp["prompts_per_s"]
    lines = [
        "## 6. Teacher answers for healing",
        "",
        f"`add_continuations_` on the demo model ({hp['model']['class']}, {hp['model']['dtype']}): "
        f"greedy continuations of {hp['new_tokens']} tokens for {hp['prompts']} `{hp['task']}` "
        f"prompts as its base wrapper builds them; one prompt a `generate` call vs. "
        f"{hp['batch_size']} left-padded prompts a call. Identical answers: "
        f"{hp['identical_answers']} of {hp['prompts']}.",
        "",
    ]
    lines += _table(
        ["how", "prompts/s (CPU)", "prompts/s (wall)"],
        [
            [
                "one prompt at a time",
                _f(rate["one_at_a_time"]["cpu"], 1),
                _f(rate["one_at_a_time"]["wall"], 1),
            ],
            [
                f"batches of {hp['batch_size']}",
                _f(rate["batched"]["cpu"], 1),
                _f(rate["batched"]["wall"], 1),
            ],
        ],
    )
    lines += [
        f"Speed-up (one at a time / batched): CPU {ci(hp['speedup']['cpu'])}, wall "
        f"{ci(hp['speedup']['wall'])} ({_timing(hp['time'])}).",
        "",
    ]
    return lines


VLLM_ROW_FIELDS = (
    "layers",
    "removed",
    "batch",
    "decode_ms_per_token_unpruned",
    "decode_ms_per_token_pruned",
    "speedup",
    "target",
    "whole_model_ideal",
    "met",
)


def load_vllm(path: str | Path) -> dict[str, Any]:
    """The results of ``benchmarks.vllm_speedup`` (run in the vLLM environment), checked, with
    the file they came from."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"vllm={str(path)!r} is not a readable vLLM results file: {err}") from err
    missing = [k for k in ("date", "machine", "rows") if k not in data]
    missing += sorted({f for r in data.get("rows", []) for f in VLLM_ROW_FIELDS if f not in r})
    if missing:
        raise ValueError(
            f"vllm={str(path)!r} is not written by benchmarks.vllm_speedup: it lacks {missing}"
        )
    try:
        shown = path.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = path
    return {"file": str(shown), **data}


def _speedup_cell(value: Any) -> str:
    """A speed-up from vllm_speedup: an estimate with its interval, or a bare number (files
    written before it had rounds)."""
    if isinstance(value, dict):
        return ci(value, 2)
    return f"{_f(value, 2)}x [no interval: median of repetitions]"


def _transformers_at(pr: dict[str, Any] | None, layers: int, removed: int) -> str:
    """This run's transformers decode speed-up at the same share of layers removed, if any."""
    if not pr:
        return "-"
    L = pr["model"]["num_layers"]
    for r in pr["decode"]["rows"]:
        if r["k"] and r["k"] * layers == removed * L:
            return f"{ci(r['speedup']['cpu'], 2)} at k = {r['k']} of {L}"
    return f"- (no k of {L} removes {removed} / {layers})"


def _vllm(v: dict[str, Any], pr: dict[str, Any] | None) -> list[str]:
    m = v["machine"]
    rows = [
        [
            f"{r['removed']} of {r['layers']}",
            str(r["batch"]),
            f"{_f(r['decode_ms_per_token_unpruned'], 1)} -> "
            f"{_f(r['decode_ms_per_token_pruned'], 1)}",
            _speedup_cell(r["speedup"]),
            _x(r["target"], 2),
            _x(r["whole_model_ideal"], 2),
            _yes(r["met"]),
            _transformers_at(pr, r["layers"], r["removed"]),
        ]
        for r in v["rows"]
    ]
    lines = [
        "### Decode in vLLM, beside transformers",
        "",
        f"From `{v['file']}`, the run it came from: {v['date']}, vLLM {m.get('vllm', '?')}, "
        f"torch {m.get('torch', '?')}, transformers {m.get('transformers', '?')}, "
        f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores (`python -m benchmarks.vllm_speedup` "
        "in the vLLM environment; "
        "not this run). A random Qwen2 causal LM with vLLM's dummy weights, L - k layers, "
        f"{v.get('new_tokens', '?')} new tokens after {v.get('prompt_len', '?')}-token prompts, "
        "greedy; per-step decode = (time for N tokens - time for 1) / (N - 1), wall clock (the "
        "engine runs in its own process). The last column is this run's transformers `generate` "
        "at the same share of layers removed.",
        "",
    ]
    lines += _table(
        [
            "k of L",
            "batch",
            "decode ms/step unpruned -> pruned",
            "speed-up in vLLM",
            "target 0.9 L/(L-k)",
            "whole-model ideal",
            "met",
            "transformers `generate`, this run",
        ],
        rows,
    )
    return lines


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# lmms-prune benchmarks",
        "",
        f"- Date: {res['date']}; mode: {res['mode']}; wall time {res['wall_s']:.0f} s, "
        f"process CPU time {res.get('cpu_s', 0):.0f} s, CPU time stolen by the host {res.get('steal_s', 0):.1f} s",
        f"- Machine: {m['cpu']}, {m['cores']} cores{' (virtual machine)' if m.get('virtual_machine') else ''}, "
        f"torch threads fixed at {m['torch_threads']}; torch {m['torch']}, "
        f"transformers {m['transformers']}, Python {m['python']}; load average at start "
        + ", ".join(f"{x:.2f}" for x in m.get("loadavg_at_start", []))
        + "",
        "- Method: each comparison runs in one process; variants are interleaved in rounds (order "
        f"shuffled every round; seed {res.get('seed')}) after a warm-up round, and each round's ratio "
        "is taken between two calls seconds apart. A ratio is the median of the per-round ratios "
        "with its distribution-free 95% interval (binomial order statistics; none below 6 rounds); "
        "rounds on several allocations of the weights are summarised per allocation, and the ratio "
        "is the geometric mean of the allocations' medians with Student's t interval over them. "
        "Rounds continue until every "
        "interval a part decides on is within +-2% (+-1% for the load) or the part's time cap is "
        "reached. Each call is timed twice: process CPU time (every thread; not counting time "
        "the host steals) and wall time. A target is *met* only when its whole interval is on the "
        "right side of the limit, *missed* when it is wholly on the wrong side, and otherwise "
        "*inconclusive*; `judged on` says which clock decides (see benchmarks/README.md).",
        *(
            ["- **Quick mode: tiny models and few rounds; its verdicts judge nothing.**"]
            if res["mode"] == "quick"
            else []
        ),
        "",
        "## Targets",
        "",
    ]
    lines += targets_table(res)
    for key, fn in (
        ("calibration_cost", _calibration),
        ("pruning_speedup", _pruning),
        ("vllm_speedup", lambda v: _vllm(v, res.get("pruning_speedup"))),
        ("plan_cache", _plan_cache),
        ("sweep", _sweep),
        ("calibration_e2e", _calibration_e2e),
        ("heal_prep", _heal_prep),
    ):
        if res.get(key):
            lines += fn(res[key])
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Render a ``results.json`` again, with the vLLM speed-up from its own file beside it."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=main.__doc__)
    parser.add_argument("results", type=Path, help="a results.json of benchmarks.run")
    parser.add_argument("--vllm", type=Path, help="vllm_speedup.json of benchmarks.vllm_speedup")
    parser.add_argument("--out", type=Path, required=True, help="the Markdown file to write")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    a = parser.parse_args(argv)
    if a.out.exists() and not (a.force and a.out.suffix == ".md"):
        raise SystemExit(
            f"--out={str(a.out)!r} is not allowed: it exists; give a new file, or --force to "
            "replace a .md file"
        )
    res = json.loads(a.results.read_text())
    if a.vllm is not None:
        res["vllm_speedup"] = load_vllm(a.vllm)
    a.out.write_text(render(res))
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Part 5: calibration end to end through ``pruned_vlm`` vs. the lower bound doing the same work.

What a user waits for when ``pruned_vlm`` calibrates: the requests built from the lmms-eval
task, the base wrapper's ``generate_until`` (its chat template, image handling and processor,
``generate`` of one new token, as many documents a call as its batch size), the capture hooks
and the statistics. *e2e* is one calibration pass of a ``pruned_vlm`` built with ``batch_size``
(a fresh ``Calibrator`` on its harness source, one domain: requests built from the task, then
run). *bound* is the least that work can cost: the
same documents, in the same batches, through the processor (chat template, then one processor
call a batch) and one batched forward of the model inside ``LayerCapture``, with no harness.
Both measure the same tokens (checked before timing: equal token counts and forwards).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import Adaptive, interleaved, log, progress
from .stats import INCONCLUSIVE, MET, MISSED, verdict

MAX_RATIO = 1.20  # e2e / bound at the batch size asked for
CLOCK = "cpu"  # the clock the target is judged on (see benchmarks/README.md, Method)
DOMAIN = "math"
WIDE_ARCH = "qwen2_vl"  # the demo model's architecture, so both go through one wrapper


def load(pretrained: str | None, batch_size: int, docs: int, extra: dict) -> Any:
    """A ``pruned_vlm`` that keeps every layer (it calibrates nothing while loading)."""
    from .package import PrunedVLM

    return PrunedVLM(
        pretrained=pretrained,
        budget=0,
        plan_cache=False,
        batch_size=batch_size,
        calib_limit=docs,
        calib_nonmath="none",
        **extra,
    )


def e2e(lm) -> Any:
    """One calibration pass as ``lm`` runs it when it plans: a fresh ``Calibrator`` on its
    harness source builds the domain's requests from the task and runs them (nothing from
    memory or cache)."""
    from .package import Calibrator

    cal = lm.planner.calibrator
    return Calibrator(cal.source, cal.model, cal.config, cal.run_key).calibrate(DOMAIN).stats


class Bound:
    """The same documents through the processor and one batched forward each, hooks on.

    Batches are the wrapper's: its lmms-eval Collator orders the requests by prompt length in
    tokens, longest first, and cuts them every ``batch_size``. Prompts are built as the wrapper
    builds them (its system prompt, the images, then the text), without its image re-encoding.
    """

    def __init__(self, lm, batch_size: int):
        from lmms_eval.tasks import TaskManager

        from .package import build_requests

        wrapper, config = lm.base, lm.calibration
        tasks = TaskManager(include_path=config.task_paths, include_defaults=False)
        self.reqs = build_requests(config.sets[DOMAIN], tasks, "simple", config.limit)
        self.model, self.processor, self.tokens = lm.hf_model, wrapper.processor, config.tokens
        self.system = getattr(wrapper, "system_prompt", None)
        tok = wrapper.tokenizer
        order = sorted(self.reqs.requests, key=lambda r: (-len(tok.encode(r.args[0])), r.args[0]))
        self.batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def _prompt(self, request) -> tuple[str, list]:
        ctx, _, doc_to_visual, doc_id, task, split = request.args[:6]
        images = list(doc_to_visual(self.reqs.datasets[task][split][doc_id]) or [])
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": ctx}]
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": content})
        text = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return text, images

    def __call__(self) -> Any:
        import torch

        from .package import LayerCapture

        with torch.inference_mode(), LayerCapture(self.model, tokens=self.tokens) as cap:
            for batch in self.batches:
                texts, images = [], []
                for request in batch:
                    text, found = self._prompt(request)
                    texts.append(text)
                    images += found
                inputs = self.processor(
                    text=texts,
                    images=images or None,
                    padding=True,
                    padding_side="left",
                    return_tensors="pt",
                )
                self.model(**inputs, use_cache=False, logits_to_keep=1)
        return cap.statistics()


def same_work(full, bound) -> dict[str, Any]:
    """Both measured the same tokens in the same number of forwards (the wrapper re-encodes
    images as JPEG, so the similarities themselves differ a little)."""
    a, b = full.similarity(), bound.similarity()
    return {
        "tokens": [full.tokens, bound.tokens],
        "forwards": [full.forwards, bound.forwards],
        "max_abs_similarity_diff": max(abs(x - y) for x, y in zip(a, b, strict=True)),
        "ok": full.tokens == bound.tokens and full.forwards == bound.forwards,
    }


def _rows(times, batch_sizes: Sequence[int], docs: int, checks: dict) -> list[dict[str, Any]]:
    summary = times.summary()["variants"]
    rows = []
    for b in batch_sizes:
        per = {
            v: {c: docs / summary[f"{v}_b{b}"][c]["median_s"] for c in ("cpu", "wall")}
            for v in ("e2e", "bound")
        }
        ratio = times.ratios(f"e2e_b{b}", f"bound_b{b}")
        rows.append(
            {"batch_size": b, "docs": docs, "docs_per_s": per, "work": checks[b], "ratio": ratio}
        )
    return rows


def measure(
    name: str,
    pretrained: str | None,
    extra: dict,
    batch_sizes: Sequence[int],
    docs: int,
    plan: Adaptive,
    seed: int,
) -> dict[str, Any]:
    """Interleaved rounds of e2e and bound at every batch size on one checkpoint."""
    lms = {b: load(pretrained, b, docs, extra) for b in batch_sizes}
    bounds = {b: Bound(lms[b], b) for b in batch_sizes}
    checks = {b: same_work(e2e(lms[b]), bounds[b]()) for b in batch_sizes}
    n = bounds[batch_sizes[0]].reqs.total
    variants: dict[str, Any] = {}
    for b in batch_sizes:
        variants[f"e2e_b{b}"] = lambda lm=lms[b]: e2e(lm)
        variants[f"bound_b{b}"] = bounds[b]
    pairs = [(f"e2e_b{b}", f"bound_b{b}") for b in batch_sizes]
    bar = progress(plan.max_rounds, f"calibration end to end, {name}")
    times = interleaved(variants, pairs, plan, CLOCK, bar=bar, seed=seed)
    bar.close()
    log(f"[calibration e2e] {name}: {times.rounds} rounds ({times.stopped}, {times.seconds:.0f} s)")
    model = lms[batch_sizes[0]].hf_model
    text = model.config.get_text_config()
    return {
        "name": name,
        "model": {
            "class": type(model).__name__,
            "num_layers": text.num_hidden_layers,
            "hidden_size": text.hidden_size,
            "dtype": str(model.dtype),
        },
        "task": lms[batch_sizes[0]].calibration.sets[DOMAIN],
        "rows": _rows(times, batch_sizes, n, checks),
        "time": times.to_dict(),
    }


def _judge(models: list[dict[str, Any]], clock: str) -> str:
    """Met only if met for every model and batch size; missed if missed for any."""
    verdicts = [
        verdict(r["ratio"][clock], MAX_RATIO, at_most=True) for m in models for r in m["rows"]
    ]
    if MISSED in verdicts:
        return MISSED
    return MET if all(v == MET for v in verdicts) else INCONCLUSIVE


def run(
    models: Sequence[str],
    batch_sizes: Sequence[int],
    docs: int,
    wide_layers: int,
    wide_hidden: int,
    plan: Adaptive,
) -> dict[str, Any]:
    """Part 5 on the packaged demo model and on a tiny wide model of the same architecture."""
    from .package import save_tiny_vlm, wrapper_kwargs

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(models):
            pretrained, extra = None, {}
            if name != "demo":
                log(f"[calibration e2e] a {wide_layers}-layer {WIDE_ARCH} of width {wide_hidden}")
                folder = Path(tmp) / "wide"
                save_tiny_vlm(WIDE_ARCH, folder, num_layers=wide_layers, hidden_size=wide_hidden)
                pretrained, extra = str(folder), wrapper_kwargs(WIDE_ARCH)
            out.append(measure(name, pretrained, extra, batch_sizes, docs, plan, seed=i))
    return {
        "models": out,
        "batch_sizes": list(batch_sizes),
        "target": {
            "max_ratio": MAX_RATIO,
            "clock": CLOCK,
            "verdict": {c: _judge(out, c) for c in ("cpu", "wall")},
            "same_work": all(r["work"]["ok"] for m in out for r in m["rows"]),
        },
    }

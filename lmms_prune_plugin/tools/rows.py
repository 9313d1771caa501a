"""What a result row is, shared by the sweep, the readers of other harnesses and the report:
which harness evaluated it and which metric is a task's headline number."""

from __future__ import annotations

from collections.abc import Mapping

LMMS_EVAL, LM_EVAL, VLMEVAL = "lmms-eval", "lm-eval", "vlmeval"
HARNESSES = (LMMS_EVAL, LM_EVAL, VLMEVAL)
PREFERRED_METRICS = (
    "exact_match,none",
    "acc,none",
    "accuracy,none",
    "relaxed_overall,none",
    "gpt_eval_score,none",
    "Overall",  # VLMEvalKit's headline (harness_rows)
)


def harness_of(row: Mapping) -> str:
    """Which harness evaluated a row; rows without the field come from lmms-eval sweeps."""
    return str(row.get("harness") or LMMS_EVAL)


def primary_metric(metrics: dict[str, float]) -> tuple[str, float]:
    """The task's headline number: a preferred metric if present, else the first in name order."""
    for name in PREFERRED_METRICS:
        if name in metrics:
            return name, metrics[name]
    if not metrics:
        raise ValueError("a task in the sweep has no numeric metric")
    name = sorted(metrics)[0]
    return name, metrics[name]

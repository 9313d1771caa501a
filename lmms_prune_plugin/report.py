"""Sweep rows -> leaderboard and regime analysis. Pure functions; files are written by the CLI.

Regime rule (documented in the README). For every budget b > 0, over the methods evaluated at b:
spread(b) = best - worst of the overall score, leader(b) = the best method.
- moderate starts at the first budget whose spread is below ``converge`` points;
- high starts at the first budget from which a spacing-aware method (a strategy registered
  with ``spacing_aware``: ``spaced``, ``uniform``) leads at every larger budget, searched from the moderate start (or from the
  smallest budget when the methods never converge);
- every budget before those is low.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

MATH_HINTS = ("math", "wemath", "dynamath", "logicvista", "geometry", "arith")
NON_MATH_HINTS = ("nonmath", "non_math", "non-math")
PREFERRED_METRICS = (
    "exact_match,none",
    "acc,none",
    "accuracy,none",
    "relaxed_overall,none",
    "gpt_eval_score,none",
)


def _traits(strategy: str) -> tuple[bool, bool]:
    """(uses scores, spacing-aware) of a registered strategy; a name no longer registered
    (rows from another installation) counts as a plain score-based one."""
    from .plugins import get_strategies

    found = get_strategies().get(strategy)
    return (found.uses_scores, found.spacing_aware) if found else (True, False)


def primary_metric(metrics: dict[str, float]) -> tuple[str, float]:
    """The task's headline number: a preferred metric if present, else the first in name order."""
    for name in PREFERRED_METRICS:
        if name in metrics:
            return name, metrics[name]
    if not metrics:
        raise ValueError("a task in the sweep has no numeric metric")
    name = sorted(metrics)[0]
    return name, metrics[name]


def is_math_task(task: str, math_tasks: Sequence[str] | None = None) -> bool:
    if math_tasks is not None:
        return task in math_tasks
    name = task.lower()
    # "prune_demo_nonmath" holds the hint "math" but names the other domain.
    if any(neg in name for neg in NON_MATH_HINTS):
        return False
    return any(h in name for h in MATH_HINTS)


def check_rows(rows: list[dict], allow_mixed: bool = False) -> None:
    if not rows:
        raise ValueError("the sweep file holds no rows")
    models = sorted({r["model"] for r in rows})
    if len(models) > 1 and not allow_mixed:
        raise ValueError(
            f"the sweep mixes rows of {len(models)} models ({', '.join(models)}); pass --allow-mixed to report them together"
        )


def method(row: dict) -> str:
    if row["budget"] == 0:
        return "unpruned"
    if not _traits(row["strategy"])[0]:  # scores ignored: the criterion is immaterial
        return row["strategy"]
    return f"{row['criterion']}+{row['strategy']}"


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


@dataclass
class Leaderboard:
    math_tasks: list[str]
    general_tasks: list[str]
    records: list[dict] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return [
            "model",
            "method",
            "criterion",
            "strategy",
            "budget",
            "kept_layers",
            "removed",
            "spacing_aware",
            *self.math_tasks,
            "math_avg",
            *self.general_tasks,
            "general_avg",
            "overall",
            "engine",  # hf or vllm: which engine produced the row
        ]


def leaderboard(rows: list[dict], math_tasks: Sequence[str] | None = None) -> Leaderboard:
    """One record per (model, method, budget): per-task scores (in points) and group averages."""
    tasks = sorted({t for r in rows for t in r["metrics"]})
    maths = [t for t in tasks if is_math_task(t, math_tasks)]
    general = [t for t in tasks if t not in maths]
    board = Leaderboard(maths, general)
    for r in sorted(
        rows, key=lambda r: (r["model"], r["budget"], method(r), r.get("engine", "hf"))
    ):
        scores = {t: 100 * primary_metric(m)[1] for t, m in r["metrics"].items()}
        rec = {
            "model": r["model"], "method": method(r), "engine": r.get("engine", "hf"),
            "criterion": r["criterion"], "strategy": r["strategy"],
            "budget": r["budget"], "kept_layers": r.get("kept_layers"), "removed": r.get("removed", []),
            "spacing_aware": r["budget"] != 0 and _traits(r["strategy"])[1],
            **{t: scores.get(t) for t in tasks},
            "math_avg": _mean([scores[t] for t in maths if t in scores]),
            "general_avg": _mean([scores[t] for t in general if t in scores]),
            "overall": _mean(list(scores.values())),
        }  # fmt: skip
        board.records.append(rec)
    return board


def regimes(board: Leaderboard, converge: float = 2.0, score: str = "overall") -> list[dict]:
    """Per budget: spread across methods, leader, and regime (see the module docstring)."""
    budgets = sorted({r["budget"] for r in board.records if r["budget"] != 0})
    per = []
    for b in budgets:
        recs = [r for r in board.records if r["budget"] == b and r[score] is not None]
        if not recs:
            continue
        best = max(recs, key=lambda r: (r[score], r["method"]))
        worst = min(r[score] for r in recs)
        per.append({"budget": b, "methods": len(recs), "spread": best[score] - worst, "leader": best["method"],
                    "leader_score": best[score], "leader_strategy": best["strategy"],
                    "leader_spacing_aware": best["spacing_aware"]})  # fmt: skip
    moderate = next((i for i, p in enumerate(per) if p["spread"] < converge), None)
    start = moderate if moderate is not None else 0
    high = next(
        (i for i in range(start, len(per)) if all(p["leader_spacing_aware"] for p in per[i:])),
        None,
    )
    for i, p in enumerate(per):
        p["regime"] = (
            "high"
            if high is not None and i >= high
            else "moderate"
            if moderate is not None and i >= moderate
            else "low"
        )
    return per


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    if isinstance(v, list):
        return " ".join(map(str, v)) or "-"
    return str(v)


def to_markdown(board: Leaderboard, regime_rows: list[dict] | None = None) -> str:
    cols = [
        c
        for c in board.columns
        if c not in ("criterion", "strategy", "spacing_aware")
        and not (c == "model" and len({r["model"] for r in board.records}) == 1)
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in board.records]
    if regime_rows:
        lines += [
            "",
            "| budget | methods | spread (points) | leader | leader score | regime |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {p['budget']} | {p['methods']} | {p['spread']:.1f} | {p['leader']} | {p['leader_score']:.1f} | {p['regime']} |"
            for p in regime_rows
        ]
    return "\n".join(lines) + "\n"


def by_budget(board: Leaderboard, columns: Sequence[str] = ("math_avg", "general_avg")) -> str:
    """Markdown pivot: one row per method, one column per budget, cells ``col1 / col2 / ...``.

    The unpruned model fills budget 0 of every row, so each row reads as a curve.
    """
    budgets = sorted({r["budget"] for r in board.records})
    methods = sorted({r["method"] for r in board.records if r["budget"] != 0})
    cell = {(r["model"], r["method"], r["budget"]): r for r in board.records}
    models = sorted({r["model"] for r in board.records})
    base = {m: cell.get((m, "unpruned", 0)) for m in models}
    label = " / ".join(columns)
    lines = [
        "| " + " | ".join(["method", *[f"budget {b}" for b in budgets]]) + " |",
        "|---" * (len(budgets) + 1) + "|",
    ]
    for model in models:
        for m in methods:
            cells = []
            for b in budgets:
                rec = base[model] if b == 0 else cell.get((model, m, b))
                cells.append(" / ".join(_fmt(rec[c]) for c in columns) if rec else "-")
            name = m if len(models) == 1 else f"{model}: {m}"
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return f"Cells: {label} (points).\n\n" + "\n".join(lines) + "\n"


def to_csv(board: Leaderboard) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=board.columns, lineterminator="\n")
    w.writeheader()
    for r in board.records:
        w.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})
    return buf.getvalue()


def to_json(board: Leaderboard, regime_rows: list[dict]) -> str:
    return json.dumps(
        {
            "math_tasks": board.math_tasks,
            "general_tasks": board.general_tasks,
            "rows": board.records,
            "regimes": regime_rows,
        },
        indent=2,
    )

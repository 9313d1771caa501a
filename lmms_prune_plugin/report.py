"""Sweep rows -> leaderboard and regime analysis. Pure functions; files are written by the CLI.

Regime rule with intervals (:func:`regimes_ci`, used when every row holds per-document
results). For every budget b > 0: the leader is the method with the best overall score; a
paired bootstrap over documents (the same resampled documents for every method, each task
resampled on its own) gives, for every other method, an interval of (leader - method); the
method is *indistinguishable* from the leader when that interval reaches 0.
- moderate starts at the first budget at which every method of the family (default: those
  whose criterion reads calibration scores and whose strategy uses them) is
  indistinguishable from the leader;
- high starts at the first budget from which, at every larger budget too, a spacing-aware
  method leads and every method that is not spacing-aware is significantly below it
  (its interval of leader - method lies above 0), searched from the moderate
  start (or from the smallest budget when the family never converges);
- every budget before those is low.

Regime rule without per-document results (:func:`regimes`, older sweep files). For every
budget b > 0, over the methods evaluated at b:
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

import numpy as np

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
    """A report compares like with like: one model, made with one configuration (settings),
    unless ``allow_mixed``; and never one cell (model, method, budget, engine) twice."""
    if not rows:
        raise ValueError("the sweep file holds no rows")
    models = sorted({r["model"] for r in rows})
    if len(models) > 1 and not allow_mixed:
        raise ValueError(
            f"the sweep mixes rows of {len(models)} models ({', '.join(models)}); pass --allow-mixed to report them together"
        )
    seen: dict[tuple, dict] = {}
    for r in rows:
        cell = (r["model"], method(r), r["budget"], r.get("engine", "hf"))
        if cell in seen:
            raise ValueError(
                f"the sweep holds model={cell[0]!r}, method={cell[1]!r}, budget={cell[2]!r}, "
                f"engine={cell[3]!r} twice (tasks {seen[cell]['tasks']} and {r['tasks']}); a "
                "report holds one row per cell: report those sweeps separately"
            )
        seen[cell] = r
    if not allow_mixed:
        _check_one_configuration(rows)


def _check_one_configuration(rows: list[dict]) -> None:
    from .sweep import settings_difference

    first: dict[str, dict] = {}
    for r in rows:
        have = first.setdefault(r["model"], r)
        if r.get("settings") != have.get("settings"):
            what = settings_difference(r.get("settings"), have.get("settings") or {})
            raise ValueError(
                f"the rows of model {r['model']!r} were made with other {what}; pass "
                "--allow-mixed to report them together"
            )


def method(row: dict) -> str:
    if row["budget"] == 0:
        return "unpruned"
    if not _traits(row["strategy"])[0]:  # scores ignored: the criterion is immaterial...
        healed = row["criterion"].endswith("+heal")  # ...but a healed row is another method
        return row["strategy"] + ("+heal" if healed else "")
    return f"{row['criterion']}+{row['strategy']}"


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


@dataclass
class Leaderboard:
    math_tasks: list[str]
    general_tasks: list[str]
    records: list[dict] = field(default_factory=list)
    docs: list[dict | None] = field(default_factory=list)  # per record: per-document scores

    @property
    def has_docs(self) -> bool:
        return bool(self.docs) and all(d is not None for d in self.docs)

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
            *[f"{g}_ci" for g in GROUPS if any(f"{g}_ci" in r for r in self.records)],
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
        board.docs.append(_docs(r))
    return board


def _docs(row: dict) -> dict[str, dict[int, float]] | None:
    """A row's per-document scores in points, {task: {doc_id: value}}, if it has them for
    every task it scores."""
    per = row.get("per_doc") or {}
    if not row["metrics"] or set(per) != set(row["metrics"]):
        return None
    return {t: {int(i): 100 * float(v) for i, v in zip(d["doc_ids"], d["values"], strict=True)}
            for t, d in per.items()}  # fmt: skip


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


GROUPS = ("math_avg", "general_avg", "overall")


def score_family(record: dict) -> bool:
    """The default family of the regime rule: a criterion that reads calibration scores, with
    a strategy that uses them (not ``last``/``random``, not score-free ``uniform``)."""
    from .plugins import get_criteria

    crit = get_criteria().get(record["criterion"])
    uses_scores = _traits(record["strategy"])[0]
    return record["budget"] != 0 and uses_scores and crit is not None and bool(crit.domains)


def bootstrap_intervals(board: Leaderboard, replicates: int = 1000, confidence: float = 0.95,
                        seed: int = 0) -> dict[float, dict]:  # fmt: skip
    """Paired bootstrap over documents, per budget (the unpruned model is budget 0).

    Every record gets ``{group}_ci`` = [low, high] percentile intervals of its math, general
    and overall scores (points). Returns, per budget, the replicate scores of each group as
    ``{"index": [record index...], group: array (records, replicates)}`` for paired tests.
    Documents are those every record at that budget evaluated (per task); each task is
    resampled on its own, with the same draw for every method.
    """
    if not board.has_docs:
        raise ValueError(
            "the sweep rows hold no per-document results; rerun the sweep to get intervals"
        )
    if replicates < 2:
        raise ValueError(f"replicates={replicates!r} is not allowed; it must be an integer >= 2")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} is not allowed; it must be in (0, 1)")
    rng = np.random.default_rng(seed)
    lo_q, hi_q = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    out = {}
    budgets = sorted({(r["model"], r["budget"]) for r in board.records})
    for model, b in budgets:
        idx = [i for i, r in enumerate(board.records) if (r["model"], r["budget"]) == (model, b)]
        tasks = sorted({t for i in idx for t in board.docs[i]})
        task_reps = {}
        for t in tasks:
            have = [i for i in idx if t in board.docs[i]]
            common = sorted(set.intersection(*(set(board.docs[i][t]) for i in have)))
            if not common:
                continue
            values = np.array([[board.docs[i][t][d] for d in common] for i in have])
            draw = rng.integers(0, len(common), size=(replicates, len(common)))
            task_reps[t] = (have, values[:, draw].mean(axis=-1))  # (len(have), replicates)
        groups = {"math_avg": board.math_tasks, "general_avg": board.general_tasks,
                  "overall": tasks}  # fmt: skip
        result: dict = {"index": idx}
        for g, members in groups.items():
            mat = np.full((len(idx), replicates), np.nan)
            for row, i in enumerate(idx):
                parts = [task_reps[t][1][task_reps[t][0].index(i)] for t in members
                         if t in task_reps and i in task_reps[t][0]]  # fmt: skip
                if parts:
                    mat[row] = np.mean(parts, axis=0)
                rec = board.records[i]
                rec[f"{g}_ci"] = (
                    [float(np.percentile(mat[row], lo_q)), float(np.percentile(mat[row], hi_q))]
                    if parts else None
                )  # fmt: skip
            result[g] = mat
        out[(model, b)] = result
    return out


def regimes_ci(board: Leaderboard, replicates: int = 1000, confidence: float = 0.95,
               seed: int = 0, family: str = "score", score: str = "overall") -> list[dict]:  # fmt: skip
    """Per budget: leader, the methods indistinguishable from it, and the regime (see the
    module docstring). ``family``: "score" (score-based criteria) or "all" methods."""
    if family not in ("score", "all"):
        raise ValueError(f"family={family!r} is not allowed; choose score or all")
    if score not in GROUPS:
        raise ValueError(f"score={score!r} is not allowed; choose one of: {', '.join(GROUPS)}")
    reps = bootstrap_intervals(board, replicates, confidence, seed)
    alpha_q = 100 * (1 - confidence) / 2
    models = sorted({r["model"] for r in board.records})
    if len(models) > 1:
        raise ValueError(f"regimes are per model; the board holds {len(models)} models")
    per = []
    for (_, b), res in sorted(reps.items(), key=lambda kv: kv[0][1]):
        if b == 0:
            continue
        idx, mat = res["index"], res[score]
        recs = [board.records[i] for i in idx]
        valid = [k for k, r in enumerate(recs) if r[score] is not None]
        if not valid:
            continue
        lead = max(valid, key=lambda k: (recs[k][score], recs[k]["method"]))
        tied, below = [], []
        for k in valid:
            if k == lead:
                continue
            diff = mat[lead] - mat[k]
            (tied if np.percentile(diff, alpha_q) <= 0 else below).append(recs[k]["method"])
        others_plain = [
            recs[k]["method"] for k in valid if k != lead and not recs[k]["spacing_aware"]
        ]
        members = [recs[k]["method"] for k in valid
                   if family == "all" or score_family(recs[k])]  # fmt: skip
        leader = recs[lead]
        per.append({
            "budget": b, "methods": len(valid), "leader": leader["method"],
            "leader_score": leader[score], "leader_ci": leader.get(f"{score}_ci"),
            "leader_spacing_aware": leader["spacing_aware"], "tied_with_leader": sorted(tied),
            "family": sorted(members),
            "family_converged": all(m == leader["method"] or m in tied for m in members),
            "spacing_leads": leader["spacing_aware"]
            and all(m in below for m in others_plain),
            "spread": max(recs[k][score] for k in valid) - min(recs[k][score] for k in valid),
        })  # fmt: skip
    moderate = next((i for i, p in enumerate(per) if p["family_converged"]), None)
    start = moderate if moderate is not None else 0
    high = next(
        (i for i in range(start, len(per)) if all(p["spacing_leads"] for p in per[i:])), None
    )
    for i, p in enumerate(per):
        p["regime"] = (
            "high" if high is not None and i >= high
            else "moderate" if moderate is not None and i >= moderate
            else "low"
        )  # fmt: skip
    return per


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, float) for x in v):
        return f"[{v[0]:.1f}, {v[1]:.1f}]"  # an interval
    if isinstance(v, list):
        return " ".join(map(str, v)) or "-"
    return str(v)


def to_markdown(board: Leaderboard, regime_rows: list[dict] | None = None) -> str:
    cols = [
        c
        for c in board.columns
        if c not in ("criterion", "strategy", "spacing_aware", "math_avg_ci", "general_avg_ci")
        and not (c == "model" and len({r["model"] for r in board.records}) == 1)
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in board.records]
    if regime_rows and "tied_with_leader" in regime_rows[0]:
        lines += [
            "",
            "| budget | methods | leader | leader score [interval] | indistinguishable from the leader | family converged | spacing-aware leads significantly | regime |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {p['budget']} | {p['methods']} | {p['leader']} | {p['leader_score']:.1f} {_fmt(p['leader_ci'])} | "
            f"{', '.join(p['tied_with_leader']) or '-'} | {'yes' if p['family_converged'] else 'no'} | "
            f"{'yes' if p['spacing_leads'] else 'no'} | {p['regime']} |"
            for p in regime_rows
        ]
    elif regime_rows:
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
    # One curve per model and engine: rows of two engines never stand in for each other.
    cell = {(r["model"], r["engine"], r["method"], r["budget"]): r for r in board.records}
    series = sorted({(r["model"], r["engine"]) for r in board.records})
    models, engines = {m for m, _ in series}, {e for _, e in series}
    label = " / ".join(columns)
    lines = [
        "| " + " | ".join(["method", *[f"budget {b}" for b in budgets]]) + " |",
        "|---" * (len(budgets) + 1) + "|",
    ]
    for model, engine in series:
        for m in methods:
            cells = []
            for b in budgets:
                rec = cell.get((model, engine, "unpruned" if b == 0 else m, b))
                cells.append(" / ".join(_with_ci(rec, c) for c in columns) if rec else "-")
            name = f"{model}: {m}" if len(models) > 1 else m
            name += f" [{engine}]" if len(engines) > 1 else ""
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ci = any(f"{c}_ci" in r for r in board.records for c in columns)
    note = " ± half the width of the bootstrap interval" if ci else ""
    return f"Cells: {label} (points{note}).\n\n" + "\n".join(lines) + "\n"


def _with_ci(rec: dict, col: str) -> str:
    ci = rec.get(f"{col}_ci")
    if rec[col] is None or not ci:
        return _fmt(rec[col])
    return f"{rec[col]:.1f}±{(ci[1] - ci[0]) / 2:.1f}"


def to_csv(board: Leaderboard) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=board.columns, lineterminator="\n")
    w.writeheader()
    for r in board.records:
        w.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})
    return buf.getvalue()


def to_json(board: Leaderboard, regime_rows: list[dict]) -> str:
    """Leaderboard rows and regimes (per-document results are left in the sweep file)."""
    return json.dumps(
        {
            "math_tasks": board.math_tasks,
            "general_tasks": board.general_tasks,
            "rows": board.records,
            "regimes": regime_rows,
        },
        indent=2,
    )

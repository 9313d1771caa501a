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

from lmms_prune_plugin.tools.rows import LMMS_EVAL, harness_of, primary_metric

MATH_HINTS = ("math", "wemath", "dynamath", "logicvista", "geometry", "arith")
NON_MATH_HINTS = ("nonmath", "non_math", "non-math")


def _traits(strategy: str) -> tuple[bool, bool]:
    """(uses scores, spacing-aware) of a registered strategy; a name no longer registered
    (rows from another installation) counts as a plain score-based one."""
    from lmms_prune_plugin.core.plugins import get_strategies

    found = get_strategies().get(strategy)
    return (found.uses_scores, found.spacing_aware) if found else (True, False)


def is_math_task(task: str, math_tasks: Sequence[str] | None = None) -> bool:
    if math_tasks is not None:
        return task in math_tasks
    name = task.lower()
    # "prune_demo_nonmath" holds the hint "math" but names the other domain.
    if any(neg in name for neg in NON_MATH_HINTS):
        return False
    return any(h in name for h in MATH_HINTS)


def cell_of(row: dict) -> tuple:
    """A report's cell: rows of other engines or harnesses stand beside each other."""

    return row["model"], harness_of(row), method(row), row["budget"], row.get("engine", "hf")


def check_rows(rows: list[dict], allow_mixed: bool = False) -> None:
    """A report compares like with like: one model, made with one configuration (settings) per
    harness, unless ``allow_mixed``; and never one cell (model, harness, method, budget,
    engine) twice."""
    if not rows:
        raise ValueError("the sweep file holds no rows")
    models = sorted({r["model"] for r in rows})
    if len(models) > 1 and not allow_mixed:
        raise ValueError(
            f"the sweep mixes rows of {len(models)} models ({', '.join(models)}); pass "
            "--allow-mixed to report them together"
        )
    seen: dict[tuple, dict] = {}
    for r in rows:
        cell = cell_of(r)
        if cell in seen:
            raise ValueError(
                f"the sweep holds model={cell[0]!r}, harness={cell[1]!r}, method={cell[2]!r}, "
                f"budget={cell[3]!r}, engine={cell[4]!r} twice (tasks {seen[cell]['tasks']} and "
                f"{r['tasks']}); a report holds one row per cell: report those sweeps separately"
            )
        seen[cell] = r
    if not allow_mixed:
        _check_one_configuration(rows)


def _check_one_configuration(rows: list[dict]) -> None:
    from lmms_prune_plugin.tools.sweep import settings_difference

    first: dict[tuple, dict] = {}
    for r in rows:
        harness = harness_of(r)
        have = first.setdefault((r["model"], harness), r)
        if r.get("settings") == have.get("settings"):
            continue
        if harness == LMMS_EVAL:
            what = settings_difference(r.get("settings"), have.get("settings") or {})
        else:
            a, b = r.get("settings") or {}, have.get("settings") or {}
            what = "; ".join(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
            what = f"{harness} settings ({what})"
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
            "harness",  # lmms-eval, lm-eval or vlmeval: which harness evaluated it
        ]

    def series(self) -> dict[tuple[str, str, str], Leaderboard]:
        """The board of each (model, harness, engine): its methods compete with each other
        only. The records are shared, so intervals set on a part show on the whole."""
        out: dict[tuple[str, str, str], Leaderboard] = {}
        for rec, doc in zip(self.records, self.docs or [None] * len(self.records), strict=True):
            key = (rec["model"], rec["harness"], rec["engine"])
            part = out.setdefault(key, Leaderboard(self.math_tasks, self.general_tasks))
            part.records.append(rec)
            part.docs.append(doc)
        return out


def leaderboard(rows: list[dict], math_tasks: Sequence[str] | None = None) -> Leaderboard:
    """One record per (model, harness, method, budget, engine): per-task scores (in points)
    and group averages."""

    tasks = sorted({t for r in rows for t in r["metrics"]})
    maths = [t for t in tasks if is_math_task(t, math_tasks)]
    general = [t for t in tasks if t not in maths]
    board = Leaderboard(maths, general)
    order = sorted(
        rows,
        key=lambda r: (r["model"], r["budget"], method(r), harness_of(r), r.get("engine", "hf")),
    )
    for r in order:
        scores = {t: 100 * primary_metric(m)[1] for t, m in r["metrics"].items()}
        rec = {
            "model": r["model"],
            "method": method(r),
            "engine": r.get("engine", "hf"),
            "harness": harness_of(r),
            "criterion": r["criterion"],
            "strategy": r["strategy"],
            "budget": r["budget"],
            "kept_layers": r.get("kept_layers"),
            "removed": r.get("removed", []),
            "spacing_aware": r["budget"] != 0 and _traits(r["strategy"])[1],
            **{t: scores.get(t) for t in tasks},
            "math_avg": _mean([scores[t] for t in maths if t in scores]),
            "general_avg": _mean([scores[t] for t in general if t in scores]),
            "overall": _mean(list(scores.values())),
        }
        board.records.append(rec)
        board.docs.append(_docs(r))
    return board


def _docs(row: dict) -> dict[str, dict[int, float]] | None:
    """A row's per-document scores in points, {task: {doc_id: value}}, if it has them for
    every task it scores."""
    per = row.get("per_doc") or {}
    if not row["metrics"] or set(per) != set(row["metrics"]):
        return None
    return {
        t: {int(i): 100 * float(v) for i, v in zip(d["doc_ids"], d["values"], strict=True)}
        for t, d in per.items()
    }


def _label_regimes(per: list[dict], moderate: int | None, high: int | None) -> list[dict]:
    """Every budget before ``moderate`` is low; from ``high`` on, high."""
    for i, p in enumerate(per):
        if high is not None and i >= high:
            p["regime"] = "high"
        elif moderate is not None and i >= moderate:
            p["regime"] = "moderate"
        else:
            p["regime"] = "low"
    return per


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
        per.append(
            {
                "budget": b,
                "methods": len(recs),
                "spread": best[score] - worst,
                "leader": best["method"],
                "leader_score": best[score],
                "leader_strategy": best["strategy"],
                "leader_spacing_aware": best["spacing_aware"],
            }
        )
    moderate = next((i for i, p in enumerate(per) if p["spread"] < converge), None)
    start = moderate if moderate is not None else 0
    high = next(
        (i for i in range(start, len(per)) if all(p["leader_spacing_aware"] for p in per[i:])),
        None,
    )
    return _label_regimes(per, moderate, high)


GROUPS = ("math_avg", "general_avg", "overall")


def score_family(record: dict) -> bool:
    """The default family of the regime rule: a criterion that reads calibration scores, with
    a strategy that uses them (not ``last``/``random``, not score-free ``uniform``)."""
    from lmms_prune_plugin.core.plugins import get_criteria

    crit = get_criteria().get(record["criterion"])
    uses_scores = _traits(record["strategy"])[0]
    return record["budget"] != 0 and uses_scores and crit is not None and bool(crit.domains)


def _check_bootstrap(board: Leaderboard, replicates: int, confidence: float) -> None:
    if not board.has_docs:
        raise ValueError(
            "the sweep rows hold no per-document results; rerun the sweep to get intervals"
        )
    if replicates < 2:
        raise ValueError(f"replicates={replicates!r} is not allowed; it must be an integer >= 2")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} is not allowed; it must be in (0, 1)")


def bootstrap_intervals(
    board: Leaderboard, replicates: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[tuple, dict]:
    """Paired bootstrap over documents, per budget of each series (model, harness, engine;
    the unpruned model is budget 0).

    Every record gets ``{group}_ci`` = [low, high] percentile intervals of its math, general
    and overall scores (points). Returns, per (model, harness, engine, budget), the replicate
    scores of each group as ``{"index": [record index...], group: array (records,
    replicates)}`` for paired tests. Documents are those every record of that budget evaluated
    (per task); each task is resampled on its own, with the same draw for every method.
    """
    _check_bootstrap(board, replicates, confidence)
    rng = np.random.default_rng(seed)
    quantiles = (100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2)
    out = {}
    keys = sorted({(r["model"], r["harness"], r["engine"], r["budget"]) for r in board.records})
    for key in keys:
        idx = [
            i
            for i, r in enumerate(board.records)
            if (r["model"], r["harness"], r["engine"], r["budget"]) == key
        ]
        task_reps = _task_replicates(board, idx, replicates, rng)
        out[key] = _group_intervals(board, idx, task_reps, replicates, quantiles)
    return out


def _task_replicates(board: Leaderboard, idx: list[int], replicates: int, rng) -> dict:
    """Per task: (records that evaluated it, their mean over each resample of the common
    documents, shaped (records, replicates))."""
    tasks = sorted({t for i in idx for t in board.docs[i]})
    task_reps = {}
    for t in tasks:
        have = [i for i in idx if t in board.docs[i]]
        common = sorted(set.intersection(*(set(board.docs[i][t]) for i in have)))
        if not common:
            continue
        values = np.array([[board.docs[i][t][d] for d in common] for i in have])
        draw = rng.integers(0, len(common), size=(replicates, len(common)))
        task_reps[t] = (have, values[:, draw].mean(axis=-1))
    return task_reps


def _group_intervals(board, idx, task_reps, replicates, quantiles) -> dict:
    """Each group's replicate scores per record, and its interval set on the record."""
    groups = {
        "math_avg": board.math_tasks,
        "general_avg": board.general_tasks,
        "overall": sorted({t for i in idx for t in board.docs[i]}),
    }
    result: dict = {"index": idx}
    for g, members in groups.items():
        mat = np.full((len(idx), replicates), np.nan)
        for row, i in enumerate(idx):
            parts = [
                task_reps[t][1][task_reps[t][0].index(i)]
                for t in members
                if t in task_reps and i in task_reps[t][0]
            ]
            ci = None
            if parts:
                mat[row] = np.mean(parts, axis=0)
                ci = [float(np.percentile(mat[row], q)) for q in quantiles]
            board.records[i][f"{g}_ci"] = ci
        result[g] = mat
    return result


def regimes_ci(
    board: Leaderboard,
    replicates: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    family: str = "score",
    score: str = "overall",
) -> list[dict]:
    """Per budget: leader, the methods indistinguishable from it, and the regime (see the
    module docstring). ``family``: "score" (score-based criteria) or "all" methods. One
    series (model, harness, engine) at a time."""
    if family not in ("score", "all"):
        raise ValueError(f"family={family!r} is not allowed; choose score or all")
    if score not in GROUPS:
        raise ValueError(f"score={score!r} is not allowed; choose one of: {', '.join(GROUPS)}")
    models = sorted({r["model"] for r in board.records})
    if len(models) > 1:
        raise ValueError(f"regimes are per model; the board holds {len(models)} models")
    if len(board.series()) > 1:
        raise ValueError("regimes are per harness and engine; report each series on its own")
    reps = bootstrap_intervals(board, replicates, confidence, seed)
    alpha_q = 100 * (1 - confidence) / 2
    per = []
    for key, res in sorted(reps.items(), key=lambda kv: kv[0][3]):
        if key[3] != 0:
            found = _budget_regime(board, key[3], res, score, alpha_q, family)
            per += [found] if found else []
    moderate = next((i for i, p in enumerate(per) if p["family_converged"]), None)
    start = moderate if moderate is not None else 0
    high = next(
        (i for i in range(start, len(per)) if all(p["spacing_leads"] for p in per[i:])), None
    )
    return _label_regimes(per, moderate, high)


def _budget_regime(board, b, res: dict, score: str, alpha_q: float, family: str) -> dict | None:
    """The leader of one budget, who is tied with it, and whether the family converged."""
    idx, mat = res["index"], res[score]
    recs = [board.records[i] for i in idx]
    valid = [k for k, r in enumerate(recs) if r[score] is not None]
    if not valid:
        return None
    lead = max(valid, key=lambda k: (recs[k][score], recs[k]["method"]))
    tied, below = [], []
    for k in valid:
        if k != lead:
            diff = mat[lead] - mat[k]
            (tied if np.percentile(diff, alpha_q) <= 0 else below).append(recs[k]["method"])
    others_plain = [recs[k]["method"] for k in valid if k != lead and not recs[k]["spacing_aware"]]
    members = [recs[k]["method"] for k in valid if family == "all" or score_family(recs[k])]
    leader = recs[lead]
    return {
        "budget": b,
        "methods": len(valid),
        "leader": leader["method"],
        "leader_score": leader[score],
        "leader_ci": leader.get(f"{score}_ci"),
        "leader_spacing_aware": leader["spacing_aware"],
        "tied_with_leader": sorted(tied),
        "family": sorted(members),
        "family_converged": all(m == leader["method"] or m in tied for m in members),
        "spacing_leads": leader["spacing_aware"] and all(m in below for m in others_plain),
        "spread": max(recs[k][score] for k in valid) - min(recs[k][score] for k in valid),
    }


def series_regimes(
    board: Leaderboard,
    converge: float = 2.0,
    replicates: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    family: str = "score",
) -> tuple[list[dict], list[str]]:
    """Regimes of every series (model, harness, engine), each by the interval rule when all of
    its rows hold per-document results, else by the spread rule; each regime row names its
    series. Returns the rows and a note per series that has no intervals."""
    per, notes = [], []
    for (model, harness, engine), part in sorted(board.series().items()):
        if part.has_docs:
            found = regimes_ci(part, replicates, confidence, seed, family)
        else:
            found = regimes(part, converge=converge)
            notes.append(
                f"the rows of {model} ({harness}, {engine}) hold no per-document results, so "
                f"no intervals; regimes by the spread rule (converge={converge} points)"
            )
        per += [p | {"model": model, "harness": harness, "engine": engine} for p in found]
    return per, notes


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


#: Where each harness's rows come from, said under the Markdown and HTML leaderboards.
HARNESS_NOTES = {
    "lmms-eval": "lmms-eval: rows of lmms-prune sweep files",
    "lm-eval": "lm-eval: EleutherAI's lm-evaluation-harness results_*.json and the plan.json "
    "beside them",
    "vlmeval": "vlmeval: VLMEvalKit's *_acc.csv (each dataset's Overall, put on the same "
    "0-100 points as the others whether VLMEvalKit wrote 0-1 or 0-100) and plan.json",
}


def board_columns(board: Leaderboard) -> list[str]:
    """The columns a reader sees: the method names its criterion and strategy, intervals show
    in the group cells, and the model column only when there are several models."""
    hidden = ("criterion", "strategy", "spacing_aware", *[f"{g}_ci" for g in GROUPS])
    one_model = len({r["model"] for r in board.records}) == 1
    return [c for c in board.columns if c not in hidden and not (c == "model" and one_model)]


def notes(board: Leaderboard) -> list[str]:
    """What the numbers are and where each harness's rows come from."""
    harnesses = sorted({r["harness"] for r in board.records})
    out = [
        "Scores are in points (0-100); each row is one (model, harness, method, budget, "
        "engine): rows of different harnesses or engines stand side by side, never merged."
    ]
    out += [HARNESS_NOTES.get(h, f"{h}: rows that name this harness") for h in harnesses]
    if any(r.get("overall_ci") for r in board.records):
        out.append("Intervals: percentile intervals of a paired bootstrap over documents.")
    return out


def _md(v) -> str:
    return _fmt(v).replace("|", "\\|")  # names are user input: a bar would split the cell


def to_markdown(board: Leaderboard, regime_rows: list[dict] | None = None) -> str:
    shown = board_columns(board)
    cols = [c for c in board.columns if c in shown or c == "overall_ci"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += [
        "| " + " | ".join(_md(r[c] if c in r else None) for c in cols) + " |" for r in board.records
    ]
    regime_rows = regime_rows or []
    named = len({_series(p) for p in regime_rows}) > 1
    with_ci = [p for p in regime_rows if "tied_with_leader" in p]
    spread = [p for p in regime_rows if "tied_with_leader" not in p]
    if with_ci:
        lines += ["", *_regime_table(with_ci, named, _CI_COLUMNS, _ci_cells)]
    if spread:
        lines += ["", *_regime_table(spread, named, _SPREAD_COLUMNS, _spread_cells)]
    lines += ["", *[f"- {n}" for n in notes(board)]]
    return "\n".join(lines) + "\n"


_CI_COLUMNS = (
    "budget",
    "methods",
    "leader",
    "leader score [interval]",
    "indistinguishable from the leader",
    "family converged",
    "spacing-aware leads significantly",
    "regime",
)
_SPREAD_COLUMNS = ("budget", "methods", "spread (points)", "leader", "leader score", "regime")


def _series(p: dict) -> str:
    """A regime row's series, as a label."""
    return " / ".join(str(p[k]) for k in ("model", "harness", "engine") if k in p)


def _ci_cells(p: dict) -> list[str]:
    return [
        str(p["budget"]),
        str(p["methods"]),
        p["leader"],
        f"{p['leader_score']:.1f} {_fmt(p['leader_ci'])}",
        ", ".join(p["tied_with_leader"]) or "-",
        "yes" if p["family_converged"] else "no",
        "yes" if p["spacing_leads"] else "no",
        p["regime"],
    ]


def _spread_cells(p: dict) -> list[str]:
    return [
        str(p["budget"]),
        str(p["methods"]),
        f"{p['spread']:.1f}",
        p["leader"],
        f"{p['leader_score']:.1f}",
        p["regime"],
    ]


def _regime_table(rows: list[dict], named: bool, columns, cells) -> list[str]:
    head = (["series"] if named else []) + list(columns)
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for p in rows:
        values = ([_series(p)] if named else []) + cells(p)
        out.append("| " + " | ".join(v.replace("|", "\\|") for v in values) + " |")
    return out


def by_budget(board: Leaderboard, columns: Sequence[str] = ("math_avg", "general_avg")) -> str:
    """Markdown pivot: one row per method, one column per budget, cells ``col1 / col2 / ...``.

    The unpruned model fills budget 0 of every row, so each row reads as a curve. Each series
    (model, harness, engine) has its own rows: rows of two engines or harnesses never stand in
    for each other.
    """
    budgets = sorted({r["budget"] for r in board.records})
    cell = {(*_key(r), r["method"], r["budget"]): r for r in board.records}
    series = sorted({_key(r) for r in board.records})
    label = " / ".join(columns)
    lines = [
        "| " + " | ".join(["method", *[f"budget {b}" for b in budgets]]) + " |",
        "|---" * (len(budgets) + 1) + "|",
    ]
    for key in series:
        methods = sorted({r["method"] for r in board.records if _key(r) == key and r["budget"]})
        for m in methods:
            cells = []
            for b in budgets:
                rec = cell.get((*key, "unpruned" if b == 0 else m, b))
                cells.append(" / ".join(_with_ci(rec, c) for c in columns) if rec else "-")
            name = _md(series_label(key, series, m))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ci = any(f"{c}_ci" in r for r in board.records for c in columns)
    note = " ± half the width of the bootstrap interval" if ci else ""
    return f"Cells: {label} (points{note}).\n\n" + "\n".join(lines) + "\n"


def _key(rec: dict) -> tuple[str, str, str]:
    return rec["model"], rec["harness"], rec["engine"]


def series_label(key: tuple[str, str, str], series, method_name: str) -> str:
    """``method``, with the model before it and ``[harness, engine]`` after it where the
    board has several of them."""
    model, harness, engine = key
    several = [len({k[i] for k in series}) > 1 for i in range(3)]
    name = f"{model}: {method_name}" if several[0] else method_name
    tags = [v for v, many in zip((harness, engine), several[1:], strict=True) if many]
    return name + (f" [{', '.join(tags)}]" if tags else "")


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

"""Sweeps: criteria x strategies x budgets on one loaded model, evaluated by lmms-eval.

Calibration runs once per domain (every budget's angular block size captured in that pass);
each cell then costs only its evaluation. Rows are appended to a JSONL file as cells finish,
so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .distributed import is_main
from .layers import decoder_layers_removed
from .models import engine as engines
from .planner import BASELINE, PruneOptions
from .plugins import get_strategy


@dataclass(frozen=True)
class Cell:
    criterion: str
    strategy: str
    budget: int | float

    def key(self, model: str, tasks: Sequence[str], limit: int | None) -> str:
        return json.dumps([model, self.criterion, self.strategy, self.budget, sorted(tasks), limit])


@dataclass
class SweepSummary:
    cells: int
    ran: int
    skipped: int
    calibration_forwards: int


def plan_cells(
    criteria: Iterable[str], strategies: Iterable[str | None], budgets: Iterable[int | float]
) -> list[Cell]:
    """Every combination; budget 0 is one shared unpruned cell; ``None`` = criterion's default.

    A strategy that ignores scores (``uniform``) is one cell per budget (with the
    calibration-free ``last`` criterion) however many criteria are swept.
    """
    cells = []
    budgets = list(budgets)
    if any(b == 0 for b in budgets):
        cells.append(Cell(BASELINE, BASELINE, 0))
    for c in criteria:
        for s in strategies:
            for b in budgets:
                if b != 0:
                    opts = PruneOptions(criterion=c, strategy=s, budget=b)  # validates all three
                    name = opts.strategy_name
                    free = not get_strategy(name).uses_scores
                    cells.append(Cell("last" if free else c, name, b))
    return list(dict.fromkeys(cells))


def check_tasks(tasks: Sequence[str], task_manager) -> None:
    known = set(task_manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ValueError(
            f"tasks={unknown!r}: not known to lmms-eval (with the given --include_path)"
        )


def read_rows(path: Path) -> list[dict]:
    """Rows of a sweep file; a malformed line is an error naming it."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not a JSON line ({err.msg})") from err
        if not isinstance(row, dict) or "criterion" not in row or "metrics" not in row:
            raise ValueError(f"{path}:{n}: not a sweep row (needs 'criterion' and 'metrics')")
        rows.append(row)
    return rows


def task_metrics(results: dict) -> dict[str, dict[str, float]]:
    """Numeric metrics of each leaf task (no stderr, no groups) from simple_evaluate's output."""
    subtasks = results.get("group_subtasks", {})
    out = {}
    for task, metrics in results.get("results", {}).items():
        if subtasks.get(task):  # a group: its member tasks are listed themselves
            continue
        out[task] = {
            k: float(v)
            for k, v in metrics.items()
            if "stderr" not in k and isinstance(v, int | float) and not isinstance(v, bool)
        }
    return out


def run_sweep(
    lm,
    cells: Sequence[Cell],
    tasks: Sequence[str],
    task_manager,
    out: str | Path,
    limit: int | None = None,
    alpha: float = 0.5,
    min_gap: int = 2,
    engine: str = "hf",
) -> SweepSummary:
    """Evaluate every cell not already in ``out``; ``lm`` is an unpruned ``pruned_vlm``.

    ``engine="vllm"``: once every plan is made the Hugging Face model is released, and each cell
    is evaluated by vLLM on its export (built once, kept in the plan cache); ``lm`` must have
    been built with ``engine=vllm`` inside :func:`~lmms_prune_plugin.models.engine.deferred`.
    """
    from lmms_eval.evaluator import simple_evaluate

    from .models import results as results_mod

    out = Path(out)
    lm.keep_loaded = True
    model_name = lm.pretrained
    if engine != getattr(lm, "engine", "hf"):
        raise ValueError(
            f"engine={engine!r} is not the engine the model was built for ({getattr(lm, 'engine', 'hf')!r})"
        )
    done = {  # rows of another engine are other cells
        (Cell(r["criterion"], r["strategy"], r["budget"]).key(r["model"], r["tasks"], r.get("limit")),
         r.get("engine", "hf"))
        for r in (read_rows(out) if out.exists() else [])
    }  # fmt: skip
    todo = [c for c in cells if (c.key(model_name, tasks, limit), engine) not in done]
    n = lm.identity.num_layers
    # Every plan first, from one calibration pass per domain: a cell that cannot be planned
    # (say spaced beyond what min_gap allows) stops the sweep before any evaluation.
    options = [
        PruneOptions(
            criterion=c.criterion,
            strategy=c.strategy,
            budget=c.budget,
            alpha=alpha,
            min_gap=min_gap,
        )  # fmt: skip
        if c.budget != 0
        else PruneOptions(criterion="last", budget=0)
        for c in todo
    ]
    plans = lm.planner.plans(options)
    if engine != "hf" and todo:
        engines.release_hf_model(lm)
    for cell, plan in tqdm(
        list(zip(todo, plans, strict=True)), desc="sweep", disable=not is_main()
    ):
        removed = plan.removed
        if engine != "hf":
            res = _evaluate_in_engine(lm, plan, tasks, limit, task_manager)
        else:
            with decoder_layers_removed(lm.hf_model, removed):
                results_mod.record(plan, lm.identity)
                res = simple_evaluate(
                    model=lm, tasks=list(tasks), limit=limit, task_manager=task_manager
                )
        if res is None or not is_main():  # other ranks: the harness reports on rank 0 only
            continue
        row = {
            "model": model_name, "criterion": cell.criterion, "strategy": cell.strategy, "budget": cell.budget,
            "num_layers": n, "kept_layers": n - len(removed), "removed": list(removed), "tasks": sorted(tasks),
            "limit": limit, "metrics": task_metrics(res), "scores": list(plan.scores),
            "calibration": plan.to_dict()["calibration"], "engine": engine,
        }  # fmt: skip
        with out.open("a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    return SweepSummary(len(cells), len(todo), len(cells) - len(todo), lm.planner.forwards)


def _evaluate_in_engine(lm, plan, tasks: Sequence[str], limit: int | None, task_manager):
    """One cell in vLLM: the plan's export (cached), an engine on it, lmms-eval, engine stopped."""
    from lmms_eval.evaluator import simple_evaluate

    path = engines.cached_export(lm.pretrained, plan, engines.cache_dir(lm), lm.revision,
                                 lm.trust_remote_code)  # fmt: skip
    served = engines.open_engine(path, lm.is_simple, lm.engine_kwargs, lm.trust_remote_code)
    try:
        return simple_evaluate(
            model=served, tasks=list(tasks), limit=limit, task_manager=task_manager
        )
    finally:
        engines.close_engine(served)

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
    heal=None,
) -> SweepSummary:
    """Evaluate every cell not already in ``out``; ``lm`` is an unpruned ``pruned_vlm``.

    With ``heal`` (:class:`~.heal.HealOptions`) every pruned cell is also healed and evaluated
    again: that row's criterion reads ``<criterion>+heal``, next to the unhealed one.
    """
    from lmms_eval.evaluator import simple_evaluate

    from .models import results as results_mod

    out = Path(out)
    lm.keep_loaded = True
    model_name = lm.pretrained
    done = {
        Cell(r["criterion"], r["strategy"], r["budget"]).key(r["model"], r["tasks"], r.get("limit"))
        for r in (read_rows(out) if out.exists() else [])
    }
    todo = [c for c in cells if c.key(model_name, tasks, limit) not in done]
    if heal is not None:  # a healed row is missing: the cell is evaluated again, healed
        todo = [c for c in cells if c.key(model_name, tasks, limit) not in done
                or c.budget != 0 and _healed(c).key(model_name, tasks, limit) not in done]  # fmt: skip
        data = None
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
    for cell, plan in tqdm(
        list(zip(todo, plans, strict=True)), desc="sweep", disable=not is_main()
    ):
        runs = [(cell, None)] if cell.key(model_name, tasks, limit) not in done else []
        if heal is not None and cell.budget != 0:
            if _healed(cell).key(model_name, tasks, limit) not in done:
                from .heal import heal_, training_data_for, unload_
                from .training_data import wrapper_tokenizer

                data = data or training_data_for(lm, heal)  # the teacher is the same for every cell
                runs.append((_healed(cell), "heal"))
        for row_cell, healing in runs:
            peft_model = summary = None
            if healing:
                peft_model, result = heal_(
                    lm.hf_model, wrapper_tokenizer(lm.base), plan, data, heal
                )
                summary = result.summary()
            try:
                with decoder_layers_removed(lm.hf_model, plan.removed):
                    results_mod.record(plan, lm.identity)
                    res = simple_evaluate(
                        model=lm, tasks=list(tasks), limit=limit, task_manager=task_manager
                    )
            finally:
                if peft_model is not None:
                    unload_(peft_model)  # the next cell starts from the original weights
            if res is None or not is_main():  # other ranks: the harness reports on rank 0 only
                continue
            _append_row(out, row_cell, plan, res, model_name, n, tasks, limit, summary)
    return SweepSummary(len(cells), len(todo), len(cells) - len(todo), lm.planner.forwards)


def _healed(cell: Cell) -> Cell:
    return Cell(f"{cell.criterion}+heal", cell.strategy, cell.budget)


def _append_row(out: Path, cell: Cell, plan, res: dict, model_name: str, n: int,
                tasks: Sequence[str], limit: int | None, healing: dict | None) -> None:  # fmt: skip
    removed = plan.removed
    row = {
        "model": model_name, "criterion": cell.criterion, "strategy": cell.strategy, "budget": cell.budget,
        "num_layers": n, "kept_layers": n - len(removed), "removed": list(removed), "tasks": sorted(tasks),
        "limit": limit, "metrics": task_metrics(res), "scores": list(plan.scores),
        "calibration": plan.to_dict()["calibration"],
    }  # fmt: skip
    if healing is not None:
        row["healing"] = healing
    with out.open("a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")

"""Sweeps: criteria x strategies x budgets on one loaded model, evaluated by lmms-eval.

Calibration runs once per domain (every budget's angular block size captured in that pass);
each cell then costs only its evaluation. Rows are appended to a JSONL file as cells finish,
so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from .args import check_writable
from .distributed import is_main
from .layers import decoder_layers_removed
from .models import engine as engines
from .planner import BASELINE, PruneOptions
from .plugins import get_strategy

SWEPT = ("criterion", "strategy", "budget")  # one value per cell; every other option is shared


@dataclass(frozen=True)
class Cell:
    criterion: str
    strategy: str
    budget: int | float

    def key(self, model: str, tasks: Sequence[str], limit: int | None, settings: dict) -> str:
        """What makes two rows the same measurement: a resumed sweep skips only those."""
        return json.dumps([model, self.criterion, self.strategy, self.budget, sorted(tasks), limit,
                           settings], sort_keys=True)  # fmt: skip


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


#: Keys every sweep row has, with the types they must have.
ROW_FIELDS: dict[str, tuple[type, ...]] = {
    "model": (str,), "criterion": (str,), "strategy": (str,), "budget": (int, float),
    "tasks": (list,), "metrics": (dict,), "removed": (list,),
}  # fmt: skip


def check_row(row: object) -> str | None:
    """Why ``row`` is not a sweep row, or None."""
    if not isinstance(row, dict):
        return f"a {type(row).__name__}, not a JSON object"
    for name, types in ROW_FIELDS.items():
        if name not in row:
            return f"no {name!r}"
        value = row[name]
        if isinstance(value, bool) or not isinstance(value, types):
            return f"{name}={value!r} is not {' or '.join(t.__name__ for t in types)}"
    if row.get("limit") is not None and (
        isinstance(row["limit"], bool) or not isinstance(row["limit"], int | float)
    ):
        return f"limit={row['limit']!r} is not a number or null"
    for task, metrics in row["metrics"].items():
        if not isinstance(metrics, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values()
        ):
            return f"metrics[{task!r}] is not a mapping of metric names to numbers"
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in row["removed"]):
        return f"removed={row['removed']!r} is not a list of layer indices"
    return None


def read_rows(path: Path) -> list[dict]:
    """Rows of a sweep file; a malformed line is an error naming the file and line."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"sweep={str(path)!r} is a folder; give a sweep JSONL file")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not a JSON line ({err.msg})") from err
        problem = check_row(row)
        if problem:
            raise ValueError(f"{path}:{n}: not a sweep row: {problem}")
        rows.append(row)
    return rows


def check_out(out: Path) -> list[dict]:
    """The rows already in ``out`` (a resumed sweep), after checking it can be appended to."""
    if out.is_dir():
        raise ValueError(f"out={str(out)!r} is a folder; give the sweep JSONL file to write")
    check_writable("out", out)
    return read_rows(out) if out.exists() else []


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


def document_scores(results: dict) -> dict[str, dict]:
    """Per leaf task, the headline metric of every evaluated document (from the logged samples):
    ``{task: {"metric": "exact_match,none", "doc_ids": [...], "values": [...]}}``, by doc id.

    A task whose samples do not carry that metric as a number is left out (its score stays
    in ``metrics``; the report then has no interval for it)."""
    from .report import primary_metric

    out = {}
    samples = results.get("samples") or {}
    for task, metrics in task_metrics(results).items():
        if not metrics or task not in samples:
            continue
        name = primary_metric(metrics)[0]
        metric, _, filt = name.partition(",")
        values = {}
        for sample in samples[task]:
            if filt and sample.get("filter", filt) != filt:
                continue
            v = sample.get(metric)
            if isinstance(v, bool) or not isinstance(v, int | float):
                values = None
                break
            values[int(sample["doc_id"])] = float(v)
        if values:
            ids = sorted(values)
            out[task] = {"metric": name, "doc_ids": ids, "values": [values[i] for i in ids]}
    return out


def run_sweep(
    lm,
    cells: Sequence[Cell],
    tasks: Sequence[str],
    task_manager,
    out: str | Path,
    limit: int | None = None,
    options: dict | None = None,
    engine: str = "hf",
    heal=None,
) -> SweepSummary:
    """Evaluate every cell not already in ``out``; ``lm`` is an unpruned ``pruned_vlm``.

    ``options``: prune options every cell shares (alpha, min_gap, ...). ``engine="vllm"``: once
    every plan is made the Hugging Face model is released, and each cell is evaluated by vLLM on
    its export (built once, kept in the plan cache); ``lm`` must have been built with
    ``engine=vllm`` inside :func:`~lmms_prune_plugin.models.engine.deferred`. With ``heal``
    (:class:`~.heal.HealOptions`) every pruned cell is also healed and evaluated again: that
    row's criterion reads ``<criterion>+heal``, next to the unhealed one.
    """
    out = Path(out)
    lm.keep_loaded = True
    model_name = lm.pretrained
    if engine != getattr(lm, "engine", "hf"):
        raise ValueError(
            f"engine={engine!r} is not the engine the model was built for ({getattr(lm, 'engine', 'hf')!r})"
        )
    if heal is not None and engine != "hf":
        raise ValueError("heal is not allowed with engine='vllm': healing trains the HF model")
    common = dict(options or {})
    shared = {k: v for k, v in asdict(PruneOptions.parse(**common)).items() if k not in SWEPT}
    cal = lm.calibration
    settings = {"options": shared, "calibration": {"sets": dict(cal.sets), "limit": cal.limit,
                                                    "tokens": cal.tokens}}  # fmt: skip
    done = {  # rows of another engine or other settings are other cells
        (Cell(r["criterion"], r["strategy"], r["budget"]).key(
            r["model"], r["tasks"], r.get("limit"), r.get("settings", {})), r.get("engine", "hf"))
        for r in check_out(out)
    }  # fmt: skip

    def missing(cell: Cell) -> bool:
        return (cell.key(model_name, tasks, limit, settings), engine) not in done

    # A cell runs when its row is missing, or (healing) its healed row is.
    todo = [c for c in cells
            if missing(c) or heal is not None and c.budget != 0 and missing(_healed(c))]  # fmt: skip
    n = lm.identity.num_layers
    # Every plan first, from one calibration pass per domain: a cell that cannot be planned
    # (say spaced beyond what min_gap allows) stops the sweep before any evaluation.
    per_cell = [
        PruneOptions.parse(**common, criterion=c.criterion, strategy=c.strategy, budget=c.budget)
        if c.budget != 0
        else PruneOptions(criterion="last", budget=0)
        for c in todo
    ]
    plans = lm.planner.plans(per_cell)
    if engine != "hf" and todo:
        engines.release_hf_model(lm)
    data = None
    for cell, plan in tqdm(
        list(zip(todo, plans, strict=True)), desc="sweep", disable=not is_main()
    ):
        runs = [(cell, None)] if missing(cell) else []
        if heal is not None and cell.budget != 0 and missing(_healed(cell)):
            from .heal import training_data_for

            data = data or training_data_for(lm, heal)  # the teacher is the same for every cell
            runs.append((_healed(cell), "heal"))
        for row_cell, healing in runs:
            if engine != "hf":
                res, summary = _evaluate_in_engine(lm, plan, tasks, limit, task_manager), None
            else:
                res, summary = _evaluate_here(lm, plan, tasks, limit, task_manager,
                                              heal if healing else None, data)  # fmt: skip
            if res is None or not is_main():  # other ranks: the harness reports on rank 0 only
                continue
            row = {
                "model": model_name, "criterion": row_cell.criterion, "strategy": row_cell.strategy,
                "budget": row_cell.budget, "num_layers": n, "kept_layers": n - len(plan.removed),
                "removed": list(plan.removed), "tasks": sorted(tasks), "limit": limit,
                "metrics": task_metrics(res), "per_doc": document_scores(res),
                "scores": list(plan.scores), "calibration": plan.to_dict()["calibration"],
                "settings": settings, "engine": engine,
            }  # fmt: skip
            if summary is not None:
                row["healing"] = summary
            with out.open("a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
    return SweepSummary(len(cells), len(todo), len(cells) - len(todo), lm.planner.forwards)


def _healed(cell: Cell) -> Cell:
    return Cell(f"{cell.criterion}+heal", cell.strategy, cell.budget)


def _evaluate_here(lm, plan, tasks, limit, task_manager, heal, data):
    """One cell on the loaded HF model (healed first when asked); the model is restored after."""
    from lmms_eval.evaluator import simple_evaluate

    from .models import results as results_mod

    peft_model = summary = None
    if heal is not None:
        from .heal import heal_, unload_
        from .training_data import wrapper_tokenizer

        peft_model, result = heal_(lm.hf_model, wrapper_tokenizer(lm.base), plan, data, heal)
        summary = result.summary()
    try:
        with decoder_layers_removed(lm.hf_model, plan.removed):
            results_mod.record(plan, lm.identity)
            res = simple_evaluate(
                model=lm, tasks=list(tasks), limit=limit, task_manager=task_manager
            )
    finally:
        if peft_model is not None:
            from .heal import unload_

            unload_(peft_model)  # the next cell starts from the original weights
    return res, summary


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

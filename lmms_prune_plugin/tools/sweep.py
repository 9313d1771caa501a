"""Sweeps: criteria x strategies x budgets on one loaded model, evaluated by lmms-eval.

Calibration runs once per domain (every budget's angular block size captured in that pass);
each cell then costs only its evaluation. Rows are appended to a JSONL file as cells finish,
so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from loguru import logger
from tqdm import tqdm

from lmms_prune_plugin.core.args import check_writable
from lmms_prune_plugin.core.distributed import is_main
from lmms_prune_plugin.core.planner import BASELINE, PruneOptions, recorded_scores
from lmms_prune_plugin.core.plugins import get_strategy
from lmms_prune_plugin.core.strategies import StrategyOptions
from lmms_prune_plugin.harnesses.lmms_eval import engine as engines
from lmms_prune_plugin.surgery.layers import decoder_layers_removed
from lmms_prune_plugin.tools.rows import primary_metric

SWEPT = ("criterion", "strategy", "budget")  # one value per cell; every other option is shared


@dataclass(frozen=True)
class Cell:
    criterion: str
    strategy: str
    budget: int | float

    def key(self, model: str, tasks: Sequence[str], limit: int | None, settings: dict) -> str:
        """What makes two rows the same measurement: a resumed sweep skips only those."""
        return json.dumps(
            [model, self.criterion, self.strategy, self.budget, sorted(tasks), limit, settings],
            sort_keys=True,
        )


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
    """Every task must be known to the TaskManager; an unknown one is named with the known
    names closest to it."""
    known = list(task_manager.all_tasks)
    unknown = [t for t in tasks if t not in set(known)]
    if unknown:
        hints = []
        for t in unknown:
            close = suggest(t, known)
            hint = f"did you mean {', '.join(map(repr, close))}?" if close else "no similar name"
            hints.append(f"{t!r} ({hint})")
        raise ValueError(
            f"tasks={unknown!r}: not known to lmms-eval (with the given --include_path; names "
            f"are case-sensitive): {', '.join(hints)}"
        )


def suggest(name: str, known: Iterable[str], n: int = 6) -> list[str]:
    """Known names close to ``name``, case-insensitively: the same name in another case, names
    that begin with it, close spellings (difflib), then names that share its stem (the part
    before its last underscore, as in ``prune_demo_*``)."""
    import difflib

    by_lower: dict[str, list[str]] = {}
    for k in sorted(known):
        by_lower.setdefault(k.lower(), []).append(k)
    low = name.lower()
    stem = low.rsplit("_", 1)[0] + "_" if "_" in low else None
    found = list(by_lower.get(low, []))
    found += [k for lower, ks in by_lower.items() if lower.startswith(low) for k in ks]
    for match in difflib.get_close_matches(low, list(by_lower), n, cutoff=0.6):
        found += by_lower[match]
    if stem:
        found += [k for lower, ks in by_lower.items() if lower.startswith(stem) for k in ks]
    return list(dict.fromkeys(found))[:n]


#: Keys every sweep row has, with the types they must have.
ROW_FIELDS: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "criterion": (str,),
    "strategy": (str,),
    "budget": (int, float),
    "tasks": (list,),
    "metrics": (dict,),
    "removed": (list,),
}


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


def plan_problem(row: dict) -> str | None:
    """Why a row's removed layers are not the plan its cell gives on the row's own scores (a
    hand-edited row), or None. Rows that record no scores or shared options (older files), or
    a strategy not registered here, cannot be checked and pass."""
    if row["budget"] == 0:
        return None if row["removed"] == [] else f"removed={row['removed']!r} in a budget-0 row"
    options = (row.get("settings") or {}).get("options")
    old_angular = row["strategy"] == "contiguous" and "criterion_options" not in row
    if not row.get("scores") or not isinstance(options, dict) or old_angular:
        return None
    try:
        strategy = get_strategy(row["strategy"])
    except ValueError:
        return None
    try:
        n = row.get("num_layers") or len(row["scores"])
        scores = recorded_scores(
            row["scores"], row.get("criterion_options") or {}, row["budget"], n
        )
        names = [f.name for f in fields(StrategyOptions)]
        given = StrategyOptions(**{k: options[k] for k in names if k in options})
        want = list(strategy(scores, row["budget"], given))
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        return f"its plan cannot be re-derived from its scores and options ({err})"
    if want != row["removed"]:
        return (
            f"removed={row['removed']!r} is not what strategy={row['strategy']!r}, "
            f"budget={row['budget']!r} and {given} give on the row's scores: {want!r}"
        )
    return None


def read_rows(path: str | Path, name: str = "sweep") -> list[dict]:
    """Rows of a sweep file. A line that is no JSON row, or whose removed layers do not follow
    from its scores and options, is an error naming the file and line; a torn last line (an
    interrupted write) is dropped and reported."""
    return [row for _, row in numbered_rows(path, name)]


def numbered_rows(path: str | Path, name: str = "sweep") -> list[tuple[int, dict]]:
    """:func:`read_rows` with each row's line number."""
    path = Path(path)
    text = _sweep_text(path, name)
    lines = text.splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if n == len(lines) and _torn(text):
                logger.warning(
                    f"lmms-prune: {path}:{n}: dropped a torn last line ({len(line)} "
                    "characters, an interrupted write)"
                )
                break
            raise ValueError(f"{path}:{n}: not a JSON line ({err.msg})") from err
        problem = check_row(row)
        if problem:
            raise ValueError(f"{path}:{n}: not a sweep row: {problem}")
        problem = plan_problem(row)
        if problem:
            raise ValueError(
                f"{path}:{n}: the row does not hold its cell's plan: {problem}; it was edited or "
                "damaged: remove the line (the cell then runs again) or restore it"
            )
        rows.append((n, row))
    return rows


def _sweep_text(path: Path, name: str) -> str:
    """The file as text, or an error naming it: a folder, unreadable, binary."""
    if path.is_dir():
        raise ValueError(f"{name}={str(path)!r} is a folder; give a sweep JSONL file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{name}={str(path)!r} cannot be read ({err.strerror})") from err
    why = f"a NUL byte at byte {data.index(0)}" if 0 in data else None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        why = f"byte {err.start} is not UTF-8"
    if why:
        raise ValueError(
            f"{name}={str(path)!r} is not a sweep JSONL file: it is binary ({why}); give the "
            "JSONL file lmms-prune sweep wrote"
        )
    return text


def _torn(text: str) -> bool:
    """Whether the text ends in a row cut by an interrupted write: no final newline, a line
    that starts as a row and is no JSON."""
    last = text.rsplit("\n", 1)[-1]
    if text.endswith("\n") or not last.lstrip().startswith("{"):
        return False
    try:
        json.loads(last)
    except json.JSONDecodeError:
        return True
    return False


def _mend_tail(out: Path) -> None:
    """Make ``out`` end with a newline before rows are appended: a torn last line (reported
    when the file was read) is cut off, a complete one gets its newline."""
    if not out.exists():
        return
    data = out.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    if _torn(data.decode("utf-8")):
        os.truncate(out, data.rfind(b"\n") + 1)
    else:
        with out.open("a") as f:
            f.write("\n")


def check_out(out: Path) -> list[dict]:
    """The rows already in ``out`` (a resumed sweep), after checking it can be appended to."""
    return [row for _, row in _resume_rows(out)]


def _resume_rows(out: Path) -> list[tuple[int, dict]]:
    if out.is_dir():
        raise ValueError(f"out={str(out)!r} is a folder; give the sweep JSONL file to write")
    check_writable("out", out)
    if not out.exists():
        return []
    try:
        return numbered_rows(out, "out")
    except ValueError as err:  # a user's file, never appended to
        raise ValueError(
            f"out={str(out)!r} is not allowed: it exists and is not a sweep file to resume "
            f"({err}); give a new path, or the sweep file to resume"
        ) from err


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
    ``engine=vllm`` inside :func:`~lmms_prune_plugin.harnesses.lmms_eval.engine.deferred`. With ``heal``
    (:class:`~.heal.HealOptions`) every pruned cell is also healed and evaluated again: that
    row's criterion reads ``<criterion>+heal``, next to the unhealed one.
    """
    _check_engine(lm, engine, heal)
    lm.keep_loaded = True
    common = dict(options or {})
    run = _Sweep(
        lm, tuple(tasks), task_manager, Path(out), limit, engine, heal, sweep_settings(lm, common)
    )
    run.resume(_resume_rows(run.out))
    todo = [c for c in cells if run.needs(c)]
    # Every plan first, from one calibration pass per domain: a cell that cannot be planned
    # (say spaced beyond what min_gap allows) stops the sweep before any evaluation.
    plans = lm.planner.plans([_cell_options(c, common) for c in todo])
    if engine != "hf" and todo:
        engines.release_hf_model(lm)
    if todo and is_main():
        _mend_tail(run.out)
    for cell, plan in tqdm(
        list(zip(todo, plans, strict=True)), desc="sweep", disable=not is_main()
    ):
        run.cell(cell, plan)
    return SweepSummary(len(cells), len(todo), len(cells) - len(todo), lm.planner.forwards)


def _check_engine(lm, engine: str, heal) -> None:
    built = getattr(lm, "engine", "hf")
    if engine != built:
        raise ValueError(f"engine={engine!r} is not the engine the model was built for ({built!r})")
    if heal is not None and engine != "hf":
        raise ValueError("heal is not allowed with engine='vllm': healing trains the HF model")


def _cell_options(cell: Cell, common: dict) -> PruneOptions:
    if cell.budget == 0:
        return PruneOptions(criterion="last", budget=0)
    return PruneOptions.parse(
        **common, criterion=cell.criterion, strategy=cell.strategy, budget=cell.budget
    )


#: What each part of a row's settings stands for, in messages (in the order they are named).
SETTINGS = {
    "run": "run (weights fingerprint, checkpoint files, base wrapper and its arguments, dtype)",
    "calibration_keys": "calibration data (task contents, limit, tokens)",
    "calibration": "calibration sets, limit or tokens",
    "options": "shared prune options",
}


def sweep_settings(lm, common: dict) -> dict:
    """Everything but the cell that makes two rows the same measurement: the shared prune
    options, the calibration config, and what keys the plan cache: the run (weights
    fingerprint, checkpoint files, base wrapper and its arguments, dtype) and each domain's
    calibration key (task contents, limit, tokens)."""
    shared = {k: v for k, v in asdict(PruneOptions.parse(**common)).items() if k not in SWEPT}
    cal, planner = lm.calibration, lm.planner
    return {
        "options": shared,
        "calibration": {"sets": dict(cal.sets), "limit": cal.limit, "tokens": cal.tokens},
        "run": planner.run_key,
        "calibration_keys": {d: planner.calibrator.key(d) for d in sorted(cal.sets)},
    }


def settings_difference(have: object, want: dict) -> str:
    """Which parts of two rows' settings differ, in words (a run's calibration keys hold the
    run key, so they are not named again when the run differs)."""
    if not isinstance(have, dict) or "run" not in have:
        return "settings (an older lmms-prune, which did not record the run)"
    names = dict.fromkeys([*SETTINGS, *sorted(set(have) | set(want))])
    differ = [k for k in names if have.get(k) != want.get(k)]
    if "run" in differ:
        differ = [k for k in differ if k != "calibration_keys"]
    return "; ".join(SETTINGS.get(k, k) for k in differ)


@dataclass
class _Sweep:
    """One sweep: what every row shares, the rows already written, and how a cell runs."""

    lm: Any
    tasks: tuple[str, ...]
    task_manager: Any
    out: Path
    limit: int | None
    engine: str
    heal: Any
    settings: dict
    done: set = field(default_factory=set)
    data: Any = None  # healing's training data: the teacher is the same for every cell

    def resume(self, rows: list[tuple[int, dict]]) -> None:
        """Remember the rows in ``out``; one of this model made with other settings is an error
        (a sweep file holds one configuration per model, so its report compares like with like)."""
        model = self.lm.pretrained
        for n, r in rows:
            if r["model"] == model and r.get("settings") != self.settings:
                raise ValueError(
                    f"out={str(self.out)!r}: line {n} holds a row of {model!r} made with other "
                    f"{settings_difference(r.get('settings'), self.settings)}; a sweep file holds "
                    "one configuration per model: give another --out"
                )
        cells = [(Cell(r["criterion"], r["strategy"], r["budget"]), r) for _, r in rows]
        self.done = {
            (self._key(c, r["tasks"], r.get("limit")), r.get("engine", "hf"))
            for c, r in cells
            if r["model"] == model
        }

    def _key(self, cell: Cell, tasks: Sequence[str], limit: int | None) -> str:
        return cell.key(self.lm.pretrained, tasks, limit, self.settings)

    def missing(self, cell: Cell) -> bool:
        return (self._key(cell, self.tasks, self.limit), self.engine) not in self.done

    def needs(self, cell: Cell) -> bool:
        """A cell runs when its row is missing, or (healing) its healed row is."""
        healed = self.heal is not None and cell.budget != 0 and self.missing(_healed(cell))
        return self.missing(cell) or healed

    def cell(self, cell: Cell, plan) -> None:
        """Evaluate one cell (and its healed twin) and append their rows."""
        runs = [(cell, None)] if self.missing(cell) else []
        if self.heal is not None and cell.budget != 0 and self.missing(_healed(cell)):
            from lmms_prune_plugin.harnesses.lmms_eval.training import training_data_for

            self.data = self.data or training_data_for(self.lm, self.heal)
            runs.append((_healed(cell), self.heal))
        lm, tasks, limit, tm = self.lm, self.tasks, self.limit, self.task_manager
        for row_cell, heal in runs:
            if self.engine != "hf":
                res, summary = _evaluate_in_engine(lm, plan, tasks, limit, tm), None
            else:
                res, summary = _evaluate_here(lm, plan, tasks, limit, tm, heal, self.data)
            if res is None or not is_main():  # other ranks: the harness reports on rank 0 only
                continue
            with self.out.open("a") as f:
                f.write(json.dumps(self.row(row_cell, plan, res, summary), sort_keys=True) + "\n")

    def row(self, cell: Cell, plan, res: dict, summary: dict | None) -> dict:
        n, recorded = self.lm.identity.num_layers, plan.to_dict()
        row = {
            "model": self.lm.pretrained,
            "criterion": cell.criterion,
            "strategy": cell.strategy,
            "budget": cell.budget,
            "num_layers": n,
            "kept_layers": n - len(plan.removed),
            "removed": list(plan.removed),
            "tasks": sorted(self.tasks),
            "limit": self.limit,
            "metrics": task_metrics(res),
            "per_doc": document_scores(res),
            "scores": list(plan.scores),
            "criterion_options": recorded["criterion_options"],
            "calibration": recorded["calibration"],
            "settings": self.settings,
            "engine": self.engine,
        }
        if summary is not None:
            row["healing"] = summary
        return row


def _healed(cell: Cell) -> Cell:
    return Cell(f"{cell.criterion}+heal", cell.strategy, cell.budget)


def _evaluate_here(lm, plan, tasks, limit, task_manager, heal, data):
    """One cell on the loaded HF model (healed first when asked); the model is restored after."""
    from lmms_eval.evaluator import simple_evaluate

    from lmms_prune_plugin.harnesses.lmms_eval import results as results_mod

    peft_model = summary = None
    if heal is not None:
        from lmms_prune_plugin.core.heal import heal_, unload_
        from lmms_prune_plugin.harnesses.lmms_eval.training import wrapper_tokenizer

        peft_model, result = heal_(lm.hf_model, wrapper_tokenizer(lm.base), plan, data, heal)
        summary = result.summary()
    try:
        with decoder_layers_removed(lm.hf_model, plan.removed):
            results_mod.record(plan, lm.identity, getattr(lm, "display_name", None))
            res = simple_evaluate(
                model=lm, tasks=list(tasks), limit=limit, task_manager=task_manager
            )
    finally:
        if peft_model is not None:
            from lmms_prune_plugin.core.heal import unload_

            unload_(peft_model)  # the next cell starts from the original weights
    return res, summary


def _evaluate_in_engine(lm, plan, tasks: Sequence[str], limit: int | None, task_manager):
    """One cell in vLLM: the plan's export (cached), an engine on it, lmms-eval, engine stopped."""
    from lmms_eval.evaluator import simple_evaluate

    path = engines.cached_export(
        lm.pretrained, plan, engines.cache_dir(lm), lm.revision, lm.trust_remote_code
    )
    served = engines.open_engine(path, lm.is_simple, lm.engine_kwargs, lm.trust_remote_code)
    try:
        return simple_evaluate(
            model=served, tasks=list(tasks), limit=limit, task_manager=task_manager
        )
    finally:
        engines.close_engine(served)

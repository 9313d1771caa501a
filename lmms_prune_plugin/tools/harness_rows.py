"""Other harnesses' result folders as report rows: the schema ``lmms-prune sweep`` writes.

``lmms-prune report`` takes, besides sweep JSONL files (lmms-eval rows), the folders two other
harnesses write, told apart by what they hold:

- **lm-eval** (EleutherAI's lm-evaluation-harness, 0.4 format): an ``--output_path`` folder, or
  its ``<model>/`` subfolder, holding ``results_<date>.json`` (a JSON object with ``results``
  and ``config``). The plan is ``plan.json`` beside the results file; it must agree with the
  plan the run recorded in ``config.prune_plan``. ``--log_samples`` files
  (``samples_<task>_<date>.jsonl``) give per-document results, hence intervals.
- **vlmeval** (VLMEvalKit): a ``--work-dir`` model folder (or the work dir holding such
  folders) with ``<model>_<dataset>_acc.csv`` files, directly or in a run subfolder
  (``T<date>-<time>``), and ``plan.json``. Each dataset's ``Overall`` becomes its metric; it is
  put on lmms-eval's 0-1 scale (VLMEvalKit writes 0-1 or 0-100: a file with any number above 1
  is read as 0-100). ``status.json``, when there, must agree with the files.

Nothing is guessed: a run folder without ``plan.json`` is read only when the run itself says
it is the unpruned model (lm-eval's ``config.prune_plan`` with budget 0); otherwise it is an
error naming the folder, as is a plan that disagrees with the run.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from loguru import logger

from lmms_prune_plugin.tools.rows import LM_EVAL, VLMEVAL, primary_metric

_EVAL_ID = re.compile(r"^T\d{8}-\d{6}$|^T\d{8}_G[0-9a-fA-F]+$")  # VLMEvalKit's run subfolders
_PLAN_KEYS = ("model", "num_layers", "removed", "criterion", "strategy", "budget")
# lm-eval's results hold one entry per leaf task and group; a metric is "name,filter".
_NOT_METRICS = ("alias", "name", "sample_len", "sample_count")


def read_source(path: str | Path) -> list[dict]:
    """The rows of one ``report`` input, its kind told by content: a sweep JSONL file, an
    lm-eval results file or output folder, or a VLMEvalKit model (or work) folder."""
    from lmms_prune_plugin.tools.sweep import read_rows

    p = Path(path)
    if not p.exists():
        raise ValueError(f"sweep={str(p)!r}: no such file or folder")
    if p.is_file():
        rows = lm_eval_rows(p.parent, [p]) if _lm_eval_file(p) else read_rows(p)
        if not rows:  # among other inputs it would vanish without a word
            raise ValueError(f"sweep={str(p)!r} holds no rows: give a sweep file with results")
        return rows
    lm_runs, vlm_models = _lm_eval_folders(p), _vlmeval_folders(p)
    if not lm_runs and not vlm_models:
        raise ValueError(
            f"sweep={str(p)!r} is a folder; give a sweep JSONL file, an lm-eval --output_path "
            "folder (results_*.json) or a VLMEvalKit model folder (*_acc.csv): this folder "
            "holds none of them"
        )
    rows = [r for f in lm_runs for r in lm_eval_rows(f)]
    return rows + [vlmeval_row(m) for m in vlm_models]


# --------------------------------------------------------------------------- shared
def _read_json(path: Path) -> object:
    from lmms_prune_plugin.core.args import read_small_file

    try:
        return json.loads(read_small_file("sweep", path, "JSON file"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg}, line {err.lineno})") from err


def _plan(folder: Path, harness: str):
    """The ``plan.json`` of a run folder, or None when there is none."""
    from lmms_prune_plugin.core.plan import PrunePlan

    target = folder / "plan.json"
    if not target.exists():
        return None
    try:
        return PrunePlan.load(target)
    except ValueError as err:
        raise ValueError(f"{harness} results in {folder}: {err}") from err


def _plan_fields(plan) -> dict:
    """The row fields a plan gives (model, cell, removed layers, scores, calibration)."""
    data = plan.to_dict()
    n = plan.model.num_layers
    return {
        "model": plan.model.name_or_path,
        "criterion": plan.criterion,
        "strategy": plan.strategy,
        "budget": plan.budget,
        "removed": list(plan.removed),
        "scores": list(plan.scores),
        "num_layers": n,
        "kept_layers": n - len(plan.removed),
        "calibration": data["calibration"],
        "criterion_options": data["criterion_options"],
        "token_selection": plan.token_selection,
    }


def _row(fields: dict, metrics: dict, harness: str, settings: dict, source: dict) -> dict:
    """A report row; checked like a sweep file's rows."""
    from lmms_prune_plugin.tools.sweep import check_row

    row = fields | {
        "metrics": metrics,
        "tasks": sorted(metrics),
        "limit": settings.get("limit"),
        "engine": "hf",
        "harness": harness,
        "settings": settings,
        "source": source,
    }
    problem = check_row(row)
    if problem:
        raise ValueError(f"{harness} results in {source['folder']} make no valid row: {problem}")
    return row


# --------------------------------------------------------------------------- lm-eval
def _lm_eval_file(path: Path) -> bool:
    """Whether a file is an lm-eval results file: ``results_*.json`` holding an object with
    ``results`` and ``config`` (and not lmms-eval's, which says its version)."""
    if not (path.name.startswith("results_") and path.suffix == ".json"):
        return False
    data = _read_json(path)
    ok = isinstance(data, dict) and isinstance(data.get("results"), dict)
    return ok and isinstance(data.get("config"), dict) and "lmms_eval_version" not in data


def _lm_eval_folders(p: Path) -> list[Path]:
    """``p`` if it holds lm-eval results files, else its subfolders that do (lm-eval writes
    ``<output_path>/<model>/results_<date>.json``)."""
    if any(_lm_eval_file(f) for f in sorted(p.glob("results_*.json"))):
        return [p]
    subs = sorted(d for d in p.iterdir() if d.is_dir())
    return [d for d in subs if any(_lm_eval_file(f) for f in sorted(d.glob("results_*.json")))]


def lm_eval_rows(folder: Path, files: list[Path] | None = None) -> list[dict]:
    """One row of an lm-eval run folder: its results files (several runs of the same plan on
    other tasks are one row; a task in two files is an error) and the folder's plan."""
    files = files or sorted(f for f in folder.glob("results_*.json") if _lm_eval_file(f))
    runs = [(f, _read_json(f)) for f in files]
    plan = _plan(folder, LM_EVAL)
    fields = _plan_fields(plan) if plan is not None else None
    metrics, per_doc, owner, settings = {}, {}, {}, None
    for f, data in runs:
        fields = _check_lm_eval_plan(folder, f, data, fields, plan is not None)
        run_settings = _lm_eval_settings(data)
        if settings is not None and run_settings != settings:
            raise ValueError(
                f"lm-eval results in {folder}: {f.name} and {runs[0][0].name} were run with "
                "other evaluation settings (limit, prompts or generation); give one run per folder"
            )
        settings = run_settings
        run_metrics = _lm_eval_metrics(f, data)
        for task, values in run_metrics.items():
            if task in owner:
                raise ValueError(
                    f"lm-eval results in {folder}: task {task!r} is in both {owner[task]} and "
                    f"{f.name}; keep the run you mean and move the other away"
                )
            owner[task], metrics[task] = f.name, values
        per_doc |= _lm_eval_documents(f, run_metrics)
    source = {"folder": str(folder), "files": sorted(owner.values())}
    row = _row(fields, metrics, LM_EVAL, settings or {}, source)
    return [row | ({"per_doc": per_doc} if set(per_doc) == set(metrics) else {})]


def _check_lm_eval_plan(folder: Path, f: Path, data: dict, fields, have_plan: bool) -> dict:
    """The row's plan fields, after checking the run's recorded plan agrees with plan.json;
    without plan.json, only a run that recorded budget 0 (the unpruned model) is read."""
    recorded = data["config"].get("prune_plan")
    if have_plan:
        if isinstance(recorded, dict):
            differ = [k for k in _PLAN_KEYS if k in recorded and recorded[k] != fields[k]]
            if differ:
                k = differ[0]
                raise ValueError(
                    f"lm-eval results in {folder}: plan.json does not match the plan {f.name} "
                    f"was run with ({k}: plan.json has {fields[k]!r}, the run has "
                    f"{recorded[k]!r}); put the plan of that run beside it"
                )
            if recorded.get("evaluated_model"):  # plan_strict=false: another checkpoint ran
                fields = fields | {"model": recorded["evaluated_model"]}
        return fields
    if isinstance(recorded, dict) and recorded.get("budget") == 0 and not recorded.get("removed"):
        n = recorded.get("num_layers")
        base = {
            "model": recorded.get("evaluated_model") or recorded.get("model"),
            "criterion": "none",
            "strategy": "none",
            "budget": 0,
            "removed": [],
            "scores": [],
            "num_layers": n,
            "kept_layers": n,
            "calibration": {},
        }
        if fields is not None and fields != base:
            raise ValueError(f"lm-eval results in {folder}: its files are of other models")
        return base
    said = f"budget={recorded.get('budget')!r}" if isinstance(recorded, dict) else "no plan"
    raise ValueError(
        f"lm-eval results in {folder} have no plan.json, and the run ({f.name}, {said} in its "
        "config) does not say it is the unpruned model; what was removed is unknown: put "
        "the plan beside the results (lmms-prune lm-eval writes it), or run budget=0"
    )


def _lm_eval_settings(data: dict) -> dict:
    """What makes two lm-eval runs comparable, beyond the tasks: model class, limit, prompts,
    generation and seeds."""
    config = data["config"]
    keys = ("limit", "gen_kwargs", "random_seed", "numpy_seed", "torch_seed", "fewshot_seed")
    out = {"harness": LM_EVAL, "model": config.get("model")}
    out |= {k: config.get(k) for k in keys}
    prompts = ("chat_template_sha", "fewshot_as_multiturn", "system_instruction_sha")
    return out | {k: data.get(k) for k in prompts}


def _lm_eval_metrics(f: Path, data: dict) -> dict[str, dict[str, float]]:
    """Numeric ``name,filter`` metrics of each leaf task (groups are left out)."""
    groups = {g for g, members in (data.get("group_subtasks") or {}).items() if members}
    out = {}
    for task, values in data["results"].items():
        if task in groups or not isinstance(values, dict):
            continue
        metrics = {
            k: float(v)
            for k, v in values.items()
            if "," in k
            and "_stderr," not in k
            and k.split(",")[0] not in _NOT_METRICS
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
        }
        if not metrics:
            raise ValueError(
                f"lm-eval results {f}: task {task!r} has no numeric metric (a --predict_only "
                "run?); evaluate it with metrics"
            )
        out[task] = metrics
    return out


def _lm_eval_documents(f: Path, metrics: dict) -> dict[str, dict]:
    """Per-document headline scores from ``--log_samples`` files, where they are."""

    date = f.stem.removeprefix("results_")
    out = {}
    for task in metrics:
        samples = f.parent / f"samples_{task}_{date}.jsonl"
        if not samples.is_file():
            continue
        metric = primary_metric(metrics[task])[0]
        name, _, flt = metric.partition(",")
        ids, values = [], []
        for n, s in _sample_lines(samples):
            if s.get("filter", flt) != flt or not isinstance(s.get(name), int | float):
                continue
            if not isinstance(s.get("doc_id"), int):
                raise ValueError(f"lm-eval samples {samples}:{n}: no integer doc_id")
            ids.append(s["doc_id"])
            values.append(float(s[name]))
        if ids:
            out[task] = {"metric": metric, "doc_ids": ids, "values": values}
    return out


def _sample_lines(path: Path) -> list[tuple[int, dict]]:
    """The JSON objects of a ``--log_samples`` file, with their line numbers."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            s = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"lm-eval samples {path}:{n}: not a JSON line ({err.msg})") from err
        if not isinstance(s, dict):
            raise ValueError(f"lm-eval samples {path}:{n}: not a JSON object")
        out.append((n, s))
    return out


# --------------------------------------------------------------------------- VLMEvalKit
def _acc_files(folder: Path) -> list[Path]:
    here = sorted(folder.glob("*_acc.csv"))
    runs = sorted(d for d in folder.iterdir() if d.is_dir() and _EVAL_ID.match(d.name))
    return here + [f for d in runs for f in sorted(d.glob("*_acc.csv"))]


def _vlmeval_folders(p: Path) -> list[Path]:
    """``p`` if it is a VLMEvalKit model folder, else its subfolders that are (a work dir);
    a subfolder with plan.json and no results is an error (a run that did not finish)."""
    if _acc_files(p) or (p / "plan.json").is_file() and not any(p.glob("results_*.json")):
        return [p]
    found = []
    for d in sorted(x for x in p.iterdir() if x.is_dir() and not _EVAL_ID.match(x.name)):
        if _acc_files(d):
            found.append(d)
        elif (d / "plan.json").is_file() and not any(d.glob("results_*.json")):
            raise ValueError(
                f"vlmeval results in {d}: it holds plan.json but no *_acc.csv (a run that did "
                "not finish?); finish or remove it"
            )
    return found


def vlmeval_row(folder: Path) -> dict:
    """The row of one VLMEvalKit model folder: ``Overall`` of each dataset on a 0-1 scale."""
    files = _acc_files(folder)
    if not files:
        raise ValueError(f"vlmeval results in {folder}: no *_acc.csv; evaluate first")
    status = _vlmeval_status(folder)
    metrics, scales, owner = {}, {}, {}
    for f in files:
        dataset = _dataset_name(folder, f)
        for task, (value, raw, scale) in _overall(f, dataset).items():
            _check_status(status, folder, f, dataset, task, raw)
            if task in metrics and metrics[task]["Overall"] != value:
                raise ValueError(
                    f"vlmeval results in {folder}: {owner[task]} and {f} give {task} other "
                    "scores (two runs); keep the run you mean and move the other away"
                )
            metrics[task], scales[task], owner[task] = {"Overall": value}, scale, str(f)
    plan = _plan(folder, VLMEVAL)
    if plan is None:
        raise ValueError(
            f"vlmeval results in {folder} have no plan.json: what was removed is unknown "
            "(VLMEvalKit does not record it); evaluate through lmms-prune vlmeval, which "
            "writes it (budget=0 for the unpruned model)"
        )
    _check_folder_name(folder, plan)
    judges = sorted({str(e.get("judge_model")) for e in (status or {}).values()})
    settings = {"harness": VLMEVAL, "judge": judges}
    logger.info(f"lmms-prune report: {folder}: VLMEvalKit wrote {scales}; read as 0-1")
    source = {"folder": str(folder), "files": sorted(owner.values()), "scale": scales}
    return _row(_plan_fields(plan), metrics, VLMEVAL, settings, source)


def _dataset_name(folder: Path, f: Path) -> str:
    prefix = f"{folder.name}_"
    if not f.name.startswith(prefix):
        raise ValueError(
            f"vlmeval results in {folder}: {f.name} is not a result of model {folder.name!r} "
            f"(VLMEvalKit names them {prefix}<dataset>_acc.csv); move it away"
        )
    return f.name[len(prefix) : -len("_acc.csv")]


def _overall(f: Path, dataset: str) -> dict[str, tuple[float, float, str]]:
    """Per split (one task per split when there are several): (value 0-1, value as written,
    the file's scale)."""
    try:
        with f.open(newline="", encoding="utf-8") as handle:
            table = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"vlmeval results {f}: not a CSV file ({err})") from err
    if not table or "Overall" not in table[0]:
        raise ValueError(f"vlmeval results {f}: no 'Overall' column; is it an *_acc.csv?")
    numbers = []
    for line in table:
        for key, cell in line.items():
            try:
                numbers.append(float(cell))
            except (TypeError, ValueError):
                if key == "Overall":
                    raise ValueError(
                        f"vlmeval results {f}: Overall={cell!r} is no number"
                    ) from None
    if any(not 0 <= x <= 100 for x in numbers):
        raise ValueError(f"vlmeval results {f}: a score outside 0-100; is it an *_acc.csv?")
    percent = any(x > 1 for x in numbers)  # VLMEvalKit writes 0-1 or 0-100
    scale = "0-100" if percent else "0-1"
    out = {}
    for line in table:
        task = dataset if len(table) == 1 else f"{dataset}/{line.get('split', '')}"
        raw = float(line["Overall"])
        out[task] = (raw / 100 if percent else raw, raw, scale)
    return out


def _vlmeval_status(folder: Path) -> dict | None:
    """VLMEvalKit's ``status.json`` datasets, when the folder has one."""
    path = folder / "status.json"
    if not path.is_file():
        return None
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        raise ValueError(f"vlmeval results in {folder}: status.json has no 'datasets'")
    if data.get("model_name") not in (None, folder.name):
        raise ValueError(
            f"vlmeval results in {folder}: status.json is of model {data['model_name']!r}, "
            f"not {folder.name!r}"
        )
    return data["datasets"]


def _check_status(status, folder: Path, f: Path, dataset: str, task: str, raw: float) -> None:
    """A result file must be the latest run's: status.json done, with the same Overall."""
    entry = (status or {}).get(dataset)
    if not isinstance(entry, dict):
        return
    if entry.get("status") != "done" or entry.get("error_message"):
        raise ValueError(
            f"vlmeval results in {folder}: status.json says {dataset} is "
            f"{entry.get('status')!r} ({entry.get('error_message') or 'no error given'}) but "
            f"{f.name} exists (an earlier run's?); rerun {dataset} or remove the file"
        )
    split = task.rsplit("/", 1)[1] if task != dataset else None
    said = [
        v
        for k, v in (entry.get("metrics") or {}).items()
        if k.endswith("|Overall") and (split is None or k.startswith(f"split={split}|"))
    ]
    if said and not any(math.isclose(float(v), raw, rel_tol=1e-6) for v in said):
        raise ValueError(
            f"vlmeval results in {folder}: {f.name} says Overall={raw} but status.json says "
            f"{said[0]}: they are of different runs; rerun {dataset}"
        )


def _check_folder_name(folder: Path, plan) -> None:
    """The launcher names a folder ``<model>__criterion-..._budget-<b>``: the plan must agree."""
    _, sep, spec = folder.name.partition("__")
    for part in spec.split("_") if sep else []:
        key, _, value = part.partition("-")
        if key == "budget" and value and value != "plan":
            try:
                given = float(value)
            except ValueError:
                continue
            if given != float(plan.budget):
                raise ValueError(
                    f"vlmeval results in {folder}: plan.json has budget={plan.budget!r} but the "
                    f"folder was run with budget={value}; put the plan of that run beside it"
                )

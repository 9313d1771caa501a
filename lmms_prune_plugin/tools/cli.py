"""``lmms-prune``: rank layers, export pruned checkpoints, sweep budgets, report leaderboards."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lmms_prune_plugin.core.calibration import CALIBRATION_ARGS

CRITERIA_DEFAULT = "math,nonmath,mixed,shortgpt,angular,last,random"
STRATEGIES_DEFAULT = "default"
DEFAULT_BUDGET = "4"  # layers removed by export and heal without --plan, and marked by rank
LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


# -- values as typed: each type names the flag, the value and what is allowed ----------------
def _refused(flag: str, value: str, why: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"{flag}={value!r} is not allowed: {why}")


def _text(flag: str, what: str) -> Callable[[str], str]:
    """A value that is not empty: an empty one (an unset shell variable) never means none."""

    def parse(value: str) -> str:
        if not value.strip():
            raise _refused(flag, value, f"it is empty; give {what}")
        return value

    return parse


def _items(flag: str, what: str) -> Callable[[str], str]:
    """A comma list without empty items (``a,,b`` is a typo, not two items)."""

    def parse(value: str) -> str:
        if not value.strip():
            raise _refused(flag, value, f"it is empty; give {what}")
        if not all(item.strip() for item in value.split(",")):
            raise _refused(flag, value, f"it has an empty item; give {what}")
        return value

    return parse


def _budgets(value: str) -> list[int | float]:
    """``--budgets``: layer counts (``4`` stays an int, as plans record it) or fractions."""
    out: list[int | float] = []
    for item in value.split(","):
        try:
            v = float(item)
        except ValueError:
            v = math.nan
        if not math.isfinite(v):
            why = f"{item.strip()!r} is not a number; give a comma list of layer counts (4) or "
            raise _refused("budgets", value, why + "fractions of the depth (0.25), e.g. 0,2,4")
        out.append(int(v) if v.is_integer() else v)
    return out


def _count(flag: str, minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            n = minimum - 1
        if n < minimum:
            raise _refused(flag, value, f"give an integer >= {minimum}")
        return n

    return parse


def _real(flag: str, ok: Callable[[float], bool], allowed: str) -> Callable[[str], float]:
    """A finite number that ``ok`` accepts."""

    def parse(value: str) -> float:
        try:
            v = float(value)
        except ValueError:
            v = math.nan
        if not math.isfinite(v) or not ok(v):
            raise _refused(flag, value, f"give {allowed}")
        return v

    return parse


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",")]


# -- logging -----------------------------------------------------------------------------------
def _configure_logging(level: str | None) -> None:
    """lmms-eval's and our loguru messages on stderr at INFO, or at ``--verbosity``, else at
    ``$LOGURU_LEVEL``. lmms-eval logs DEBUG until its model registry is imported, which then
    sets WARNING, hiding our notes; so that import comes first, then this setting."""
    import lmms_eval.evaluator  # noqa: F401  # its judge launcher resets loguru too
    import lmms_eval.models  # noqa: F401  # replaces every loguru handler when imported
    from loguru import logger

    source, chosen = "verbosity", level
    if chosen is None and os.environ.get("LOGURU_LEVEL"):
        source, chosen = "LOGURU_LEVEL", os.environ["LOGURU_LEVEL"]
    chosen = (chosen or "INFO").strip().upper()
    if chosen not in LEVELS:
        raise ValueError(f"{source}={chosen!r} is not allowed; give one of {', '.join(LEVELS)}")
    logger.remove()
    logger.add(
        lambda message: sys.stderr.write(message),  # the stderr of the moment (tests swap it)
        level=chosen,
        format="{time:YYYY-MM-DD HH:mm:ss} | {level: <8} | {name}:{function}:{line} - {message}",
    )


# -- model_args and flags -----------------------------------------------------------------------
def _model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and calibration (defaults: the packaged demo model and tasks)")
    g.add_argument(
        "--model_args",
        type=_text("model_args", "key=value,... or leave the flag out"),
        help="lmms-eval style key=value,... for pruned_vlm (pretrained=, base=, device_map=, ...)",
    )
    from lmms_prune_plugin.core.calibration import CalibrationOptions

    CalibrationOptions.add_flags(p)  # unset unless given: pruned_vlm's defaults apply
    g.add_argument("--force_simple", action="store_true", help="use the simple (not chat) wrapper")


def _calibration_config(args: dict):
    """The calibration options of ``args``, with an include path checked as lmms-eval reads it."""
    from lmms_prune_plugin.core.calibration import CalibrationConfig
    from lmms_prune_plugin.harnesses.lmms_eval.task_folders import check_task_folder

    config = CalibrationConfig.parse(**{k: args[k] for k in CALIBRATION_ARGS if k in args})
    if config.include_path is not None:
        check_task_folder("include_path", config.include_path)
    return config


def _model_args(a) -> dict:
    from lmms_eval.utils import simple_parse_args_string

    return simple_parse_args_string(a.model_args) if a.model_args else {}


def _add_prune_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = (), **defaults) -> None:
    """One ``--name`` per prune option (the fields of PruneOptions); parsed strictly later."""
    from lmms_prune_plugin.core.planner import PruneOptions

    PruneOptions.add_flags(p, skip, **defaults)


def _prune_given(a, skip: tuple[str, ...] = ()) -> dict:
    """The prune options given as flags (or with a subcommand default)."""
    from lmms_prune_plugin.core.planner import PruneOptions

    return PruneOptions.given(a, skip)


def _with_default_budget(prune: dict, margs: dict) -> dict:
    """``--budget`` unless given as a flag or in ``--model_args`` (one place wins, never both)."""
    return prune if "budget" in prune or "budget" in margs else prune | {"budget": DEFAULT_BUDGET}


def _pruned_vlm_args(a, **prune) -> dict:
    """``--model_args`` plus the calibration flags given; the same key twice is an error."""
    margs = _model_args(a)
    flags = {k: getattr(a, k) for k in CALIBRATION_ARGS if getattr(a, k) is not None} | prune
    both = sorted(set(margs) & set(flags))
    if both:
        raise ValueError(
            f"{both[0]} is given both in --model_args ({margs[both[0]]!r}) and as an option "
            f"({flags[both[0]]!r}); give it once"
        )
    return margs | flags


def _load(a, **prune):
    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM, PrunedVLMSimple

    cls = PrunedVLMSimple if a.force_simple else PrunedVLM
    return cls(**_pruned_vlm_args(a, **prune))


def _refuse_model_args(margs: dict, command: str, why: dict[str, str], default: str) -> None:
    """Keys a command sets itself: in ``--model_args`` they would be overridden or ignored.
    ``why`` and ``default`` may name ``{key}`` and ``{value}``."""
    from lmms_prune_plugin.core.planner import prune_option_names

    for key in dict.fromkeys((*prune_option_names(), "plan", "save_plan", *why)):
        if key in margs:
            reason = why.get(key, default).format(key=key, value=margs[key])
            raise ValueError(
                f"model_args {key}={margs[key]!r} is not allowed with lmms-prune {command}: "
                f"{reason}"
            )


def _out_folder(path: str) -> Path:
    """An output folder that can be created and written, checked before any work."""
    from lmms_prune_plugin.surgery.export import check_out_folder

    return check_out_folder("out", Path(path))


def _load_plan(path: str):
    """``--plan``: a plan file, read by :meth:`PrunePlan.load` (which bounds what it reads)."""
    from lmms_prune_plugin.core.plan import PrunePlan

    if Path(path).is_dir():
        raise ValueError(
            f"plan={path!r} is not allowed: it is a folder; give a plan file (lmms-prune rank "
            "writes them to <out>/plans/)"
        )
    try:
        return PrunePlan.load(path)
    except OSError as err:  # no permission, a device that cannot be read
        raise ValueError(
            f"plan={path!r} could not be read ({err.strerror or err}); give a readable plan file"
        ) from err


# -- rank -----------------------------------------------------------------------------------
RANK_OWN = {
    "budget": "rank calibrates the unpruned model and marks the layers each criterion removes "
    "at --budget (default 4); give --budget {value} instead",
    "criterion": "rank ranks every criterion in --criteria; give --criteria {value} instead",
    "plan": "rank calibrates and writes plans; apply a plan with lmms-prune export --plan",
    "save_plan": "rank writes every criterion's plan to <out>/plans/",
    "engine": "rank measures the transformers model; vLLM serves evaluations (sweep --engine)",
}


def _rank_criteria(spec: str | None) -> list[str]:
    """``--criteria``: default every criterion scored from one calibration pass; ``all`` adds
    the greedy (re-calibrating) ones; or a comma list."""
    from lmms_prune_plugin.core.plugins import get_criteria, get_criterion

    found = get_criteria()
    if spec is None:
        return [n for n, c in found.items() if c.adaptive is None]
    if spec == "all":
        return list(found)
    names = _csv(spec)
    for name in names:
        get_criterion(name)  # an unknown name is an error listing the registered ones
    return names


def cmd_rank(a) -> int:
    from lmms_prune_plugin.core.planner import PruneOptions
    from lmms_prune_plugin.core.strategies import resolve_budget

    default = "rank loads the unpruned model and plans from its flags; give --{key} {value} instead"
    _refuse_model_args(_model_args(a), "rank", RANK_OWN, default)
    names = _rank_criteria(a.criteria)
    if a.bootstrap and a.bootstrap < 2:
        raise ValueError(f"bootstrap={a.bootstrap!r} is not allowed; give 0 (off) or at least 2")
    given = _prune_given(a, skip=("criterion", "budget"))
    PruneOptions.parse(**given, budget=a.budget)  # bad values fail before the model is loaded
    out = _out_folder(a.out)
    lm = _load(a, budget=0)
    k = resolve_budget(PruneOptions.parse(budget=a.budget).budget, lm.identity.num_layers)
    options = {}
    for name in names:
        opts = PruneOptions.parse(**given, criterion=name, budget=k)
        try:
            lm.planner.check(opts)
        except ValueError as err:  # e.g. a criterion reading a domain that is not calibrated
            print(f"skipped {name}: {err}", file=sys.stderr)
            continue
        options[name] = opts
    plans = dict(zip(options, lm.planner.plans(list(options.values())), strict=True))
    for name, plan in plans.items():
        plan.save(out / "plans" / f"{name}.json")
    _rank_table(lm, plans, k, out)
    if a.bootstrap:
        _rank_bootstrap(a, lm, options, k, out)
    return 0


def _rank_table(lm, plans: dict, k: int, out: Path) -> None:
    """Per layer: each domain's similarity and each criterion's rank (1 = removed first)."""
    from lmms_prune_plugin.core.criteria import ranks
    from lmms_prune_plugin.tools.plots import layer_profiles

    n = lm.identity.num_layers
    sims = {d: s.similarity() for d, s in lm.planner.statistics().items()}
    rank_cols = {name: [int(n - x) for x in ranks(p.scores)] for name, p in plans.items()}
    head = ["layer", *[f"s_{d}" for d in sims], *rank_cols]
    rows = []
    for layer in range(n):
        cells = [str(layer), *[f"{sims[d][layer]:.4f}" for d in sims]]
        cells += [
            f"{rank_cols[c][layer]}{'*' if layer in plans[c].removed else ''}" for c in rank_cols
        ]
        rows.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print(f"{lm.pretrained}: {n} decoder layers; rank 1 = removed first; * = removed at budget {k}")
    print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    title = f"{Path(lm.pretrained).name}: per-layer similarity; marks = removed at budget {k}"
    removed = {name: p.removed for name, p in plans.items()}
    png = layer_profiles(sims, removed, out / "layer_scores.png", title)
    forwards = lm.planner.forwards
    print(
        f"wrote {len(plans)} plans to {out / 'plans'} and {png}; calibration forwards: {forwards}"
    )


def _rank_bootstrap(a, lm, options: dict, k: int, out: Path) -> None:
    import json

    from lmms_prune_plugin.core.planner import PruneOptions
    from lmms_prune_plugin.core.plugins import get_criterion
    from lmms_prune_plugin.tools.stability import bootstrap_plans

    chosen = {
        c: o
        for c, o in options.items()
        if get_criterion(c).adaptive is None and get_criterion(c).domains
    }
    skipped = sorted(set(options) - set(chosen))
    if skipped:
        print(
            f"bootstrap skips {', '.join(skipped)}: no calibration scores, or greedy "
            "(it would re-run its passes per resample)",
            file=sys.stderr,
        )
    if not chosen:
        return
    n = lm.identity.num_layers
    blocks = tuple(sorted({b for o in chosen.values() for b in o.block_sizes(n)}))
    samples = lm.planner.sample_statistics(block_sizes=blocks)
    seed = PruneOptions.parse(seed=a.seed if a.seed is not None else 0).seed
    found = bootstrap_plans(lm.identity, samples, list(chosen.values()), a.bootstrap, seed)
    sizes = ", ".join(f"{len(v)} {d}" for d, v in samples.items())
    print(
        f"\nplan stability at budget {k}: {a.bootstrap} bootstrap resamples of the calibration "
        f"samples ({sizes}); J = mean Jaccard agreement of removed sets"
    )
    _print_stability(found, n, k)
    (out / "stability.json").write_text(json.dumps([s.to_dict() for s in found], indent=2) + "\n")
    _stability_plot(lm, found, out, k, a.bootstrap)


def _print_stability(found: list, n: int, k: int) -> None:
    print(f"{'criterion':<12} {'J pairs':>7} {'J plan':>7}  plan  most often removed (share)")
    for st in found:
        top = sorted(range(n), key=lambda i: -st.frequency[i])[: max(k + 2, 1)]
        often = " ".join(f"{i}({st.frequency[i]:.2f})" for i in top if st.frequency[i] > 0)
        plan = ",".join(map(str, st.plan))
        print(f"{st.criterion:<12} {st.jaccard:>7.3f} {st.jaccard_to_plan:>7.3f}  {plan}  {often}")


def _stability_plot(lm, found: list, out: Path, k: int, resamples: int) -> None:
    from lmms_prune_plugin.tools.plots import plan_stability

    png = plan_stability(
        {s.criterion: s.frequency for s in found},
        {s.criterion: s.jaccard for s in found},
        out / "plan_stability.png",
        f"{Path(lm.pretrained).name}: layers removed at budget {k} over {resamples} resamples",
    )
    print(f"wrote {out / 'stability.json'} and {png}")


# -- export ---------------------------------------------------------------------------------
EXPORT_USES = ("pretrained", "revision", "trust_remote_code", "plan_strict")  # with a plan file


def _plan_source(a, margs: dict) -> str | None:
    """The plan file, from ``--plan`` or ``--model_args plan=``; both at once is an error."""
    from lmms_prune_plugin.core.args import optional

    if a.plan is not None and "plan" in margs:
        raise ValueError(
            f"plan is given both as --plan ({a.plan!r}) and in --model_args "
            f"(plan={margs['plan']!r}); give it once"
        )
    if "plan" in margs and optional(margs["plan"]) is None:
        raise ValueError(
            f"model_args plan={margs['plan']!r} is not allowed: it names no file; give a plan "
            "file, or leave plan= out to plan from the prune options"
        )
    return a.plan if a.plan is not None else margs.get("plan")


def _refuse_planning_with_plan(a, margs: dict, command: str) -> None:
    """With a plan file nothing is planned: prune options (flags or model_args) contradict it."""
    from lmms_prune_plugin.core.planner import prune_option_names

    flags = [
        n for n in (*prune_option_names(), *CALIBRATION_ARGS) if getattr(a, n, None) is not None
    ]
    if command == "heal":  # heal calibrates nothing either, but finds its data tasks there
        flags = [n for n in flags if n not in CALIBRATION_ARGS]
    elif a.force_simple:
        flags.append("force_simple")
    if flags:
        value = getattr(a, flags[0])
        raise ValueError(
            f"--{flags[0]}={value!r} is not allowed with a plan file: {command} applies the plan "
            f"as it is, nothing is planned or calibrated; give one of --plan or --{flags[0]}"
        )
    keys = [k for k in (*prune_option_names(), "save_plan", *CALIBRATION_ARGS) if k in margs]
    if keys and not (command == "heal" and keys[0] in CALIBRATION_ARGS):
        raise ValueError(
            f"model_args {keys[0]}={margs[keys[0]]!r} is not allowed with a plan file: {command} "
            "applies the plan as it is, nothing is planned or calibrated; remove it"
        )


def _export_from_plan(a, margs: dict, plan_path: str):
    """The plan file and the checkpoint it is applied to (model_args pretrained=, else the one
    the plan names); model_args the export does not read are named, not dropped in silence."""
    from loguru import logger

    _refuse_planning_with_plan(a, margs, "export")
    plan = _load_plan(plan_path)
    unused = sorted(set(margs) - {*EXPORT_USES, "plan"})
    if unused:
        logger.info(
            f"lmms-prune export --plan does not use model_args {', '.join(unused)}: it loads "
            "the checkpoint with transformers alone (no lmms-eval wrapper), on the CPU"
        )
    if margs.get("pretrained"):
        return plan, str(margs["pretrained"])
    print(f"export: pretrained={plan.model.name_or_path!r}, the plan's model", file=sys.stderr)
    return plan, plan.model.name_or_path


def cmd_export(a) -> int:
    import gc

    from lmms_prune_plugin.core.args import parse_bool
    from lmms_prune_plugin.surgery.export import check_not_source, check_target, export_pruned

    margs = _model_args(a)
    plan_path = _plan_source(a, margs)
    trust = parse_bool("trust_remote_code", margs.get("trust_remote_code", False))
    strict = parse_bool("plan_strict", margs.get("plan_strict", True))
    out = Path(a.out)
    check_target(out, None, a.force)  # before any loading; the plan is compared later
    if plan_path is not None:
        plan, pretrained = _export_from_plan(a, margs, plan_path)
        check_target(out, plan, a.force)
    else:
        lm = _load(a, **_with_default_budget(_prune_given(a), margs))
        plan, pretrained = lm.plan, lm.pretrained
        del lm
        gc.collect()
    check_not_source(out, str(pretrained))
    path = export_pruned(
        str(pretrained),
        plan,
        out,
        force=a.force,
        revision=margs.get("revision"),
        trust_remote_code=trust,
        strict=strict,
    )
    print(f"exported {pretrained} without layers {list(plan.removed)} to {path}")
    return 0


# -- heal -----------------------------------------------------------------------------------
HEAL_OWN = {
    "plan": "give --plan {value} instead",
    "save_plan": "the healed export holds its plan.json",
    "engine": "healing trains the transformers model",
}


def _heal_args(p: argparse.ArgumentParser) -> None:
    from lmms_prune_plugin.core.heal import HealOptions

    HealOptions.add_flags(p)


def _heal_given(a) -> dict:
    from lmms_prune_plugin.core.heal import HealOptions

    return HealOptions.given(a)


def _heal_options(a):
    from lmms_prune_plugin.core.heal import HealOptions

    return HealOptions.parse(**_heal_given(a))


def _check_data_tasks(tasks: Sequence[str], paths: Sequence[str]) -> None:
    """Each ``--data`` task is known to lmms-eval and says what its answers are, before any model
    is loaded: lmms-eval cannot build a task without ``doc_to_target``, and its failure would
    read like a dataset that could not be downloaded."""
    from lmms_eval.utils import load_yaml_config

    from lmms_prune_plugin.core.args import closest
    from lmms_prune_plugin.harnesses.lmms_eval.requests import resolve_task_name
    from lmms_prune_plugin.harnesses.lmms_eval.training import task_manager_for

    tm = task_manager_for(tasks, paths)
    for name in tasks:
        task = resolve_task_name(name)
        if task not in tm.all_tasks:
            raise ValueError(
                f"data={name!r}: lmms-eval knows no task {task!r}{closest(task, tm.all_tasks)}; "
                "give an lmms-eval task, with --include_path for a task folder of your own"
            )
        entry = tm.task_index.get(task, {})
        if entry.get("type") != "task":  # a group or a Python task: checked when it is built
            continue
        if load_yaml_config(entry["yaml_path"], mode="full").get("doc_to_target") is None:
            raise ValueError(
                f"data={name!r}: task {task!r} has no doc_to_target ({entry['yaml_path']}); "
                "lmms-eval cannot build a task without one, and --objective sft trains on its "
                "answers: add doc_to_target to the task, or train on another"
            )


def _heal_checks(a, margs: dict, opts) -> None:
    """Everything about ``heal`` that can fail without a model."""
    from lmms_prune_plugin.core.heal import text_hidden_size
    from lmms_prune_plugin.core.planner import PruneOptions
    from lmms_prune_plugin.harnesses.lmms_eval.base import read_config
    from lmms_prune_plugin.surgery.export import check_target

    default = "heal loads the unpruned model (its own teacher); give --{key} {value} instead"
    _refuse_model_args(margs, "heal", HEAL_OWN, default)
    if a.plan is not None:
        _refuse_planning_with_plan(a, margs, "heal")
    PruneOptions.parse(**_with_default_budget(_prune_given(a), {}))
    out = Path(a.out)
    if out.is_symlink() or out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not a.force:
            raise ValueError(
                f"out={a.out!r} already exists; give a new folder (or --force to replace an "
                "export of lmms-prune)"
            )
    check_target(out, None, a.force)
    args = _pruned_vlm_args(a)
    config = _calibration_config(args)
    _check_data_tasks(opts.data, config.task_paths)
    if margs.get("pretrained") and Path(str(margs["pretrained"])).is_dir():  # before loading it
        opts.check_hidden_size(text_hidden_size(read_config(str(margs["pretrained"]))))


def cmd_heal(a) -> int:
    from lmms_prune_plugin.core.args import parse_bool
    from lmms_prune_plugin.core.planner import PruneOptions
    from lmms_prune_plugin.harnesses.lmms_eval.training import heal_and_export

    margs = _model_args(a)
    opts = _heal_options(a)
    _heal_checks(a, margs, opts)
    trust = parse_bool("trust_remote_code", margs.get("trust_remote_code", False))
    strict = parse_bool("plan_strict", margs.get("plan_strict", True))
    plan = _load_plan(a.plan) if a.plan is not None else None
    lm = _load(a, budget=0)  # unpruned: the model is its own teacher
    if plan is None:
        plan = lm.planner.plan(PruneOptions.parse(**_with_default_budget(_prune_given(a), {})))
    path, result = heal_and_export(lm, plan, opts, Path(a.out), a.force, strict, trust)
    if path is not None:
        s = result.summary()
        print(
            f"healed {lm.pretrained} without layers {list(plan.removed)}: loss "
            f"{s['loss_first']:.4f} -> {s['loss_last']:.4f} in {s['seconds']:.0f} s; "
            f"exported to {path}"
        )
    return 0


# -- sweep ----------------------------------------------------------------------------------
SWEEP_OWN = {
    "criterion": "sweep sets it per cell; give --criteria {value} instead",
    "strategy": "sweep sets it per cell; give --strategies {value} instead",
    "budget": "sweep sets it per cell; give --budgets {value} instead",
    "plan": "sweep plans every cell itself; evaluate a plan file with lmms-eval --model "
    "pruned_vlm --model_args plan={value}",
    "save_plan": "each cell's removed layers are in its sweep row",
    "engine": "give --engine {value} instead",
}


def _sweep_out(path: str) -> Path:
    """The JSONL file: its rows well formed (a resumed sweep) and its folder writable."""
    from lmms_prune_plugin.surgery.export import probe_writable
    from lmms_prune_plugin.tools.sweep import check_out

    out = Path(path)
    check_out(out)  # a folder, an unwritable place, or malformed rows
    probe_writable("out", out, out.absolute().parent)
    return out


def _sweep_checks(a, tasks: list[str]):
    """Everything about ``sweep`` that can fail without a model; returns the task manager."""
    from lmms_eval.tasks import TaskManager

    from lmms_prune_plugin.core.planner import PruneOptions
    from lmms_prune_plugin.tools.sweep import SWEPT, check_tasks

    default = "sweep loads the unpruned model and plans every cell; give --{key} {value} instead"
    _refuse_model_args(_model_args(a), "sweep", SWEEP_OWN, default)
    if not a.heal and _heal_given(a):
        from lmms_prune_plugin.core.heal import HealOptions

        name, value = next(iter(_heal_given(a).items()))
        raise ValueError(
            f"--{HealOptions.flag_name(name)}={value} is not allowed without --heal: nothing "
            "is healed; add --heal or remove it"
        )
    if a.heal and a.engine != "hf":
        raise ValueError(
            f"--engine={a.engine!r} is not allowed with --heal: healing trains the transformers "
            "model; use --engine hf"
        )
    _sweep_out(a.out)
    args = _pruned_vlm_args(a)
    config = _calibration_config(args)
    tm = TaskManager(include_path=config.task_paths)
    check_tasks(tasks, tm)
    PruneOptions.parse(**_prune_given(a, skip=SWEPT))  # bad values fail before the model loads
    if a.heal:
        _check_data_tasks(_heal_options(a).data, config.task_paths)
    return tm


def cmd_sweep(a) -> int:
    from lmms_prune_plugin.harnesses.lmms_eval.engine import deferred
    from lmms_prune_plugin.tools.sweep import SWEPT, plan_cells, run_sweep

    tasks = _csv(a.tasks)
    tm = _sweep_checks(a, tasks)
    strategies = [None if s == "default" else s for s in _csv(a.strategies)]
    cells = plan_cells(_csv(a.criteria), strategies, a.budgets)
    with deferred():  # engine=vllm: plans come from the HF model, each cell's vLLM comes later
        lm = _load(a, budget=0, engine=a.engine)
    summary = run_sweep(
        lm,
        cells,
        tasks,
        tm,
        a.out,
        limit=a.limit,
        options=_prune_given(a, skip=SWEPT),
        engine=a.engine,
        heal=_heal_options(a) if a.heal else None,
    )
    print(
        f"sweep: {summary.cells} cells, {summary.ran} evaluated, {summary.skipped} already in "
        f"{a.out}; calibration forwards: {summary.calibration_forwards}"
    )
    return 0


# -- list -----------------------------------------------------------------------------------
def cmd_list(a) -> int:
    from lmms_prune_plugin.core.plugins import get_calibration_sets, get_criteria, get_strategies

    print("criteria (higher score = removed first):")
    for c in get_criteria().values():
        domains = ", ".join(c.domains) if c.domains else "none"
        print(
            f"  {c.name:<12} {c.formula}  [domains: {domains}; default strategy: "
            f"{c.default_strategy}; cost: {c.cost}]  {c.description}"
        )
    print("strategies:")
    for s in get_strategies().values():
        traits = [
            t
            for t, on in (("uses scores", s.uses_scores), ("spacing-aware", s.spacing_aware))
            if on
        ]
        print(f"  {s.name:<12} {s.description}  [{', '.join(traits) or 'scores ignored'}]")
    print("calibration sets:")
    for c in get_calibration_sets().values():
        where = "offline" if c.offline else "needs the hub"
        print(f"  {c.name:<20} {c.domain:<8} task {c.task} ({where})  {c.description}")
    return 0


# -- report ---------------------------------------------------------------------------------
REPORT_FILES = (
    "leaderboard.md",
    "leaderboard.csv",
    "leaderboard.json",
    "leaderboard.html",
    "by_budget.md",
    "accuracy_vs_budget.png",
)


def cmd_report(a) -> int:
    """One leaderboard of every input: sweep files (lmms-eval), lm-eval output folders and
    VLMEvalKit model folders, each told by its content; every input is read and checked
    before anything is written."""
    from lmms_prune_plugin.tools import report as rep
    from lmms_prune_plugin.tools.harness_rows import read_source
    from lmms_prune_plugin.tools.leaderboard_html import to_html
    from lmms_prune_plugin.tools.plots import accuracy_vs_budget

    rows = [row for source in a.sweep for row in read_source(source)]
    rep.check_rows(rows, a.allow_mixed)
    board = rep.leaderboard(rows, _csv(a.math_tasks) if a.math_tasks else None)
    per, notes = rep.series_regimes(board, a.converge, a.bootstrap, a.confidence, a.seed, a.family)
    for note in notes:
        print(f"report: {note}", file=sys.stderr)
    out = _out_folder(a.out)
    existing = [n for n in REPORT_FILES if (out / n).exists()]
    if existing and not a.force:
        raise ValueError(
            f"out={str(out)!r} already holds {', '.join(existing)}; pass --force to overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)
    md = rep.to_markdown(board, per)
    (out / "leaderboard.md").write_text(md)
    (out / "leaderboard.csv").write_text(rep.to_csv(board))
    (out / "leaderboard.json").write_text(rep.to_json(board, per))
    (out / "by_budget.md").write_text(rep.by_budget(board))
    groups = {
        c: label
        for c, label in (("math_avg", "math tasks"), ("general_avg", "general tasks"))
        if any(r[c] is not None for r in board.records)
    }
    caption = "accuracy against layers removed"
    png = accuracy_vs_budget(board.records, groups, out / "accuracy_vs_budget.png", caption)
    html = to_html(board, per, {caption: png.read_bytes()})
    (out / "leaderboard.html").write_text(html, encoding="utf-8")
    print(md)
    print(f"wrote {', '.join(REPORT_FILES)} to {out}")
    return 0


# -- the parser: one function per subcommand ----------------------------------------------------
def _common() -> argparse.ArgumentParser:
    """Flags every subcommand takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--verbosity",
        type=str.upper,
        choices=LEVELS,
        help="log level of lmms-eval's and lmms-prune's messages (default: $LOGURU_LEVEL, else "
        "INFO)",
    )
    return p


def _rank_parser(sub, common) -> None:
    r = sub.add_parser(
        "rank",
        parents=[common],
        help="calibrate once; per-layer similarities and each criterion's ranking",
    )
    _model_options(r)
    _add_prune_flags(r, skip=("criterion",), budget=DEFAULT_BUDGET)
    r.add_argument(
        "--criteria",
        type=_items("criteria", "criterion names (lmms-prune list), or all"),
        help="comma list, or 'all' (default: every criterion scored from one calibration pass; "
        "'all' adds the greedy iter_* and func_* ones, which re-calibrate)",
    )
    r.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        help="resample the calibration samples N times; report how often each layer is removed",
    )
    r.add_argument("--out", type=_text("out", "a folder"), default="out/rank")
    r.set_defaults(fn=cmd_rank)


def _export_parser(sub, common) -> None:
    e = sub.add_parser(
        "export", parents=[common], help="write a pruned checkpoint that plain transformers loads"
    )
    _export_flags(e, "no prune or calibration flags with it", "a different export")
    e.set_defaults(fn=cmd_export)


def _export_flags(p: argparse.ArgumentParser, plan_note: str, replaced: str) -> None:
    """What export and heal share: the model, prune flags, a plan file, and the output folder."""
    _model_options(p)
    _add_prune_flags(p)
    p.add_argument(
        "--plan",
        type=_text("plan", "a plan file (lmms-prune rank writes them)"),
        help=f"apply this plan file instead of planning ({plan_note})",
    )
    p.add_argument("--out", type=_text("out", "a folder"), required=True)
    p.add_argument(
        "--force",
        action="store_true",
        help=f"replace {replaced} in --out (only while it holds exactly what lmms-prune wrote "
        "there)",
    )


def _sweep_parser(sub, common) -> None:
    s = sub.add_parser(
        "sweep",
        parents=[common],
        help="criteria x strategies x budgets through lmms-eval's evaluator",
    )
    _model_options(s)
    s.add_argument(
        "--criteria", type=_items("criteria", "criterion names"), default=CRITERIA_DEFAULT
    )
    s.add_argument(
        "--strategies",
        type=_items("strategies", "strategy names or default"),
        default=STRATEGIES_DEFAULT,
        help="comma list; 'default' = each criterion's own",
    )
    s.add_argument("--budgets", type=_budgets, default="0,2,4,6,8")
    s.add_argument(
        "--tasks",
        type=_items("tasks", "lmms-eval task names"),
        default="prune_demo_math,prune_demo_nonmath",
    )
    s.add_argument("--limit", type=_count("limit", 1), default=None)
    _add_prune_flags(s, skip=("criterion", "strategy", "budget"))  # given as lists above
    s.add_argument("--out", type=_text("out", "the sweep JSONL file"), default="out/sweep.jsonl")
    s.add_argument(
        "--engine",
        choices=["hf", "vllm"],
        default="hf",
        help="evaluate each cell with transformers (hf) or with vLLM on the cell's export; "
        "vLLM's arguments (tensor_parallel_size=, max_model_len=, ...) go in --model_args",
    )
    s.add_argument("--heal", action="store_true", help="also evaluate each pruned cell healed")
    _heal_args(s)
    s.set_defaults(fn=cmd_sweep)


def _heal_parser(sub, common) -> None:
    h = sub.add_parser(
        "heal", parents=[common], help="prune, heal with LoRA, merge and export a checkpoint"
    )
    _export_flags(h, "no prune flags with it", "an export of lmms-prune")
    _heal_args(h)
    h.set_defaults(fn=cmd_heal)


def _report_parser(sub, common) -> None:
    rp = sub.add_parser(
        "report",
        parents=[common],
        help="leaderboard (Markdown, CSV, JSON, HTML) of lmms-eval, lm-eval and VLMEvalKit "
        "results, plots and regime analysis",
    )
    rp.add_argument(
        "sweep",
        nargs="+",
        type=_text("sweep", "a sweep JSONL file or a results folder"),
        help="sweep JSONL files (lmms-eval), lm-eval --output_path folders (results_*.json and "
        "plan.json) and VLMEvalKit model or work folders (*_acc.csv and plan.json), told apart "
        "by what they hold; all go into one leaderboard with a harness column",
    )
    rp.add_argument("--out", type=_text("out", "a folder"), default="out/report")
    rp.add_argument(
        "--math_tasks",
        type=_items("math_tasks", "task names"),
        help="comma list; default: names that look like math",
    )
    rp.add_argument(
        "--converge",
        type=_real("converge", lambda v: v >= 0, "a spread in points >= 0, e.g. 2"),
        default=2.0,
        help="without per-document results: spread (points) below which methods have converged",
    )
    rp.add_argument(
        "--allow-mixed",
        dest="allow_mixed",
        action="store_true",
        help="report rows of several models together",
    )
    _report_interval_flags(rp)
    rp.add_argument("--force", action="store_true", help="overwrite existing report files")
    rp.set_defaults(fn=cmd_report)


def _report_interval_flags(rp: argparse.ArgumentParser) -> None:
    rp.add_argument(
        "--bootstrap",
        type=_count("bootstrap", 2),
        default=1000,
        help="paired bootstrap replicates over documents for intervals and regimes (default 1000)",
    )
    rp.add_argument(
        "--confidence",
        type=_real("confidence", lambda v: 0 < v < 1, "a level between 0 and 1, e.g. 0.95"),
        default=0.95,
        help="interval level (default 0.95)",
    )
    rp.add_argument(
        "--family",
        choices=["score", "all"],
        default="score",
        help="methods that must agree for 'moderate': score-based criteria (default) or all",
    )
    rp.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def build_parser() -> argparse.ArgumentParser:
    """The ``lmms-prune`` parser: rank, export, sweep, heal, list, report."""
    p = argparse.ArgumentParser(prog="lmms-prune", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    common = _common()
    _rank_parser(sub, common)
    _export_parser(sub, common)
    _sweep_parser(sub, common)
    _heal_parser(sub, common)
    ls = sub.add_parser(
        "list", parents=[common], help="every registered criterion, strategy and calibration set"
    )
    ls.set_defaults(fn=cmd_list)
    _report_parser(sub, common)
    for name, (_, what) in HARNESS_COMMANDS.items():  # listed in --help; main hands them over
        sub.add_parser(name, help=what, add_help=False)
    return p


#: ``lmms-prune <harness> ...``: that harness's own command line, with our pruned models
#: registered (VLMEvalKit's runs in its own environment: docs/harnesses-and-engines.md).
HARNESS_COMMANDS = {
    "lm-eval": (
        "lm_eval",
        "EleutherAI's lm-evaluation-harness (lm_eval run ...), --model pruned_vlm",
    ),
    "vlmeval": ("vlmeval", "VLMEvalKit's run (--model ... --prune criterion=math,budget=4 ...)"),
}


def run_harness(name: str, argv: list[str]) -> int:
    """Hand the rest of the command line to the harness launcher (imported only now: importing
    VLMEvalKit turns certificate checks off for the whole process)."""
    import importlib

    module = importlib.import_module(f"{__package__}.harnesses.{HARNESS_COMMANDS[name][0]}")
    return module.main(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one ``lmms-prune`` command; errors in what was given end it with status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in HARNESS_COMMANDS:
        return run_harness(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    from lmms_prune_plugin.demo.model import DemoModelError

    try:
        _configure_logging(args.verbosity)
        return args.fn(args)
    except (ValueError, DemoModelError) as err:
        print(f"lmms-prune {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a file removed meanwhile: said, not a traceback
        print(f"lmms-prune {args.command}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

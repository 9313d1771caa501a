"""``lmms-prune``: rank layers, export pruned checkpoints, sweep budgets, report leaderboards."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CRITERIA_DEFAULT = "math,nonmath,mixed,shortgpt,angular,last,random"
STRATEGIES_DEFAULT = "default"


def _model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and calibration (defaults: the packaged demo model and tasks)")
    g.add_argument(
        "--model_args",
        default="",
        help="lmms-eval style key=value,... for pruned_vlm (pretrained=, base=, device_map=, ...)",
    )
    # Defaults live in pruned_vlm; a flag given here overrides nothing silently (see _load).
    g.add_argument("--calib_math", help="default: prune_calib_math")
    g.add_argument("--calib_nonmath", help="default: prune_calib_nonmath")
    g.add_argument("--calib_limit", help="samples per domain, or none (default: 64)")
    g.add_argument("--include_path", help="extra lmms-eval task folder")
    g.add_argument("--tokens", choices=["all", "text", "image", "last"], help="default: all")
    g.add_argument("--plan_cache", help="true (default), false, or a cache folder")
    g.add_argument("--force_simple", action="store_true", help="use the simple (not chat) wrapper")


def _parse_model_args(s: str) -> dict:
    from lmms_eval.utils import simple_parse_args_string

    return simple_parse_args_string(s) if s else {}


def _add_prune_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = (), **defaults) -> None:
    """One ``--name`` per prune option (the fields of PruneOptions); parsed strictly later."""
    from .planner import prune_option_names

    g = p.add_argument_group("prune options (as pruned_vlm's model_args; see lmms-prune list)")
    for name in prune_option_names():
        if name not in skip:
            g.add_argument(f"--{name}", default=defaults.get(name))


def _prune_given(a, skip: tuple[str, ...] = ()) -> dict:
    """The prune options given as flags (or with a subcommand default)."""
    from .planner import prune_option_names

    return {n: getattr(a, n) for n in prune_option_names()
            if n not in skip and getattr(a, n, None) is not None}  # fmt: skip


CALIB_FLAGS = ("calib_math", "calib_nonmath", "calib_limit", "include_path", "tokens", "plan_cache")


def _pruned_vlm_args(a, **prune) -> dict:
    """``--model_args`` plus the calibration flags given; the same key twice is an error."""
    margs = _parse_model_args(a.model_args)
    flags = {k: getattr(a, k) for k in CALIB_FLAGS if getattr(a, k) is not None} | prune
    both = sorted(set(margs) & set(flags))
    if both:
        raise ValueError(
            f"{both[0]} is given both in --model_args ({margs[both[0]]!r}) and as an option "
            f"({flags[both[0]]!r}); give it once"
        )
    return margs | flags


def _load(a, **prune):
    from .models.pruned_vlm import PrunedVLM, PrunedVLMSimple

    cls = PrunedVLMSimple if a.force_simple else PrunedVLM
    return cls(**_pruned_vlm_args(a, **prune))


def _out_folder(path: str) -> Path:
    """An output folder that can be created or written, checked before any work."""
    from .args import check_writable

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={path!r} is not allowed: it is a file; give a folder")
    return check_writable("out", out)


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _budget(x: str) -> int | float:
    """A budget as typed: ``4`` stays an int (plans record it as given), ``0.25`` a fraction."""
    try:
        v = float(x)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"budget={x!r} is not a number") from err
    return int(v) if v.is_integer() else v


def _budgets(s: str) -> list[int | float]:
    return [_budget(x) for x in _csv(s)]


# -- rank -----------------------------------------------------------------------------------
def _rank_criteria(spec: str | None) -> list[str]:
    """``--criteria``: default every criterion scored from one calibration pass; ``all`` adds
    the greedy (re-calibrating) ones; or a comma list."""
    from .plugins import get_criteria, get_criterion

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
    from .criteria import ranks
    from .planner import PruneOptions
    from .plots import layer_profiles
    from .strategies import resolve_budget

    out = _out_folder(a.out)
    names = _rank_criteria(a.criteria)
    if a.bootstrap and a.bootstrap < 2:
        raise ValueError(f"bootstrap={a.bootstrap!r} is not allowed; give 0 (off) or at least 2")
    given = _prune_given(a, skip=("criterion", "budget"))
    PruneOptions.parse(**given)  # bad values fail before the model is loaded
    lm = _load(a, budget=0)
    planner, n = lm.planner, lm.identity.num_layers
    k = resolve_budget(PruneOptions.parse(budget=a.budget).budget, n)
    options = {}
    for name in names:
        opts = PruneOptions.parse(**given, criterion=name, budget=k)
        try:
            planner.check(opts)
        except ValueError as err:  # e.g. a criterion reading a domain that is not calibrated
            print(f"skipped {name}: {err}", file=sys.stderr)
            continue
        options[name] = opts
    plans = dict(zip(options, planner.plans(list(options.values())), strict=True))
    sims = {d: s.similarity() for d, s in planner.statistics().items()}
    rank_cols = {
        name: [int(n - x) for x in ranks(p.scores)] for name, p in plans.items()
    }  # 1 = first
    for name, plan in plans.items():
        plan.save(out / "plans" / f"{name}.json")
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
    png = layer_profiles(sims, {n: p.removed for n, p in plans.items()}, out / "layer_scores.png",
                         f"{Path(lm.pretrained).name}: per-layer similarity; marks = removed at budget {k}")  # fmt: skip
    print(
        f"wrote {len(plans)} plans to {out / 'plans'} and {png}; calibration forwards: {planner.forwards}"
    )
    if a.bootstrap:
        _rank_bootstrap(a, lm, {c: o for c, o in options.items()}, k, out)
    return 0


def _rank_bootstrap(a, lm, options: dict, k: int, out: Path) -> None:
    import json

    from .planner import PruneOptions
    from .plots import plan_stability
    from .plugins import get_criterion
    from .stability import bootstrap_plans

    planner = lm.planner
    chosen = {c: o for c, o in options.items()
              if get_criterion(c).adaptive is None and get_criterion(c).domains}  # fmt: skip
    skipped = sorted(set(options) - set(chosen))
    if skipped:
        print(f"bootstrap skips {', '.join(skipped)}: no calibration scores, or greedy "
              "(it would re-run its passes per resample)", file=sys.stderr)  # fmt: skip
    if not chosen:
        return
    n = lm.identity.num_layers
    blocks = tuple(sorted({b for o in chosen.values() for b in o.block_sizes(n)}))
    samples = planner.sample_statistics(block_sizes=blocks)
    seed = PruneOptions.parse(seed=a.seed if a.seed is not None else 0).seed
    found = bootstrap_plans(lm.identity, samples, list(chosen.values()), a.bootstrap, seed)
    sizes = ", ".join(f"{len(v)} {d}" for d, v in samples.items())
    print(f"\nplan stability at budget {k}: {a.bootstrap} bootstrap resamples of the calibration "
          f"samples ({sizes}); J = mean Jaccard agreement of removed sets")  # fmt: skip
    print(f"{'criterion':<12} {'J pairs':>7} {'J plan':>7}  plan  most often removed (share)")
    for st in found:
        top = sorted(range(n), key=lambda i: -st.frequency[i])[: max(k + 2, 1)]
        often = " ".join(f"{i}({st.frequency[i]:.2f})" for i in top if st.frequency[i] > 0)
        plan = ",".join(map(str, st.plan))
        print(f"{st.criterion:<12} {st.jaccard:>7.3f} {st.jaccard_to_plan:>7.3f}  {plan}  {often}")
    (out / "stability.json").write_text(json.dumps([s.to_dict() for s in found], indent=2) + "\n")
    png = plan_stability(
        {s.criterion: s.frequency for s in found}, {s.criterion: s.jaccard for s in found},
        out / "plan_stability.png",
        f"{Path(lm.pretrained).name}: layers removed at budget {k} over {a.bootstrap} resamples",
    )  # fmt: skip
    print(f"wrote {out / 'stability.json'} and {png}")


# -- export ---------------------------------------------------------------------------------
def cmd_export(a) -> int:
    import gc

    from .args import parse_bool
    from .export import check_target, export_pruned
    from .plan import PrunePlan

    margs = _parse_model_args(a.model_args)
    trust = parse_bool("trust_remote_code", margs.get("trust_remote_code", False))
    strict = parse_bool("plan_strict", margs.get("plan_strict", True))
    check_target(Path(a.out), None, a.force)  # before any loading; the plan is compared later
    if a.plan:
        plan = PrunePlan.load(a.plan)
        pretrained = margs.get("pretrained") or plan.model.name_or_path
    else:
        lm = _load(a, **_prune_given(a))
        plan, pretrained = lm.plan, lm.pretrained
        del lm
        gc.collect()
    path = export_pruned(str(pretrained), plan, a.out, force=a.force, revision=margs.get("revision"),
                         trust_remote_code=trust, strict=strict)  # fmt: skip
    print(f"exported {pretrained} without layers {list(plan.removed)} to {path}")
    return 0


# -- heal -----------------------------------------------------------------------------------
def _heal_args(p: argparse.ArgumentParser) -> None:
    from .heal import DEFAULT_DATA, DEFAULT_TARGETS, HealOptions

    d = HealOptions()
    g = p.add_argument_group("healing (LoRA on the kept layers; see README 'Healing')")
    g.add_argument(
        "--objective",
        default=d.objective,
        help="distill (default: KL to the unpruned model) or sft (task targets)",
    )
    g.add_argument(
        "--data", default=",".join(DEFAULT_DATA), help="lmms-eval task(s) to train on, comma list"
    )
    g.add_argument("--data_limit", default=str(d.limit), help="samples per data task, or none")
    g.add_argument("--rank", type=int, default=d.rank, help="LoRA rank")
    g.add_argument(
        "--lora_alpha", type=float, default=d.alpha, help="LoRA alpha (scale = alpha / rank)"
    )
    g.add_argument(
        "--target_modules", default=",".join(DEFAULT_TARGETS), help="linear modules to adapt"
    )
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument(
        "--batch_size", type=int, default=d.batch_size, help="samples per step and process"
    )
    g.add_argument("--heal_seed", type=int, default=d.seed, help="adapter init and data order")
    g.add_argument("--continuation_tokens", type=int, default=d.continuation_tokens,
                   help="teacher tokens distilled after each prompt")  # fmt: skip


def _heal_options(a):
    from .args import parse_int
    from .heal import HealOptions

    return HealOptions(
        objective=a.objective, data=tuple(_csv(a.data)), rank=a.rank, alpha=a.lora_alpha,
        limit=parse_int("data_limit", a.data_limit, minimum=1, allow_none=True),
        target_modules=tuple(_csv(a.target_modules)), lr=a.lr, steps=a.steps,
        batch_size=a.batch_size, seed=a.heal_seed, continuation_tokens=a.continuation_tokens,
    )  # fmt: skip


def cmd_heal(a) -> int:
    from .args import parse_bool
    from .export import check_target
    from .heal import heal_and_export, text_hidden_size
    from .models.base import read_config
    from .plan import PrunePlan
    from .planner import PruneOptions

    opts = _heal_options(a)
    PruneOptions.parse(**_prune_given(a))  # bad values fail before the model is loaded
    out = Path(a.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not a.force:
        raise ValueError(
            f"out={a.out!r} already exists; give a new folder (or --force to replace an export of lmms-prune)"
        )
    check_target(out, None, a.force)
    margs = _parse_model_args(a.model_args)
    trust = parse_bool("trust_remote_code", margs.get("trust_remote_code", False))
    strict = parse_bool("plan_strict", margs.get("plan_strict", True))
    if margs.get("pretrained") and Path(str(margs["pretrained"])).is_dir():  # before loading it
        opts.check_hidden_size(text_hidden_size(read_config(str(margs["pretrained"]))))
    plan = PrunePlan.load(a.plan) if a.plan else None
    lm = _load(a, budget=0)  # unpruned: the model is its own teacher
    if plan is None:
        plan = lm.planner.plan(PruneOptions.parse(**_prune_given(a)))
    path, result = heal_and_export(lm, plan, opts, out, a.force, strict, trust)
    if path is not None:
        s = result.summary()
        print(f"healed {lm.pretrained} without layers {list(plan.removed)}: loss {s['loss_first']:.4f} -> "
              f"{s['loss_last']:.4f} in {s['seconds']:.0f} s; exported to {path}")  # fmt: skip
    return 0


# -- sweep ----------------------------------------------------------------------------------
def cmd_sweep(a) -> int:
    from lmms_eval.tasks import TaskManager

    from .calibration import CalibrationConfig
    from .planner import PruneOptions
    from .sweep import SWEPT, check_out, check_tasks, plan_cells, run_sweep

    check_out(Path(a.out))  # before loading anything: a folder, unwritable, or malformed rows
    tasks = _csv(a.tasks)
    args = _pruned_vlm_args(a)
    config = CalibrationConfig.parse(**{k: args[k] for k in CALIB_FLAGS if k in args})
    tm = TaskManager(include_path=config.task_paths)
    check_tasks(tasks, tm)
    strategies = [None if s == "default" else s for s in _csv(a.strategies)]
    cells = plan_cells(_csv(a.criteria), strategies, _budgets(a.budgets))
    common = _prune_given(a, skip=SWEPT)
    PruneOptions.parse(**common)  # bad values fail before the model is loaded
    from .models.engine import deferred

    with deferred():  # engine=vllm: plans come from the HF model, each cell's vLLM comes later
        lm = _load(a, budget=0, engine=a.engine)
    summary = run_sweep(
        lm,
        cells,
        tasks,
        tm,
        a.out,
        limit=a.limit,
        options=common,
        engine=a.engine,
        heal=_heal_options(a) if a.heal else None,
    )
    print(f"sweep: {summary.cells} cells, {summary.ran} evaluated, {summary.skipped} already in {a.out}; "
          f"calibration forwards: {summary.calibration_forwards}")  # fmt: skip
    return 0


# -- list -----------------------------------------------------------------------------------
def cmd_list(a) -> int:
    from .plugins import get_calibration_sets, get_criteria, get_strategies

    print("criteria (higher score = removed first):")
    for c in get_criteria().values():
        domains = ", ".join(c.domains) if c.domains else "none"
        print(f"  {c.name:<12} {c.formula}  [domains: {domains}; default strategy: "
              f"{c.default_strategy}; cost: {c.cost}]  {c.description}")  # fmt: skip
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
def cmd_report(a) -> int:
    from .plots import accuracy_vs_budget
    from .report import (
        by_budget,
        check_rows,
        leaderboard,
        regimes,
        regimes_ci,
        to_csv,
        to_json,
        to_markdown,
    )
    from .sweep import read_rows

    rows = []
    for f in a.sweep:
        path = Path(f)
        if not path.exists():
            raise ValueError(f"sweep={f!r}: no such file")
        rows += read_rows(path)
    check_rows(rows, a.allow_mixed)
    board = leaderboard(rows, _csv(a.math_tasks) if a.math_tasks else None)
    if board.has_docs:
        per = regimes_ci(board, a.bootstrap, a.confidence, a.seed, a.family)
    else:
        print(
            "report: the sweep rows hold no per-document results, so no intervals; regimes by "
            f"the spread rule (converge={a.converge} points)",
            file=sys.stderr,
        )
        per = regimes(board, converge=a.converge)
    out = _out_folder(a.out)
    names = ["leaderboard.md", "leaderboard.csv", "leaderboard.json", "by_budget.md",
             "accuracy_vs_budget.png"]  # fmt: skip
    existing = [n for n in names if (out / n).exists()]
    if existing and not a.force:
        raise ValueError(
            f"out={str(out)!r} already holds {', '.join(existing)}; pass --force to overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(board, per)
    (out / "leaderboard.md").write_text(md)
    (out / "leaderboard.csv").write_text(to_csv(board))
    (out / "leaderboard.json").write_text(to_json(board, per))
    (out / "by_budget.md").write_text(by_budget(board))
    groups = {
        c: label
        for c, label in (("math_avg", "math tasks"), ("general_avg", "general tasks"))
        if any(r[c] is not None for r in board.records)
    }
    accuracy_vs_budget(
        board.records, groups, out / "accuracy_vs_budget.png", "accuracy against layers removed"
    )
    print(md)
    print(f"wrote {', '.join(names)} to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmms-prune", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser(
        "rank", help="calibrate once; per-layer similarities and each criterion's ranking"
    )
    _model_options(r)
    _add_prune_flags(r, skip=("criterion",), budget="4")
    r.add_argument(
        "--criteria",
        default=None,
        help="comma list, or 'all' (default: every criterion scored from one calibration pass; "
        "'all' adds the greedy iter_* and func_* ones, which re-calibrate)",
    )
    r.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        help="resample the calibration samples N times; report how often each layer is removed",
    )
    r.add_argument("--out", default="out/rank")
    r.set_defaults(fn=cmd_rank)

    e = sub.add_parser("export", help="write a pruned checkpoint that plain transformers loads")
    _model_options(e)
    _add_prune_flags(e, budget="4")
    e.add_argument("--plan", default=None, help="apply this plan file instead of calibrating")
    e.add_argument("--out", required=True)
    e.add_argument("--force", action="store_true", help="replace a different export in --out")
    e.set_defaults(fn=cmd_export)

    s = sub.add_parser(
        "sweep", help="criteria x strategies x budgets through lmms-eval's evaluator"
    )
    _model_options(s)
    s.add_argument("--criteria", default=CRITERIA_DEFAULT)
    s.add_argument(
        "--strategies",
        default=STRATEGIES_DEFAULT,
        help="comma list; 'default' = each criterion's own",
    )
    s.add_argument("--budgets", default="0,2,4,6,8")
    s.add_argument("--tasks", default="prune_demo_math,prune_demo_nonmath")
    s.add_argument("--limit", type=int, default=None)
    _add_prune_flags(s, skip=("criterion", "strategy", "budget"))  # given as lists above
    s.add_argument("--out", default="out/sweep.jsonl")
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

    h = sub.add_parser("heal", help="prune, heal with LoRA, merge and export a checkpoint")
    _model_options(h)
    _add_prune_flags(h, budget="4")
    h.add_argument("--plan", default=None, help="apply this plan file instead of calibrating")
    _heal_args(h)
    h.add_argument("--out", required=True)
    h.add_argument("--force", action="store_true", help="replace an export of lmms-prune in --out")
    h.set_defaults(fn=cmd_heal)

    ls = sub.add_parser("list", help="every registered criterion, strategy and calibration set")
    ls.set_defaults(fn=cmd_list)

    rp = sub.add_parser(
        "report", help="leaderboard (Markdown, CSV, JSON), plots and regime analysis"
    )
    rp.add_argument("sweep", nargs="+", help="sweep JSONL file(s)")
    rp.add_argument("--out", default="out/report")
    rp.add_argument(
        "--math_tasks", default=None, help="comma list; default: names that look like math"
    )
    rp.add_argument(
        "--converge",
        type=float,
        default=2.0,
        help="without per-document results: spread (points) below which methods have converged",
    )
    rp.add_argument(
        "--allow-mixed",
        dest="allow_mixed",
        action="store_true",
        help="report rows of several models together",
    )
    rp.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="paired bootstrap replicates over documents for intervals and regimes (default 1000)",
    )
    rp.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    rp.add_argument(
        "--family",
        choices=["score", "all"],
        default="score",
        help="methods that must agree for 'moderate': score-based criteria (default) or all",
    )
    rp.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    rp.add_argument("--force", action="store_true", help="overwrite existing report files")
    rp.set_defaults(fn=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .demo.model import DemoModelError

    try:
        return args.fn(args)
    except (ValueError, DemoModelError) as err:
        print(f"lmms-prune {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

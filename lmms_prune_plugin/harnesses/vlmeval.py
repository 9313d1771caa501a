"""Prune a VLM at load time and evaluate it with VLMEvalKit's own ``run.main()``.

    python -m lmms_prune_plugin.harnesses.vlmeval --model NAME --prune criterion=math,budget=4 \\
        [--pretrained PATH] [--calib-math SET --calib-nonmath SET] \\
        --data DATASET ... [--work-dir DIR] [--judge exact_matching] [VLMEvalKit's other flags]

``NAME`` is a model of VLMEvalKit's ``supported_VLM`` (its own class and settings; with
``--pretrained`` at another checkpoint), or any name with ``--pretrained PATH`` for a
transformers checkpoint run by lmms-prune's CPU-capable chat class, or ``lmms_prune_demo`` for
the packaged demo model. The pruned model is registered into ``vlmeval.vlm`` and
``vlmeval.config.supported_VLM`` under ``--name`` (default ``NAME__<options>``), and every flag
that is not ours goes to VLMEvalKit: datasets, judges, output files (``*_acc.csv``,
``status.json``) and torchrun data parallelism are VLMEvalKit's. The plan is written to
``<work-dir>/<name>/plan.json``. The exit status is non-zero when anything failed, including
what VLMEvalKit only logs (its results are checked).

Only this process imports VLMEvalKit (it turns certificate checks off process-wide and
configures ``logging``); nothing of it is imported before the arguments are checked.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from lmms_prune_plugin.harnesses.vlmeval_args import plan_target
from lmms_prune_plugin.harnesses.vlmeval_data import DEMO_CALIBRATION

PROG = "python -m lmms_prune_plugin.harnesses.vlmeval"
DEMO_MODEL = "lmms_prune_demo"  # (vlmeval_models.DEMO_MODEL; that module imports VLMEvalKit)
#: VLMEvalKit flags that would bypass or contradict the launcher.
REFUSED_FLAGS = {
    "--config": "the launcher registers the model itself; give --data and our flags instead",
    "--base-url": "an API model has no layers to remove",
    "--api-mode": "an API model has no layers to remove",
    "--use-vllm": "layers are removed from a model loaded in this process",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class LaunchError(ValueError):
    """A bad argument of the launcher, found before anything runs."""


def parser() -> argparse.ArgumentParser:
    """The launcher's own flags (every other flag is VLMEvalKit's)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        allow_abbrev=False,
        add_help=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-h", "--help", action="store_true", help="show this help")
    p.add_argument(
        "--model", help=f"a supported_VLM name, any name with --pretrained, or {DEMO_MODEL}"
    )
    p.add_argument(
        "--prune", help="pruning options, e.g. criterion=math,budget=4 (budget=0: unpruned)"
    )
    p.add_argument("--plan", help="apply this saved plan.json instead of calibrating")
    p.add_argument("--pretrained", help="checkpoint folder or hub id")
    p.add_argument("--name", help="VLMEvalKit model name of the pruned model (output folder)")
    p.add_argument(
        "--model-args",
        default="{}",
        help="JSON object of keyword arguments for the "
        "model class (supported_VLM's or lmms-prune's HFChat)",
    )
    p.add_argument("--max-new-tokens", type=int, help="HFChat: answer length (default 32)")
    p.add_argument("--trust-remote-code", action="store_true", help="HFChat: run checkpoint code")
    p.add_argument("--calib-math", default=DEMO_CALIBRATION["math"], help="VLMEvalKit dataset")
    p.add_argument(
        "--calib-nonmath", default=DEMO_CALIBRATION["nonmath"], help="VLMEvalKit dataset"
    )
    p.add_argument("--calib-limit", default="64", help="calibration lines per domain (none: all)")
    p.add_argument("--tokens", default="all", help="token selection: all, text, image, last")
    p.add_argument("--plan-cache", default="true", help="true, false or a cache folder")
    return p


def split_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our flags, and VLMEvalKit's (checked for flags that cannot work here)."""
    ours, rest = parser().parse_known_args(list(argv))
    for flag in rest:
        name = flag.split("=", 1)[0]
        if name in REFUSED_FLAGS:
            raise LaunchError(f"{name} is not allowed here: {REFUSED_FLAGS[name]}")
        if name == "--model" or (name.startswith("--") and "--model".startswith(name)):
            raise LaunchError("--model takes one name here")
    return ours, rest


def check_ours(args: argparse.Namespace) -> dict[str, Any]:
    """Everything our flags alone can tell, before VLMEvalKit is imported; returns the
    keyword arguments of the pruned model (without the output folder)."""
    from lmms_prune_plugin.core.calibration import CalibrationConfig
    from lmms_prune_plugin.core.plan import PrunePlan
    from lmms_prune_plugin.harnesses.vlmeval_args import check_depth, model_kwargs, parse_prune

    if not args.model:
        raise LaunchError(
            "--model is required: a supported_VLM name, any name with --pretrained, "
            f"or {DEMO_MODEL}"
        )
    if (args.prune is None) == (args.plan is None):
        raise LaunchError(
            "give exactly one of --prune (e.g. criterion=math,budget=4) and --plan FILE"
        )
    config = CalibrationConfig.parse(
        calib_math=args.calib_math,
        calib_nonmath=args.calib_nonmath,
        calib_limit=args.calib_limit,
        tokens=args.tokens,
        plan_cache=args.plan_cache,
    )
    options = parse_prune(args.prune) if args.prune is not None else None
    if args.plan is not None:
        PrunePlan.load(args.plan)
    if options is not None and args.pretrained is not None:
        check_depth(args.pretrained, options, config.sets)
    return {
        "inner": args.model,
        "pretrained": args.pretrained,
        "prune": args.prune,
        "plan": args.plan,
        "calib_math": args.calib_math,
        "calib_nonmath": args.calib_nonmath,
        "calib_limit": args.calib_limit,
        "tokens": args.tokens,
        "plan_cache": args.plan_cache,
        "inner_kwargs": model_kwargs(args),
    }


def model_name(args: argparse.Namespace) -> str:
    """``--name``, else ``<model>__<options>`` (``lmms_prune_demo__criterion-math_budget-4``)."""
    if args.name is not None:
        name = args.name
    elif args.plan is not None:
        name = f"{args.model}__plan-{Path(args.plan).stem}"
    else:
        spec = args.prune.replace("=", "-").replace(",", "_").replace(" ", "")
        name = f"{args.model}__{spec}"
    if not _NAME.match(name) or len(name) > 200:
        raise LaunchError(
            f"--name={name!r} is not allowed: it names a folder and files; use letters, digits "
            "and . _ + - (give --name when --model or --prune hold other characters)"
        )
    return name


def register(name: str, kwargs: dict[str, Any]) -> None:
    """Make ``name`` a VLMEvalKit model: ``vlmeval.vlm.PrunedVLM`` and
    ``supported_VLM[name] = partial(PrunedVLM, ...)``."""
    import vlmeval.vlm
    from vlmeval.config import supported_VLM

    from lmms_prune_plugin.harnesses.vlmeval_models import PrunedVLM

    vlmeval.vlm.PrunedVLM = PrunedVLM
    supported_VLM[name] = partial(PrunedVLM, name=name, **kwargs)


def check_with_vlmeval(args: argparse.Namespace, kwargs: dict[str, Any], name: str) -> None:
    """What needs VLMEvalKit's tables: the model name, its class's keyword arguments and the
    calibration datasets (a VLMEvalKit benchmark, or a TSV in ``$LMUData``)."""
    import inspect

    from vlmeval.config import supported_VLM
    from vlmeval.dataset import SUPPORTED_DATASETS

    from lmms_prune_plugin.harnesses.vlmeval_models import DEMO_MODEL as DEMO
    from lmms_prune_plugin.harnesses.vlmeval_models import HFChat
    from lmms_prune_plugin.harnesses.vlmeval_source import lmu_root

    if name in supported_VLM:
        raise LaunchError(
            f"--name={name!r} is not allowed: VLMEvalKit already has a model of "
            "that name; give another"
        )
    ours = args.model == DEMO or args.model not in supported_VLM
    if ours and args.model != DEMO and args.pretrained is None:
        from lmms_prune_plugin.core.args import closest

        raise LaunchError(
            f"--model {args.model!r} is not in VLMEvalKit's supported_VLM"
            f"{closest(args.model, supported_VLM)}; give --pretrained PATH to run a transformers "
            f"checkpoint with lmms-prune's chat class, or --model {DEMO} for the demo"
        )
    cls = HFChat if ours else supported_VLM[args.model].func
    if not ours and (args.max_new_tokens is not None or args.trust_remote_code):
        raise LaunchError(
            f"--max-new-tokens/--trust-remote-code are HFChat's; for {args.model} "
            "give its own keyword arguments in --model-args"
        )
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in kwargs["inner_kwargs"] if k not in params or k == "self"]
        if unknown:
            raise LaunchError(
                f"--model-args: {unknown[0]!r} is not an argument of {cls.__name__}; "
                f"it takes {', '.join(p for p in params if p != 'self')}"
            )
    for domain in calibration_domains(args):
        task = kwargs[f"calib_{domain}"]
        if task not in SUPPORTED_DATASETS:
            if not (lmu_root() / f"{task}.tsv").is_file():
                raise LaunchError(
                    f"--calib-{domain}={task!r} is not allowed: no VLMEvalKit dataset of that name "
                    f"and no {lmu_root() / (task + '.tsv')}; write the demo sets with "
                    f"`python scripts/vlmeval_demo_data.py {lmu_root()}` or give a dataset"
                )


def calibration_domains(args: argparse.Namespace) -> tuple[str, ...]:
    """The domains the pruning options calibrate on (none for a plan file or budget 0)."""
    from lmms_prune_plugin.core.args import is_none
    from lmms_prune_plugin.core.plugins import get_criterion
    from lmms_prune_plugin.harnesses.vlmeval_args import parse_prune

    if args.plan is not None:
        return ()
    options = parse_prune(args.prune)
    if options.budget == 0:
        return ()
    sets = {d: v for d, v in (("math", args.calib_math), ("nonmath", args.calib_nonmath))}
    return get_criterion(options.criterion).resolve_domains(
        d for d, v in sets.items() if not is_none(v)
    )


def check_results(run_dir: Path, datasets: Sequence[str], mode: str, since: float) -> list[str]:
    """What VLMEvalKit did not do for each dataset, read from its ``status.json`` (it logs a
    failed model or dataset and carries on): entries of this run, done, without an error or a
    skip, with metrics unless ``--mode infer``."""
    status = run_dir / "status.json"
    try:
        entries = json.loads(status.read_text()).get("datasets", {})
    except (OSError, ValueError, AttributeError) as err:
        return [f"{status} could not be read ({type(err).__name__}: {err}): VLMEvalKit did not run"]
    problems = []
    for d in datasets:
        e = entries.get(d)
        if not isinstance(e, dict):
            problems.append(f"{d}: no entry in {status}")
        elif _stamp(e.get("updated_at")) < since:
            problems.append(f"{d}: its entry in {status} is from an earlier run")
        elif e.get("error_message"):
            problems.append(f"{d}: failed: {e['error_message']}")
        elif e.get("skip_reason") and not (mode == "infer" and e["skip_reason"] == "mode_infer"):
            problems.append(f"{d}: skipped by VLMEvalKit ({e['skip_reason']})")
        elif e.get("status") != "done":
            problems.append(f"{d}: left in state {e.get('status')!r}")
        elif mode != "infer" and not e.get("metrics"):
            problems.append(f"{d}: evaluated without metrics")
    return problems


def _stamp(text: object) -> float:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return float("-inf")


def _fail(message: str, code: int = 1) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def _with_argv(argv: list[str], fn):
    """``fn()`` with ``sys.argv`` set to VLMEvalKit's command line (it parses ``sys.argv``)."""
    saved = sys.argv
    sys.argv = ["vlmeval.run", *argv]
    try:
        return fn()
    finally:
        sys.argv = saved


def vlmeval_args(argv: list[str]) -> argparse.Namespace:
    """VLMEvalKit's own parsing of its flags (argparse errors exit with status 2)."""
    import vlmeval.run as run

    vargs = _with_argv(argv, run.parse_args)
    if not vargs.data:
        raise LaunchError("--data is required: the VLMEvalKit datasets to evaluate")
    return vargs


def run_vlmeval(argv: list[str]) -> int:
    """VLMEvalKit's ``run.main()``; a ``sys.exit`` inside becomes the returned code."""
    import vlmeval.run as run

    try:
        with gloo_without_cuda():
            _with_argv(argv, run.main)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    return 0


@contextmanager
def gloo_without_cuda() -> Iterator[None]:
    """Under torchrun VLMEvalKit starts its process group with the nccl backend, which needs
    GPUs: without CUDA the group uses gloo instead, so ranks split the data on CPU too."""
    import torch
    import torch.distributed as dist

    original = dist.init_process_group
    if torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        yield
        return

    def init_process_group(*args, **kwargs):
        if kwargs.get("backend") == "nccl":
            kwargs["backend"] = "gloo"
        return original(*args, **kwargs)

    dist.init_process_group = init_process_group
    try:
        yield
    finally:
        dist.init_process_group = original


def main(argv: Sequence[str] | None = None) -> int:
    """The launcher (see the module docstring); 0 when every dataset was evaluated."""
    try:
        args, rest = split_args(list(sys.argv[1:] if argv is None else argv))
        if args.help:
            parser().print_help()
            print("\nEvery other flag is VLMEvalKit's: python -m vlmeval.run --help")
            return 0
        kwargs = check_ours(args)
        name = model_name(args)
        check_with_vlmeval(args, kwargs, name)
        vlmeval_argv = ["--model", name, *rest]
        vargs = vlmeval_args(vlmeval_argv)
    except ValueError as err:  # LaunchError and the options' own errors
        return _fail(str(err), 2)
    except SystemExit as stop:  # VLMEvalKit's argparse has printed why
        return stop.code if isinstance(stop.code, int) else 2
    run_dir = Path(os.environ.get("MMEVAL_ROOT") or vargs.work_dir) / name
    try:
        plan_target(str(run_dir))  # a plan.json there that is no plan is named now
    except ValueError as err:
        return _fail(str(err), 2)
    register(name, kwargs | {"output_dir": str(run_dir), "reuse": bool(vargs.reuse)})
    since = time.time() - 1
    code = run_vlmeval(vlmeval_argv)
    return _outcome(name, code, run_dir, vargs, since)


def _outcome(name: str, code: int, run_dir: Path, vargs: argparse.Namespace, since: float) -> int:
    from lmms_prune_plugin.harnesses.vlmeval_models import FAILED

    if name in FAILED:
        return _fail(f"the pruned model {name} could not be built: {FAILED[name]}")
    if code:
        return _fail(f"VLMEvalKit exited with status {code}", code)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 evaluates and writes status.json
    problems = check_results(run_dir, vargs.data, vargs.mode, since)
    if problems:
        return _fail("; ".join(problems))
    print(
        f"{PROG}: {len(vargs.data)} dataset(s) evaluated; results and plan.json in {run_dir}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

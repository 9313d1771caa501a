"""Run EleutherAI's lm-evaluation-harness with ``pruned_vlm`` and ``pruned_lm`` registered.

    python -m lmms_prune_plugin.harnesses.lm_eval --model pruned_vlm \\
        --model_args criterion=math,budget=4 --tasks prune_demo --apply_chat_template \\
        --include_path <this folder>/lm_eval_tasks --device cpu --output_path out/lm_eval

Every argument is lm-eval's own (``lm-eval run --help``). lm-eval has no plugin entry points: its
``--model`` resolves only names registered in the running process, so this launcher imports our
models (which registers them) and then runs lm-eval's CLI, as ``lm_eval.__main__.cli_evaluate``
does. One step is added between parsing and running: the prompt settings lm-eval resolved
(``--apply_chat_template``, ``--system_instruction``, ``--fewshot_as_multiturn``) are copied into
the model_args of our models, so calibration formats its prompts as the evaluation does, and
``--include_path`` is searched for calibration tasks too. From Python, use
``lm_eval.simple_evaluate(model=PrunedVLM(...), ...)`` with the same settings on both sides.

:func:`main` returns the exit status: 0, or 1 after any failure (lm-eval's own CLI raises).
"""

from __future__ import annotations

import contextlib
import io
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from loguru import logger

from lmms_prune_plugin.core.distributed import is_main

#: The lm-eval models this package registers.
MODELS = ("pruned_vlm", "pruned_lm")


def register() -> None:
    """Register ``pruned_vlm`` and ``pruned_lm`` with lm-eval (importing them does it)."""
    from lmms_prune_plugin.harnesses import lm_eval_models  # noqa: F401


@contextlib.contextmanager
def _argv(argv: Sequence[str]) -> Iterator[None]:
    """lm-eval's parser reads ``sys.argv``."""
    saved = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        yield
    finally:
        sys.argv = saved


def _model_args_values(argv: Sequence[str]) -> Iterator[str]:
    """The raw values given to ``--model_args`` / ``-a``, in order."""
    taking = False
    for token in argv:
        if token.startswith("--model_args="):
            taking = False
            yield token.split("=", 1)[1]
        elif token in ("--model_args", "-a"):
            taking = True
        elif taking and not token.startswith("-"):
            yield token
        else:
            taking = False


def check_unique_model_args(argv: Sequence[str]) -> None:
    """``budget=2 ... budget=3``: lm-eval keeps the last one with a log line; name both instead."""
    from lm_eval._cli.utils import split_top_level

    seen: dict[str, str] = {}
    for value in _model_args_values(argv):
        if value.lstrip().startswith("{"):  # a JSON object holds each key once
            continue
        for part in split_top_level(value):
            k, _, v = part.partition("=")
            if k in seen:
                raise ValueError(
                    f"{k} is given twice in --model_args ({k}={seen[k]} and {k}={v}); lm-eval "
                    "would keep the last: give it once"
                )
            seen[k] = v


def share_prompt_settings(args: Any, argv: Sequence[str]) -> Any:
    """For our models: lm-eval's resolved prompt settings (flags or ``--config`` YAML) become
    model_args, and ``--include_path`` a calibration task folder. Giving the prompt settings in
    model_args as well is refused: two sources could disagree. Returns lm-eval's resolved
    configuration (``EvaluatorConfig``) for our models, else None."""
    from lm_eval.config.evaluate_config import EvaluatorConfig

    from lmms_prune_plugin.harnesses.lm_eval_models import PROMPT_ARGS

    if getattr(args, "command", None) != "run":
        return None
    with contextlib.redirect_stdout(io.StringIO()):  # with --config it prints the config
        cfg = EvaluatorConfig.from_cli(args)
    if cfg.model not in MODELS:
        return None
    check_unique_model_args(argv)
    model_args = dict(cfg.model_args or {})
    given = [k for k in PROMPT_ARGS if k in model_args]
    if given:
        k = given[0]
        raise ValueError(
            f"{k}={model_args[k]!r} in model_args is not allowed with this launcher: it sets "
            f"{', '.join(PROMPT_ARGS)} from lm-eval's --apply_chat_template, --system_instruction "
            "and --fewshot_as_multiturn, so that calibration formats prompts as the evaluation "
            "does; give those flags instead"
        )
    model_args["apply_chat_template"] = cfg.apply_chat_template or False
    model_args["fewshot_as_multiturn"] = bool(cfg.fewshot_as_multiturn)
    if cfg.system_instruction is not None:
        model_args["system_instruction"] = cfg.system_instruction
    if cfg.include_path and "include_path" not in model_args:
        model_args["include_path"] = cfg.include_path
    args.model_args = model_args
    return cfg


def _results_files(output_path: str) -> set[Path]:
    """lm-eval's results files under ``--output_path`` (a folder, or a ``.json`` file name it
    adds the date to)."""
    out = Path(output_path).expanduser()
    if out.suffix == ".json":
        return set(out.parent.glob(f"{out.stem}_*.json"))
    return set(out.glob("*/results_*.json"))


def write_plan_beside_results(output_path: str, before: set[Path]) -> list[Path]:
    """``plan.json`` beside the results this run wrote (what ``lmms-prune report`` reads). An
    existing plan.json is kept when it is this plan, and otherwise refused, never replaced; no
    new results file is an error (lm-eval logs a failed save and goes on)."""
    from lmms_prune_plugin.core.plan import PrunePlan
    from lmms_prune_plugin.harnesses.lm_eval_models import loaded_plan

    new = sorted(_results_files(output_path) - before)
    if not new:
        raise RuntimeError(
            f"--output_path={output_path!r}: lm-eval wrote no results file there (a failed save "
            "is only logged by lm-eval: 'Could not save results aggregated'); see its log above"
        )
    plan, written = loaded_plan(), []
    for folder in dict.fromkeys(f.parent for f in new):
        target = folder / "plan.json"
        if not target.exists():
            written.append(plan.save(target))
            continue
        try:
            same = PrunePlan.load(target) == plan
        except ValueError:
            same = False
        if not same:
            raise ValueError(
                f"--output_path={output_path!r}: {target} holds another plan (or no plan), so "
                f"it is not replaced, and the results written beside it ({new[0].name}) are of "
                "this run's plan; give each plan its own --output_path"
            )
    return written


def _exit_code(err: SystemExit) -> int:
    if err.code is None:
        return 0
    return err.code if isinstance(err.code, int) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """lm-eval's CLI (``lm-eval run`` arguments; ``run`` may be left out) with our models
    registered. Returns 0, or non-zero after any failure, which is logged."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        register()
        from lm_eval._cli import HarnessCLI
        from lm_eval.utils import setup_logging

        setup_logging()
        parser = HarnessCLI()
        with _argv(argv):
            args = parser.parse_args()
        cfg = share_prompt_settings(args, argv)
        output = cfg.output_path if cfg is not None else None
        before = _results_files(output) if output else set()
        parser.execute(args)
        if output and is_main():
            write_plan_beside_results(output, before)
    except SystemExit as err:  # argparse: --help, bad arguments
        return _exit_code(err)
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        logger.error(_failure(err))
        return 1
    return 0


def _failure(err: Exception) -> str:
    """One line for an argument this package refused (its message says what to change); the
    traceback for anything else."""
    frames = traceback.extract_tb(err.__traceback__)
    ours = bool(frames) and "lmms_prune_plugin" in Path(frames[-1].filename).parts
    if isinstance(err, ValueError) and ours:
        return f"lmms-prune lm-eval: {err}"
    trace = "".join(traceback.format_exception(err)).rstrip()
    return f"lmms-prune lm-eval: {type(err).__name__}: {err}\n{trace}"


if __name__ == "__main__":
    raise SystemExit(main())

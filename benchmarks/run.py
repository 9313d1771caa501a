"""Run every benchmark and write ``results.json`` and ``results.md``.

Usage (from the repository root)::

    python -m benchmarks.run            # full run, about 15 minutes on 2 cores
    python -m benchmarks.run --quick    # tiny models, about a minute
    python -m benchmarks.run --only calibration_cost pruning_speedup --out /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

for _name, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_name, _value)

from .common import (  # noqa: E402
    Adaptive,
    DecoderSpec,
    log,
    machine_info,
    seed_runs,
    steal_seconds,
)

SECTIONS = (
    "calibration_cost",
    "pruning_speedup",
    "plan_cache",
    "sweep",
    "calibration_e2e",
    "heal_prep",
)
CRITERIA = ("math", "nonmath", "mixed", "mixed_rank", "shortgpt", "angular", "last", "random")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DEFAULT_VLLM = DEFAULT_OUT / "vllm" / "vllm_speedup.json"  # benchmarks.vllm_speedup's own run


@dataclass(frozen=True)
class Config:
    """Sizes and repetition plans of every part (see :class:`benchmarks.common.Adaptive`)."""

    mode: str
    calib_spec: DecoderSpec
    calib_seq_lens: tuple[int, ...]
    calib_plan: Adaptive
    calib_depth_check: bool
    prune_spec: DecoderSpec
    prune_ks: tuple[int, ...]
    prune_seq_len: int
    prune_new_tokens: int
    prefill_plan: Adaptive
    decode_plan: Adaptive
    prune_allocations: int  # caps are for all allocations together, min_rounds for each
    cache_layers: int
    cache_hidden: int
    cache_calib_limit: int
    cache_plan: Adaptive
    cache_profile_n: int
    cache_time_task_manager: bool
    sweep_criteria: tuple[str, ...] = CRITERIA
    sweep_budgets: tuple[int, ...] = (1, 2, 3, 4, 5)
    sweep_layers: int = 6
    sweep_calib_limit: int = 8
    # Part 5: calibration through pruned_vlm vs. the processor and one batched forward, on the
    # demo model and on a tiny model of the same architecture but wide (a forward that costs).
    e2e_models: tuple[str, ...] = ("demo", "wide")
    e2e_batch_sizes: tuple[int, ...] = (1, 16)
    e2e_docs: int = 64  # pruned_vlm's default calib_limit: what a user waits for per domain
    e2e_wide_layers: int = 4
    e2e_wide_hidden: int = 1024
    # Each model's cap; e2e at batch 1 runs 64 documents one by one: a round of the wide model
    # takes about 12 s, so the cap leaves room for 6 rounds or more.
    e2e_plan: Adaptive = Adaptive(min_rounds=6, max_rounds=40, cap_s=100.0)
    # Part 6: the teacher's answers for healing (demo model, prune_train prompts).
    heal_prompts: int = 32
    heal_new_tokens: int = 8
    heal_batch_size: int = 16
    heal_plan: Adaptive = Adaptive(min_rounds=6, max_rounds=40, cap_s=45.0)


# The full run: about 15 minutes on 2 cores (parts 5 and 6: about 5). Each cap is the timed
# part's budget in seconds; a part stops earlier once every interval it decides on is within +-2% (+-1% for the load, whose
# target is 1.02). A median needs 6 rounds for any 95% interval (benchmarks/stats.py), so every
# one-stage ratio gets at least 6; the speed-ups' unit is the allocation, 5 of them (Student's t
# with 4 degrees of freedom, half the width of 3 allocations at the same spread).
FULL = Config(
    mode="full",
    calib_spec=DecoderSpec(
        hidden_size=1024, intermediate_size=2816, num_heads=16, num_kv_heads=4, num_layers=8
    ),
    calib_seq_lens=(256, 1024, 2048, 4096),
    # The untargeted hidden-states reference in the first 6 rounds only (enough for an
    # interval): at 4096 tokens a call of it costs 11 s.
    calib_plan=Adaptive(min_rounds=6, max_rounds=40, cap_s=150.0, extra_rounds=6),
    calib_depth_check=True,
    prune_spec=DecoderSpec(
        hidden_size=1024, intermediate_size=2816, num_heads=16, num_kv_heads=4, num_layers=12
    ),
    prune_ks=(2, 4, 6, 8),
    prune_seq_len=1024,
    # 16 tokens a call, not more: a decode round runs seven variants, and more rounds (not longer
    # calls) are what narrows a bootstrap interval; at 32 the cap allowed only 5 rounds.
    prune_new_tokens=16,
    prefill_plan=Adaptive(min_rounds=3, max_rounds=40, cap_s=90.0),
    decode_plan=Adaptive(min_rounds=4, max_rounds=40, cap_s=126.0),
    prune_allocations=5,
    cache_layers=48,
    cache_hidden=1024,
    cache_calib_limit=2,
    cache_plan=Adaptive(min_rounds=8, max_rounds=60, cap_s=45.0, rel_half_width=0.01),
    cache_profile_n=3,
    cache_time_task_manager=True,
)

_TINY = DecoderSpec(
    hidden_size=256,
    intermediate_size=704,
    num_heads=4,
    num_kv_heads=2,
    num_layers=4,
    vocab_size=1000,
)
# A developer's check of a change: same code paths, tiny models, a few rounds (about 1 min);
# its verdicts judge nothing (printed as such).
QUICK = Config(
    mode="quick",
    calib_spec=_TINY,
    calib_seq_lens=(64, 256, 1024),
    calib_plan=Adaptive(min_rounds=6, max_rounds=30, cap_s=6.0, extra_rounds=3),
    calib_depth_check=False,
    prune_spec=_TINY,
    prune_ks=(2,),
    prune_seq_len=128,
    prune_new_tokens=8,
    prefill_plan=Adaptive(min_rounds=3, max_rounds=30, cap_s=2.0),
    decode_plan=Adaptive(min_rounds=3, max_rounds=30, cap_s=3.0),
    prune_allocations=2,
    cache_layers=4,
    cache_hidden=64,
    cache_calib_limit=2,
    cache_plan=Adaptive(min_rounds=6, max_rounds=30, cap_s=4.0, rel_half_width=0.01),
    cache_profile_n=1,
    cache_time_task_manager=False,
    sweep_calib_limit=2,
    e2e_batch_sizes=(1, 4),
    e2e_docs=8,
    e2e_wide_layers=2,
    e2e_wide_hidden=256,
    e2e_plan=Adaptive(min_rounds=6, max_rounds=12, cap_s=4.0),
    heal_prompts=8,
    heal_new_tokens=4,
    heal_batch_size=4,
    heal_plan=Adaptive(min_rounds=6, max_rounds=12, cap_s=3.0),
)


def run_sections(cfg: Config, sections: tuple[str, ...], probe=None) -> dict[str, Any]:
    """Run the chosen parts; a part's result is ``None`` when it was not run.

    ``probe``: a started :class:`benchmarks.memory.MemoryProbe` for part 1 (one is started here
    if needed); it is closed when part 1 is done.
    """
    out: dict[str, Any] = dict.fromkeys(SECTIONS)
    seconds: dict[str, float] = {}
    steal: dict[str, float] = {}
    if "calibration_cost" in sections and probe is None:
        from .memory import MemoryProbe

        probe = MemoryProbe()
    _preload(sections)
    log("modules loaded")
    try:
        for name in SECTIONS:
            if name not in sections:
                continue
            log(f"== {name}")
            start, stolen = time.perf_counter(), steal_seconds()
            out[name] = _run_section(name, cfg, probe)
            seconds[name] = time.perf_counter() - start
            steal[name] = steal_seconds() - stolen
    finally:
        if probe is not None:
            probe.close()
    out["section_s"] = seconds
    out["section_steal_s"] = steal
    return out


def _preload(sections: tuple[str, ...]) -> None:
    """Import the heavy modules up front (while the memory helper starts up in parallel)."""
    import transformers.models.qwen2.modeling_qwen2  # noqa: F401

    from .package import LayerCapture  # noqa: F401

    if {"plan_cache", "sweep", "calibration_e2e", "heal_prep"} & set(sections):
        import lmms_eval.models  # noqa: F401

        from .package import PrunedVLM  # noqa: F401


def _run_section(name: str, cfg: Config, probe) -> dict[str, Any]:
    if name == "calibration_cost":
        from . import calibration_cost

        return calibration_cost.run(
            cfg.calib_spec,
            cfg.calib_seq_lens,
            cfg.calib_plan,
            depth_check=cfg.calib_depth_check,
            probe=probe,
        )
    if name == "pruning_speedup":
        from . import pruning_speedup

        return pruning_speedup.run(
            cfg.prune_spec,
            cfg.prune_ks,
            cfg.prune_seq_len,
            cfg.prune_new_tokens,
            cfg.prefill_plan,
            cfg.decode_plan,
            cfg.prune_allocations,
        )
    if name == "plan_cache":
        from . import plan_cache

        return plan_cache.run(
            cfg.cache_layers,
            cfg.cache_hidden,
            cfg.cache_calib_limit,
            cfg.cache_plan,
            cfg.cache_profile_n,
            cfg.cache_time_task_manager,
        )
    if name == "sweep":
        from . import sweep_passes

        return sweep_passes.run(
            cfg.sweep_criteria, cfg.sweep_budgets, cfg.sweep_layers, cfg.sweep_calib_limit
        )
    return _run_end_to_end_parts(name, cfg)


def _run_end_to_end_parts(name: str, cfg: Config) -> dict[str, Any]:
    """Parts 5 and 6: calibration and the teacher's answers for healing, end to end."""
    if name == "calibration_e2e":
        from . import calibration_e2e

        return calibration_e2e.run(
            cfg.e2e_models,
            cfg.e2e_batch_sizes,
            cfg.e2e_docs,
            cfg.e2e_wide_layers,
            cfg.e2e_wide_hidden,
            cfg.e2e_plan,
        )
    from . import heal_prep

    return heal_prep.run(cfg.heal_prompts, cfg.heal_new_tokens, cfg.heal_batch_size, cfg.heal_plan)


def _vllm_results(path: str) -> dict[str, Any] | None:
    """The vLLM speed-up results to show (from their own run), or None: ``none``, or the default
    file absent (said so). A file given that is missing or not such results is an error."""
    from .report import load_vllm

    if path.strip().lower() == "none":
        return None
    if not Path(path).exists():
        if Path(path) == DEFAULT_VLLM:
            log(f"no vLLM results at {path}: results.md shows no vLLM rows")
            return None
        raise SystemExit(f"--vllm={path!r} is not allowed: no such file (or give none)")
    try:
        return load_vllm(path)
    except ValueError as err:
        raise SystemExit(str(err)) from err


def _quiet_libraries() -> None:
    """Keep the terminal for progress: library warnings and info lines say nothing here."""
    import transformers
    from loguru import logger

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny models and few repetitions (a smoke run)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder for results.json and results.md"
    )
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="run only these parts"
    )
    parser.add_argument(
        "--seq-lens", type=int, nargs="+", help="override the calibration sequence lengths"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads, fixed for the whole run (default: one per core)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the shuffled round orders (default: a new one per run, recorded)",
    )
    parser.add_argument(
        "--vllm",
        default=str(DEFAULT_VLLM),
        help="vllm_speedup.json to show beside the transformers speed-ups (none: leave out)",
    )
    return parser


def _write(results: dict[str, Any], out: Path, vllm: dict[str, Any] | None) -> None:
    """Targets, then ``results.json`` and ``results.md`` (the vLLM rows from their own run)."""
    from .report import render, targets

    if vllm is not None:
        results["vllm_speedup"] = vllm
    results["targets"] = targets(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    (out / "results.md").write_text(render(results))
    log(f"wrote {out / 'results.json'} and {out / 'results.md'} in {results['wall_s']:.0f} s")
    for t in results["targets"]:
        log(f"  {t['verdict']:<12} {t['target']}: {t['value']}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    vllm = _vllm_results(args.vllm)  # a bad file is named before anything runs
    start = time.perf_counter()
    seed = args.seed if args.seed is not None else time.time_ns() % 2**31
    seed_runs(seed)
    probe = None
    if "calibration_cost" in args.only:
        from .memory import MemoryProbe

        probe = MemoryProbe()  # its imports and model set-up overlap with ours
    import torch

    torch.set_num_threads(args.threads)

    cfg = QUICK if args.quick else FULL
    if args.seq_lens:
        cfg = replace(cfg, calib_seq_lens=tuple(sorted(args.seq_lens)))
    _quiet_libraries()
    log(f"lmms-prune benchmarks ({cfg.mode}): {', '.join(args.only)}")
    results: dict[str, Any] = {
        "schema": 3,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": cfg.mode,
        "seed": seed,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    stolen, cpu = steal_seconds(), time.process_time()
    results |= run_sections(cfg, tuple(args.only), probe)
    results["machine"] = machine_info() | {"loadavg_at_start": list(load)}
    results["wall_s"] = time.perf_counter() - start
    results["cpu_s"] = time.process_time() - cpu
    results["steal_s"] = steal_seconds() - stolen
    _write(results, args.out, vllm)
    return 0


if __name__ == "__main__":
    sys.exit(main())

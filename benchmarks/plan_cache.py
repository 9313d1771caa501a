"""Part 3: what a cached plan adds to loading a model through lmms-eval.

Compares constructing ``pruned_vlm`` whose plan is already in the cache with constructing the
plain lmms-eval wrapper on the same checkpoint (interleaved, medians). A profile of both then
shows where any extra time goes.

Setting up: a first ``pruned_vlm`` load calibrates and stores the statistics and the plan, as
``pruned_vlm`` builds its own (see :mod:`benchmarks.tiny_vlm`), so the first ``pruned_vlm`` load
only makes and stores the plan; every later load finds the plan. Each timed load first forgets
the removal checks remembered in the process, so, like a new lmms-eval process, it reads the
check's verdict from the cache folder.
"""

from __future__ import annotations

import cProfile
import gc
import os
import pstats
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .common import Adaptive, interleaved, log, median, progress, timed
from .stats import verdict
from .tiny_vlm import ARCH, TEST_TASKS, calibration_args

OWN_PACKAGE = f"{os.sep}lmms_prune_plugin{os.sep}"
MAX_RATIO = 1.02  # cached pruned_vlm load / plain wrapper load
CLOCK = "cpu"  # the clock the target is judged on (see benchmarks/README.md, Method)


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _profile(fn, n: int) -> pstats.Stats:
    prof = cProfile.Profile()
    for _ in range(n):
        gc.collect()
        prof.enable()
        obj = fn()
        prof.disable()
        del obj
    return pstats.Stats(prof)


def _cumulative(stats: pstats.Stats, n: int) -> dict[str, float]:
    """Milliseconds per construction for each function, keyed 'file:function'."""
    out = {}
    for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        key = f"{file}:{func}"
        out[key] = max(out.get(key, 0.0), ct * 1000 / n)
    return out


def _short(key: str) -> str:
    file, func = key.rsplit(":", 1)
    if OWN_PACKAGE in file:
        file = "lmms_prune_plugin/" + file.split(OWN_PACKAGE, 1)[1]
    elif "site-packages" in file:
        file = file.split("site-packages" + os.sep, 1)[1]
    return f"{file}:{func}"


def breakdown(plain_fn, cached_fn, n: int) -> dict[str, Any]:
    """Profile both constructions; list our own functions by cumulative time per construction.

    Profiling slows Python-heavy code more than native code, so these are shares, not timings.
    """
    plain = _cumulative(_profile(plain_fn, n), n)
    cached = _cumulative(_profile(cached_fn, n), n)
    total_plain = max(plain.values())
    total_cached = max(cached.values())
    own = sorted(
        (
            (k, v)
            for k, v in cached.items()
            if OWN_PACKAGE in k.rsplit(":", 1)[0] and not k.endswith(":<module>")
        ),
        key=lambda kv: -kv[1],
    )
    # lmms-eval's TaskManager (lmms_eval/tasks/__init__.py) indexes every task YAML it ships.
    tm_file = os.path.join("lmms_eval", "tasks", "__init__.py")
    tm_ms = max(
        (
            v
            for k, v in cached.items()
            if k.rsplit(":", 1)[0].endswith(tm_file) and k.endswith(":__init__")
        ),
        default=0.0,
    )
    return {
        "profiled_ms_per_construction": {"plain": total_plain, "cached": total_cached},
        "own_functions_ms": [{"function": _short(k), "ms": v} for k, v in own[:12]],
        "task_manager_ms": tm_ms,
        "task_manager_built": tm_ms > 0,
    }


def direct_timers(
    checkpoint: Path, include_path: str, model: Any, removed: list[int]
) -> dict[str, float]:
    """Milliseconds of the cached path's own steps, called directly on a loaded ``model``
    (median of 5, each after one untimed call)."""
    out: dict[str, float] = {}
    steps: dict[str, Any] = {}
    from .package import (
        forget_removal_checks,
        plan_removal,
        removal_checks_in,
        weights_fingerprint,
    )

    # The check against the class rebuilt on the meta device, as a first load pays it, and as
    # every later load does: its verdict read from the cache folder (a new process) or memory.
    def unchecked():
        forget_removal_checks()
        with removal_checks_in(None):
            return plan_removal(model, removed)

    def from_disk():
        forget_removal_checks()
        return plan_removal(model, removed)

    steps["plan_removal, verdict not remembered (the check itself)"] = unchecked
    steps["plan_removal, verdict from the cache folder (a new process)"] = from_disk
    steps["plan_removal, verdict remembered in the process"] = lambda: plan_removal(model, removed)

    steps["weights_fingerprint"] = lambda: weights_fingerprint(str(checkpoint))
    from .package import TASKS_DIR, files_fingerprint, folder_fingerprint, pick_wrapper, read_config

    steps["files_fingerprint (config, processor, tokenizer)"] = lambda: files_fingerprint(
        str(checkpoint)
    )
    steps["pick_wrapper(read_config) (config.json)"] = lambda: pick_wrapper(
        read_config(str(checkpoint))
    )
    steps["folder_fingerprint(package tasks)"] = lambda: folder_fingerprint(TASKS_DIR)
    steps["folder_fingerprint(include_path)"] = lambda: folder_fingerprint(include_path)
    for name, fn in steps.items():
        fn()
        out[name] = median([timed(fn)[0] * 1000 for _ in range(5)])
    return out


def task_manager_ms(include_path: str) -> dict[str, float]:
    """What a calibrating load pays to find its tasks: lmms-eval's full task index vs. only ours."""
    from lmms_eval.tasks import TaskManager

    from .package import TASKS_DIR

    paths = [TASKS_DIR, include_path]
    full, _ = timed(lambda: TaskManager(include_path=paths))
    ours, _ = timed(lambda: TaskManager(include_path=paths, include_defaults=False))
    return {
        "TaskManager (every lmms-eval task + ours)": full * 1000,
        "TaskManager(include_defaults=False) (ours only)": ours * 1000,
    }


def _measure(
    ckpt: Path,
    kwargs: dict,
    wkw: dict,
    plan: Adaptive,
    profile_n: int,
    time_task_manager: bool,
    tmp: Path,
) -> tuple:
    """Fill the cache with one load, then time, profile and take apart the cached load."""
    import lmms_eval.models

    from .package import PrunedVLM, forget_removal_checks

    plain_cls = lmms_eval.models.get_model(ARCH)
    forwards: list[int] = []

    def plain():
        return plain_cls(pretrained=str(ckpt), **wkw)

    def cached():
        # As a new process would: the removal check's verdict comes from the cache folder.
        forget_removal_checks()
        lm = PrunedVLM(**kwargs)
        forwards.append(lm.calibration_forwards)
        return lm

    with _env("LMMS_PRUNE_CACHE", str(tmp / "cache")):
        log("[plan cache] a first load that calibrates and stores the plan")
        fill_s, first = timed(cached)
        removed = list(first.plan.removed)
        fill_forwards = first.calibration_forwards
        del first
        forwards.clear()
        gc.collect()
        bar = progress(plan.max_rounds, "plan cache")
        times = interleaved(
            {"plain": plain, "cached": cached}, [("cached", "plain")], plan, CLOCK, bar=bar
        )
        bar.close()
        log(f"[plan cache] {times.rounds} rounds ({times.stopped}, {times.seconds:.0f} s)")
        log("[plan cache] profiling both constructions")
        prof = breakdown(plain, cached, profile_n)
        loaded = plain()
        timers = direct_timers(ckpt, str(TEST_TASKS), loaded.model, removed)
        del loaded
        tm = task_manager_ms(str(TEST_TASKS)) if time_task_manager else None
    return times, fill_s, fill_forwards, removed, forwards, prof, timers, tm


def run(
    num_layers: int,
    hidden_size: int,
    calib_limit: int,
    plan: Adaptive,
    profile_n: int,
    time_task_manager: bool = False,
) -> dict[str, Any]:
    from .package import save_tiny_vlm, wrapper_kwargs

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log(f"[plan cache] saving a {num_layers}-layer {ARCH} checkpoint (hidden {hidden_size})")
        ckpt = save_tiny_vlm(ARCH, tmp / "ckpt", num_layers=num_layers, hidden_size=hidden_size)
        size_mb = sum(f.stat().st_size for f in ckpt.glob("*.safetensors")) / 2**20
        wkw = wrapper_kwargs(ARCH)
        kwargs = {
            "pretrained": str(ckpt),
            "criterion": "math",
            "budget": 2,
            **calibration_args(calib_limit),
            **wkw,
        }
        measured = _measure(ckpt, kwargs, wkw, plan, profile_n, time_task_manager, tmp)
        gc.collect()
    checkpoint = {
        "arch": ARCH,
        "num_layers": num_layers,
        "hidden_size": hidden_size,
        "safetensors_mb": size_mb,
    }
    return {"checkpoint": checkpoint} | _result(*measured)


def _result(times, fill_s, fill_forwards, removed, forwards, prof, timers, tm) -> dict[str, Any]:
    """Part 3's results: the rounds, the ratio and its verdicts, and the profiles."""
    stats = times.summary()["variants"]
    r = times.ratios("cached", "plain")
    return {
        "plan_fill_s": fill_s,
        "plan_fill_calibration_forwards": fill_forwards,
        "removed": removed,
        "time": times.to_dict(),
        "ratio": r,
        "extra_ms": {
            c: (stats["cached"][c]["median_s"] - stats["plain"][c]["median_s"]) * 1000
            for c in ("cpu", "wall")
        },
        "cached_calibration_forwards": max(forwards, default=0),
        "profile": prof,
        "direct_ms": timers,
        "task_manager_ms": tm,
        "target": {
            "max_ratio": MAX_RATIO,
            "clock": CLOCK,
            "verdict": {c: verdict(r[c], MAX_RATIO, at_most=True) for c in ("cpu", "wall")},
        },
    }

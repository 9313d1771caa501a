"""Calibration: run lmms-eval task requests through a wrapper, prefill only, with capture on."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .capture import LayerCapture
from .plan import content_hash
from .stats import LayerStatistics


@dataclass(frozen=True)
class CalibrationSet:
    """A named calibration set: the lmms-eval task behind it and the domain it stands for."""

    name: str
    domain: str
    task: str
    offline: bool = True
    description: str = ""


BUILTIN_CALIBRATION_SETS = (
    CalibrationSet(
        "prune_calib_math",
        "math",
        "prune_calib_math",
        True,
        "generated arithmetic, bar charts, counting",
    ),
    CalibrationSet(
        "prune_calib_nonmath",
        "nonmath",
        "prune_calib_nonmath",
        True,
        "easy-vqa shapes and simple scenes",
    ),
    # Online variants: real benchmarks that lmms-eval ships (need the hub).
    CalibrationSet("mathvista", "math", "mathvista_testmini", False, "MathVista testmini"),
    CalibrationSet("mathverse", "math", "mathverse_testmini", False, "MathVerse testmini"),
    CalibrationSet("mathvision", "math", "mathvision_testmini", False, "MATH-Vision testmini"),
    CalibrationSet("scienceqa", "nonmath", "scienceqa_img", False, "ScienceQA (image subset)"),
    CalibrationSet("gqa", "nonmath", "gqa", False, "GQA"),
    CalibrationSet("ai2d", "nonmath", "ai2d", False, "AI2D diagrams"),
)
DEFAULT_SETS = {"math": "prune_calib_math", "nonmath": "prune_calib_nonmath"}


def resolve_task_name(name: str) -> str:
    """A registered calibration set's task, or ``name`` itself (any lmms-eval task works)."""
    from .plugins import get_calibration_sets

    found = get_calibration_sets().get(name)
    return found.task if found else name


@dataclass
class CalibrationRequests:
    """The prefill requests of one domain, ready for ``wrapper.generate_until``."""

    task: str
    requests: list
    datasets: dict  # task name -> dataset (what wrappers read docs from via lm.task_dict)
    fingerprint: str
    total: int  # samples over all ranks


def _jsonable(value: Any) -> Any:
    """Doc fields for hashing: images and bytes by content, never by object address."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tobytes"):  # PIL images, numpy arrays
        return hashlib.sha256(value.tobytes()).hexdigest()
    return type(value).__name__


def build_requests(
    task_name: str,
    task_manager,
    task_type: str,
    limit: int | None,
    rank: int = 0,
    world_size: int = 1,
    param: str = "calib",
) -> CalibrationRequests:
    """Load ``task_name`` and build its generate_until requests, limited to one new token.

    The fingerprint covers every sample; ``requests`` holds this rank's share (every
    ``world_size``-th one), so ranks split the work and still agree on the identity.
    """
    from lmms_eval.evaluator_utils import get_task_list
    from lmms_eval.tasks import get_task_dict

    task = resolve_task_name(task_name)
    try:
        task_dict = get_task_dict([task], task_manager, task_type)
    except Exception as err:  # lmms-eval raises KeyError/ValueError with little context
        raise ValueError(
            f"{param}={task_name!r}: calibration task {task!r} could not be loaded ({type(err).__name__}: {err}); "
            "give a task that lmms-eval knows, with --include_path for custom ones"
        ) from err
    requests, datasets, hashed = [], {}, []
    for out in get_task_list(task_dict):
        t = out.task
        if t is None or "generate_until" not in str(t.get_config("output_type")):
            continue
        t.build_all_requests(limit=limit, rank=0, world_size=1)
        datasets[out.task_name] = t.dataset
        for inst in t.instances:
            # chat: (ctx, doc_to_messages, gen_kwargs, ...); simple: (ctx, gen_kwargs, doc_to_visual, ...)
            args = list(inst.args)
            g = 2 if task_type == "chat" else 1
            args[g] = dict(args[g] or {}) | {
                "max_new_tokens": 1,
                "temperature": 0,
                "do_sample": False,
            }
            inst.arguments = tuple(args)
            requests.append(inst)
            ctx, doc_id, name, split = args[0], args[3], args[4], args[5]
            hashed.append([name, split, doc_id, ctx, _jsonable(t.dataset[split][doc_id])])
    if not requests:
        raise ValueError(
            f"{param}={task_name!r}: calibration task {task!r} yielded no generate_until samples "
            f"(limit={limit}); calibration needs prompts with images"
        )
    _check_images(requests, param, task_name, datasets)
    return CalibrationRequests(
        task=task,
        requests=requests[rank::world_size],
        datasets=datasets,
        fingerprint=content_hash(hashed),
        total=len(requests),
    )


def _check_images(requests: list, param: str, task_name: str, datasets: dict) -> None:
    """At least one sample must carry an image: the method measures a vision-language forward."""
    for inst in requests[:8]:
        ctx, a, b, doc_id, name, split = inst.args[:6]
        fn = a if callable(a) else b
        try:
            out = fn(datasets[name][split][doc_id])
        except Exception:
            continue
        text = json.dumps(_jsonable(out))
        if _has_visual(out) or '"image"' in text:
            return
    raise ValueError(f"{param}={task_name!r}: calibration task has no images in its first samples")


def _has_visual(out: Any) -> bool:
    if isinstance(out, list | tuple):
        return any(_has_visual(x) for x in out)
    if isinstance(out, Mapping):
        return out.get("type") in ("image", "video") or any(_has_visual(v) for v in out.values())
    return hasattr(out, "tobytes") or hasattr(out, "size") and hasattr(out, "mode")


def run_capture(
    wrapper,
    model: torch.nn.Module,
    calib: CalibrationRequests,
    tokens: str = "all",
    block_sizes: tuple[int, ...] = (),
) -> LayerStatistics:
    """One prefill pass over the domain's requests through the wrapper, hooks on."""
    saved = dict(wrapper.task_dict)
    wrapper.task_dict.update(calib.datasets)
    try:
        with (
            torch.inference_mode(),
            LayerCapture(model, tokens=tokens, block_sizes=block_sizes) as cap,
        ):
            wrapper.generate_until(list(calib.requests))
        stats = cap.statistics()
    finally:
        wrapper.task_dict.clear()
        wrapper.task_dict.update(saved)
    return all_reduce(stats)


def all_reduce(stats: LayerStatistics) -> LayerStatistics:
    """Sum statistics over ranks so that every process derives the identical plan."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return stats
    if torch.distributed.get_world_size() == 1:
        return stats
    ns = sorted(stats.angular_sum)
    flat = [*stats.cos_sum, stats.tokens, stats.samples, stats.forwards]
    for n in ns:
        flat.extend(stats.angular_sum[n])
    backend = torch.distributed.get_backend()
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if backend == "nccl"
        else torch.device("cpu")
    )
    t = torch.tensor(flat, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    v = t.cpu().tolist()
    L = stats.num_layers
    out, pos = {}, L + 3
    for n in ns:
        out[n] = tuple(v[pos : pos + L - n + 1])
        pos += L - n + 1
    return LayerStatistics(
        L, tuple(v[:L]), int(round(v[L])), int(round(v[L + 1])), int(round(v[L + 2])), out
    )


def domains_for(criterion_domains: tuple[str, ...], sets: Mapping[str, str]) -> tuple[str, ...]:
    """Concrete domains to calibrate: "*" means every configured domain."""
    if "*" in criterion_domains:
        return tuple(sets)
    return tuple(d for d in criterion_domains)


@dataclass(frozen=True)
class DomainCalibration:
    """One domain's statistics and where they came from."""

    stats: LayerStatistics
    task: str
    samples: int  # over all ranks
    fingerprint: str

    def to_dict(self) -> dict:
        return {
            "stats": self.stats.to_dict(),
            "task": self.task,
            "samples": self.samples,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> DomainCalibration:
        return cls(
            LayerStatistics.from_dict(data["stats"]),
            str(data["task"]),
            int(data["samples"]),
            str(data["fingerprint"]),
        )


def folder_hash(path: str) -> str:
    """Content hash of a task folder (YAML, code, shipped docs): edits invalidate cached results."""
    h = hashlib.sha256()
    root = Path(path)
    for f in sorted(root.rglob("*")):
        if (
            f.is_file()
            and f.suffix in (".yaml", ".yml", ".py", ".json", ".jsonl")
            and "__pycache__" not in f.parts
        ):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


class Calibrator:
    """Calibrates a wrapper's model on named lmms-eval tasks: one prefill pass per domain.

    Results are kept in memory and in the on-disk cache under a key made of the model, the task
    name, ``limit``, token selection and the task folders' content, so a cache hit needs neither
    lmms-eval's TaskManager nor a forward. Angular block sizes accumulate: a request for new
    sizes reruns the pass once for the union. ``forwards`` counts the prefill forwards run.
    """

    def __init__(
        self,
        wrapper,
        model: torch.nn.Module,
        sets: Mapping[str, str],
        limit: int | None = None,
        tokens: str = "all",
        include_path: str | None = None,
        cache=None,
        model_key: str = "",
    ):
        from . import TASKS_DIR

        self.wrapper, self.model = wrapper, model
        self.sets, self.limit, self.tokens = dict(sets), limit, tokens
        self.task_paths = [TASKS_DIR] + ([str(include_path)] if include_path else [])
        self.cache, self.model_key = cache, model_key
        self.forwards = 0
        self._done: dict[str, DomainCalibration] = {}
        self._task_manager = None

    def _manager(self, task: str):
        """A TaskManager that knows ``task``: our folders alone index in milliseconds, all of
        lmms-eval's tasks take seconds, so the full index is built only when needed."""
        from lmms_eval.tasks import TaskManager

        if self._task_manager is None:
            self._task_manager = TaskManager(include_path=self.task_paths, include_defaults=False)
        if resolve_task_name(task) not in self._task_manager.all_tasks:
            self._task_manager = TaskManager(include_path=self.task_paths)
        return self._task_manager

    def key(self, domain: str) -> str:
        """Cache key of a domain's calibration, computed without loading any task."""
        from .cache import key

        if domain not in self.sets:
            raise ValueError(
                f"criterion needs the {domain!r} domain, but calib_{domain} is not set"
            )
        return key(
            kind="calibration", model=self.model_key, task=self.sets[domain], limit=self.limit, tokens=self.tokens,
            tasks=[folder_hash(p) for p in self.task_paths if Path(p).is_dir()],
        )  # fmt: skip

    def requests(self, domain: str) -> CalibrationRequests:
        task_type = "simple" if getattr(self.wrapper, "is_simple", True) else "chat"
        rank, world = process_group()
        reqs = build_requests(
            self.sets[domain],
            self._manager(self.sets[domain]),
            task_type,
            self.limit,
            rank,
            world,
            param=f"calib_{domain}",
        )
        if world > 1:
            print(
                f"lmms-prune: rank {rank}/{world} calibrates {len(reqs.requests)} of {reqs.total} {domain} samples",
                file=sys.stderr,
            )
        return reqs

    def calibrate(
        self, domains: tuple[str, ...], block_sizes: tuple[int, ...] = ()
    ) -> dict[str, DomainCalibration]:
        """Each domain's calibration: from memory, else the disk cache, else one prefill pass."""
        out = {}
        for domain in domains:
            k = self.key(domain)
            have = self._done.get(domain)
            if have is None and self.cache is not None:
                data = self.cache.get("calibration", k)
                try:
                    have = DomainCalibration.from_dict(data) if data is not None else None
                except (KeyError, TypeError, ValueError) as err:
                    warnings.warn(
                        f"lmms-prune: cache entry for {domain} is corrupt ({err}); recomputing it",
                        stacklevel=2,
                    )
            if have is None or not set(block_sizes) <= set(have.stats.angular_sum):
                blocks = tuple(
                    sorted(set(block_sizes) | set(have.stats.angular_sum if have else ()))
                )
                reqs = self.requests(domain)
                stats = run_capture(self.wrapper, self.model, reqs, self.tokens, blocks)
                self.forwards += stats.forwards
                have = DomainCalibration(stats, self.sets[domain], reqs.total, reqs.fingerprint)
                if self.cache is not None and _is_main():
                    self.cache.put("calibration", k, have.to_dict())
            self._done[domain] = out[domain] = have
        return out

    def statistics(
        self, domains: tuple[str, ...], block_sizes: tuple[int, ...] = ()
    ) -> dict[str, LayerStatistics]:
        return {d: c.stats for d, c in self.calibrate(domains, block_sizes).items()}

    def identity(self, domains: tuple[str, ...]):
        """What the plan records about the data: set names, sample counts, content hash."""
        from .plan import CalibrationIdentity

        done = self.calibrate(domains)
        return CalibrationIdentity(
            sets={d: c.task for d, c in done.items()},
            samples={d: c.samples for d, c in done.items()},
            content_hash=content_hash([[d, c.fingerprint] for d, c in sorted(done.items())]),
        )


def process_group() -> tuple[int, int]:
    """(rank, world size). Under torchrun the wrappers have not joined a group yet at load
    time, so one is started here (gloo on CPU, nccl on GPU); the evaluator then reuses it."""
    dist = torch.distributed
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if (
        dist.is_available()
        and not dist.is_initialized()
        and world > 1
        and os.environ.get("MASTER_ADDR")
    ):
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _is_main() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0

"""Calibration requests: an lmms-eval task's prompts as ``generate_until`` requests of one token.

The requests are built exactly as the evaluator builds them (the task's own prompt, images and
chat messages), so calibration sees what evaluation will see through the same base wrapper.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lmms_prune_plugin.core.plan import content_hash


def resolve_task_name(name: str) -> str:
    """A registered calibration set's task, or ``name`` itself (any lmms-eval task works)."""
    from lmms_prune_plugin.core.plugins import get_calibration_sets

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

    def for_pass(self) -> list:
        """The requests for one pass: copies whose generation arguments are their own, since
        wrappers edit them (lmms-eval's qwen2_vl pops ``until``), and the next pass must batch
        and order the requests exactly as this one."""
        out = []
        for inst in self.requests:
            twin = copy.copy(inst)
            twin.arguments = tuple(dict(a) if isinstance(a, dict) else a for a in inst.args)
            out.append(twin)
        return out


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


def _task_dict(task_name: str, task: str, task_manager, task_type: str, param: str) -> dict:
    """lmms-eval's task dict of a known task, or an error naming why its data did not load."""
    from lmms_eval.tasks import get_task_dict

    try:
        return get_task_dict([task], task_manager, task_type)
    except Exception as err:  # a known task whose data or code could not be loaded
        offline = (
            os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        )
        # Only a download that failed is blamed on being offline; a task YAML without
        # doc_to_target, say, fails inside lmms-eval with a TypeError.
        downloading = isinstance(err, ConnectionError | OSError) or type(err).__module__.startswith(
            ("datasets", "huggingface_hub", "requests", "urllib3")
        )
        hint = (
            "; HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set, so its dataset cannot be downloaded: "
            "use an offline set such as prune_calib_math / prune_calib_nonmath, or go online once"
            if offline and downloading
            else "; its YAML or task code failed: check the task's files"
        )
        raise ValueError(
            f"{param}={task_name!r}: lmms-eval knows task {task!r} but could not load it "
            f"({type(err).__name__}: {err}){hint}"
        ) from err


def _one_token_requests(task_dict: dict, task_type: str, limit: int | None):
    """Every generate_until instance of the task dict with one new token, greedy; the datasets
    by task name; and what identifies each sample (for the fingerprint)."""
    from lmms_eval.evaluator_utils import get_task_list

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
    return requests, datasets, hashed


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
    from lmms_prune_plugin.core.args import closest

    task = resolve_task_name(task_name)
    if task not in task_manager.all_tasks:
        raise ValueError(
            f"{param}={task_name!r}: lmms-eval knows no task {task!r}{closest(task, task_manager.all_tasks)}; "
            "give a registered calibration set (lmms-prune list) or an lmms-eval task, with "
            "include_path= for a task folder of your own"
        )
    task_dict = _task_dict(task_name, task, task_manager, task_type, param)
    requests, datasets, hashed = _one_token_requests(task_dict, task_type, limit)
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

"""Evaluate a pruned model in an inference engine: ``pruned_vlm`` with ``engine=vllm``.

The plan is made exactly as with ``engine=hf``: calibration runs through the Hugging Face base
wrapper. Then the pruned checkpoint is exported once into the plan cache (keyed by the plan and
the checkpoint's files, reused by the next run), the Hugging Face model is released, and
lmms-eval's own ``vllm`` model is built on the export with the user's vLLM arguments
(``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``, ...). vLLM reads the
export's config, so it builds the pruned depth itself; nothing inside vLLM is patched.

Two things lmms-eval 0.7.3's ``vllm`` model does differently from its Hugging Face wrappers are
set right here, so both engines answer the same requests the same way: it takes the larger of
the task's and its own ``max_new_tokens`` (its own defaults to 1024 or 4096), and it does not
stop at the task's ``until`` strings. Here the task's ``max_new_tokens`` wins (``max_new_tokens``
given to ``pruned_vlm`` is the default for tasks that set none, 128 like the Qwen wrappers) and
``until`` becomes vLLM's ``stop``, which cuts the text before the stop string as the Hugging Face
wrappers do.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import importlib.util
import inspect
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmms_prune_plugin.core.plan import PrunePlan

ENGINES = ("hf", "vllm")
DEFAULT_MAX_NEW_TOKENS = 128  # for tasks that set none; what lmms-eval's Qwen wrappers use
# Arguments that only mean something to the Hugging Face wrapper that calibrates: vLLM picks
# its device from its own build and places the model itself.
_BASE_ONLY = ("device", "device_map", "max_batch_size")
# Ours, given to vLLM from pruned_vlm's own parsed value (never the wrapper's default of true).
_OWN = ("model", "trust_remote_code", "seed")  # lmms-eval's vllm model fixes seed=1
_STATE = {"deferred": 0}


def check_engine(engine: Any) -> str:
    """``hf`` or ``vllm``, exactly; ``vllm`` also needs vLLM importable (checked now)."""
    if not isinstance(engine, str) or engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not allowed; choose one of: {', '.join(ENGINES)}")
    if engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "engine='vllm' needs vLLM installed in this Python environment, and it is not; "
            "`make test-vllm` builds such an environment (.venv-vllm, see "
            "docs/harnesses-and-engines.md, 'At scale'), or use engine=hf"
        )
    return engine


def engine_arg_names(simple: bool) -> set[str]:
    """What lmms-eval's ``vllm`` model (chat or simple) and vLLM's ``EngineArgs`` accept."""
    from lmms_eval import models
    from vllm.engine.arg_utils import EngineArgs

    cls = models.get_model("vllm", force_simple=simple)
    names = set()
    for klass in cls.__mro__:  # the chat class passes most of its arguments to the simple one
        if "__init__" in vars(klass):
            names |= {
                p
                for p, v in inspect.signature(klass.__init__).parameters.items()
                if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL) and p != "self"
            }
    return (names | {f.name for f in dataclasses.fields(EngineArgs)}) - set(_OWN)


def split_args(
    base_params: set[str], engine_params: set[str], kwargs: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(to the Hugging Face base wrapper, to vLLM). A name both take goes to both (say
    ``batch_size``); a name neither takes is left with the base, whose check names it."""
    base, engine = {}, {}
    for k, v in kwargs.items():
        to_engine = k in engine_params and k not in _BASE_ONLY
        if to_engine:
            engine[k] = v
        if k in base_params or not to_engine:
            base[k] = v
    return base, engine


def split_base_and_engine_args(
    base: str, simple: bool, kwargs: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`split_args` for lmms-eval's wrapper ``base`` and the ``vllm`` model of its kind."""
    from lmms_eval import models

    try:
        cls = models.get_model(base, force_simple=simple)
    except Exception:  # an unknown base: building it reports the choices
        return dict(kwargs), {}
    params = inspect.signature(cls.__init__).parameters
    named = {p for p, v in params.items() if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)}
    return split_args(named, engine_arg_names(getattr(cls, "is_simple", simple)), kwargs)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """``pruned_vlm`` built inside keeps its Hugging Face model and starts no engine (a sweep
    plans every cell first, then starts the engine once per cell)."""
    _STATE["deferred"] += 1
    try:
        yield
    finally:
        _STATE["deferred"] -= 1


def is_deferred() -> bool:
    return _STATE["deferred"] > 0


@dataclasses.dataclass(frozen=True)
class SpentPlanner:
    """What is left of a planner once its model is released: the count of its passes."""

    forwards: int


def release_hf_model(lm) -> None:
    """Free the Hugging Face model of a ``pruned_vlm`` (the wrapper's and the planner's)."""
    forwards = lm.planner.forwards
    lm.base.clean()
    lm.planner = SpentPlanner(forwards)
    gc.collect()


def export_key(pretrained: str, plan: PrunePlan, revision: str | None) -> str:
    """The plan (with the weights' fingerprint) and the checkpoint's other files."""
    from lmms_prune_plugin.core.cache import files_fingerprint, key

    return key(
        kind="export",
        plan=plan.to_dict(),
        files=files_fingerprint(pretrained, revision),
        revision=revision,
    )


def cached_export(
    pretrained: str,
    plan: PrunePlan,
    cache_dir: Path | None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """The pruned checkpoint of ``plan``: ``<cache>/export-<key>``, written once, then reused.

    An unpruned plan serves ``pretrained`` itself. Without a cache (``plan_cache=false``) the
    export goes to a temporary folder removed when the process ends.
    """
    from filelock import FileLock

    from lmms_prune_plugin.surgery.export import export_pruned

    if not plan.removed:
        return Path(pretrained)
    if cache_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="lmms-prune-export-"))
        atexit.register(shutil.rmtree, tmp, True)
        cache_dir = tmp
    out = Path(cache_dir) / f"export-{export_key(pretrained, plan, revision)}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{out}.lock"):  # several processes of one run: one exports, the rest reuse
        if _holds(out, plan):
            _say(f"lmms-prune: serving the cached export {out}")
            return out
        export_pruned(
            pretrained,
            plan,
            out,
            force=True,
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
        _say(f"lmms-prune: exported the pruned checkpoint to {out}")
    return out


def _say(message: str) -> None:
    # stderr, like pruned_vlm's plan line: lmms-eval sets loguru to WARNING on import
    print(message, file=sys.stderr)


def _holds(out: Path, plan: PrunePlan) -> bool:
    """``out`` is a finished export of exactly ``plan`` (exports are moved into place whole)."""
    try:
        return PrunePlan.load(out / "plan.json").to_dict() == plan.to_dict()
    except (OSError, ValueError):
        return False


def engine_class(simple: bool):
    """lmms-eval's ``vllm`` model (chat or simple) with the task's generation limits kept."""
    from lmms_eval import models

    parent = models.get_model("vllm", force_simple=simple)

    class PrunedExportVLLM(parent):
        """lmms-eval's ``vllm`` model; the task's ``max_new_tokens`` and ``until`` apply."""

        def _select_max_new_tokens(self, request_max_new_tokens: Any) -> int:
            if request_max_new_tokens is None:
                return self.max_new_tokens
            return int(request_max_new_tokens)

        def _build_sampling_params_dict(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
            params = super()._build_sampling_params_dict(gen_kwargs)
            until = gen_kwargs.get("until")
            stops = [until] if isinstance(until, str) else list(until or [])
            stops = [s for s in stops if s]
            if stops:
                params["stop"] = stops
            return params

    PrunedExportVLLM.__qualname__ = f"PrunedExportVLLM[{parent.__module__}]"
    return PrunedExportVLLM


def stored_dtype(model_path: str | Path) -> str | None:
    """The dtype a checkpoint's config states (what transformers' ``dtype="auto"`` loads)."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a hub id: vLLM reads its config itself
    for cfg in (config, config.get("text_config") or {}):
        dtype = cfg.get("dtype") or cfg.get("torch_dtype")
        if isinstance(dtype, str):
            return dtype
    return None


def open_engine(
    model_path: str | Path, simple: bool, engine_kwargs: dict[str, Any], trust_remote_code: bool
):
    """lmms-eval's ``vllm`` model on ``model_path`` with the user's vLLM arguments.

    ``dtype`` defaults to the checkpoint's stored one, as the Hugging Face wrappers load it
    (vLLM's own ``auto`` would run a float32 checkpoint in 16 bits). The simple class puts the
    images before the text (``image_first``), as lmms-eval's simple Hugging Face wrappers do;
    its own default puts them after, which is another prompt.
    """
    defaults: dict[str, Any] = {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS}
    if simple:
        defaults["image_first"] = True
    dtype = stored_dtype(model_path)
    if dtype is not None:
        defaults["dtype"] = dtype
    kwargs = defaults | dict(engine_kwargs)
    cls = engine_class(simple)
    return cls(model=str(model_path), trust_remote_code=trust_remote_code, **kwargs)


def close_engine(engine_lm) -> None:
    """Stop the engine (its worker processes and memory) before the next one starts."""
    client = getattr(engine_lm, "client", None)
    if client is not None:
        llm_engine = getattr(client, "llm_engine", None)
        core = getattr(llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        engine_lm.client = None
    gc.collect()


def cache_dir(lm) -> Path | None:
    """Where a ``pruned_vlm`` keeps its plans (None with ``plan_cache=false``)."""
    cache = lm.calibration.cache()
    return cache.dir if cache is not None else None


def serve_(lm) -> None:
    """Move a ``pruned_vlm``'s evaluation to vLLM on its plan's export (unless deferred)."""
    if is_deferred():
        return
    release_hf_model(lm)  # first: the export loads the checkpoint once more
    path = cached_export(lm.pretrained, lm.plan, cache_dir(lm), lm.revision, lm.trust_remote_code)
    served = open_engine(path, lm.is_simple, lm.engine_kwargs, lm.trust_remote_code)
    served.task_dict = lm.task_dict  # one dict: the evaluator fills it, the engine reads it
    lm.base = served
    lm.served_from = str(path)

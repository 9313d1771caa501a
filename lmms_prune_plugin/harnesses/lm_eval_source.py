"""EleutherAI's lm-evaluation-harness as a calibration source.

Calibration documents are lm-eval ``Instance`` objects built by the task itself
(``Task.build_all_requests``: its doc_to_text, doc_to_image, few-shot context, system instruction
and, with ``apply_chat_template``, the model's own chat template as lm-eval applies it), run
through the model's own ``generate_until`` with ``max_gen_toks=1``: the hooked decoder sees the
exact inputs lm-eval builds at evaluation. Imported only by processes that run lm-eval.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmms_prune_plugin.core.args import closest, is_none, parse_bool, reject_empty
from lmms_prune_plugin.core.plan import content_hash
from lmms_prune_plugin.harnesses.base import CalibrationDocs

#: The lm-eval task folder of this package: the demo's calibration sets and benchmarks, and the
#: text-only word problems (``--include_path``).
LM_EVAL_TASKS_DIR = str(Path(__file__).resolve().parent / "lm_eval_tasks")
#: lm-eval's default few-shot seed (the fourth value of ``--seed``).
FEWSHOT_SEED = 1234
#: Generation settings of a calibration request: one new token, greedy.
ONE_TOKEN = {"max_gen_toks": 1, "do_sample": False, "temperature": 0.0}


@dataclass(frozen=True)
class PromptSettings:
    """How lm-eval formats every prompt of a run (its ``--apply_chat_template``,
    ``--system_instruction`` and ``--fewshot_as_multiturn``). Calibration formats its prompts
    the same way, so these settings are part of every calibration cache key."""

    apply_chat_template: bool | str = False
    system_instruction: str | None = None
    fewshot_as_multiturn: bool = False

    @classmethod
    def parse(
        cls,
        apply_chat_template: object = False,
        system_instruction: object = None,
        fewshot_as_multiturn: object = None,
    ) -> PromptSettings:
        """From model_args or lm-eval's resolved flags. ``apply_chat_template``: a boolean or a
        template name; ``fewshot_as_multiturn`` defaults to it, as in lm-eval."""
        for name, value in (
            ("apply_chat_template", apply_chat_template),
            ("system_instruction", system_instruction),
            ("fewshot_as_multiturn", fewshot_as_multiturn),
        ):
            reject_empty(name, value)
        chat = _template_choice(apply_chat_template)
        multiturn = (
            bool(chat)
            if fewshot_as_multiturn is None
            else parse_bool("fewshot_as_multiturn", fewshot_as_multiturn)
        )
        if multiturn and not chat:
            raise ValueError(
                "fewshot_as_multiturn=True is not allowed without apply_chat_template: lm-eval "
                "refuses it too; give apply_chat_template=true or fewshot_as_multiturn=false"
            )
        system = None if system_instruction is None else str(system_instruction)
        return cls(chat, system, multiturn)

    @property
    def chat(self) -> bool:
        return bool(self.apply_chat_template)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _template_choice(value: object) -> bool | str:
    if value is None:
        return False
    try:
        return parse_bool("apply_chat_template", value)
    except ValueError:
        if isinstance(value, str):
            return value  # a named template, as lm-eval's flag allows
        raise


class LmEvalSource:
    """A :class:`~lmms_prune_plugin.harnesses.CalibrationSource` over an lm-eval ``LM``
    (``HFLM``, ``HFMultimodalLM`` or a subclass), its tasks and its prompt settings."""

    harness = "lm-eval"

    def __init__(
        self, lm, prompts: PromptSettings | None = None, include_paths: Sequence[str] = ()
    ) -> None:
        self.lm = lm
        self.prompts = prompts or PromptSettings()
        ours = {Path(LM_EVAL_TASKS_DIR)}
        self.include_paths = tuple(
            str(p) for p in dict.fromkeys(Path(p).resolve() for p in include_paths) if p not in ours
        )
        self._managers: dict[bool, Any] = {}
        self._data_key: str | None = None

    @property
    def batch_size(self) -> int:
        """The model's own batch size (``--batch_size``); 1 when lm-eval sizes batches itself."""
        size = getattr(self.lm, "batch_size_per_gpu", 1)
        return size if isinstance(size, int) and size > 0 else 1

    @property
    def task_paths(self) -> list[str]:
        """Where calibration tasks are looked up first (later folders override earlier)."""
        return [LM_EVAL_TASKS_DIR, *self.include_paths]

    def data_key(self) -> str:
        """The task folders by content, lm-eval's version (its own tasks) and the prompt
        settings: computed without loading a task."""
        if self._data_key is None:
            from importlib.metadata import version

            from lmms_prune_plugin.core.cache import folder_fingerprint, key

            folders = [folder_fingerprint(p) for p in self.task_paths if Path(p).is_dir()]
            self._data_key = key(
                harness=self.harness,
                lm_eval=version("lm_eval"),
                folders=folders,
                prompts=self.prompts.to_dict(),
            )
        return self._data_key

    # -- documents ---------------------------------------------------------------------------
    def _manager(self, name: str):
        """A TaskManager that knows ``name``: our folders alone index fast, lm-eval's own tasks
        take seconds, so those are indexed only when needed."""
        from lm_eval.tasks import TaskManager

        if False not in self._managers:
            self._managers[False] = TaskManager(
                include_path=self.task_paths, include_defaults=False
            )
        if name in self._managers[False].all_tasks:
            return self._managers[False]
        if True not in self._managers:
            self._managers[True] = TaskManager(include_path=self.task_paths)
        return self._managers[True]

    def _load(self, given: str, name: str, param: str) -> dict:
        manager = self._manager(name)
        if name not in manager.all_tasks:
            ours = ", ".join(sorted(t for t in self._managers[False].all_tasks if "calib" in t))
            raise ValueError(
                f"{param}={given!r}: lm-eval knows no task {name!r}"
                f"{closest(name, manager.all_tasks)}; give one of this package's lm-eval "
                f"calibration sets ({ours}) or an lm-eval generate_until task, with include_path= "
                "for a task folder of your own (lm-eval skips YAML files it cannot parse)"
            )
        try:
            return manager.load([name])["tasks"]
        except Exception as err:  # a known task whose data or code could not be loaded
            offline = "1" in (
                os.environ.get("HF_DATASETS_OFFLINE"),
                os.environ.get("HF_HUB_OFFLINE"),
            )
            hint = (
                "; HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set, so its dataset cannot be "
                "downloaded: use an offline set such as prune_calib_math, or go online once"
                if offline
                else ""
            )
            raise ValueError(
                f"{param}={given!r}: lm-eval knows task {name!r} but could not load it "
                f"({type(err).__name__}: {err}){hint}"
            ) from err

    def _build(self, task, limit: int | None) -> None:
        """The task's requests exactly as lm-eval's evaluator builds them for this model."""
        if task.get_config("num_fewshot") is None:  # what simple_evaluate does
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=FEWSHOT_SEED)
        p, lm = self.prompts, self.lm
        saved = getattr(lm, "chat_applied", None)
        try:
            task.build_all_requests(
                limit=limit,
                rank=0,
                world_size=1,
                system_instruction=p.system_instruction,
                apply_chat_template=p.chat,
                fewshot_as_multiturn=p.fewshot_as_multiturn,
                chat_template=lm.apply_chat_template if p.chat else None,
                tokenizer_name=getattr(lm, "tokenizer_name", "") if p.chat else "",
            )
        finally:
            if saved is not None:  # HFMultimodalLM remembers that a template was applied
                lm.chat_applied = saved

    def documents(
        self, task: str, limit: int | None, rank: int, world: int, param: str
    ) -> CalibrationDocs:
        """The first ``limit`` documents of each generate_until task in ``task`` (a task or a
        group), as lm-eval instances of one new token; this rank gets every ``world``-th one.
        The fingerprint covers all of them: contexts, generation settings and image bytes."""
        from lmms_prune_plugin.harnesses.lmms_eval.requests import resolve_task_name

        name = resolve_task_name(task)
        tasks = self._load(task, name, param)
        instances, hashed, skipped = [], [], []
        for task_name, t in tasks.items():
            if t.get_config("output_type") != "generate_until":
                skipped.append(f"{task_name} ({t.get_config('output_type')})")
                continue
            self._check_modality(task, task_name, t, param)
            self._build(t, limit)
            for inst in t.instances:
                hashed.append(_identity(task_name, inst))
                inst.arguments = _one_token(inst.arguments)
                instances.append(inst)
        if not instances:
            raise ValueError(
                f"{param}={task!r}: calibration runs generate_until tasks, and {name!r} has none "
                f"(it holds {', '.join(skipped) or 'no tasks'}; limit={limit})"
            )
        mine = instances[rank::world]
        return CalibrationDocs(name, mine, len(mine), len(instances), content_hash(hashed))

    def _check_modality(self, given: str, task_name: str, task, param: str) -> None:
        if getattr(task, "MULTIMODAL", False) and not getattr(self.lm, "MULTIMODAL", False):
            raise ValueError(
                f"{param}={given!r}: task {task_name!r} has images, and {type(self.lm).__name__} "
                "is a text-only model; give a text-only calibration set (prune_calib_text_math, "
                "prune_calib_text_nonmath) or load the checkpoint with pruned_vlm"
            )

    # -- running -----------------------------------------------------------------------------
    def run(self, docs: CalibrationDocs, batch_size: int) -> None:
        """The model's own ``generate_until`` over the documents, ``batch_size`` at a time."""
        lm = self.lm
        saved_batch, saved_chat = lm.batch_size_per_gpu, getattr(lm, "chat_applied", None)
        lm.batch_size_per_gpu = int(batch_size)
        if saved_chat is not None:  # placeholders are replaced only in un-templated prompts
            lm.chat_applied = self.prompts.chat
        try:
            lm.generate_until(list(docs.payload))
        finally:
            lm.batch_size_per_gpu = saved_batch
            if saved_chat is not None:
                lm.chat_applied = saved_chat


def _one_token(arguments: tuple) -> tuple:
    """(context, generation kwargs, [visuals]) with the task's stop strings, one greedy token."""
    ctx, kwargs, *rest = arguments
    until = (kwargs or {}).get("until") if isinstance(kwargs, dict) else None
    return (ctx, {**({"until": until} if until is not None else {}), **ONE_TOKEN}, *rest)


def _identity(task_name: str, inst) -> list:
    """What a calibration document is: task, doc id, context, generation kwargs, image bytes."""
    ctx, kwargs, *rest = inst.arguments
    visuals = (rest[0] or {}).get("visual") if rest and isinstance(rest[0], dict) else None
    return [task_name, inst.doc_id, ctx, repr(kwargs), [_image_hash(v) for v in visuals or ()]]


def _image_hash(image: Any) -> str:
    """An image by its pixels, size and mode (never by object address)."""
    if hasattr(image, "tobytes"):
        h = hashlib.sha256(image.tobytes())
        h.update(repr((getattr(image, "size", None), getattr(image, "mode", None))).encode())
        return h.hexdigest()
    if is_none(image) or isinstance(image, str | bytes):
        data = image.encode() if isinstance(image, str) else (image or b"")
        return hashlib.sha256(data).hexdigest()
    raise ValueError(
        f"a calibration image of type {type(image).__name__} cannot be fingerprinted; a task's "
        "doc_to_image must give PIL images, paths or bytes"
    )

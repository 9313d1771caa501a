"""``pruned_vlm`` and ``pruned_lm`` for lm-eval: its own HF models, with layers removed at load.

Like lm-eval's ``steered`` model, each subclasses an lm-eval HF model (``HFMultimodalLM`` for
image-text-to-text checkpoints, ``HFLM`` for text-only ones), lets the parent constructor load the
checkpoint, then edits the loaded model: calibrate through lm-eval's own requests
(:class:`~.lm_eval_source.LmEvalSource`), plan, remove layers. Our model_args are popped and
checked before the parent loads anything; every other model_arg is the parent's.

``pruned_vlm`` evaluates text-only tasks too (``HFMultimodalLM`` falls back to ``HFLM`` for
requests without images); ``pruned_lm`` is for checkpoints that ``AutoModelForCausalLM`` loads.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lm_eval.api.registry import register_model
from lm_eval.models.hf_vlms import HFMultimodalLM
from lm_eval.models.huggingface import HFLM

from lmms_prune_plugin.core.args import closest, is_none, optional, parse_bool, reject_empty
from lmms_prune_plugin.core.cache import files_fingerprint, key, weights_fingerprint
from lmms_prune_plugin.core.calibration import DEFAULT_SETS, CalibrationConfig
from lmms_prune_plugin.core.distributed import is_main
from lmms_prune_plugin.core.loading import (
    check_plan_alone,
    check_save_plan,
    describe,
    named_params,
    read_checkpoint_config,
    text_depth,
)
from lmms_prune_plugin.core.plan import ModelIdentity, PrunePlan
from lmms_prune_plugin.core.planner import Planner, PruneOptions, check_options, prune_option_names
from lmms_prune_plugin.core.plugins import get_criterion
from lmms_prune_plugin.harnesses.lm_eval_source import LmEvalSource, PromptSettings
from lmms_prune_plugin.surgery.checkpoint import (
    check_stored_depth,
    check_weight_files,
    local_folder,
)
from lmms_prune_plugin.surgery.layers import find_decoder_layers

#: Text-only calibration sets of this package's lm-eval task folder (``pruned_lm``'s defaults).
TEXT_SETS = {"math": "prune_calib_text_math", "nonmath": "prune_calib_text_nonmath"}
#: lm-eval's prompt settings: the launcher copies its flags into these model_args.
PROMPT_ARGS = ("apply_chat_template", "system_instruction", "fewshot_as_multiturn")
_CALIB_ARGS = ("calib_math", "calib_nonmath", "calib_limit", "tokens", "plan_cache")
_LOAD_ARGS = ("include_path", "plan", "save_plan", "plan_strict")
#: Every model_arg of ours; any other goes to the lm-eval parent class.
OWN_ARGS = (*_CALIB_ARGS, *_LOAD_ARGS, *PROMPT_ARGS, *prune_option_names())
_LOADED: dict[str, PrunePlan] = {}


def loaded_plan() -> PrunePlan | None:
    """The plan of the last pruned_vlm / pruned_lm loaded in this process (the launcher writes
    it beside lm-eval's results)."""
    return _LOADED.get("plan")


@dataclass(frozen=True)
class PruneSetup:
    """Our model_args, parsed and checked before anything is loaded."""

    options: PruneOptions
    calibration: CalibrationConfig
    prompts: PromptSettings
    include_paths: tuple[str, ...]
    plan: PrunePlan | None
    save_to: Path | None
    strict: bool

    @classmethod
    def parse(cls, given: Mapping[str, Any], default_sets: Mapping[str, str]) -> PruneSetup:
        """Errors name the argument, its value and what is allowed, before any loading."""
        for name, value in given.items():
            reject_empty(name, value)
        prune = {k: given[k] for k in prune_option_names() if k in given}
        check_plan_alone(given.get("plan"), prune)
        options = PruneOptions.parse(**prune)
        calib = {k: given[k] for k in _CALIB_ARGS if k in given}
        calib = {f"calib_{d}": s for d, s in default_sets.items()} | calib
        calibration = CalibrationConfig.parse(**calib)  # our include_path is lm-eval's: below
        include = optional(given.get("include_path"))
        if include is not None and not Path(str(include)).expanduser().is_dir():
            raise ValueError(
                f"include_path={include!r} is not allowed; give an existing folder of lm-eval "
                "task YAMLs"
            )
        prompts = PromptSettings.parse(**{k: given[k] for k in PROMPT_ARGS if k in given})
        strict = parse_bool("plan_strict", given.get("plan_strict", True))
        plan = None if is_none(given.get("plan")) else PrunePlan.load(given["plan"])
        save_to = check_save_plan(optional(given.get("save_plan")))
        cache = calibration.cache()
        if cache is not None and plan is None:
            cache.check_writable()
        paths = (str(Path(str(include)).expanduser()),) if include is not None else ()
        return cls(options, calibration, prompts, paths, plan, save_to, strict)


class _PruneOnLoad:
    """Parse our model_args, let the lm-eval parent load the checkpoint, then prune it.

    Listed before the lm-eval class in the bases, so ``super()`` is that class.
    """

    NAME: ClassVar[str]
    DEFAULT_SETS: ClassVar[Mapping[str, str]]
    #: transformers' model_type -> class mapping that the parent's AUTO_MODEL_CLASS reads.
    MAPPING: ClassVar[str]
    OTHER: ClassVar[str]  # the registered model to suggest for the other kind of checkpoint
    PARENT: ClassVar[str]  # the lm-eval model this one extends

    def __init__(self, pretrained: str | None = None, **kwargs: Any) -> None:
        ours = {k: kwargs.pop(k) for k in list(kwargs) if k in OWN_ARGS}
        setup = PruneSetup.parse(ours, self.DEFAULT_SETS)
        pretrained, kwargs = self._default_model(pretrained, kwargs)
        self._check_parent_args(kwargs)
        revision = _revision(pretrained, kwargs)
        config = read_checkpoint_config(pretrained, revision)
        self._check_architecture(pretrained, config)
        stored = check_weight_files(pretrained)  # a damaged file is named before loading
        depth = text_depth(config)
        if setup.plan is None and depth is not None:  # checked again, exactly, by the planner
            check_options(setup.options, depth, setup.calibration.sets)
        elif setup.plan is None and setup.options.budget != 0:
            get_criterion(setup.options.criterion).resolve_domains(setup.calibration.sets)
        self.prompts, self._calibrating, self._prompts_checked = setup.prompts, False, False
        super().__init__(pretrained=pretrained, **kwargs)
        check_stored_depth(pretrained, stored, find_decoder_layers(self.model).layers)
        self._prune_(setup, pretrained, revision, kwargs)

    # -- before loading ----------------------------------------------------------------------
    def _default_model(self, pretrained: object, kwargs: dict) -> tuple[str, dict]:
        if not is_none(pretrained) and not isinstance(pretrained, str):
            raise ValueError(
                f"pretrained={type(pretrained).__name__} is not allowed: {self.NAME} loads and "
                "fingerprints the checkpoint itself; give a checkpoint folder or a hub id"
            )
        if not is_none(pretrained):
            return str(pretrained), kwargs
        return self._demo_model(kwargs)

    def _demo_model(self, kwargs: dict) -> tuple[str, dict]:
        raise ValueError(
            f"pretrained is required by {self.NAME}: the packaged demo model is a VLM; give a "
            "checkpoint, or use pruned_vlm for the demo model"
        )

    def _check_parent_args(self, kwargs: Mapping[str, Any]) -> None:
        """Arguments the parent does not name reach ``from_pretrained``; one that looks like a
        misspelt option of ours is refused instead of being handed to transformers."""
        named = set(named_params(type(self)))
        for k in kwargs:
            hint = closest(k, OWN_ARGS)
            if k not in named and hint:
                raise ValueError(
                    f"{k}={kwargs[k]!r} is not an argument of {self.NAME}{hint}; its own are: "
                    f"{', '.join(OWN_ARGS)}; other arguments go to lm-eval's {self.PARENT} model "
                    "and transformers' from_pretrained"
                )

    def _check_architecture(self, pretrained: str, config: Mapping[str, Any]) -> None:
        from transformers.models.auto import modeling_auto

        kind = config.get("model_type")
        if "auto_map" in config or kind in getattr(modeling_auto, self.MAPPING):
            return
        raise ValueError(
            f"pretrained={pretrained!r} is not allowed with {self.NAME}: its model_type {kind!r} "
            f"is not in transformers' {self.MAPPING}, which {self.NAME} loads with; use "
            f"--model {self.OTHER} for it"
        )

    # -- after loading -----------------------------------------------------------------------
    def _prune_(
        self, setup: PruneSetup, pretrained: str, revision: str | None, parent_args: Mapping
    ) -> None:
        model = self.model
        weights = weights_fingerprint(pretrained, revision)
        self.identity = ModelIdentity.of(model, pretrained, revision, weights)
        run_key = key(
            weights=weights,
            files=files_fingerprint(pretrained, revision),
            harness="lm-eval",
            model=self.NAME,
            args={k: repr(v) for k, v in sorted(parent_args.items())},
            dtype=str(next(model.parameters()).dtype),
        )
        self.source = LmEvalSource(self, setup.prompts, setup.include_paths)
        self.planner = Planner(self.source, model, self.identity, setup.calibration, run_key)
        with self._calibration():
            self.plan = setup.plan or self.planner.plan(setup.options)
        self.plan.apply_(model, self.identity, setup.strict)  # checks the model before cutting
        if setup.save_to is not None and is_main():
            self.plan.save(setup.save_to)
        _LOADED["plan"] = self.plan
        print(describe(self.plan), file=sys.stderr)

    @property
    def calibration_forwards(self) -> int:
        """Prefill forwards run for calibration by this load (0 on a plan-cache hit)."""
        return self.planner.forwards

    @contextmanager
    def _calibration(self) -> Iterator[None]:
        self._calibrating = True
        try:
            yield
        finally:
            self._calibrating = False

    # -- evaluation --------------------------------------------------------------------------
    def _chat_marker(self) -> str | None:
        """What the chat template puts after a user turn (the assistant header): a prompt that
        went through the template holds it."""
        probe = "\x1fprobe\x1f"
        saved = getattr(self, "chat_applied", None)
        try:
            text = self.apply_chat_template([{"role": "user", "content": probe}])
        except Exception:  # no chat template: nothing to compare
            return None
        finally:
            if saved is not None:
                self.chat_applied = saved
        tail = text.split(probe, 1)[1].strip() if probe in text else ""
        return tail or None

    def _check_prompts(self, requests: list) -> None:
        """The evaluation formats prompts as calibration did (chat template, system
        instruction): a plan measured on other prompts would be evaluated silently."""
        if self._calibrating or self._prompts_checked or not requests:
            return
        self._prompts_checked = True
        ctx = requests[0].args[0]
        if not isinstance(ctx, str) or not ctx:
            return
        marker, p = self._chat_marker(), self.prompts
        if marker is not None and (marker in ctx) != p.chat:
            how = "with" if p.chat else "without"
            raise ValueError(
                f"apply_chat_template={p.apply_chat_template!r}: {self.NAME} was calibrated on "
                f"prompts {how} the chat template, and this evaluation builds them "
                f"{'without' if p.chat else 'with'} it; give lm-eval the same "
                "--apply_chat_template as model_args apply_chat_template (the launcher "
                "`python -m lmms_prune_plugin.harnesses.lm_eval` passes it on by itself)"
            )
        if p.system_instruction and p.system_instruction not in ctx:
            raise ValueError(
                f"system_instruction={p.system_instruction!r}: {self.NAME} was calibrated with "
                "this system instruction, and this evaluation's prompts do not hold it; give "
                "lm-eval the same --system_instruction"
            )

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """The parent's, per kind of request: lm-eval's hf-multimodal takes the image or the
        text path for a whole call from its first request, so image and text-only tasks
        evaluated together would fail; here each kind runs on its own path."""
        self._check_prompts(requests)
        parent = super().generate_until
        images = [len(r.args) > 2 for r in requests]
        if all(images) or not any(images):
            return parent(requests, disable_tqdm=disable_tqdm)
        out: list = [None] * len(requests)
        for kind in (True, False):
            index = [i for i, has in enumerate(images) if has is kind]
            answers = parent([requests[i] for i in index], disable_tqdm=disable_tqdm)
            for i, answer in zip(index, answers, strict=True):
                out[i] = answer
        return out

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list:
        self._check_prompts(requests)
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def get_model_info(self) -> dict:
        """lm-eval writes this into its results' ``config``: the plan and how it was made."""
        from lmms_prune_plugin.harnesses.lmms_eval.results import summary

        info = super().get_model_info()
        info["prune_plan"] = summary(self.plan, self.identity)
        info["prune_calibration"] = {
            "harness": self.source.harness,
            "prompts": self.prompts.to_dict(),
            "task_paths": self.source.task_paths,
        }
        return info


def _revision(pretrained: str, kwargs: Mapping[str, Any]) -> str | None:
    """The hub revision the parent loads (``revision=``), or None for a local folder."""
    revision = optional(kwargs.get("revision"))
    if local_folder(pretrained) is None:
        return str(revision) if revision is not None else None
    if revision is not None:
        raise ValueError(
            f"revision={revision!r} is not allowed with pretrained={pretrained!r}: it is a local "
            "folder, which has no revisions; drop revision"
        )
    return None


@register_model("pruned_vlm")
class PrunedVLM(_PruneOnLoad, HFMultimodalLM):
    """lm-eval's ``hf-multimodal`` with decoder layers removed at load. With no ``pretrained``,
    the packaged demo model."""

    NAME = "pruned_vlm"
    DEFAULT_SETS = DEFAULT_SETS
    MAPPING = "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"
    OTHER = "pruned_lm"
    PARENT = "hf-multimodal"

    def _demo_model(self, kwargs: dict) -> tuple[str, dict]:
        from lmms_prune_plugin.demo.model import DEMO_MODEL_DIR, check_demo_model

        # Its processor config already fixes the image size to the rendered canvas (each 28x28
        # cell one visual token); lm-eval, unlike lmms-eval's qwen2_vl, keeps it as saved.
        return str(check_demo_model(DEMO_MODEL_DIR)), kwargs


@register_model("pruned_lm")
class PrunedLM(_PruneOnLoad, HFLM):
    """lm-eval's ``hf`` (causal LMs) with decoder layers removed at load, calibrated on
    text-only sets by default."""

    NAME = "pruned_lm"
    DEFAULT_SETS = TEXT_SETS
    MAPPING = "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"
    OTHER = "pruned_vlm"
    PARENT = "hf"

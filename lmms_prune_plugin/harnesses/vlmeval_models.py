"""VLMEvalKit model classes: a CPU-capable chat class for transformers checkpoints, and the
pruned model that wraps any VLMEvalKit model (or that chat class) and removes layers at load.

Imports VLMEvalKit at module level (its classes subclass ``vlmeval.vlm.base.BaseModel``):
only the process that runs VLMEvalKit imports this module.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from typing import Any

import torch
from PIL import Image
from vlmeval.vlm.base import BaseModel

from lmms_prune_plugin.core.args import closest, parse_bool, parse_int
from lmms_prune_plugin.core.cache import files_fingerprint, key, weights_fingerprint
from lmms_prune_plugin.core.calibration import CalibrationConfig
from lmms_prune_plugin.core.distributed import is_main
from lmms_prune_plugin.core.plan import ModelIdentity, PrunePlan
from lmms_prune_plugin.harnesses.vlmeval_args import check_reuse, parse_prune, plan_target
from lmms_prune_plugin.harnesses.vlmeval_data import DEMO_CALIBRATION
from lmms_prune_plugin.harnesses.vlmeval_source import (
    HARNESS,
    VLMEvalSource,
    build_plan,
    describe_removed,
    find_hf_model,
)
from lmms_prune_plugin.surgery.layers import removal_checks_in

#: ``--model`` name of the packaged demo checkpoint, run with :class:`HFChat`.
DEMO_MODEL = "lmms_prune_demo"
#: Why a model could not be built, by registered name: VLMEvalKit catches the error and tries
#: again for the next dataset; the launcher reports it and exits non-zero.
FAILED: dict[str, str] = {}


class HFChat(BaseModel):
    """A transformers checkpoint with its own chat template, on CPU or GPU, greedy.

    ``AutoProcessor`` + ``AutoModelForImageTextToText``; images are opened from the local paths
    VLMEvalKit passes and placed where they stand in the message (interleaved with its text).
    Remote code runs only with ``trust_remote_code=True``. ``min_pixels``/``max_pixels`` go to
    the processor when given (Qwen-style image budgets).

    Prompts are the dataset's own (VLMEvalKit's ``build_prompt``) unless ``post_prompt`` is
    given: then every dataset gets the model's prompt, the images and ``question + post_prompt``
    (options not listed; VLMEvalKit's exact matching finds the option an answer names). The
    demo model is run so, with the post prompt it was trained with.
    """

    INTERLEAVE = True
    allowed_types = ["text", "image"]

    def __init__(
        self,
        model_path: str,
        max_new_tokens: int = 32,
        trust_remote_code: bool = False,
        device: str | None = None,
        dtype: str = "auto",
        system_prompt: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        post_prompt: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model_path = str(model_path)
        self.max_new_tokens = parse_int("max_new_tokens", max_new_tokens, minimum=1)
        trust = parse_bool("trust_remote_code", trust_remote_code)
        self.system_prompt, self.post_prompt = system_prompt, post_prompt
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        pixels = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
        self.processor = AutoProcessor.from_pretrained(
            self.model_path, trust_remote_code=trust, **pixels
        )
        if not getattr(self.processor, "chat_template", None):
            raise ValueError(
                f"model_path={self.model_path!r} is not allowed: its processor has no chat "
                "template, so the prompt format is unknown; add chat_template.jinja to the folder"
            )
        self.model = AutoModelForImageTextToText.from_pretrained(
            self.model_path, dtype=dtype, trust_remote_code=trust
        )
        self.model.to(self.device).eval()

    def use_custom_prompt(self, dataset: str) -> bool:
        return self.post_prompt is not None

    def build_prompt(self, line, dataset: str | None = None) -> list[dict]:
        """The images of ``line`` and its question followed by ``post_prompt``."""
        paths = self.dump_image(line, dataset)
        paths = paths if isinstance(paths, list) else [paths]
        text = f"{line['question']}{self.post_prompt}"
        return [*({"type": "image", "value": p} for p in paths), {"type": "text", "value": text}]

    def _chat(self, message: list[dict]) -> list[dict]:
        content = []
        for item in message:
            if item["type"] == "image":
                with Image.open(item["value"]) as image:
                    content.append({"type": "image", "image": image.convert("RGB")})
            elif item["type"] == "text":
                content.append({"type": "text", "text": item["value"]})
            else:
                raise ValueError(f"HFChat takes text and images, not {item['type']!r}")
        system = [{"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}]
        return (system if self.system_prompt else []) + [{"role": "user", "content": content}]

    def generate_inner(self, message: list[dict], dataset: str | None = None) -> str:
        """The greedy answer to one VLMEvalKit message (new tokens only, special ones dropped)."""
        inputs = self.processor.apply_chat_template(
            self._chat(message),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        ).to(self.model.device, dtype=self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new, skip_special_tokens=True)[0].strip()


def build_inner(
    inner: str, pretrained: str | None, kwargs: Mapping[str, Any] | None
) -> tuple[Any, str]:
    """The model to prune: VLMEvalKit's own ``supported_VLM[inner]`` (at ``pretrained`` when
    given), else :class:`HFChat` on ``pretrained`` (the packaged demo for ``lmms_prune_demo``).
    Returns it and the checkpoint it loaded."""
    from vlmeval.config import supported_VLM

    kwargs = dict(kwargs or {})
    if inner in supported_VLM and inner != DEMO_MODEL:
        factory = supported_VLM[inner]
        if pretrained is not None:
            params = inspect.signature(factory.func.__init__).parameters
            if "model_path" not in params:
                raise ValueError(
                    f"--pretrained {pretrained!r} is not allowed with --model {inner!r}: its "
                    f"class {factory.func.__name__} takes no model_path; leave --pretrained out"
                )
            kwargs["model_path"] = pretrained
        model = factory(**kwargs)
        path = kwargs.get("model_path") or factory.keywords.get("model_path")
        return model, str(path or getattr(model, "model_path", inner))
    if pretrained is None and inner == DEMO_MODEL:
        from lmms_prune_plugin.demo.data.prompts import POST_PROMPT
        from lmms_prune_plugin.demo.model import DEMO_MODEL_DIR, check_demo_model

        pretrained = str(check_demo_model(DEMO_MODEL_DIR))
        kwargs.setdefault("post_prompt", POST_PROMPT)  # the demo model's training prompt
    if pretrained is None:
        raise ValueError(
            f"--model {inner!r} is not in VLMEvalKit's supported_VLM"
            f"{closest(inner, supported_VLM)}; give --pretrained PATH to run a transformers "
            f"checkpoint with lmms-prune's chat class, or --model {DEMO_MODEL} for the demo"
        )
    return HFChat(pretrained, **kwargs), pretrained


class PrunedVLM(BaseModel):
    """A VLMEvalKit model with text-decoder layers removed at load time.

    Builds the inner model (:func:`build_inner`), calibrates it through the messages VLMEvalKit
    builds for the calibration datasets (``calib_math`` / ``calib_nonmath``), removes the
    layers the plan names (or those of ``plan``, a saved plan file), writes the plan to
    ``<output_dir>/plan.json`` and then answers through the inner model, which keeps its own
    prompts and image handling. ``prune`` holds the pruning options (``criterion=math,budget=4``
    or a mapping).
    """

    def __init__(
        self,
        inner: str = DEMO_MODEL,
        pretrained: str | None = None,
        prune: str | Mapping[str, Any] | None = None,
        plan: str | None = None,
        calib_math: str = DEMO_CALIBRATION["math"],
        calib_nonmath: str = DEMO_CALIBRATION["nonmath"],
        calib_limit: int | None = 64,
        tokens: str = "all",
        plan_cache: str | bool | None = True,
        output_dir: str | None = None,
        name: str | None = None,
        reuse: bool = False,
        inner_kwargs: Mapping[str, Any] | None = None,
        use_vllm: bool = False,
    ) -> None:
        super().__init__()
        label = name or inner
        if label in FAILED:  # VLMEvalKit builds again for each dataset: fail fast, same reason
            raise RuntimeError(f"{label} was not built: {FAILED[label]}")
        try:
            config = CalibrationConfig.parse(
                calib_math=calib_math,
                calib_nonmath=calib_nonmath,
                calib_limit=calib_limit,
                tokens=tokens,
                plan_cache=plan_cache,
            )
            self._build(
                inner=inner,
                pretrained=pretrained,
                prune=prune,
                plan=plan,
                inner_kwargs=inner_kwargs,
                use_vllm=use_vllm,
                output_dir=output_dir,
                reuse=reuse,
                config=config,
            )
        except Exception as err:
            FAILED[label] = f"{type(err).__name__}: {err}"
            raise

    def _build(
        self,
        *,
        inner,
        pretrained,
        prune,
        plan,
        inner_kwargs,
        use_vllm,
        output_dir,
        reuse,
        config: CalibrationConfig,
    ) -> None:
        if parse_bool("use_vllm", use_vllm):
            raise ValueError(
                "use_vllm=True is not allowed: layers are removed from a model "
                "loaded in this process; run without --use-vllm"
            )
        options = None if plan is not None else parse_prune(prune)
        plan_file = PrunePlan.load(plan) if plan is not None else None
        target = plan_target(output_dir)
        self.inner, path = build_inner(inner, pretrained, inner_kwargs)
        hf = find_hf_model(self.inner, f"--model {inner}")
        weights = weights_fingerprint(path)
        identity = ModelIdentity.of(hf, path, None, weights)
        run_key = key(
            harness=HARNESS,
            weights=weights,
            files=files_fingerprint(path),
            inner=inner,
            cls=type(self.inner).__name__,
            args={k: repr(v) for k, v in sorted((inner_kwargs or {}).items())},
            dtype=str(next(hf.parameters()).dtype),
        )
        if plan_file is None:
            source = VLMEvalSource(self.inner, hf, config.sets.values())
            plan_file = build_plan(source, hf, identity, config, options, run_key)
        with removal_checks_in(config.cache()):  # the run's cache folder, or none
            plan_file.apply_(hf, identity, True)  # checks the model before cutting
        self.plan, self.plan_path = plan_file, target
        if target is not None and is_main():
            check_reuse(target, plan_file, reuse)
            plan_file.save(target)
        print(
            f"lmms-prune: {path} {describe_removed(plan_file)} (criterion="
            f"{plan_file.criterion}, budget={plan_file.budget}) -> {target}",
            file=sys.stderr,
        )

    # -- delegation: VLMEvalKit talks to the inner model as if it were unpruned ------------------
    def use_custom_prompt(self, dataset: str) -> bool:
        return bool(self.inner.use_custom_prompt(dataset))

    def build_prompt(self, line, dataset: str | None = None):
        return self.inner.build_prompt(line, dataset=dataset)

    def set_dump_image(self, dump_image_func) -> None:
        super().set_dump_image(dump_image_func)
        self.inner.set_dump_image(dump_image_func)

    def generate(self, message, dataset: str | None = None) -> str:
        return self.inner.generate(message, dataset=dataset)

    def generate_inner(self, message, dataset: str | None = None) -> str:
        return self.inner.generate_inner(message, dataset)

    def __getattr__(self, name: str):
        # is_api, VIDEO_LLM, chat_inner, ...: the inner model's (absent ones stay absent).
        if name == "inner" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

"""``pruned_vlm``: load any VLM through its lmms-eval wrapper, remove layers, delegate evaluation.

Every argument is checked before the model is loaded where the information exists (paths,
booleans, budget against the checkpoint's layer count, unknown arguments), and always before
the model is touched. Plans come from :class:`~lmms_prune_plugin.core.planner.Planner`.
"""

from __future__ import annotations

import sys
from typing import Any

from lmms_eval.api.model import lmms

from lmms_prune_plugin.core.cache import files_fingerprint, key, weights_fingerprint
from lmms_prune_plugin.core.distributed import is_main
from lmms_prune_plugin.core.loading import describe, refused_config
from lmms_prune_plugin.core.plan import ModelIdentity
from lmms_prune_plugin.core.planner import Planner
from lmms_prune_plugin.harnesses.lmms_eval import engine as engines
from lmms_prune_plugin.harnesses.lmms_eval import results
from lmms_prune_plugin.harnesses.lmms_eval.arguments import OWN_ARGS, LoadRequest, parse_model_args
from lmms_prune_plugin.harnesses.lmms_eval.base import FALLBACK_WRAPPER, build_wrapper, unwrap
from lmms_prune_plugin.harnesses.lmms_eval.exit_status import (
    check_unique_keys,
    exit_nonzero_on_failure,
)
from lmms_prune_plugin.harnesses.lmms_eval.source import LmmsEvalSource
from lmms_prune_plugin.surgery.checkpoint import check_stored_depth
from lmms_prune_plugin.surgery.layers import find_decoder_layers, removal_checks_in

__all__ = ["OWN_ARGS", "PrunedVLM", "PrunedVLMSimple", "describe"]


class PrunedVLM(lmms):
    """Chat-style ``pruned_vlm``. Every model_arg that is not ours goes to the base wrapper."""

    is_simple = False

    def __init__(self, **model_args: Any) -> None:
        """Our model_args are :data:`~.arguments.OWN_ARGS` (loading, calibration and pruning
        options); anything else goes to the base wrapper."""
        super().__init__()
        req = parse_model_args(model_args, self.is_simple)  # every check that needs no model
        self._load(req)
        self._prune(req)
        if req.load.engine != "hf":  # evaluation moves to the engine, on the plan's export
            engines.serve_(self)
        results.record_engine(req.load.engine, getattr(self, "served_from", None))
        print(f"{describe(self.plan)} | base={self.base_name}", file=sys.stderr)

    def _load(self, req: LoadRequest) -> None:
        """Build the base wrapper, then check it loaded what the checkpoint says it holds."""
        self.pretrained, self.revision = req.pretrained, req.load.revision
        self.base_name, self.engine, self._trust = (
            req.base_name,
            req.load.engine,
            req.load.trust_remote_code,
        )
        self.trust_remote_code, self.engine_kwargs = self._trust, req.engine_kwargs
        self.options, self.calibration = req.options, req.calibration
        try:
            self.base = build_wrapper(
                req.base_name, self.is_simple, pretrained=req.pretrained, **req.base_kwargs
            )
        except Exception as err:
            refused = refused_config(req.pretrained, err)
            if refused is not None:
                raise refused from err
            if not isinstance(err, KeyError | AttributeError):
                raise
            # A wrapper's own lookups failing on an architecture it does not know (llava_hf's
            # model map); bad values, memory and device errors propagate as they are.
            other = f"base={FALLBACK_WRAPPER!r} or " if req.base_name != FALLBACK_WRAPPER else ""
            raise ValueError(
                f"base={req.base_name!r} could not load pretrained={req.pretrained!r} (model_type "
                f"{req.config.get('model_type')!r}): {type(err).__name__}: {err}; choose {other}a "
                "wrapper that loads this architecture"
            ) from err
        # The evaluator reads is_simple from the instance: follow the base (qwen2_vl is simple-only).
        self.is_simple = getattr(self.base, "is_simple", self.is_simple)
        _check_loaded(req.base_name, req.pretrained, req.config, self.hf_model)
        check_stored_depth(req.pretrained, req.stored, find_decoder_layers(self.hf_model).layers)
        self.task_dict = self.base.task_dict  # one dict: the evaluator fills it, the base reads it
        self.keep_loaded = False  # a sweep evaluates one loaded model many times

    def _prune(self, req: LoadRequest) -> None:
        """Plan (or take the plan file), cut, record what was evaluated."""
        model = self.hf_model
        cal = req.calibration  # remember file hashes where the cache lives, and not when it is off
        memo = {"memo_dir": cal.cache_dir, "remember": cal.use_cache}
        weights = weights_fingerprint(req.pretrained, req.load.revision, **memo)
        self.identity = ModelIdentity.of(model, req.pretrained, req.load.revision, weights)
        run_key = key(
            weights=weights,
            files=files_fingerprint(req.pretrained, req.load.revision, **memo),
            base=req.base_name,
            base_args={k: repr(v) for k, v in sorted(req.base_kwargs.items())},
            simple=self.is_simple,
            dtype=str(next(model.parameters()).dtype),
        )
        source = LmmsEvalSource(self.base, req.calibration.task_paths)
        self.planner = Planner(source, model, self.identity, req.calibration, run_key)
        self.plan = req.plan_file or self.planner.plan(req.options)
        with removal_checks_in(req.calibration.cache()):  # the run's cache folder, or none
            self.plan.apply_(model, self.identity, req.load.plan_strict)  # checks, then cuts
        if req.save_to is not None and is_main():
            self.plan.save(req.save_to)
        self.display_name = results.DEMO_MODEL_NAME if req.demo else None
        results.record(self.plan, self.identity, self.display_name)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """lmms-eval's entry: the raw ``--model_args`` string is seen only here, so a key given
        twice (lmms-eval would keep the last) is refused here."""
        with exit_nonzero_on_failure():
            check_unique_keys(arg_string)
            return super().create_from_arg_string(arg_string, additional_config)

    @property
    def calibration_forwards(self) -> int:
        return self.planner.forwards

    # -- delegation ------------------------------------------------------------------------
    @property
    def hf_model(self):
        """The transformers model inside the base wrapper (unwrapped from accelerate/DDP)."""
        return unwrap(self.base.model)

    def clean(self) -> None:
        # The evaluator frees the model after each run; a sweep still needs it.
        if not self.keep_loaded:
            self.base.clean()

    def generate_until(self, requests):
        with exit_nonzero_on_failure():
            return self.base.generate_until(requests)

    def loglikelihood(self, requests):
        """Scored here, not by the base: several lmms-eval wrappers do not implement it (Qwen)
        or return what the multiple-choice tasks misread (see models/scoring.py)."""
        from lmms_prune_plugin.harnesses.lmms_eval.scoring import loglikelihood

        with exit_nonzero_on_failure():
            model, processor = self.hf_model, self._processor()
            return loglikelihood(model, processor, self.task_dict, requests, self.rank)

    def _processor(self):
        """The base wrapper's own processor (its image settings), else the checkpoint's."""
        from transformers import ProcessorMixin

        for name in ("processor", "_processor", "_image_processor"):
            found = getattr(self.base, name, None)
            if isinstance(found, ProcessorMixin):
                return found
        if getattr(self, "_own_processor", None) is None:
            from transformers import AutoProcessor

            self._own_processor = AutoProcessor.from_pretrained(
                self.pretrained, revision=self.revision, trust_remote_code=self._trust
            )
        return self._own_processor

    def generate_until_multi_round(self, requests):
        with exit_nonzero_on_failure():
            return self.base.generate_until_multi_round(requests)

    @property
    def rank(self):
        return self.base.rank

    @property
    def world_size(self):
        return self.base.world_size

    def __getattr__(self, name: str):
        # Anything else the harness asks for (accelerator, device, batch_size, ...) is the base's.
        if name == "base" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)


class PrunedVLMSimple(PrunedVLM):
    """Simple-style ``pruned_vlm`` (``--force_simple``)."""

    is_simple = True


def _check_loaded(base: str, pretrained: str, config: dict, model) -> None:
    """The base wrapper loaded the checkpoint's own architecture (lmms-eval's glm4v picks its
    model class from the path), else nothing later would be measured on the right model."""
    # The config class's model_type: an instance keeps the one read from config.json.
    got = getattr(type(getattr(model, "config", None)), "model_type", None)
    want = config.get("model_type")
    if want and got and want != got:
        raise ValueError(
            f"base={base!r} loaded {pretrained} as {type(model).__name__} (model_type {got!r}), "
            f"but the checkpoint's model_type is {want!r}; choose base={FALLBACK_WRAPPER!r} or "
            "a wrapper that loads this architecture"
        )

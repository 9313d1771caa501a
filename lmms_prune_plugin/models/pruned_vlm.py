"""``pruned_vlm``: load any VLM through its lmms-eval wrapper, remove layers, delegate evaluation."""

from __future__ import annotations

import sys
from typing import Any

from lmms_eval.api.model import lmms
from loguru import logger

from ..cache import Cache, key, weights_fingerprint
from ..calibration import DEFAULT_SETS, Calibrator, _is_main, domains_for
from ..pipeline import PruneOptions, make_plan
from ..plan import ModelIdentity, PrunePlan
from . import results

# model_type -> lmms-eval wrapper, checked on tiny checkpoints with transformers 5.24.
WRAPPERS = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "llava_onevision": "llava_hf",
    "llava": "llava_hf",
    "llava_next": "llava_hf",
}
FALLBACK_WRAPPER = "hf_vlm"  # ours: AutoModelForImageTextToText + the processor's chat template

OPTION_FIELDS = (
    "criterion",
    "budget",
    "strategy",
    "alpha",
    "seed",
    "min_gap",
    "protect_first",
    "protect_last",
    "tokens",
)


def _none(value: Any) -> Any:
    return None if value in (None, "", "none", "None") else value


class PrunedVLM(lmms):
    """Chat-style ``pruned_vlm``. Every model_arg that is not ours goes to the base wrapper."""

    is_simple = False

    def __init__(
        self,
        pretrained: str | None = None,
        base: str | None = None,
        criterion: str = "math",
        budget: int | float = 0,
        strategy: str | None = None,
        alpha: float = 0.5,
        seed: int = 0,
        min_gap: int = 2,
        protect_first: int = 0,
        protect_last: int = 0,
        tokens: str = "all",
        calib_math: str = DEFAULT_SETS["math"],
        calib_nonmath: str = DEFAULT_SETS["nonmath"],
        calib_limit: int | None = 64,
        include_path: str | None = None,
        plan: str | None = None,
        save_plan: str | None = None,
        plan_cache: str | bool | None = True,
        revision: str | None = None,
        trust_remote_code: bool = False,
        **base_kwargs: Any,
    ) -> None:
        super().__init__()
        # Everything is validated before the model is loaded: bad input costs nothing.
        self.options = PruneOptions(
            criterion=criterion, budget=budget, strategy=_none(strategy), alpha=alpha, seed=seed,
            min_gap=min_gap, protect_first=protect_first, protect_last=protect_last, tokens=tokens,
        )  # fmt: skip
        calib_limit = _none(calib_limit)
        if calib_limit is not None and (
            isinstance(calib_limit, bool) or not isinstance(calib_limit, int) or calib_limit < 1
        ):
            raise ValueError(
                f"calib_limit={calib_limit!r} is not allowed; give a positive integer or none"
            )
        plan_file = PrunePlan.load(plan) if _none(plan) else None
        sets = {
            d: t
            for d, t in (("math", calib_math), ("nonmath", calib_nonmath))
            if _none(t) is not None
        }
        if plan_file is None and self.options.budget != 0:
            missing = [d for d in self.options.domains if d != "*" and d not in sets]
            if missing or ("*" in self.options.domains and not sets):
                need = missing[0] if missing else "any"
                raise ValueError(
                    f"criterion={criterion!r} needs the {need!r} calibration domain, but calib_{need}={None!r}; "
                    "name an lmms-eval task for it"
                )

        pretrained, base_kwargs = _default_model(pretrained, base_kwargs)
        self.pretrained, self.revision = str(pretrained), _none(revision)
        if trust_remote_code:  # off unless the user turns it on; then the base wrapper gets it
            base_kwargs["trust_remote_code"] = True
        self.base_name = _none(base) or pick_wrapper(self.pretrained, self.revision)
        self.base = build_wrapper(
            self.base_name, self.is_simple, pretrained=self.pretrained, **base_kwargs
        )
        # The evaluator reads is_simple from the instance: follow the base (qwen2_vl is simple-only).
        self.is_simple = getattr(self.base, "is_simple", self.is_simple)
        self.task_dict = self.base.task_dict  # one dict: the evaluator fills it, the base reads it
        self.keep_loaded = False  # a sweep evaluates one loaded model many times

        self.calibration_forwards = 0
        self.plan: PrunePlan = plan_file or self._make_plan(
            sets=sets, limit=calib_limit,
            include_path=_none(include_path), cache=_cache(plan_cache),
        )  # fmt: skip
        self.plan.apply_(self.hf_model)
        if _none(save_plan) and _is_main():
            self.plan.save(save_plan)
        results.record(self.plan)
        print(f"{describe(self.plan)} | base={self.base_name}", file=sys.stderr)

    # -- pruning ---------------------------------------------------------------------------
    def _make_plan(self, sets, limit, include_path, cache) -> PrunePlan:
        identity = ModelIdentity.of(self.hf_model, self.pretrained, self.revision)
        opts = self.options
        if opts.budget == 0:  # nothing to remove, nothing to calibrate
            return PrunePlan(identity, opts.criterion, {}, opts.strategy_name, {}, 0, (), ())
        domains = domains_for(opts.domains, sets)
        model_key = weights_fingerprint(self.pretrained, self.revision)
        calib = Calibrator(
            self.base, self.hf_model, sets, limit, opts.tokens, include_path, cache, model_key
        )
        plan_key = key(
            kind="plan",
            identity=identity,
            calibration=[calib.key(d) for d in domains],
            options=opts.cache_key(),
        )
        cached = cache.get_plan(plan_key) if cache else None
        if cached is not None and not cached.model.mismatch(identity):
            logger.info(f"lmms-prune: using the cached plan {cache.dir / f'plan-{plan_key}.json'}")
            return cached
        stats = calib.statistics(domains, opts.block_sizes(identity.num_layers))
        self.calibration_forwards = calib.forwards
        plan = make_plan(identity, stats, opts, calib.identity(domains))
        if cache and _is_main():
            cache.put_plan(plan_key, plan)
        return plan

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
        return self.base.generate_until(requests)

    def loglikelihood(self, requests):
        return self.base.loglikelihood(requests)

    def generate_until_multi_round(self, requests):
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


def _cache(plan_cache: str | bool | None) -> Cache | None:
    if plan_cache in (False, "false", "off", "none", "None", 0):
        return None
    return Cache(None if plan_cache in (True, None, "true", "") else str(plan_cache))


def _default_model(pretrained: str | None, base_kwargs: dict) -> tuple[str, dict]:
    """No ``pretrained``: the packaged demo model, with the wrapper settings it needs."""
    if _none(pretrained) is not None:
        return str(pretrained), base_kwargs
    from ..demo import DEMO_MODEL_DIR, check_demo_model, demo_model_args

    check_demo_model(DEMO_MODEL_DIR)
    return str(DEMO_MODEL_DIR), demo_model_args() | base_kwargs


def pick_wrapper(pretrained: str, revision: str | None = None) -> str:
    """The lmms-eval wrapper for the checkpoint's model_type, else our generic one."""
    from transformers import PretrainedConfig

    # The raw config dict is enough for model_type: no config class, no remote code to run.
    cfg, _ = PretrainedConfig.get_config_dict(pretrained, revision=revision)
    return WRAPPERS.get(cfg.get("model_type", ""), FALLBACK_WRAPPER)


def build_wrapper(name: str, simple: bool, **kwargs: Any) -> lmms:
    """Construct lmms-eval's wrapper ``name`` of the same kind (chat/simple) as ours."""
    from lmms_eval import models

    available = models.list_available_models(include_aliases=True)
    if name not in available or name == "pruned_vlm":
        choices = ", ".join(sorted(a for a in available if a != "pruned_vlm"))
        raise ValueError(f"base={name!r} is not an lmms-eval model; choose one of: {choices}")
    cls = models.get_model(name, force_simple=simple)
    return cls(**kwargs)


def unwrap(model):
    """The transformers model under accelerate / DDP wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def describe(plan: PrunePlan) -> str:
    """A short human summary of a plan."""
    kept = plan.model.num_layers - len(plan.removed)
    scores = ", ".join(f"{i}:{plan.scores[i]:.4f}" for i in plan.removed) if plan.scores else "-"
    return (
        f"lmms-prune: {plan.model.name_or_path} ({plan.model.architecture}) "
        f"{plan.model.num_layers} -> {kept} layers | criterion={plan.criterion} strategy={plan.strategy} "
        f"budget={plan.budget} | removed {list(plan.removed)} (scores {scores})"
    )

"""``pruned_vlm``: load any VLM through its lmms-eval wrapper, remove layers, delegate evaluation.

Every argument is checked before the model is loaded where the information exists (paths,
booleans, budget against the checkpoint's layer count, unknown arguments), and always before
the model is touched. Plans come from :class:`~lmms_prune_plugin.planner.Planner`.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any

from lmms_eval.api.model import lmms

from ..args import check_writable, closest, is_none, optional, parse_bool, reject_empty
from ..cache import files_fingerprint, key, weights_fingerprint
from ..calibration import DEFAULT_SETS, CalibrationConfig
from ..checkpoint import check_stored_depth, check_weight_files, local_folder, read_local_config
from ..distributed import is_main
from ..layers import find_decoder_layers
from ..plan import ModelIdentity, PrunePlan
from ..planner import Planner, PruneOptions, check_options, prune_option_names
from ..plugins import get_criterion
from . import engine as engines
from . import results
from .base import (
    FALLBACK_WRAPPER,
    REVISION_WRAPPERS,
    always_trusts,
    build_wrapper,
    pick_wrapper,
    read_config,
    ships_code,
    unwrap,
    wrapper_class,
)
from .exit_status import check_unique_keys, exit_nonzero_on_failure

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


class PrunedVLM(lmms):
    """Chat-style ``pruned_vlm``. Every model_arg that is not ours goes to the base wrapper."""

    is_simple = False

    def __init__(
        self,
        pretrained: str | None = None,
        base: str | None = None,
        tokens: str = "all",
        calib_math: str = DEFAULT_SETS["math"],
        calib_nonmath: str = DEFAULT_SETS["nonmath"],
        calib_limit: int | None = 64,
        include_path: str | None = None,
        plan: str | None = None,
        save_plan: str | None = None,
        plan_cache: str | bool | None = True,
        plan_strict: bool | str = True,
        revision: str | None = None,
        trust_remote_code: bool | str = False,
        engine: str = "hf",
        **kwargs: Any,
    ) -> None:
        """Every :class:`PruneOptions` field is a model_arg too (criterion, budget, strategy,
        alpha, ...); anything else goes to the base wrapper."""
        super().__init__()
        # Everything the arguments alone can tell is checked before the model is loaded.
        for name, value in _own_values(locals(), kwargs):
            reject_empty(name, value)
        names = prune_option_names()
        given = {k: kwargs.pop(k) for k in names if k in kwargs}
        _check_plan_alone(plan, given)
        self.options = PruneOptions.parse(**given)
        base_kwargs = kwargs
        self.calibration = CalibrationConfig.parse(
            calib_math, calib_nonmath, calib_limit, tokens, include_path, plan_cache
        )
        self._trust = trust = parse_bool("trust_remote_code", trust_remote_code)
        self.engine, self.trust_remote_code = engines.check_engine(engine), trust
        strict = parse_bool("plan_strict", plan_strict)
        plan_file = PrunePlan.load(plan) if not is_none(plan) else None
        save_to = _check_save_plan(optional(save_plan))
        cache = self.calibration.cache()
        if cache is not None and plan_file is None:
            cache.check_writable()

        pretrained, base_kwargs = _default_model(pretrained, base_kwargs)
        self.pretrained, self.revision = pretrained, optional(revision)
        config = _read_checkpoint_config(self.pretrained, self.revision)
        stored = check_weight_files(self.pretrained)  # a damaged file is named before loading
        depth = _text_depth(config)
        if plan_file is None and depth is not None:  # checked again, exactly, after loading
            check_options(self.options, depth, self.calibration.sets)
        elif plan_file is None and self.options.budget != 0:
            get_criterion(self.options.criterion).resolve_domains(self.calibration.sets)
        self.base_name = optional(base) or pick_wrapper(config)
        if trust:  # off unless the user turns it on; then the base wrapper gets it
            base_kwargs["trust_remote_code"] = True
        self.engine_kwargs: dict[str, Any] = {}
        if self.engine != "hf":  # vLLM's arguments go to the engine, the rest to the base
            base_kwargs, self.engine_kwargs = engines.split_base_and_engine_args(
                self.base_name, self.is_simple, base_kwargs
            )
        _check_revision(self.base_name, self.pretrained, self.revision, base_kwargs)
        _check_remote_code(self.base_name, self.is_simple, self.pretrained, self.revision,
                           trust, base_kwargs)  # fmt: skip
        _check_base_kwargs(self.base_name, self.is_simple, base_kwargs)

        try:
            self.base = build_wrapper(
                self.base_name, self.is_simple, pretrained=self.pretrained, **base_kwargs
            )
        except (KeyError, AttributeError) as err:
            # A wrapper's own lookups failing on an architecture it does not know (llava_hf's
            # model map); bad values, memory and device errors propagate as they are.
            other = f"base={FALLBACK_WRAPPER!r} or " if self.base_name != FALLBACK_WRAPPER else ""
            raise ValueError(
                f"base={self.base_name!r} could not load pretrained={self.pretrained!r} (model_type "
                f"{config.get('model_type')!r}): {type(err).__name__}: {err}; choose {other}a "
                "wrapper that loads this architecture"
            ) from err
        # The evaluator reads is_simple from the instance: follow the base (qwen2_vl is simple-only).
        self.is_simple = getattr(self.base, "is_simple", self.is_simple)
        _check_loaded(self.base_name, self.pretrained, config, self.hf_model)
        check_stored_depth(self.pretrained, stored, find_decoder_layers(self.hf_model).layers)
        self.task_dict = self.base.task_dict  # one dict: the evaluator fills it, the base reads it
        self.keep_loaded = False  # a sweep evaluates one loaded model many times

        model = self.hf_model
        weights = weights_fingerprint(self.pretrained, self.revision)
        self.identity = ModelIdentity.of(model, self.pretrained, self.revision, weights)
        run_key = key(
            weights=weights, files=files_fingerprint(self.pretrained), base=self.base_name,
            base_args={k: repr(v) for k, v in sorted(base_kwargs.items())},
            simple=self.is_simple, dtype=str(next(model.parameters()).dtype),
        )  # fmt: skip
        self.planner = Planner(self.base, model, self.identity, self.calibration, run_key)
        self.plan = plan_file or self.planner.plan(self.options)
        self.plan.apply_(model, self.identity, strict)  # checks the model before cutting
        if save_to is not None and is_main():
            self.plan.save(save_to)
        results.record(self.plan, self.identity)
        if self.engine != "hf":  # evaluation moves to the engine, on the plan's export
            engines.serve_(self)
        results.record_engine(self.engine, getattr(self, "served_from", None))
        print(f"{describe(self.plan)} | base={self.base_name}", file=sys.stderr)

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
        from .scoring import loglikelihood

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


#: The arguments ``pruned_vlm`` itself takes (everything else goes to the base wrapper).
OWN_ARGS = (
    *(p for p in inspect.signature(PrunedVLM.__init__).parameters if p not in ("self", "kwargs")),
    *prune_option_names(),
)


def _own_values(local: dict, kwargs: dict):
    """(name, value) of every argument of ours that was given, for checks common to all."""
    for name in OWN_ARGS:
        if name in kwargs:
            yield name, kwargs[name]
        elif name in local and local[name] is not None:
            yield name, local[name]


def _check_plan_alone(plan: object, given: dict) -> None:
    """A plan decides every removed layer: options that would make another plan contradict it."""
    if is_none(plan) or not given:
        return
    names = ", ".join(f"{k}={v!r}" for k, v in given.items())
    raise ValueError(
        f"plan={plan!r} is not allowed together with {names}: the plan file already fixes which "
        "layers are removed; give either plan= or the pruning options, not both"
    )


def _default_model(pretrained: str | None, base_kwargs: dict) -> tuple[str, dict]:
    """No ``pretrained``: the packaged demo model, with the wrapper settings it needs."""
    if not is_none(pretrained):
        return str(pretrained), base_kwargs
    from ..demo.model import DEMO_MODEL_DIR, check_demo_model, demo_model_args

    check_demo_model(DEMO_MODEL_DIR)
    return str(DEMO_MODEL_DIR), demo_model_args() | base_kwargs


def _read_checkpoint_config(pretrained: str, revision: str | None) -> dict:
    """The checkpoint's config.json, or one clear line saying why there is none."""
    local = Path(pretrained).expanduser()
    if local.exists():
        if not (local.is_dir() and (local / "config.json").is_file()):
            raise ValueError(
                f"pretrained={pretrained!r} is not allowed: it is not a checkpoint folder (no config.json)"
            )
    elif not _HUB_ID.match(pretrained) or pretrained.startswith((".", "~")):
        raise ValueError(
            f"pretrained={pretrained!r} is not allowed: no such folder, and not a hub id (org/name)"
        )
    folder = local_folder(pretrained)
    try:
        config = read_local_config(folder) if folder else read_config(pretrained, revision)
    except OSError as err:
        raise ValueError(
            f"pretrained={pretrained!r}: no such local folder, and its config could not be fetched "
            f"from the hub (offline, unknown id or revision?): {str(err).splitlines()[0]}"
        ) from err
    if not config.get("model_type"):
        # Neither the wrapper nor the architecture check could be chosen: every wrapper would
        # guess, and fail deep inside or load something else.
        raise ValueError(
            f"pretrained={pretrained!r} is not allowed: its config.json has no model_type, so its "
            "architecture is unknown; add the model_type of its transformers config class"
        )
    return config


def _text_depth(config: dict) -> int | None:
    """num_hidden_layers of the text decoder, from a raw config dict (None if not stated)."""
    for sub in ("text_config", "llm_config", "language_config"):
        n = (
            (config.get(sub) or {}).get("num_hidden_layers")
            if isinstance(config.get(sub), dict)
            else None
        )
        if isinstance(n, int):
            return n
    n = config.get("num_hidden_layers")
    return n if isinstance(n, int) else None


def _check_base_kwargs(base: str, simple: bool, kwargs: dict) -> None:
    """An argument neither ours nor a named parameter of the base wrapper is a typo: name it."""
    cls = wrapper_class(base, simple)  # an unknown base: the error lists the choices
    named = _named_params(cls)
    # (A wrapper that always trusts no longer has the argument here: _check_remote_code.)
    if "trust_remote_code" in kwargs and "trust_remote_code" not in named:
        raise ValueError(
            f"trust_remote_code=true is not allowed with base={base!r}: that wrapper loads the "
            "checkpoint with its own classes and takes no remote code; drop it, or choose "
            "base=hf_vlm to run the checkpoint's own code"
        )
    unknown = [k for k in kwargs if k not in named]
    if unknown:
        k = unknown[0]
        raise ValueError(
            f"{k}={kwargs[k]!r} is not an argument of pruned_vlm or of its base wrapper {base!r}"
            f"{closest(k, [*OWN_ARGS, *named])}; pruned_vlm takes {', '.join(OWN_ARGS)}; "
            f"{base} takes {', '.join(named)}"
        )


def _check_remote_code(
    base: str, simple: bool, pretrained: str, revision: str | None, trust: bool, kwargs: dict
) -> None:
    """Remote code runs only when the user says so: a wrapper that defaults to
    trust_remote_code=True (gemma3, gemma4) is given false, and one that trusts whatever it is
    given is refused for a checkpoint that ships code (``auto_map`` in its config, processor or
    tokenizer files)."""
    cls = wrapper_class(base, simple)
    takes = "trust_remote_code" in _named_params(cls)
    if takes:
        kwargs["trust_remote_code"] = trust
    forced = always_trusts(base, cls)
    if forced is None:
        return
    if trust:
        if not takes:
            kwargs.pop("trust_remote_code", None)  # asked for, and the wrapper does it anyway
        return
    code = ships_code(pretrained, revision)
    if code:
        raise ValueError(
            f"base={base!r} loads with trust_remote_code=True whatever it is given ({forced}), "
            f"and this checkpoint ships its own code (auto_map in {', '.join(code)}); pass "
            f"trust_remote_code=true to run that code, or choose base={FALLBACK_WRAPPER!r}"
        )


def _check_revision(base: str, pretrained: str, revision: str | None, kwargs: dict) -> None:
    """A revision reaches the base wrapper, or is refused: a wrapper that does not load model and
    processor at it would load the default branch while the plan and results name the revision,
    and a local folder has no revisions."""
    if revision is None:
        return
    if Path(pretrained).expanduser().exists():
        raise ValueError(
            f"revision={revision!r} is not allowed with pretrained={pretrained!r}: it is a local "
            "folder, which has no revisions; drop revision"
        )
    if base not in REVISION_WRAPPERS:
        raise ValueError(
            f"revision={revision!r} is not allowed with base={base!r}: that wrapper does not load "
            "the model and its processor at a revision and would load the default one; choose "
            f"base= one of {', '.join(REVISION_WRAPPERS)}, or download that revision to a folder "
            "and pass the folder as pretrained"
        )
    kwargs["revision"] = revision


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


def _named_params(cls: type) -> list[str]:
    """Named ``__init__`` parameters of ``cls``, and of its parents for as long as each
    ``__init__`` passes ``**kwargs`` on (wrappers that extend another wrapper)."""
    named: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        named += [p for p, v in params.items()
                  if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL) and p != "self" and p not in named]  # fmt: skip
        if not any(v.kind == v.VAR_KEYWORD for v in params.values()):
            break
    return named


def _check_save_plan(path: str | None) -> Path | None:
    """``save_plan`` may create a file or replace a plan, never anything else; checked now."""
    if path is None:
        return None
    target = Path(str(path)).expanduser()
    if target.is_dir():
        raise ValueError(f"save_plan={path!r} is not allowed: it is a folder; give a file path")
    if target.exists():
        try:
            PrunePlan.load(target)
        except ValueError as err:
            raise ValueError(
                f"save_plan={path!r} is not allowed: the file exists and is not a plan, so it is "
                "not replaced; give a new path or remove it"
            ) from err
    return check_writable("save_plan", target)


def describe(plan: PrunePlan) -> str:
    """A short human summary of a plan."""
    kept = plan.model.num_layers - len(plan.removed)
    if not plan.removed:
        return f"lmms-prune: {plan.model.name_or_path} ({plan.model.architecture}) loaded unpruned, {kept} layers"
    scores = ", ".join(f"{i}:{plan.scores[i]:.4f}" for i in plan.removed) if plan.scores else "-"
    return (
        f"lmms-prune: {plan.model.name_or_path} ({plan.model.architecture}) "
        f"{plan.model.num_layers} -> {kept} layers | criterion={plan.criterion} strategy={plan.strategy} "
        f"budget={plan.budget} | removed {list(plan.removed)} (scores {scores})"
    )

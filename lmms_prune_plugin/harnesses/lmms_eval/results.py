"""Say in lmms-eval's results what was evaluated: the plan at ``config.prune_plan``, once.

lmms-eval 0.7.3 offers no hook for a model to add to ``results["config"]``. Its evaluator passes
that dict through ``_redact_eval_config_secrets`` just before returning, and that function calls
itself by its global name for every nested value. We wrap it once; the wrapper adds the plan
only at the outermost call, and only when the run's ``model_backend`` is ``pruned_vlm``, so a
plain model evaluated later in the same process never carries a pruned plan. The output folder
is named after ``pretrained=``; for the packaged demo model, which needs none, it is named too.
"""

from __future__ import annotations

from lmms_prune_plugin.core.plan import ModelIdentity, PrunePlan

_STATE: dict = {"plan": None, "model_name": None, "depth": 0}
DEMO_MODEL_NAME = "lmms-prune-demo-vlm"


def summary(plan: PrunePlan, evaluated: ModelIdentity | None = None) -> dict:
    out = {
        "model": plan.model.name_or_path,
        "architecture": plan.model.architecture,
        "num_layers": plan.model.num_layers,
        "kept_layers": plan.model.num_layers - len(plan.removed),
        "removed": list(plan.removed),
        "criterion": plan.criterion,
        "strategy": plan.strategy,
        "budget": plan.budget,
        "scores": list(plan.scores),
        "calibration": plan.to_dict()["calibration"],
        "token_selection": plan.token_selection,
        "package_version": plan.package_version,
    }
    if evaluated is not None and plan.model.checkpoint_mismatch(evaluated):
        # plan_strict=false applied another checkpoint's plan: say both.
        out["evaluated_model"] = evaluated.name_or_path
    return out


def record(
    plan: PrunePlan, evaluated: ModelIdentity | None = None, name: str | None = None
) -> None:
    """The plan of the ``pruned_vlm`` about to be evaluated (the latest constructed wins);
    ``name`` names the output folder when ``pretrained=`` does not (the demo model)."""
    _STATE["plan"] = summary(plan, evaluated)
    _STATE["model_name"] = name or (evaluated or plan.model).name_or_path
    _install()


def _is_ours(config: dict) -> bool:
    backend = str(config.get("model_backend", ""))
    return backend.startswith(f"{__package__}.pruned_vlm.")


def _install() -> None:
    import lmms_eval.evaluator as ev
    from lmms_eval.loggers.evaluation_tracker import GeneralConfigTracker

    original = ev._redact_eval_config_secrets
    if getattr(original, "_lmms_prune", False):
        return

    def with_plan(value):
        _STATE["depth"] += 1
        try:
            out = original(value)
        finally:
            _STATE["depth"] -= 1
        if _STATE["depth"] == 0 and isinstance(out, dict) and _STATE["plan"] and _is_ours(out):
            out["prune_plan"] = _STATE["plan"]
        return out

    with_plan._lmms_prune = True
    ev._redact_eval_config_secrets = with_plan

    log_args = GeneralConfigTracker.log_experiment_args

    def log_with_name(self, model_source, model_args, *args, **kwargs):
        log_args(self, model_source, model_args, *args, **kwargs)
        if not self.model_name and model_source == "pruned_vlm" and _STATE["model_name"]:
            from lmms_eval.utils import sanitize_model_name

            self.model_name = _STATE["model_name"]
            self.model_name_sanitized = sanitize_model_name(self.model_name)

    GeneralConfigTracker.log_experiment_args = log_with_name


def record_engine(engine: str, served_from: str | None = None) -> None:
    """Which engine evaluates the recorded plan (``hf`` or ``vllm``), and from which folder."""
    if _STATE["plan"] is not None:
        _STATE["plan"]["engine"] = engine
        if served_from is not None:
            _STATE["plan"]["served_from"] = served_from

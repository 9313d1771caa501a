"""Put the applied plan into lmms-eval's results, so a leaderboard row says which layers were cut.

lmms-eval 0.7.3 offers no hook for a model to add to ``results["config"]``; its evaluator passes
that dict through ``_redact_eval_config_secrets`` just before returning. We wrap that one
function, once, and add the plans recorded by ``pruned_vlm`` instances under ``prune_plan``.
"""

from __future__ import annotations

from ..plan import PrunePlan

_PLANS: list[dict] = []


def summary(plan: PrunePlan) -> dict:
    return {
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
        "package_version": plan.package_version,
    }


def record(plan: PrunePlan) -> None:
    """Remember ``plan`` for the results of the next evaluation (the latest model wins)."""
    _PLANS[:] = [summary(plan)]
    _install()


def _install() -> None:
    import lmms_eval.evaluator as ev

    original = ev._redact_eval_config_secrets
    if getattr(original, "_lmms_prune", False):
        return

    def with_plan(config):
        out = original(config)
        if _PLANS and isinstance(out, dict):
            out["prune_plan"] = _PLANS[-1]
        return out

    with_plan._lmms_prune = True
    ev._redact_eval_config_secrets = with_plan

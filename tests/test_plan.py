import json

import pytest
import torch
from helpers import vlm_batch

from lmms_prune_plugin.core.plan import CalibrationIdentity, ModelIdentity, PrunePlan
from lmms_prune_plugin.core.planner import PruneOptions, make_plan
from lmms_prune_plugin.core.stats import LayerStatistics
from lmms_prune_plugin.testing.tiny import build_tiny_vlm


def stats(sim):
    return LayerStatistics(len(sim), tuple(sim), 1, 1, 1)


STATS = {
    "math": stats([0.3, 0.9, 0.8, 0.2, 0.5, 0.1]),
    "nonmath": stats([0.9, 0.1, 0.2, 0.8, 0.5, 0.4]),
}


@pytest.fixture
def model():
    return build_tiny_vlm("qwen2_vl", num_layers=6)


def plan_for(model, **opts):
    return make_plan(
        ModelIdentity.of(model, "tiny"),
        STATS,
        PruneOptions(**opts),
        CalibrationIdentity({"math": "m"}, {"math": 4}, "abc"),
    )


def test_plan_records_everything_and_round_trips_json(model):
    plan = plan_for(model[0], criterion="math", budget=2)
    assert plan.removed == (1, 2) and plan.strategy == "topk"
    assert (
        plan.model.num_layers == 6 and plan.model.architecture == "Qwen2VLForConditionalGeneration"
    )
    data = json.loads(plan.to_json())
    assert data["scores"] == pytest.approx([0.3, 0.9, 0.8, 0.2, 0.5, 0.1])
    assert data["calibration"] == {
        "sets": {"math": "m"},
        "samples": {"math": 4},
        "content_hash": "abc",
        "harness": "lmms-eval",  # which harness built the calibration inputs
    }
    assert PrunePlan.from_json(plan.to_json()) == plan


def test_domain_choice_changes_the_plan(model):
    assert plan_for(model[0], criterion="math", budget=2).removed == (1, 2)
    assert plan_for(model[0], criterion="nonmath", budget=2).removed == (0, 3)
    assert plan_for(model[0], criterion="math", budget=2, strategy="spaced").removed == (1, 4)


def test_same_inputs_same_plan(model):
    assert (
        plan_for(model[0], criterion="mixed", budget=3).to_json()
        == plan_for(model[0], criterion="mixed", budget=3).to_json()
    )


def test_apply_removes_the_planned_layers(model, tmp_path):
    m, processor = model
    plan = plan_for(m, criterion="math", budget=0.5)
    path = plan.save(tmp_path / "plan.json")
    PrunePlan.load(path).apply_(m)
    assert len(m.model.language_model.layers) == 3
    with torch.no_grad():
        m(**vlm_batch(processor))


def test_plan_for_another_model_is_refused_before_touching(model):
    other, _ = build_tiny_vlm("qwen2_vl", num_layers=5)
    plan = plan_for(model[0], criterion="math", budget=2)
    with pytest.raises(
        ValueError, match="does not fit this model.*num_layers: plan has 6, model has 5"
    ):
        plan.apply_(other)
    assert len(other.model.language_model.layers) == 5


def test_corrupt_or_missing_plan_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="plan=.*bad.json.* is not a valid prune plan"):
        PrunePlan.load(bad)
    bad.write_text(json.dumps({"format": 1, "model": {}}))
    with pytest.raises(ValueError, match="not a valid prune plan"):
        PrunePlan.load(bad)
    with pytest.raises(ValueError, match="no such file"):
        PrunePlan.load(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "opts, message",
    [
        ({"criterion": "nope"}, "criterion='nope' is not registered"),
        ({"strategy": "nope"}, "strategy='nope' is not registered"),
        ({"budget": -2}, "budget=-2"),
        ({"alpha": 2}, "alpha=2"),
    ],
)
def test_options_are_validated_up_front(opts, message):
    with pytest.raises(ValueError, match=message):
        PruneOptions(**opts)


def test_token_selection_is_validated_with_the_calibration_config():
    from lmms_prune_plugin.core.calibration import CalibrationConfig

    with pytest.raises(ValueError, match="tokens='x'"):
        CalibrationConfig.parse(tokens="x")


def test_budget_too_large_for_the_model(model):
    with pytest.raises(ValueError, match="budget=6 removes 6 of 6 layers"):
        plan_for(model[0], criterion="math", budget=6)

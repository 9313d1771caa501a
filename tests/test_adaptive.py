"""Greedy criteria: iterative similarity and output-aware (KL at the answer positions)."""

import math
from pathlib import Path

import pytest
import torch
from helpers import vlm_batch

from lmms_prune_plugin.core.adaptive import functional_order, iterative_order
from lmms_prune_plugin.core.capture import LayerCapture
from lmms_prune_plugin.core.criteria import CriterionOptions
from lmms_prune_plugin.core.planner import PruneOptions
from lmms_prune_plugin.core.stats import LayerStatistics
from lmms_prune_plugin.surgery.layers import decoder_layers_removed
from lmms_prune_plugin.testing.tiny import build_tiny_vlm, save_tiny_vlm, wrapper_kwargs

TASKS = str(Path(__file__).parent / "tasks")


class FakeModel:
    """measure() of a synthetic model: a layer's similarity drops when a neighbour is gone (it
    takes over the neighbour's work, which the one-shot ranking cannot see); the divergence
    adds up per-layer damage."""

    BASE = [0.1, 0.80, 0.85, 0.84, 0.83, 0.60, 0.72, 0.50]
    DAMAGE = [9.0, 0.5, 0.9, 0.1, 0.3, 0.2, 0.8, 0.4]

    def __init__(self):
        self.calls = []

    def __call__(self, domain, removed=(), outputs=False):
        removed = tuple(sorted(removed))
        self.calls.append((domain, removed, outputs))
        left = [i for i in range(len(self.BASE)) if i not in removed]
        sims = [self.BASE[i] - 0.1 * sum(abs(i - r) == 1 for r in removed) for i in left]
        div = sum(self.DAMAGE[r] for r in removed) * (2.0 if domain == "nonmath" else 1.0)
        return LayerStatistics(
            len(left), tuple(sims), 1, 1, divergence_sum=div, divergence_samples=1 if outputs else 0
        )

    def passes(self, outputs=None):
        return len({c for c in self.calls if outputs is None or c[2] == outputs})


def test_iterative_re_measures_after_each_removal():
    fake = FakeModel()
    order = iterative_order(fake, {"math": 1.0}, 8, 3, CriterionOptions())
    # One-shot: 2, 3, 4. Removing 2 drops 3 to 0.74, so 4 (0.83) goes next; that drops 5,
    # and 6 (0.72) beats 1 (0.70, its neighbour 2 gone).
    assert order == (2, 4, 6)
    assert [c[1] for c in fake.calls] == [(), (2,), (2, 4)]  # ceil(3 / 1) passes
    fake = FakeModel()
    order = iterative_order(fake, {"math": 1.0}, 8, 5, CriterionOptions(step=2))
    assert order[:4] == (2, 3, 4, 6) and len(order) == 5
    assert [c[1] for c in fake.calls] == [(), (2, 3), (2, 3, 4, 6)]  # ceil(5 / 2) passes


def test_iterative_changes_the_ranking_where_neighbours_matter():
    base = FakeModel.BASE
    one_shot = set(sorted(range(8), key=lambda i: (-base[i], -i))[:3])
    order = iterative_order(FakeModel(), {"math": 1.0}, 8, 3, CriterionOptions())
    assert one_shot == {2, 3, 4} and set(order) != one_shot


def test_greedy_orders_are_prefixes_and_respect_protected_layers():
    long = iterative_order(FakeModel(), {"math": 1.0}, 8, 5, CriterionOptions())
    assert iterative_order(FakeModel(), {"math": 1.0}, 8, 3, CriterionOptions()) == long[:3]
    protected = CriterionOptions(protected=(2, 3))
    assert not {2, 3} & set(iterative_order(FakeModel(), {"math": 1.0}, 8, 4, protected))
    f5 = functional_order(FakeModel(), {"math": 1.0}, 8, 4, CriterionOptions(candidates=0))
    assert (
        functional_order(FakeModel(), {"math": 1.0}, 8, 2, CriterionOptions(candidates=0)) == f5[:2]
    )
    with pytest.raises(ValueError, match="only 6 of 8 may be removed"):
        iterative_order(FakeModel(), {"math": 1.0}, 8, 7, protected)


def test_functional_removes_the_least_damaging_layer_and_counts_its_passes():
    fake = FakeModel()
    order = functional_order(fake, {"math": 1.0}, 8, 3, CriterionOptions(candidates=0))
    assert order == (3, 5, 4)  # the three smallest DAMAGE values, smallest first
    # 1 reference pass + 8 + 7 + 6 candidate passes, each a distinct removed set.
    assert fake.passes(outputs=True) == 1 + 8 + 7 + 6
    fake = FakeModel()
    order = functional_order(fake, {"math": 1.0}, 8, 3, CriterionOptions(candidates=2))
    assert fake.passes(outputs=True) == 1 + 3 * 2
    # Candidates are the two most similar remaining layers: 2 and 3 first, so 3 goes.
    assert order[0] == 3


def test_mixed_weights_the_domains_and_skips_a_zero_weight():
    fake = FakeModel()
    functional_order(fake, {"math": 1.0, "nonmath": 0.0}, 8, 1, CriterionOptions())
    assert {c[0] for c in fake.calls} == {"math"}
    fake = FakeModel()
    iterative_order(fake, {"math": 0.5, "nonmath": 0.5}, 8, 2, CriterionOptions())
    assert sorted(c[0] for c in fake.calls) == ["math", "math", "nonmath", "nonmath"]


def test_kl_at_the_answer_position_matches_a_forward_by_hand():
    model, processor = build_tiny_vlm("qwen2_5_vl", num_layers=4)
    batch = vlm_batch(processor)
    with torch.no_grad(), LayerCapture(model, record_answers=True) as ref:
        full = model(**batch).logits[:, -1].float().log_softmax(-1)  # left padding: last = answer
    assert len(ref.answers) == 2
    with torch.no_grad(), decoder_layers_removed(model, (2,)):
        with LayerCapture(model, reference=ref.answers) as cap:
            cut = model(**batch).logits[:, -1].float().log_softmax(-1)
    want = float((full.exp() * (full - cut)).sum(-1).sum())
    s = cap.statistics()
    assert s.divergence_samples == 2 and cap.compared == 2
    assert s.divergence_sum == pytest.approx(want, rel=1e-5) and want > 0
    with torch.no_grad(), LayerCapture(model, reference=ref.answers) as same:
        model(**batch)
    assert same.statistics().divergence_sum == pytest.approx(0.0, abs=1e-9)
    # Other samples than the reference saw are refused, not compared.
    other = vlm_batch(processor, ("Is it red?", "Which side is the circle on?"))
    with (
        torch.no_grad(),
        LayerCapture(model, reference=ref.answers),
        pytest.raises(ValueError, match="differ from the reference"),
    ):
        model(**other)


def test_per_sample_statistics_add_up_to_the_totals():
    model, processor = build_tiny_vlm("qwen2_5_vl", num_layers=4)
    with torch.no_grad(), LayerCapture(model, block_sizes=(1, 2), per_sample=True) as cap:
        model(**vlm_batch(processor))
    rows, total = cap.sample_statistics(), cap.statistics()
    assert len(rows) == 2 and all(r.samples == 1 for r in rows)
    summed = rows[0] + rows[1]
    assert summed.tokens == total.tokens and summed.last_tokens == 2
    assert summed.cos_sum == pytest.approx(total.cos_sum)
    assert summed.angular_last_sum[2] == pytest.approx(total.angular_last_sum[2])
    assert summed.norm_cos_sum == pytest.approx(total.norm_cos_sum)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM

    ckpt = save_tiny_vlm("qwen2_5_vl", tmp_path_factory.mktemp("ckpt") / "q", num_layers=4)

    def load():
        return PrunedVLM(pretrained=str(ckpt), budget=0, calib_math="prune_test_colours",
                         calib_nonmath="prune_test_colours_b", include_path=TASKS, calib_limit=4,
                         plan_cache=False, **wrapper_kwargs("qwen2_5_vl"))  # fmt: skip

    return load


def test_planner_runs_each_greedy_criterion_once_for_all_budgets(lm):
    first = lm()
    assert first.calibration_forwards == 0  # budget 0: nothing calibrated yet
    opts = [
        PruneOptions(criterion=c, budget=b) for c in ("iter_math", "func_math") for b in (1, 2, 3)
    ]
    plans = first.planner.plans(opts)
    samples = 4  # calib_limit; one forward per sample with this wrapper's batch size
    # iter_math to budget 3: removed sets (), (a,), (a,b) -> 3 passes. func_math (candidates 8,
    # all 4 layers): a reference pass of the unpruned model, then 4 + 3 + 2 candidates; the
    # unpruned similarity comes from iter_math's pass.
    assert first.calibration_forwards == samples * (3 + 1 + 4 + 3 + 2)
    by = {(o.criterion, o.budget): p for o, p in zip(opts, plans, strict=True)}
    for c in ("iter_math", "func_math"):
        order = by[(c, 3)].criterion_options["order"]
        for b in (1, 2, 3):
            assert by[(c, b)].removed == tuple(sorted(order[:b]))
            assert by[(c, b)].criterion_options["order"] == order[:b]
    # Same model, data and options: the same plans from a fresh planner; one budget alone
    # costs as much as its run inside the list.
    again = lm()
    alone = again.planner.plans([PruneOptions(criterion="func_math", budget=2)])
    assert alone[0].removed == by[("func_math", 2)].removed
    assert again.calibration_forwards == samples * (1 + 4 + 3)


def test_greedy_criteria_refuse_strategies_that_reorder_them(lm):
    planner = lm().planner
    with pytest.raises(
        ValueError, match="strategy='spaced' is not allowed with criterion='iter_math'"
    ):
        planner.check(PruneOptions(criterion="iter_math", budget=2, strategy="spaced"))
    planner.check(PruneOptions(criterion="iter_math", budget=2, strategy="uniform"))
    assert math.isfinite(planner.identity.num_layers)

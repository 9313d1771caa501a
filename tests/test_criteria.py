import math

import pytest

from lmms_prune_plugin.core.criteria import CriterionOptions, ranks
from lmms_prune_plugin.core.plugins import get_criterion
from lmms_prune_plugin.core.stats import LayerStatistics


def stats(sim, tokens=10, angular=None):
    return LayerStatistics(
        len(sim),
        tuple(s * tokens for s in sim),
        tokens,
        2,
        1,
        {n: tuple(a * tokens for a in v) for n, v in (angular or {}).items()},
    )


MATH = stats([0.5, 0.9, 0.7, 0.2])
NONMATH = stats([0.8, 0.1, 0.6, 0.3], tokens=30)
BOTH = {"math": MATH, "nonmath": NONMATH}


def test_domain_criteria_return_that_domains_similarity():
    assert get_criterion("math")(BOTH, 4).per_layer == pytest.approx((0.5, 0.9, 0.7, 0.2))
    assert get_criterion("nonmath")(BOTH, 4).per_layer == pytest.approx((0.8, 0.1, 0.6, 0.3))


def test_mixed_is_alpha_weighted():
    got = get_criterion("mixed")(BOTH, 4, CriterionOptions(alpha=0.25)).per_layer
    assert got == pytest.approx(
        tuple(0.25 * m + 0.75 * n for m, n in zip((0.5, 0.9, 0.7, 0.2), (0.8, 0.1, 0.6, 0.3)))
    )
    assert get_criterion("mixed")(BOTH, 4, CriterionOptions(alpha=1.0)).per_layer == pytest.approx(
        MATH.similarity()
    )


def test_mixed_rank_averages_ranks():
    # math ranks: [1, 3, 2, 0]; nonmath ranks: [3, 0, 2, 1]
    assert get_criterion("mixed_rank")(BOTH, 4).per_layer == pytest.approx((2.0, 1.5, 2.0, 0.5))


def test_ranks_share_ties():
    assert ranks([0.3, 0.1, 0.3, 0.2]) == [2.5, 0.0, 2.5, 1.0]


def test_shortgpt_pools_tokens_across_domains():
    # token-weighted: math has 10 tokens, nonmath 30
    want = tuple((10 * m + 30 * n) / 40 for m, n in zip((0.5, 0.9, 0.7, 0.2), (0.8, 0.1, 0.6, 0.3)))
    assert get_criterion("shortgpt")(BOTH, 4).per_layer == pytest.approx(want)
    assert get_criterion("shortgpt")({"math": MATH}, 4).per_layer == pytest.approx(
        MATH.similarity()
    )


def test_angular_blocks_from_captured_distances():
    s = stats([0.5, 0.9, 0.7, 0.2], angular={1: [0.4, 0.1, 0.2, 0.6], 2: [0.3, 0.05, 0.5]})
    opts = CriterionOptions(block_sizes=(2,), angular_tokens="all")
    out = get_criterion("angular")({"math": s}, 4, opts)
    assert out.per_layer == pytest.approx((0.6, 0.9, 0.8, 0.4))
    # The block from layer 0 is never a candidate (PruneMe's blocks start at layer 1).
    assert out.blocks[2] == pytest.approx((-math.inf, 0.95, 0.5))


def test_angular_without_n1_uses_each_layers_own_angle():
    out = get_criterion("angular")({"math": MATH}, 4)
    assert out.per_layer == pytest.approx(
        tuple(1 - math.acos(s) / math.pi for s in (0.5, 0.9, 0.7, 0.2))
    )


def test_last_and_random_need_no_calibration():
    assert get_criterion("last")({}, 5).per_layer == (0.0, 1.0, 2.0, 3.0, 4.0)
    a = get_criterion("random")({}, 6, CriterionOptions(seed=3)).per_layer
    assert a == get_criterion("random")({}, 6, CriterionOptions(seed=3)).per_layer
    assert a != get_criterion("random")({}, 6, CriterionOptions(seed=4)).per_layer


def test_criterion_needing_an_uncalibrated_domain_says_so():
    with pytest.raises(
        ValueError, match=r"criterion='nonmath' needs calibration on nonmath.*\['math'\]"
    ):
        get_criterion("nonmath")({"math": MATH}, 4)
    with pytest.raises(ValueError, match="criterion='shortgpt' needs calibration"):
        get_criterion("shortgpt")({}, 4)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "half", True, float("nan")])
def test_alpha_outside_unit_interval_is_rejected(alpha):
    with pytest.raises(ValueError, match=r"alpha=.* must be a number in \[0, 1\]"):
        CriterionOptions(alpha=alpha)


def test_unknown_criterion_lists_registered_names():
    with pytest.raises(
        ValueError,
        match="criterion='nope' is not registered; choose one of: angular, func_math, .*, last, math",
    ):
        get_criterion("nope")


def test_statistics_add_and_reject_mismatched_layers():
    total = MATH + stats([0.1, 0.1, 0.1, 0.1], tokens=10)
    assert total.tokens == 20 and total.similarity() == pytest.approx([0.3, 0.5, 0.4, 0.15])
    with pytest.raises(ValueError, match="3 and 4 layers"):
        stats([0.1, 0.2, 0.3]) + MATH
    assert LayerStatistics.from_dict(total.to_dict()) == total

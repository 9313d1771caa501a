import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmms_prune_plugin.core.criteria import Scores
from lmms_prune_plugin.core.plugins import get_strategy
from lmms_prune_plugin.core.strategies import StrategyOptions, max_spaced, resolve_budget

NAMES = ["topk", "spaced", "uniform", "contiguous"]


@st.composite
def problems(draw):
    n = draw(st.integers(2, 40))
    scores = draw(st.lists(st.floats(-1, 1, allow_nan=False), min_size=n, max_size=n))
    first = draw(st.integers(0, n // 3))
    last = draw(st.integers(0, n // 3))
    gap = draw(st.integers(1, 3))
    opts = StrategyOptions(min_gap=gap, protect_first=first, protect_last=last)
    eligible = list(range(first, n - last))
    budget = draw(st.integers(0, max(0, min(len(eligible), n - 1))))
    return Scores(tuple(scores)), budget, opts, eligible


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=150, deadline=None)
@given(problem=problems())
def test_selection_properties(name, problem):
    scores, budget, opts, eligible = problem
    if name == "spaced" and max_spaced(eligible, opts.min_gap) < budget:
        with pytest.raises(ValueError, match="min_gap"):
            get_strategy(name)(scores, budget, opts)
        return
    out = get_strategy(name)(scores, budget, opts)
    assert len(out) == budget
    assert len(set(out)) == budget and list(out) == sorted(out)
    assert all(i in eligible for i in out)  # in range and protected layers kept
    assert out == get_strategy(name)(scores, budget, opts)  # deterministic
    if name == "spaced":
        assert all(b - a >= opts.min_gap for a, b in zip(out, out[1:]))
    if name == "contiguous" and out:
        assert list(out) == list(range(out[0], out[0] + budget))


@settings(max_examples=100, deadline=None)
@given(problem=problems())
def test_topk_takes_the_highest_scores(problem):
    scores, budget, opts, eligible = problem
    out = get_strategy("topk")(scores, budget, opts)
    if out:
        rest = [scores.per_layer[i] for i in eligible if i not in out]
        assert min(scores.per_layer[i] for i in out) >= max(rest, default=-2)


def test_spaced_skips_neighbours_of_chosen_layers():
    scores = Scores((0.1, 0.9, 0.85, 0.8, 0.2, 0.7))
    assert get_strategy("topk")(scores, 3) == (1, 2, 3)
    assert get_strategy("spaced")(scores, 3) == (1, 3, 5)


def test_spaced_falls_back_to_exact_search_when_greedy_boxes_itself_in():
    # Greedy takes 1 first; then 0 and 2 are both its neighbours, yet {0, 2} is feasible.
    assert get_strategy("spaced")(Scores((0.5, 0.9, 0.5)), 2, StrategyOptions(min_gap=2)) == (0, 2)
    assert get_strategy("spaced")(Scores((0.8, 0.9, 0.8, 0.1)), 2) == (1, 3)


def test_uniform_spreads_through_depth_and_contiguous_uses_block_scores():
    assert get_strategy("uniform")(Scores((0.0,) * 12), 3) == (2, 6, 10)
    blocks = Scores((0.0,) * 6, {2: (0.1, 0.2, 0.9, 0.3, 0.0)})
    assert get_strategy("contiguous")(blocks, 2) == (2, 3)
    assert get_strategy("contiguous")(Scores((0.1, 0.2, 0.9, 0.8, 0.0, 0.0)), 2) == (2, 3)


def test_budget_fraction_and_count():
    assert resolve_budget(0.25, 12) == 3
    assert resolve_budget(6, 12) == 6
    assert resolve_budget(6.0, 12) == 6
    assert resolve_budget(0, 12) == 0


@pytest.mark.parametrize(
    "budget, message",
    [
        (-1, "must be >= 0"),
        (-0.5, "must be >= 0"),
        ("six", "give a layer count"),
        (None, "give a layer count"),
        (12, "at most 11 may be removed"),
        (2.5, "whole number"),
        (float("inf"), "give a layer count"),
        (True, "give a layer count"),
    ],
)
def test_bad_budgets_name_the_value(budget, message):
    with pytest.raises(
        ValueError,
        match=f"budget={budget!r}".replace("(", r"\(").replace(")", r"\)") + ".*" + message,
    ):
        resolve_budget(budget, 12)


def test_protected_layers_or_spacing_that_cannot_fit_the_budget():
    with pytest.raises(
        ValueError, match="only 4 of 8 may be removed with protect_first=2, protect_last=2"
    ):
        get_strategy("topk")(
            Scores((0.0,) * 8), 5, StrategyOptions(protect_first=2, protect_last=2)
        )
    with pytest.raises(ValueError, match="min_gap=3 is not allowed with budget 3"):
        get_strategy("spaced")(Scores((0.0,) * 6), 3, StrategyOptions(min_gap=3))
    with pytest.raises(ValueError, match="min_gap=-1"):
        StrategyOptions(min_gap=-1)


def test_unknown_strategy_lists_registered_names():
    with pytest.raises(
        ValueError,
        match="strategy='best' is not registered; choose one of: contiguous, spaced, topk, uniform",
    ):
        get_strategy("best")

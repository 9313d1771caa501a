"""Bootstrap intervals, the regime rule with intervals, and plan stability, on synthetic data
with known answers."""

import json

import numpy as np
import pytest

from lmms_prune_plugin.core.plan import ModelIdentity
from lmms_prune_plugin.core.planner import PruneOptions
from lmms_prune_plugin.core.stats import LayerStatistics, pool
from lmms_prune_plugin.tools.cli import main
from lmms_prune_plugin.tools.report import bootstrap_intervals, leaderboard, regimes_ci
from lmms_prune_plugin.tools.stability import bootstrap_plans, jaccard, mean_pairwise_jaccard

DOCS = 400


def docs(p, seed):
    """DOCS 0/1 results with success rate p (exactly round(p * DOCS) ones, shuffled)."""
    v = np.zeros(DOCS)
    v[: round(p * DOCS)] = 1
    np.random.default_rng(seed).shuffle(v)
    return v


def row(criterion, strategy, budget, math, gen):
    per = {"t_math": math, "t_general": gen}
    return {
        "model": "m", "criterion": criterion, "strategy": strategy, "budget": budget,
        "kept_layers": 12 - budget, "removed": list(range(budget)), "tasks": sorted(per),
        "metrics": {t: {"exact_match,none": float(v.mean())} for t, v in per.items()},
        "per_doc": {t: {"metric": "exact_match,none", "doc_ids": list(range(DOCS)),
                        "values": v.tolist()} for t, v in per.items()},
    }  # fmt: skip


def study():
    base = docs(0.9, 0)
    rows = [row("none", "none", 0, base, base)]
    # Budget 2: math+topk clearly best. Budget 4: the score-based methods differ in 2 of 400
    # documents (indistinguishable), random far below. Budget 6: uniform far ahead.
    rows += [row("math", "topk", 2, docs(0.85, 1), docs(0.85, 2)),
             row("nonmath", "topk", 2, docs(0.6, 3), docs(0.6, 4)),
             row("random", "topk", 2, docs(0.0, 5), docs(0.0, 6))]  # fmt: skip
    a, b = docs(0.7, 7), docs(0.7, 8)
    b2 = b.copy()
    b2[np.flatnonzero(b2 == 1)[:2]] = 0
    rows += [row("math", "topk", 4, a, b), row("nonmath", "topk", 4, a, b2),
             row("random", "topk", 4, docs(0.1, 9), docs(0.1, 10))]  # fmt: skip
    rows += [row("math", "topk", 6, docs(0.3, 11), docs(0.3, 12)),
             row("nonmath", "topk", 6, docs(0.32, 13), docs(0.3, 14)),
             row("last", "uniform", 6, docs(0.6, 15), docs(0.6, 16))]  # fmt: skip
    return rows


def test_intervals_cover_the_estimate_and_shrink_with_agreement():
    board = leaderboard(study())
    bootstrap_intervals(board, replicates=300)
    for r in board.records:
        lo, hi = r["overall_ci"]
        assert lo <= r["overall"] <= hi
        assert r["math_avg_ci"][0] <= r["math_avg"] <= r["math_avg_ci"][1]
    random2 = next(r for r in board.records if r["method"] == "random+topk" and r["budget"] == 2)
    assert random2["overall_ci"] == [0.0, 0.0]  # no variance without a single success
    unpruned = next(r for r in board.records if r["budget"] == 0)
    # 90% of 400 documents: the binomial standard error is 1.5 points; the 95% interval of
    # the mean of two tasks' scores is about +-2 points.
    width = unpruned["overall_ci"][1] - unpruned["overall_ci"][0]
    assert 2.5 < width < 6.0


def test_regimes_with_intervals_count_only_the_score_family():
    per = {p["budget"]: p for p in regimes_ci(leaderboard(study()), replicates=300)}
    assert per[2]["leader"] == "math+topk" and per[2]["tied_with_leader"] == []
    assert not per[2]["family_converged"] and per[2]["regime"] == "low"
    # random is far below, but it is not in the family: the score-based ones agree.
    assert per[4]["tied_with_leader"] == ["nonmath+topk"] and per[4]["family_converged"]
    assert per[4]["family"] == ["math+topk", "nonmath+topk"]
    assert per[4]["regime"] == "moderate"
    assert per[6]["leader"] == "uniform" and per[6]["spacing_leads"]
    assert per[6]["regime"] == "high"
    # With every method in the family, random keeps budget 4 from converging.
    every = {p["budget"]: p for p in regimes_ci(leaderboard(study()), replicates=300, family="all")}
    assert not every[4]["family_converged"] and every[4]["regime"] == "low"


def test_report_uses_intervals_when_rows_have_documents(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in study()))
    assert main(["report", str(path), "--out", str(tmp_path / "r"), "--bootstrap", "200"]) == 0
    data = json.loads((tmp_path / "r" / "leaderboard.json").read_text())
    assert [p["regime"] for p in data["regimes"]] == ["low", "moderate", "high"]
    assert all(r["overall_ci"] for r in data["rows"])
    assert "indistinguishable from the leader" in (tmp_path / "r" / "leaderboard.md").read_text()
    assert "±" in (tmp_path / "r" / "by_budget.md").read_text()


def test_jaccard_agreement():
    assert jaccard((1, 2), (2, 3)) == pytest.approx(1 / 3)
    assert mean_pairwise_jaccard([(1, 2), (1, 2), (1, 2)]) == 1.0
    # pairs: (a,a)=1, (a,b)=1/3 twice -> (1 + 2/3) / 3
    assert mean_pairwise_jaccard([(1, 2), (1, 2), (2, 3)]) == pytest.approx((1 + 2 / 3) / 3)


def sample(sims, tokens=4):
    return LayerStatistics(len(sims), tuple(s * tokens for s in sims), tokens, 1)


def test_bootstrap_plans_find_the_stable_and_the_unstable_layer():
    # Layer 3 is always the most similar; layers 1 and 2 swap second place between samples.
    rows = [sample([0.1, 0.8, 0.7, 0.95])] * 5 + [sample([0.1, 0.7, 0.8, 0.95])] * 5
    model = ModelIdentity("m", "A", "qwen2_vl", 4, "model.language_model.layers")
    total = pool(rows)
    assert total.cos_sum == pytest.approx(tuple(sum(r.cos_sum[i] for r in rows) for i in range(4)))
    out = bootstrap_plans(model, {"math": rows}, [PruneOptions(criterion="math", budget=2),
                                                  PruneOptions(criterion="math", budget=1)],
                          resamples=200)  # fmt: skip
    two, one = out
    assert one.frequency == (0.0, 0.0, 0.0, 1.0) and one.jaccard == 1.0
    assert two.frequency[3] == 1.0 and two.frequency[0] == 0.0
    assert 0.2 < two.frequency[1] < 0.8 and two.frequency[1] + two.frequency[2] == pytest.approx(
        1.0
    )
    assert 0.5 < two.jaccard < 1.0
    again = bootstrap_plans(model, {"math": rows}, [PruneOptions(criterion="math", budget=2)], 200)
    assert again[0] == two  # same seed, same resamples


def test_a_healed_row_of_a_score_free_strategy_is_its_own_method():
    from lmms_prune_plugin.tools.report import method

    row = {"budget": 4, "strategy": "uniform"}
    assert method(row | {"criterion": "last"}) == "uniform"
    assert method(row | {"criterion": "last+heal"}) == "uniform+heal"

"""The benchmark suite runs end to end in --quick mode and writes sane results; its statistics
give the known answers on synthetic data.

Only the structure, the statistics and the measurement logic are checked here; timing targets
belong to the benchmark's own output.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import stats
from benchmarks.compare import compare
from benchmarks.report import ratio_list

ROOT = Path(__file__).resolve().parent.parent


VERDICTS = {"met", "missed", "inconclusive"}


def _finite_positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def _interval(est) -> bool:
    """A well-formed estimate: finite, positive, lo <= value <= hi."""
    return (
        all(_finite_positive(est[k]) for k in ("value", "lo", "hi"))
        and est["lo"] <= est["value"] <= est["hi"]
        and est["n"] >= 3
    )


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # One thread: tiny models are latency-bound and a second thread only adds scheduling noise.
    cmd = [sys.executable, "-m", "benchmarks.run", "--quick", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_results_files_have_every_part(quick):
    res, md = quick
    assert res["mode"] == "quick" and res["schema"] == 3
    assert {"cpu", "cores", "torch", "torch_threads", "virtual_machine"} <= set(res["machine"])
    assert res["machine"]["torch_threads"] == 1  # fixed by --threads
    assert _finite_positive(res["cpu_s"]) and res["steal_s"] >= 0
    for part in (
        "calibration_cost",
        "pruning_speedup",
        "plan_cache",
        "sweep",
        "calibration_e2e",
        "heal_prep",
    ):
        assert res[part], part
        assert res["section_s"][part] > 0
    assert len(res["targets"]) == 8 and all(t["verdict"] in VERDICTS for t in res["targets"])
    timed = [t for t in res["targets"] if "clock" in t]
    assert len(timed) == 5 and all(
        t["clock"] == "cpu" and t["wall_verdict"] in VERDICTS for t in timed
    )
    assert md.startswith("# lmms-prune benchmarks")
    for heading in (
        "## Targets",
        "## 1. Calibration cost",
        "## 2. Speed-up from pruning",
        "## 3. Load time",
        "## 4. Calibration passes",
        "## 5.",
        "## 6.",
    ):
        assert heading in md
    assert res["machine"]["cpu"] in md and res["machine"]["torch"] in md
    assert "mode: quick" in md and res["date"] in md and "95% interval" in md


def test_every_ratio_has_intervals_on_both_clocks(quick):
    ratios = ratio_list(quick[0])
    # 3 lengths x 2; prefill and decode at k=2, each over both ideals; A/A; load; calibration end
    # to end at batch 1 and 16 on two models; teacher answers batched
    assert len(ratios) == 2 * 3 + 2 * 2 + 1 + 1 + 2 * 2 + 1
    for r in ratios:
        for clock in ("cpu", "wall"):
            est = r["est"][clock]
            # A median of fewer than 6 rounds has no 95% interval (the hidden-states reference,
            # timed in 3 rounds); groups of rounds always have one.
            if est["n"] >= 6 or est.get("groups"):
                assert _interval(est), (r["key"], clock)
            else:
                assert r["key"].startswith("hidden states") and not math.isfinite(est["lo"])


def test_rounds_are_paired_and_bounded(quick):
    res = quick[0]
    for t in [r["time"] for r in res["calibration_cost"]["rows"]] + [
        res["pruning_speedup"]["prefill"]["time"],
        res["pruning_speedup"]["decode"]["time"],
        res["plan_cache"]["time"],
    ]:
        groups = t["groups"]
        assert 3 * groups <= t["rounds"] <= 30 * groups
        assert set(t["stopped"].split(", ")) <= {"precision", "time cap", "max rounds"}
        for name, wall in t["wall_s"].items():
            cpu = t["cpu_s"][name]
            assert len(wall) == len(cpu) and all(w > 0 and c >= 0 for w, c in zip(wall, cpu))


def test_calibration_cost_ratios_memory_and_correctness(quick):
    cal = quick[0]["calibration_cost"]
    rows = cal["rows"]
    assert [r["seq_len"] for r in rows] == sorted(r["seq_len"] for r in rows) and len(rows) >= 2
    for r in rows:
        assert (
            _interval(r["ratio_capture"]["cpu"]) and r["ratio_hidden_states"]["wall"]["value"] > 0
        )
        # the reference is timed in the first rounds only, the target pair in every round
        n = r["time"]["variants"]
        assert n["capture"]["n"] == n["plain"]["n"] == r["time"]["rounds"]
        assert 3 <= n["hidden_states"]["n"] <= n["plain"]["n"]
        assert all(math.isfinite(v) for v in r["peak_mb"].values())
        assert _finite_positive(r["peak_mb"]["plain"])
    # Keeping every hidden state costs memory that grows with the sequence length.
    extra = [r["extra_mb"]["hidden_states"] for r in rows]
    assert extra[-1] > extra[0]
    assert extra[-1] > 0.25 * rows[-1]["expected_hidden_states_mb"]
    assert cal["correctness"]["ok"] and cal["correctness"]["max_abs_diff"] <= 1e-4
    assert cal["memory_method"]


def test_pruning_speedup_rows(quick):
    pr = quick[0]["pruning_speedup"]
    L = pr["model"]["num_layers"]
    for phase in ("prefill", "decode"):
        rows = pr[phase]["rows"]
        assert rows[0]["k"] == 0 and rows[0]["speedup"]["cpu"]["value"] == pytest.approx(1.0)
        for r in rows:
            assert _interval(r["speedup"]["cpu"]) and _finite_positive(r["seconds"])
            assert r["ratio_to_ideal_decoder"]["cpu"]["value"] == pytest.approx(
                r["speedup"]["cpu"]["value"] / r["ideal_decoder"]
            )
            assert r["ideal_decoder"] == pytest.approx(L / (L - r["k"]))
            assert 1.0 <= r["ideal_model"] <= r["ideal_decoder"] + 1e-9
            # The fixed part can only lower the ceiling below the decoder ideal.
            assert 0.0 < r["ceiling"]["cpu"]["value"] <= 1.0 + 1e-9
            assert _interval(r["ratio_to_ideal_model"]["cpu"])
    # Every variant decoded exactly the requested number of tokens in every round.
    dec = pr["decode"]
    # Both phases ran on separately allocated weights, one group of rounds each.
    for phase in ("prefill", "decode"):
        assert pr["allocations"] == pr[phase]["time"]["groups"] == 2
        assert sorted(set(pr[phase]["time"]["round_groups"])) == [0, 1]
        assert all(r["speedup"]["cpu"]["groups"] == 2 for r in pr[phase]["rows"])
    assert set(dec["tokens_generated"]) == {"k=0", "k=2", "k=0 (A/A)", "no layers"}
    assert all(v == [dec["new_tokens"]] for v in dec["tokens_generated"].values())
    assert _interval(dec["aa_control"]["cpu"])


def test_plan_cache_and_sweep(quick):
    res = quick[0]
    pc = res["plan_cache"]
    assert _interval(pc["ratio"]["cpu"]) and pc["cached_calibration_forwards"] == 0
    assert len(pc["removed"]) == 2 and pc["profile"]["own_functions_ms"]
    sw = res["sweep"]
    assert sw["cells"] == 40
    samples = sum(sw["samples_per_domain"].values())
    assert sw["sweep"]["calibrator_forwards"] == sw["sweep"]["hooked_forwards"] == samples
    assert sw["passes_per_domain"] == 1.0 and sw["target"]["met"]
    assert sw["one_by_one"]["calibrator_forwards"] >= samples
    assert sw["naive_forwards"] > samples


def test_a_run_agrees_with_itself(quick):
    cmp = compare(quick[0], quick[0])
    assert cmp["agree"] and cmp["agree_wall"] and len(cmp["rows"]) == len(ratio_list(quick[0]))


# --------------------------------------------------------------------------- statistics
def test_constant_ratios_give_a_point_interval():
    den = [1.0, 3.0, 0.5, 2.0, 7.0, 4.0]
    est = stats.ratio_estimate([1.25 * d for d in den], den)
    assert est["value"] == pytest.approx(1.25)
    assert est["lo"] == pytest.approx(1.25) and est["hi"] == pytest.approx(1.25) and est["n"] == 6


def test_pairing_cancels_drift_shared_by_a_round():
    # Both variants slow down together (a neighbour's job): the per-round ratios stay put, while
    # the ratio of the unpaired medians would be anything.
    rng = np.random.default_rng(1)
    load = np.exp(rng.normal(0, 0.5, size=40))
    noise = np.exp(rng.normal(0, 0.01, size=40))
    est = stats.ratio_estimate(list(1.1 * load * noise), list(load))
    assert est["lo"] <= 1.1 <= est["hi"] and stats.relative_half_width(est) < 0.01


def test_median_interval_is_the_binomial_order_statistics():
    # n = 9: the 2nd and 8th values (coverage 1 - 2 * 10 / 512 = 0.961; the 3rd and 7th would
    # cover 0.820). Below 6 values no pair covers 95%: no interval, so no verdict.
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0]
    assert stats.median_interval(values) == (2.0, 8.0)
    assert stats.median_interval(values, level=0.80) == (3.0, 7.0)
    assert stats.median_interval(values[:6]) == (1.0, 9.0)
    assert all(math.isnan(x) for x in stats.median_interval(values[:5]))
    est = stats.estimate(values[:5])
    assert est["value"] == 5.0 and stats.verdict(est, 100.0, at_most=True) == stats.INCONCLUSIVE


@pytest.mark.parametrize("n", [6, 7, 9, 20])
def test_median_interval_covers_the_true_median_at_least_95_percent(n):
    # The percentile bootstrap covers 75-94% at these sizes; the exact interval holds 95% at
    # every n, for any continuous distribution (here a skewed one).
    rng = np.random.default_rng(n)
    hits = 0
    for _ in range(2000):
        lo, hi = stats.median_interval(
            list(1.1 * np.exp(rng.exponential(0.1, size=n) - 0.1 * math.log(2)))
        )
        hits += lo <= 1.1 <= hi
    assert hits / 2000 >= 0.94


def test_group_interval_covers_when_groups_differ():
    # Five allocations whose level differs (sd 2%) more than the rounds within one (sd 0.2%):
    # Student's t over the groups' medians covers the mean level in about 95% of runs; pooling
    # the rounds as if independent would cover far less.
    rng = np.random.default_rng(7)
    hits = pooled_hits = 0
    for _ in range(1000):
        levels = 0.9 * np.exp(rng.normal(0, 0.02, size=5))
        values = np.concatenate([lv * np.exp(rng.normal(0, 0.002, size=6)) for lv in levels])
        groups = np.repeat(np.arange(5), 6)
        est = stats.estimate(list(values), groups=list(groups))
        hits += est["lo"] <= 0.9 <= est["hi"]
        lo, hi = stats.median_interval(list(values))
        pooled_hits += lo <= 0.9 <= hi
    assert 0.92 <= hits / 1000 <= 0.98 and pooled_hits / 1000 < 0.75


def test_interval_narrows_with_more_rounds():
    rng = np.random.default_rng(4)
    x = list(np.exp(rng.normal(0, 0.05, size=200)))
    few, many = stats.estimate(x[:8]), stats.estimate(x)
    assert stats.relative_half_width(many) < stats.relative_half_width(few)
    assert stats.precise_enough([many], 0.02) and not stats.precise_enough([few, many], 0.005)


def test_verdicts_need_the_whole_interval():
    def est(lo, hi):
        return {"value": (lo + hi) / 2, "lo": lo, "hi": hi, "n": 10}

    assert stats.verdict(est(1.00, 1.05), 1.10, at_most=True) == stats.MET
    assert stats.verdict(est(1.05, 1.15), 1.10, at_most=True) == stats.INCONCLUSIVE
    assert stats.verdict(est(1.12, 1.20), 1.10, at_most=True) == stats.MISSED
    assert stats.verdict(est(0.92, 1.00), 0.90, at_most=False) == stats.MET
    assert stats.verdict(est(0.85, 0.95), 0.90, at_most=False) == stats.INCONCLUSIVE
    assert stats.verdict(est(0.70, 0.85), 0.90, at_most=False) == stats.MISSED
    assert stats.verdict(est(math.nan, 1.0), 0.90, at_most=False) == stats.INCONCLUSIVE


def test_scale_agreement_and_pairing():
    e = {"value": 2.0, "lo": 1.0, "hi": 4.0, "n": 5}
    assert stats.scale(e, 0.5) == {"value": 1.0, "lo": 0.5, "hi": 2.0, "n": 5}
    assert stats.relative_half_width(e) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        stats.paired_ratios([1.0, 2.0], [1.0])


def test_two_runs_agree_within_their_half_widths_in_quadrature():
    def est(value, rel):
        return {"value": value, "lo": value / (1 + rel), "hi": value * (1 + rel), "n": 10}

    # 2% apart, each +-2%: within sqrt(2) * 2% = 2.8%; 4% apart overlaps but disagrees.
    assert stats.agree(est(1.00, 0.02), est(1.02, 0.02))
    a, b = est(1.00, 0.02), est(1.04, 0.02)
    assert a["hi"] >= b["lo"] and not stats.agree(a, b) and not stats.agree(b, a)
    assert (
        stats.agree(est(1.0, 0.02), {"value": 1.2, "lo": math.nan, "hi": math.nan, "n": 3}) is None
    )


def test_whole_model_ideal_and_ceiling_on_an_exactly_linear_model():
    """T(k) = F + b (L - k) exactly: pruning gives all the whole-model ideal allows (share 1),
    and the ceiling is the whole-model ideal over L / (L - k), below 1 as soon as F > 0."""
    from benchmarks.pruning_speedup import ceiling_shares, model_ideal_shares

    L, k = 12, 8
    fixed = [2.0, 4.0, 1.0]  # a different machine speed each round
    per_layer = [1.0, 2.0, 0.5]
    t0 = [f + b * L for f, b in zip(fixed, per_layer)]
    tk = [f + b * (L - k) for f, b in zip(fixed, per_layer)]
    share = (L - k) / L
    assert model_ideal_shares(t0, tk, fixed, share) == pytest.approx([1.0, 1.0, 1.0])
    # ceiling = (T0 / Tk) / (L / (L - k)): 14/6 / 3 in round one (F/b = 2 in every round)
    assert ceiling_shares(t0, fixed, share) == pytest.approx([14 / 18] * 3)
    # With nothing fixed the ceiling is the decoder ideal itself; a slower pruned model is below it.
    assert ceiling_shares([12.0], [0.0], share) == pytest.approx([1.0])
    assert model_ideal_shares([12.0], [8.0], [0.0], share) == pytest.approx([0.5])


def test_grouped_rounds_widen_the_interval_to_cover_every_group():
    """Two allocations whose rounds are tight around different values: the groups' interval
    covers both levels, centred on their geometric mean."""
    rng = np.random.default_rng(1)
    a = list(1.00 + 0.002 * rng.standard_normal(8))
    b = list(1.06 + 0.002 * rng.standard_normal(8))
    pooled = stats.estimate(a + b)
    grouped = stats.estimate(a + b, groups=[0] * 8 + [1] * 8)
    assert grouped["groups"] == 2 and "groups" not in pooled
    assert grouped["value"] == pytest.approx(math.sqrt(np.median(a) * np.median(b)))
    assert grouped["lo"] <= np.median(a) and grouped["hi"] >= np.median(b)
    # One label for everything is the one-group interval; labels must match the values.
    assert stats.estimate(a, groups=[0] * 8) == stats.estimate(a)
    with pytest.raises(ValueError, match="7 group labels for 8 values"):
        stats.estimate(a, groups=[0] * 7)
    with pytest.raises(ValueError, match="7 group labels for 8 values"):
        stats.estimate(a, groups=[0] * 4 + [1] * 3)


def test_concatenated_timings_keep_pairs_and_label_groups():
    from benchmarks.common import Timings

    one = Timings({"x": [1.0, 2.0], "y": [2.0, 4.0]}, {"x": [1.0, 2.0], "y": [2.0, 4.0]}, rounds=2)
    two = Timings({"x": [3.0], "y": [9.0]}, {"x": [3.0], "y": [9.0]}, rounds=1)
    both = Timings.concat([one, two])
    assert both.rounds == 3 and both.groups == [0, 0, 1]
    assert both.cpu["y"] == [2.0, 4.0, 9.0]
    # geometric mean of the groups' medians: sqrt(2 * 3)
    assert (
        both.ratio("y", "x")["value"] == pytest.approx(6**0.5)
        and both.ratio("y", "x")["groups"] == 2
    )
    with pytest.raises(ValueError, match="not timed in every round"):
        Timings.concat([one, Timings({"x": [1.0], "y": []}, {"x": [1.0], "y": []}, rounds=1)])


def test_the_shipped_stability_files_compare_the_shipped_runs():
    """stability.md and stability.json are the comparison of run1/ and the README's run, as
    benchmarks.compare makes it from those files now."""
    from benchmarks.compare import render

    results = ROOT / "benchmarks" / "results"
    runs = [json.loads((results / p).read_text()) for p in ("run1/results.json", "results.json")]
    cmp = compare(*runs)
    shipped = json.loads((results / "stability.json").read_text())
    assert [r["date"] for r in shipped["runs"]] == [r["date"] for r in runs]
    assert json.loads(json.dumps(cmp)) == shipped
    assert (results / "stability.md").read_text() == render(cmp)

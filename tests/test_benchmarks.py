"""The benchmark suite runs end to end in --quick mode and writes sane results.

Only the structure and the measurement logic are checked here; timing targets belong to the
benchmark's own output.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _finite_positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


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
    assert res["mode"] == "quick" and res["schema"] == 1
    assert {"cpu", "cores", "torch", "torch_threads"} <= set(res["machine"])
    for part in ("calibration_cost", "pruning_speedup", "plan_cache", "sweep"):
        assert res[part], part
        assert res["section_s"][part] > 0
    assert len(res["targets"]) == 7 and all(isinstance(t["met"], bool) for t in res["targets"])
    assert md.startswith("# lmms-prune benchmarks")
    for heading in (
        "## Targets",
        "## 1. Calibration cost",
        "## 2. Speed-up from pruning",
        "## 3. Load time",
        "## 4. Calibration passes",
    ):
        assert heading in md
    assert res["machine"]["cpu"] in md and res["machine"]["torch"] in md


def test_calibration_cost_ratios_memory_and_correctness(quick):
    cal = quick[0]["calibration_cost"]
    rows = cal["rows"]
    assert [r["seq_len"] for r in rows] == sorted(r["seq_len"] for r in rows) and len(rows) >= 2
    for r in rows:
        assert _finite_positive(r["ratio_capture"]) and _finite_positive(r["ratio_hidden_states"])
        assert all(_finite_positive(t["median_s"]) for t in r["time"].values())
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
        assert rows[0]["k"] == 0 and rows[0]["speedup"] == pytest.approx(1.0)
        for r in rows:
            assert _finite_positive(r["speedup"]) and _finite_positive(r["seconds"])
            assert r["ideal_decoder"] == pytest.approx(L / (L - r["k"]))
            assert 1.0 <= r["ideal_model"] <= r["ideal_decoder"] + 1e-9


def test_plan_cache_and_sweep(quick):
    res = quick[0]
    pc = res["plan_cache"]
    assert _finite_positive(pc["ratio"]) and pc["cached_calibration_forwards"] == 0
    assert len(pc["removed"]) == 2 and pc["profile"]["own_functions_ms"]
    sw = res["sweep"]
    assert sw["cells"] == 40
    samples = sum(sw["samples_per_domain"].values())
    assert sw["sweep"]["calibrator_forwards"] == sw["sweep"]["hooked_forwards"] == samples
    assert sw["passes_per_domain"] == 1.0 and sw["target"]["met"]
    assert sw["one_by_one"]["calibrator_forwards"] >= samples
    assert sw["naive_forwards"] > samples

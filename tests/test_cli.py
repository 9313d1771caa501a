"""lmms-prune rank / export / sweep / report on a tiny checkpoint, offline, in process."""

import csv
import json
from pathlib import Path

import pytest
import torch
from helpers import vlm_batch
from PIL import Image

from lmms_prune_plugin.core.plan import PrunePlan
from lmms_prune_plugin.testing.tiny import save_tiny_vlm, wrapper_kwargs
from lmms_prune_plugin.tools.cli import main

TASKS = str(Path(__file__).parent / "tasks")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_vlm("qwen2_5_vl", tmp_path_factory.mktemp("ckpt") / "q", num_layers=6)


def common(ckpt, limit=8):
    margs = ",".join(
        f"{k}={v}" for k, v in ({"pretrained": ckpt} | wrapper_kwargs("qwen2_5_vl")).items()
    )
    return [
        "--model_args",
        margs,
        "--calib_math",
        "prune_test_colours",
        "--calib_nonmath",
        "prune_test_colours_b",
        "--include_path",
        TASKS,
        "--calib_limit",
        str(limit),
    ]


def png_size(path):
    with Image.open(path) as im:
        return im.size


def test_rank_prints_the_table_and_writes_plans_and_plot(ckpt, tmp_path, capsys):
    assert main(["rank", *common(ckpt), "--budget", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "s_math" in out and "s_nonmath" in out and "angular" in out
    assert len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) == 6
    plans = {p.stem: PrunePlan.load(p) for p in (tmp_path / "plans").glob("*.json")}
    assert {"math", "nonmath", "mixed", "shortgpt", "angular", "last", "random"} <= set(plans)
    assert all(len(p.removed) == 2 for p in plans.values())
    assert plans["last"].removed == (4, 5)
    assert png_size(tmp_path / "layer_scores.png") == (1100, 715)


def test_export_loads_with_plain_transformers_and_lmms_eval_wrappers(ckpt, tmp_path):
    from lmms_eval.models import get_model
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM

    out = tmp_path / "export"
    assert (
        main(["export", *common(ckpt), "--criterion", "math", "--budget", "2", "--out", str(out)])
        == 0
    )
    plan = PrunePlan.load(out / "plan.json")
    assert (out / "model.safetensors").exists() and "removed text-decoder layers" in (
        out / "README.md"
    ).read_text()
    text_cfg = AutoConfig.from_pretrained(out).get_text_config()
    assert text_cfg.num_hidden_layers == 4 and len(text_cfg.layer_types) == 4

    processor = AutoProcessor.from_pretrained(out)
    batch = vlm_batch(processor)
    exported = AutoModelForImageTextToText.from_pretrained(out).eval()
    reference = plan.apply_(AutoModelForImageTextToText.from_pretrained(ckpt).eval())
    with torch.no_grad():
        torch.testing.assert_close(
            exported(**batch).logits, reference(**batch).logits, rtol=0, atol=0
        )

    # lmms-eval's own wrapper on the export == pruned_vlm with the same plan
    own = get_model("qwen2_5_vl")(pretrained=str(out), **wrapper_kwargs("qwen2_5_vl"))
    ours = PrunedVLM(
        pretrained=str(ckpt), plan=str(out / "plan.json"), **wrapper_kwargs("qwen2_5_vl")
    )
    with torch.no_grad():
        a = own.model(**batch.to(own.model.dtype)).logits
        b = ours.hf_model(**batch.to(ours.hf_model.dtype)).logits
    assert torch.equal(a, b)


def test_export_refuses_to_replace_a_different_export(ckpt, tmp_path, capsys):
    out = tmp_path / "export"
    assert (
        main(["export", *common(ckpt), "--criterion", "math", "--budget", "1", "--out", str(out)])
        == 0
    )
    before = (out / "plan.json").read_text()
    assert (
        main(["export", *common(ckpt), "--criterion", "last", "--budget", "2", "--out", str(out)])
        == 2
    )
    assert "already holds a different export" in capsys.readouterr().err
    assert (out / "plan.json").read_text() == before
    assert (
        main(
            [
                "export",
                *common(ckpt),
                "--criterion",
                "last",
                "--budget",
                "2",
                "--out",
                str(out),
                "--force",
            ]
        )
        == 0
    )
    assert PrunePlan.load(out / "plan.json").removed == (4, 5)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    assert main(["export", *common(ckpt), "--budget", "1", "--out", str(tmp_path / "other")]) == 2
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"


def test_sweep_resumes_and_calibrates_once_per_domain(ckpt, tmp_path, capsys):
    out = tmp_path / "sweep.jsonl"
    args = [
        "sweep",
        *common(ckpt),
        "--plan_cache",
        "false",
        "--criteria",
        "math,nonmath,mixed,mixed_rank,shortgpt,angular,last,random",
        "--budgets",
        "1,2,3,4,5",
        "--tasks",
        "prune_test_colours",
        "--limit",
        "2",
        "--out",
        str(out),
    ]
    # Stop after part of the cells to show resuming: evaluate a 3-budget sweep first.
    first = args.copy()
    first[first.index("1,2,3,4,5")] = "1,2,3"
    assert main(first) == 0
    assert (
        "calibration forwards: 16" in capsys.readouterr().out
    )  # 8 math + 8 non-math: one pass each
    assert len(out.read_text().splitlines()) == 24
    assert main(args) == 0
    msg = capsys.readouterr().out
    assert "sweep: 40 cells, 16 evaluated, 24 already in" in msg
    assert "calibration forwards: 16" in msg  # 8 criteria x 5 budgets, still one pass per domain
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 40 and len({(r["criterion"], r["budget"]) for r in rows}) == 40
    assert all(len(r["removed"]) == r["budget"] for r in rows)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def row(model="m", criterion="math", strategy="topk", budget=2, math=0.5, gen=0.7):
    return {
        "model": model,
        "criterion": criterion,
        "strategy": strategy,
        "budget": budget,
        "kept_layers": 12 - budget,
        "removed": list(range(budget)),
        "tasks": ["demo_math", "demo_general"],
        "metrics": {
            "demo_math": {"exact_match,none": math},
            "demo_general": {"exact_match,none": gen},
        },
    }


def test_report_numbers_equal_the_sweep_rows(tmp_path):
    rows = [row(budget=0, criterion="none", strategy="none", math=0.9, gen=0.95)]
    for b, (m1, m2) in {2: (0.8, 0.6), 4: (0.5, 0.49), 6: (0.2, 0.3)}.items():
        rows += [
            row(criterion="math", budget=b, math=m1, gen=0.7),
            row(criterion="nonmath", strategy="spaced", budget=b, math=m2, gen=0.7),
        ]
    write_rows(tmp_path / "s.jsonl", rows)
    assert main(["report", str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "r")]) == 0
    data = json.loads((tmp_path / "r" / "leaderboard.json").read_text())
    assert data["math_tasks"] == ["demo_math"] and data["general_tasks"] == ["demo_general"]
    got = {(r["method"], r["budget"]): r for r in data["rows"]}
    for src in rows:
        rec = got[
            (
                "unpruned" if src["budget"] == 0 else f"{src['criterion']}+{src['strategy']}",
                src["budget"],
            )
        ]
        assert rec["demo_math"] == pytest.approx(
            100 * src["metrics"]["demo_math"]["exact_match,none"]
        )
        assert rec["overall"] == pytest.approx(
            50
            * (
                src["metrics"]["demo_math"]["exact_match,none"]
                + src["metrics"]["demo_general"]["exact_match,none"]
            )
        )
    regimes = {p["budget"]: p for p in data["regimes"]}
    assert regimes[2]["spread"] == pytest.approx(10.0) and regimes[2]["leader"] == "math+topk"
    assert [regimes[b]["regime"] for b in (2, 4, 6)] == ["low", "moderate", "high"]
    with open(tmp_path / "r" / "leaderboard.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert "| math+topk | 2 |" in (tmp_path / "r" / "leaderboard.md").read_text()
    pivot = (tmp_path / "r" / "by_budget.md").read_text()
    assert "| method | budget 0 | budget 2 | budget 4 | budget 6 |" in pivot
    # budget 0 is the unpruned model; then math_avg / general_avg of each cell, in points
    assert "| nonmath+spaced | 90.0 / 95.0 | 60.0 / 70.0 | 49.0 / 70.0 | 30.0 / 70.0 |" in pivot
    assert png_size(tmp_path / "r" / "accuracy_vs_budget.png") == (1430, 506)
    # nothing is overwritten without --force
    assert main(["report", str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "r")]) == 2
    assert main(["report", str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "r"), "--force"]) == 0


def test_report_splits_the_demo_tasks_into_math_and_general():
    from lmms_prune_plugin.tools.report import is_math_task

    assert is_math_task("prune_demo_math") and is_math_task("mathvista_testmini")
    assert not is_math_task("prune_demo_nonmath") and not is_math_task("prune_calib_nonmath")
    assert not is_math_task("mmmu_val")
    assert is_math_task("prune_demo_nonmath", ["prune_demo_nonmath"])  # an explicit list wins


def test_report_rejects_bad_sweep_files(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["report", str(empty), "--out", str(tmp_path / "a")]) == 2
    assert "holds no rows" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row()) + "\n{oops\n")
    assert main(["report", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "bad.jsonl:2: not a JSON line" in capsys.readouterr().err
    mixed = tmp_path / "mixed.jsonl"
    write_rows(mixed, [row(model="a"), row(model="b")])
    assert main(["report", str(mixed), "--out", str(tmp_path / "c")]) == 2
    assert "mixes rows of 2 models" in capsys.readouterr().err
    assert main(["report", str(mixed), "--out", str(tmp_path / "c"), "--allow-mixed"]) == 0
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_sweep_rejects_unknown_tasks_before_loading(ckpt, tmp_path, capsys):
    assert (
        main(
            ["sweep", *common(ckpt), "--tasks", "no_such_task", "--out", str(tmp_path / "s.jsonl")]
        )
        == 2
    )
    assert "tasks=['no_such_task']: not known to lmms-eval" in capsys.readouterr().err
    assert not (tmp_path / "s.jsonl").exists()


def test_sweep_cells_share_the_baseline_and_the_score_free_strategy():
    from lmms_prune_plugin.tools.sweep import Cell, plan_cells

    cells = plan_cells(["math", "nonmath"], [None, "uniform", "spaced"], [0, 2, 4])
    assert cells[0] == Cell("none", "none", 0)
    assert [c for c in cells if c.strategy == "uniform"] == [
        Cell("last", "uniform", 2),
        Cell("last", "uniform", 4),
    ]
    assert len(cells) == 1 + 2 + 2 * 2 * 2
    with pytest.raises(ValueError, match="budget=-1"):
        plan_cells(["math"], [None], [-1])


def test_sweep_plans_every_cell_before_evaluating_any(ckpt, tmp_path, capsys):
    # 6 layers: spaced with min_gap=2 can remove at most 3, so budget 4 cannot be planned.
    out = tmp_path / "s.jsonl"
    args = ["sweep", *common(ckpt), "--plan_cache", "false", "--criteria", "math",
            "--strategies", "default,spaced", "--budgets", "0,1,4", "--tasks",
            "prune_test_colours", "--limit", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    assert "min_gap=2 is not allowed with budget 4" in capsys.readouterr().err
    assert not out.exists()  # not even the feasible cells were evaluated

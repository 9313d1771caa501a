"""Other harnesses' result folders as report rows: lm-eval output folders and VLMEvalKit model
folders made by hand in the shapes those harnesses write, what is refused, and one report over
all three harnesses."""

import json
from pathlib import Path

import pytest

from lmms_prune_plugin.core.plan import ModelIdentity, PrunePlan
from lmms_prune_plugin.tools.cli import main
from lmms_prune_plugin.tools.harness_rows import read_source

MODEL = "org/tiny-vlm"
SCORES = (0.1, 0.9, 0.8, 0.95, 0.93, 0.99, 0.97, 0.995, 0.98, 0.97, 0.94, 0.8)
DATE = "2026-01-02T03-04-05.678901"


def plan(budget=4, removed=(5, 7, 8, 9), criterion="math", strategy="topk"):
    identity = ModelIdentity(
        MODEL, "Qwen2VLForConditionalGeneration", "qwen2_vl", 12, "model.language_model.layers"
    )
    if budget == 0:
        return PrunePlan(identity, "none", {}, "none", {}, 0, (), ())
    return PrunePlan(identity, criterion, {}, strategy, {}, budget, SCORES, tuple(removed))


def recorded(p: PrunePlan) -> dict:
    """What pruned_vlm writes into lm-eval's config.prune_plan."""
    from lmms_prune_plugin.harnesses.lmms_eval.results import summary

    return summary(p)


#: lm-eval's run settings in config, as pruned_vlm's run records them.
CONFIG = {
    "model": "pruned_vlm",
    "model_args": {"criterion": "math", "budget": 4},
    "batch_size": "16",
    "device": "cpu",
    "limit": None,
    "bootstrap_iters": 100000,
    "gen_kwargs": {},
    "random_seed": 0,
    "numpy_seed": 1234,
    "torch_seed": 1234,
    "fewshot_seed": 1234,
}


def lm_eval_results(scores: dict, prune_plan: dict | None, limit=None) -> dict:
    """An lm-eval 0.4.13 results file (evaluation_tracker.save_results_aggregated): leaf tasks
    and their group, each with alias, sample_len, metrics and their stderr."""
    results = {
        task: {
            "name": task,
            "alias": task,
            "sample_len": 200,
            "exact_match,none": v,
            "exact_match_stderr,none": 0.03,
            "exact_match_arith,none": v / 2,
            "exact_match_arith_stderr,none": 0.06,
        }
        for task, v in scores.items()
    }
    mean = sum(scores.values()) / len(scores)
    results["prune_demo"] = {
        "alias": "prune_demo",
        "name": "prune_demo",
        "sample_len": 400,
        "exact_match,none": mean,
        "exact_match_stderr,none": 0.02,
        "sample_count": {"exact_match,none": 400},
    }
    config = CONFIG | {"limit": limit}
    if prune_plan is not None:
        config["prune_plan"] = prune_plan
    return {
        "results": results,
        "groups": {"prune_demo": results["prune_demo"]},
        "group_subtasks": {"prune_demo": sorted(scores)},
        "versions": {t: 1.0 for t in scores},
        "n-shot": {t: 0 for t in scores},
        "config": config,
        "git_hash": None,
        "date": 1.0,
        "lm_eval_version": "0.4.13",
        "task_hashes": {},
        "model_source": "pruned_vlm",
        "model_name": "6v8uqx97",
        "model_name_sanitized": "6v8uqx97",
        "system_instruction": None,
        "system_instruction_sha": None,
        "fewshot_as_multiturn": True,
        "chat_template": "{{ messages }}",
        "chat_template_sha": "9e99",
    }


def lm_eval_folder(root: Path, p: PrunePlan | None, scores=None, record=True, **kw) -> Path:
    """``--output_path root``: lm-eval writes ``root/<model>/results_<date>.json``; the
    launcher writes the plan beside it."""
    scores = scores or {"prune_demo_math": 0.65, "prune_demo_nonmath": 0.9}
    run = root / "6v8uqx97"
    run.mkdir(parents=True)
    data = lm_eval_results(scores, recorded(p) if p is not None and record else None, **kw)
    (run / f"results_{DATE}.json").write_text(json.dumps(data, indent=2))
    if p is not None:
        p.save(run / "plan.json")
    return root


def acc_csv(path: Path, overall: float, categories: dict) -> None:
    head = ["split", "Overall", *categories]
    values = ["none", overall, *categories.values()]
    path.write_text(
        ",".join(f'"{h}"' for h in head) + "\n" + ",".join(f'"{v}"' for v in values) + "\n"
    )


def vlmeval_folder(
    work: Path, p: PrunePlan | None, name=None, scale=1.0, sub=None, scores=None
) -> Path:
    """``--work-dir work``: ``work/<name>/<name>_<dataset>_acc.csv`` (``sub``: in a run's
    timestamped subfolder), ``status.json`` and the launcher's ``plan.json``."""
    budget = p.budget if p is not None else 4
    name = name or f"lmms_prune_demo__criterion-math_budget-{budget}"
    folder = work / name
    where = folder / sub if sub else folder
    where.mkdir(parents=True)
    scores = scores or {"PruneDemo_Math": 0.655, "PruneDemo_Nonmath": 0.92}
    entries = {}
    for dataset, v in scores.items():
        acc_csv(where / f"{name}_{dataset}_acc.csv", v * scale, {"a": 0.5 * scale, "b": v * scale})
        entries[dataset] = {
            "status": "done",
            "judge_model": "exact_matching",
            "metrics": {"split=none|Overall": v * scale},
        }
    status = {"schema_version": "1.0", "model_name": name, "datasets": entries}
    (folder / "status.json").write_text(json.dumps(status))
    if p is not None:
        p.save(folder / "plan.json")
    return folder


# --------------------------------------------------------------------------- lm-eval
def test_an_lm_eval_output_folder_is_one_row_of_its_leaf_tasks(tmp_path):
    root = lm_eval_folder(tmp_path / "lm", plan())
    (row,) = read_source(root)
    assert row["harness"] == "lm-eval" and row["engine"] == "hf" and row["model"] == MODEL
    assert (row["criterion"], row["strategy"], row["budget"]) == ("math", "topk", 4)
    assert row["removed"] == [5, 7, 8, 9] and row["kept_layers"] == 8
    # the group and the non-metrics (alias, sample_len, stderr) are not scores
    assert row["metrics"] == {
        "prune_demo_math": {"exact_match,none": 0.65, "exact_match_arith,none": 0.325},
        "prune_demo_nonmath": {"exact_match,none": 0.9, "exact_match_arith,none": 0.45},
    }
    # the output folder, its model folder and the results file itself read alike
    run = root / "6v8uqx97"
    assert read_source(run) == [row]
    assert read_source(run / f"results_{DATE}.json")[0]["metrics"] == row["metrics"]


def test_lm_eval_log_samples_become_documents(tmp_path):
    root = lm_eval_folder(tmp_path / "lm", plan())
    for task, ones in (("prune_demo_math", 13), ("prune_demo_nonmath", 18)):
        lines = [
            {
                "doc_id": i,
                "filter": "none",
                "metrics": ["exact_match"],
                "exact_match": float(i < ones),
            }
            for i in range(20)
        ]
        path = root / "6v8uqx97" / f"samples_{task}_{DATE}.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    (row,) = read_source(root)
    doc = row["per_doc"]["prune_demo_nonmath"]
    assert doc["metric"] == "exact_match,none" and sum(doc["values"]) == 18
    assert doc["doc_ids"] == list(range(20))


def test_an_lm_eval_run_without_a_plan_is_read_only_when_it_says_budget_0(tmp_path):
    root = lm_eval_folder(tmp_path / "base", plan(budget=0))
    (root / "6v8uqx97" / "plan.json").unlink()  # the run itself says budget 0
    (row,) = read_source(root)
    assert (row["budget"], row["removed"], row["kept_layers"]) == (0, [], 12)
    pruned = lm_eval_folder(tmp_path / "pruned", plan())
    (pruned / "6v8uqx97" / "plan.json").unlink()
    with pytest.raises(ValueError) as err:
        read_source(pruned)
    assert f"{pruned / '6v8uqx97'} have no plan.json" in str(err.value)
    assert "budget=4 in its config" in str(err.value)
    plain = lm_eval_folder(tmp_path / "plain", None)  # a plain hf-multimodal run: unknown
    with pytest.raises(ValueError, match="no plan in its config"):
        read_source(plain)


def test_a_plan_that_is_not_the_run_s_is_refused(tmp_path):
    root = lm_eval_folder(tmp_path / "lm", plan())
    plan(removed=(1, 2, 3, 4)).save(root / "6v8uqx97" / "plan.json")  # another plan beside it
    with pytest.raises(ValueError) as err:
        read_source(root)
    msg = str(err.value)
    assert (
        "plan.json does not match the plan" in msg and "removed: plan.json has [1, 2, 3, 4]" in msg
    )
    assert "the run has [5, 7, 8, 9]" in msg


def test_lm_eval_runs_of_one_plan_join_and_a_task_twice_is_refused(tmp_path):
    root = lm_eval_folder(tmp_path / "lm", plan())
    other = lm_eval_results({"prune_gsm_demo": 0.4}, recorded(plan()))
    later = root / "6v8uqx97" / "results_2026-01-03T00-00-00.json"
    later.write_text(json.dumps(other))
    (row,) = read_source(root)
    assert sorted(row["metrics"]) == ["prune_demo_math", "prune_demo_nonmath", "prune_gsm_demo"]
    later.write_text(json.dumps(lm_eval_results({"prune_demo_math": 0.1}, recorded(plan()))))
    with pytest.raises(ValueError, match="task 'prune_demo_math' is in both"):
        read_source(root)


def test_damaged_result_files_are_named(tmp_path):
    root = lm_eval_folder(tmp_path / "lm", plan())
    samples = root / "6v8uqx97" / f"samples_prune_demo_math_{DATE}.jsonl"
    samples.write_text('{"doc_id": 0, "filter": "none", "exact_match": 1.0}\n{torn\n')
    with pytest.raises(ValueError, match=f"lm-eval samples {samples}:2: not a JSON line"):
        read_source(root)
    (root / "6v8uqx97" / f"results_{DATE}.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_source(root)
    folder = vlmeval_folder(tmp_path / "vlm", plan())
    binary = next(folder.glob("*_PruneDemo_Math_acc.csv"))
    binary.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=f"vlmeval results {binary}: not a CSV file"):
        read_source(folder)


# --------------------------------------------------------------------------- VLMEvalKit
@pytest.mark.parametrize("scale", [1.0, 100.0], ids=["0-1", "0-100"])
def test_a_vlmeval_model_folder_is_one_row_on_the_0_1_scale(tmp_path, scale):
    folder = vlmeval_folder(tmp_path / "work", plan(), scale=scale)
    (row,) = read_source(folder)
    assert row["harness"] == "vlmeval" and row["removed"] == [5, 7, 8, 9]
    assert row["metrics"]["PruneDemo_Math"]["Overall"] == pytest.approx(0.655)
    assert row["metrics"]["PruneDemo_Nonmath"]["Overall"] == pytest.approx(0.92)
    assert set(row["source"]["scale"].values()) == {"0-1" if scale == 1 else "0-100"}


def test_a_vlmeval_work_dir_and_a_timestamped_run_folder(tmp_path):
    work = tmp_path / "work"
    vlmeval_folder(work, plan(budget=0))
    vlmeval_folder(work, plan(), sub="T20260102-030405")  # results in the run's subfolder
    (work / "logs").mkdir()
    rows = read_source(work)
    assert sorted(r["budget"] for r in rows) == [0, 4]
    assert all(r["metrics"]["PruneDemo_Math"]["Overall"] == pytest.approx(0.655) for r in rows)


def test_vlmeval_refusals_name_the_folder(tmp_path):
    no_plan = vlmeval_folder(tmp_path / "a", None)
    with pytest.raises(ValueError, match=f"vlmeval results in {no_plan} have no plan.json"):
        read_source(no_plan)
    # the launcher's folder name says budget 4; a budget-2 plan there is another run's
    wrong = vlmeval_folder(tmp_path / "b", plan(), name="demo__criterion-math_budget-4")
    plan(budget=2, removed=(5, 7)).save(wrong / "plan.json")
    with pytest.raises(ValueError, match="plan.json has budget=2 but the folder was run with"):
        read_source(wrong)
    stale = vlmeval_folder(tmp_path / "c", plan())
    status = json.loads((stale / "status.json").read_text())
    status["datasets"]["PruneDemo_Math"]["metrics"]["split=none|Overall"] = 0.5
    (stale / "status.json").write_text(json.dumps(status))
    with pytest.raises(ValueError, match="status.json says 0.5: they are of different runs"):
        read_source(stale)
    foreign = vlmeval_folder(tmp_path / "d", plan())
    acc_csv(foreign / "other_model_PruneDemo_Math_acc.csv", 0.5, {})
    with pytest.raises(ValueError, match="other_model_PruneDemo_Math_acc.csv is not a result of"):
        read_source(foreign)


def test_an_unknown_folder_or_path_is_named(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError) as err:
        read_source(tmp_path / "notes")
    assert f"sweep={str(tmp_path / 'notes')!r} is a folder; give a sweep JSONL file" in str(
        err.value
    )
    with pytest.raises(ValueError, match="no such file or folder"):
        read_source(tmp_path / "missing")


# --------------------------------------------------------------------------- one report
def sweep_rows() -> list[dict]:
    row = {"model": MODEL, "tasks": ["prune_demo_math", "prune_demo_nonmath"], "kept_layers": 12}
    out = []
    for criterion, strategy, budget, math, gen in (
        ("none", "none", 0, 0.98, 0.95),
        ("math", "topk", 4, 0.64, 0.93),
        ("nonmath", "topk", 4, 0.5, 0.94),
    ):
        out.append(
            row
            | {
                "criterion": criterion,
                "strategy": strategy,
                "budget": budget,
                "removed": list(range(budget)),
                "kept_layers": 12 - budget,
                "metrics": {
                    "prune_demo_math": {"exact_match,none": math},
                    "prune_demo_nonmath": {"exact_match,none": gen},
                },
            }
        )
    return out


def test_one_report_over_three_harnesses(tmp_path, capsys):
    sweep = tmp_path / "sweep.jsonl"
    sweep.write_text("".join(json.dumps(r) + "\n" for r in sweep_rows()))
    lm = lm_eval_folder(tmp_path / "lm_eval", plan())
    work = tmp_path / "vlmeval"
    vlmeval_folder(work, plan(budget=0), scores={"PruneDemo_Math": 0.98, "PruneDemo_Nonmath": 0.95})
    vlmeval_folder(work, plan(), scale=100.0)
    argv = ["report", str(sweep), str(lm), str(work), "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    data = json.loads((tmp_path / "r" / "leaderboard.json").read_text())
    got = {(r["harness"], r["method"], r["budget"]): r for r in data["rows"]}
    assert {h for h, _, _ in got} == {"lmms-eval", "lm-eval", "vlmeval"}
    # the same method and budget from three harnesses: three rows side by side, not merged
    same = sorted(h for h, m, b in got if (m, b) == ("math+topk", 4))
    assert same == ["lm-eval", "lmms-eval", "vlmeval"]
    assert got["lm-eval", "math+topk", 4]["prune_demo_math"] == pytest.approx(65.0)
    assert got["lmms-eval", "math+topk", 4]["prune_demo_math"] == pytest.approx(64.0)
    assert got["vlmeval", "math+topk", 4]["PruneDemo_Math"] == pytest.approx(65.5)  # 65.5 of 100
    md = (tmp_path / "r" / "leaderboard.md").read_text()
    assert md.splitlines()[0].endswith("| engine | harness |")
    assert "| hf | lm-eval |" in md and "| hf | vlmeval |" in md and "| hf | lmms-eval |" in md
    assert "vlmeval: VLMEvalKit's *_acc.csv" in md
    assert {(p["harness"], p["budget"]) for p in data["regimes"]} == {
        ("lmms-eval", 4),
        ("lm-eval", 4),
        ("vlmeval", 4),
    }
    pivot = (tmp_path / "r" / "by_budget.md").read_text()
    assert "| math+topk [vlmeval] | 98.0 / 95.0 | 65.5 / 92.0 |" in pivot
    assert (tmp_path / "r" / "leaderboard.html").read_text().count("<tr") >= len(data["rows"])
    assert "no per-document results" in capsys.readouterr().err


def test_a_refused_input_writes_nothing(tmp_path, capsys):
    sweep = tmp_path / "sweep.jsonl"
    sweep.write_text("".join(json.dumps(r) + "\n" for r in sweep_rows()))
    bad = vlmeval_folder(tmp_path / "vlm", None)
    assert main(["report", str(sweep), str(bad), "--out", str(tmp_path / "r")]) == 2
    assert f"vlmeval results in {bad} have no plan.json" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()

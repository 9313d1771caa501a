"""The example recipes name benchmarks that lmms-eval 0.7.3 really has; the workflow is valid YAML."""

import re
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def task_names():
    from lmms_eval.tasks import TaskManager

    return set(TaskManager().all_tasks)


def test_recipe_tasks_exist_in_lmms_eval(task_names):
    text = (EXAMPLES / "recipes" / "tasks.sh").read_text()
    tasks = [t for line in re.findall(r"^\w+_TASKS=(.*)$", text, re.M) for t in line.split(",")]
    assert len(tasks) == 12
    assert [t for t in tasks if t not in task_names] == []


def test_calibration_sets_point_at_real_tasks(task_names):
    from lmms_prune_plugin.core.plugins import get_calibration_sets

    online = [s.task for s in get_calibration_sets().values() if not s.offline]
    assert online and [t for t in online if t not in task_names] == []


def test_workflow_publishes_the_leaderboard():
    wf = yaml.safe_load((EXAMPLES / "ci" / "leaderboard.yml").read_text())
    steps = wf["jobs"]["leaderboard"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "lmms-prune sweep" in runs and "GITHUB_STEP_SUMMARY" in runs
    assert any(s.get("uses", "").startswith("actions/upload-artifact") for s in steps)


def _recipe_vars(name):
    text = (EXAMPLES / "recipes" / name).read_text()
    return {k: v.split(",") for k, v in re.findall(r"^(\w+)=(\S+)$", text, re.M)}


def test_qwen3_vl_recipe_names_real_tasks_criteria_and_fractional_budgets(task_names):
    from lmms_prune_plugin.core.plugins import get_criteria
    from lmms_prune_plugin.core.strategies import resolve_budget

    v = _recipe_vars("tasks_qwen3_vl.sh")
    tasks = v["QWEN3_MATH_TASKS"] + v["QWEN3_GENERAL_TASKS"]
    assert len(tasks) == 13 and [t for t in tasks if t not in task_names] == []
    criteria = get_criteria()
    assert set(v["QWEN3_ONESHOT"] + v["QWEN3_GREEDY"]) == set(criteria)  # every criterion
    assert all(criteria[c].greedy for c in v["QWEN3_GREEDY"])
    budgets = [float(b) for b in v["QWEN3_BUDGETS"]]
    assert budgets[0] == 0 and all(0.1 <= b <= 0.5 for b in budgets[1:])
    assert [resolve_budget(b, 28) for b in budgets[1:]] == [3, 6, 8, 11, 14]  # Qwen3-VL-2B
    assert [resolve_budget(b, 36) for b in budgets[1:]] == [4, 7, 11, 14, 18]  # Qwen3-VL-4B
    for size in ("2b", "4b"):
        text = (EXAMPLES / "recipes" / f"study_qwen3_vl_{size}.sh").read_text()
        assert f"Qwen/Qwen3-VL-{size.upper()}-Instruct" in text


def test_qwen3_vl_recipe_cells_plan():
    """Every sweep cell of the recipe is a valid option set (greedy criteria only with topk)."""
    from lmms_prune_plugin.tools.sweep import plan_cells

    v = _recipe_vars("tasks_qwen3_vl.sh")
    budgets = [float(b) if "." in b else int(b) for b in v["QWEN3_BUDGETS"]]
    text = (EXAMPLES / "recipes" / "study_qwen3_vl.sh").read_text()
    assert "--strategies default,spaced,contiguous,uniform" in text
    cells = plan_cells(v["QWEN3_ONESHOT"], [None, "spaced", "contiguous", "uniform"], budgets)
    cells += plan_cells(v["QWEN3_GREEDY"], [None], budgets)
    assert len(set(cells)) == 151 and "151 sweep cells" in text

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
    from lmms_prune_plugin.plugins import get_calibration_sets

    online = [s.task for s in get_calibration_sets().values() if not s.offline]
    assert online and [t for t in online if t not in task_names] == []


def test_workflow_publishes_the_leaderboard():
    wf = yaml.safe_load((EXAMPLES / "ci" / "leaderboard.yml").read_text())
    steps = wf["jobs"]["leaderboard"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "lmms-prune sweep" in runs and "GITHUB_STEP_SUMMARY" in runs
    assert any(s.get("uses", "").startswith("actions/upload-artifact") for s in steps)

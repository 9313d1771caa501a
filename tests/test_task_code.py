"""Every lmms-eval task README.md, docs/, the recipes, the CI example and the calibration sets name
resolves, and its Python hooks import with the ``tasks`` extra installed -- checked offline,
before any data set download. Run alone: ``pytest tests/test_task_code.py``.
"""

import socket
import sys

import pytest
from task_code import (
    INSTALL_HINT,
    NAME,
    NODEPS_FILE,
    ROOT,
    UNRESOLVED,
    check_task_code,
    file_tasks,
    project_task_names,
)

import lmms_prune_plugin

NAMES = project_task_names()


@pytest.fixture(scope="module")
def task_manager():
    from lmms_eval.tasks import TaskManager

    return TaskManager(include_path=lmms_prune_plugin.TASKS_DIR)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No connection, and the judge key that lmms-eval's mathverse code asks for on import."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("OPENAI_API_KEY", "unused-offline")


@pytest.mark.parametrize("name", sorted(NAMES))
def test_task_code_imports(task_manager, name):
    error = check_task_code(task_manager, name)
    assert error is None, f"{error}\n  named in: {', '.join(NAMES[name])}"


def test_the_project_names_its_tasks():
    assert "README.md" in NAMES["mathvista_testmini"]  # the headline command
    assert {"examples/recipes/study.sh", "examples/recipes/tasks.sh"} <= set(
        NAMES["wemath_testmini_reasoning"]
    )  # study.sh: --tasks "$MATH_TASKS,..." after sourcing tasks.sh; tasks.sh: MATH_TASKS=...
    assert "examples/ci/leaderboard.yml" in NAMES["prune_demo_math"]  # the sweep's default
    assert "calibration set gqa" in NAMES["gqa"]
    unresolved = {n: s for n, s in NAMES.items() if UNRESOLVED in n or not NAME.match(n)}
    assert unresolved == {}, "task names the collector could not resolve"


def test_collector_reads_new_recipes(tmp_path):
    (tmp_path / "tasks.sh").write_text("MY_TASKS=chartqa,ai2d\n")
    script = tmp_path / "study_new.sh"
    script.write_text(
        'source "$here/tasks.sh"\n'
        "lmms-eval --model pruned_vlm --model_args pretrained=$1,calib_nonmath=gqa \\\n"
        '  --tasks "$MY_TASKS,realworldqa" --limit 8\n'
        "lmms-prune sweep --calib_math mathverse --tasks mmmu_val --out x.jsonl\n"
        "lmms-prune report x.jsonl --math_tasks mmmu_val\n"
    )
    assert file_tasks(script) == [
        *["chartqa", "ai2d", "realworldqa", "prune_calib_math", "gqa"],
        *["mathverse_testmini", "prune_calib_nonmath", "mmmu_val"],
    ]
    wrapper = tmp_path / "study_other.sh"
    wrapper.write_text('GENERAL_TASKS=ok_vqa MATH_TASKS="$X" exec "$here/study.sh" m out\n')
    assert file_tasks(wrapper) == ["ok_vqa", UNRESOLVED]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: Qwen/Qwen3-VL-8B-Instruct\ntasks: [mathvista_testmini, ai2d]\n")
    assert file_tasks(recipe) == ["mathvista_testmini", "ai2d"]


def test_a_missing_package_is_named(task_manager, monkeypatch):
    """Without Levenshtein, the headline task fails with its name and what to install."""

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "Levenshtein":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    for mod in [m for m in sys.modules if m.startswith(("Levenshtein", "lmms_eval.tasks.math"))]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(sys, "meta_path", [Blocker(), *sys.meta_path])
    error = check_task_code(task_manager, "mathvista_testmini")
    assert error is not None
    assert error.startswith("mathvista_testmini (member mathvista_testmini_")
    assert "No module named 'Levenshtein'" in error and INSTALL_HINT in error


def test_an_unknown_task_is_named(task_manager):
    error = check_task_code(task_manager, "mathvista_testmin")
    assert error.startswith("mathvista_testmin: LookupError: not a task, group or tag lmms-eval")


def test_nodeps_file_lists_what_the_extra_cannot():
    lines = [ln.split("#")[0].strip() for ln in NODEPS_FILE.read_text().splitlines()]
    assert {ln.split("==")[0] for ln in lines if ln} == {
        "latex2sympy2_extended",
        "antlr4-python3-runtime",
    }
    assert NODEPS_FILE.parent == ROOT

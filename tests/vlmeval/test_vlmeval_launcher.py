"""The launcher: bad arguments exit non-zero before anything runs (and before VLMEvalKit is
imported), failures VLMEvalKit only logs exit non-zero, and the demo end to end writes
VLMEvalKit's results and the plan; its layers are those lmms-eval's pruned_vlm removes."""

import json
import os
import subprocess
import sys

import pytest

from lmms_prune_plugin.core.plan import ModelIdentity, PrunePlan

MODULE = "lmms_prune_plugin.harnesses.vlmeval"
DEMO = ["--model", "lmms_prune_demo", "--max-new-tokens", "8"]


def launch(args, cwd, env=None, timeout=900):
    """The launcher in its own process (VLMEvalKit reads RANK and sets logging at import)."""
    full = os.environ | {"TOKENIZERS_PARALLELISM": "false"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", MODULE, *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_main_only(args, cwd, env=None):
    """``main(args)`` in a fresh process; prints whether VLMEvalKit was imported."""
    code = (
        f"import sys; from {MODULE} import main; rc = main({args!r}); "
        "print('VLMEVAL_IMPORTED', 'vlmeval' in sys.modules); sys.exit(rc)"
    )
    full = os.environ | (env or {})
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=full, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prune", "criterion=nope,budget=4"], "nope"),
        (["--prune", "criterion=math,budget"], "'budget' is not key=value"),
        (["--prune", "criterion=math,budget=4,budget=2"], "budget is given twice"),
        (["--prune", "criterion=math,budget=4", "--plan", "p.json"], "exactly one of --prune"),
        (["--prune", "criterion=math,budget=4", "--tokens", "most"], "tokens='most'"),
        (["--prune", "criterion=math,budget=4", "--model-args", "[1]"], "JSON object"),
        (["--prune", "criterion=math,budget=4", "--config", "c.json"], "--config is not allowed"),
    ],
)
def test_bad_arguments_exit_2_before_vlmeval_is_imported(tmp_path, args, message):
    out = run_main_only([*DEMO, *args, "--data", "PruneDemo_Math"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr
    assert "VLMEVAL_IMPORTED False" in out.stdout


def test_a_budget_beyond_the_checkpoint_depth_is_refused_before_loading(tmp_path):
    from lmms_prune_plugin.demo import DEMO_MODEL_DIR

    args = [
        "--model",
        "demo",
        "--pretrained",
        str(DEMO_MODEL_DIR),
        "--prune",
        "criterion=math,budget=13",
        "--data",
        "PruneDemo_Math",
    ]
    out = run_main_only(args, tmp_path)
    assert out.returncode == 2 and "budget" in out.stderr and "12" in out.stderr
    assert "VLMEVAL_IMPORTED False" in out.stdout


def test_missing_calibration_tsv_and_unknown_model_are_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run_main_only(
        [*DEMO, "--prune", "criterion=math,budget=4", "--data", "X"],
        tmp_path,
        {"LMUData": str(empty)},
    )
    assert out.returncode == 2
    assert "--calib-math='PruneCalib_Math' is not allowed" in out.stderr
    assert "vlmeval_demo_data.py" in out.stderr
    out = run_main_only(
        [
            "--model",
            "NoSuchVLM",
            "--prune",
            "criterion=math,budget=4",
            "--max-new-tokens",
            "4",
            "--data",
            "X",
        ],
        tmp_path,
    )
    assert out.returncode == 2 and "'NoSuchVLM' is not in VLMEvalKit's supported_VLM" in out.stderr


def test_a_dataset_vlmeval_skips_makes_the_exit_status_non_zero(tmp_path, lmu_data):
    out = launch(
        [
            *DEMO,
            "--prune",
            "criterion=math,budget=4",
            "--data",
            "NoSuchBenchmark",
            "--work-dir",
            str(tmp_path / "out"),
        ],
        tmp_path,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "NoSuchBenchmark: skipped by VLMEvalKit (invalid_dataset)" in out.stderr


def test_a_model_that_fails_inside_vlmeval_makes_the_exit_status_non_zero(tmp_path, lmu_data):
    identity = ModelIdentity(
        "x", "Qwen2VLForConditionalGeneration", "qwen2_vl", 4, "model.language_model.layers"
    )
    plan = PrunePlan(identity, "math", {}, "topk", {}, 1, (), (2,))
    plan.save(tmp_path / "other.json")
    out = launch(
        [
            *DEMO,
            "--plan",
            str(tmp_path / "other.json"),
            "--data",
            "PruneDemo_Math",
            "PruneDemo_Nonmath",
            "--judge",
            "exact_matching",
            "--work-dir",
            str(tmp_path / "out"),
        ],
        tmp_path,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "could not be built" in out.stderr and "does not fit" in out.stderr
    # VLMEvalKit tries to build the model again for the next dataset: it fails at once.
    assert "lmms_prune_demo__plan-other was not built: ValueError" in out.stdout + out.stderr


def test_a_plan_json_that_is_no_plan_is_never_replaced(tmp_path, lmu_data):
    run_dir = tmp_path / "out" / "lmms_prune_demo__criterion-math_budget-4"
    run_dir.mkdir(parents=True)
    (run_dir / "plan.json").write_text("mine")
    out = run_main_only(
        [
            *DEMO,
            "--prune",
            "criterion=math,budget=4",
            "--data",
            "PruneDemo_Math",
            "--work-dir",
            str(tmp_path / "out"),
        ],
        tmp_path,
    )
    assert out.returncode == 2 and "is not a plan file" in out.stderr
    assert (run_dir / "plan.json").read_text() == "mine"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, lmu_data):
    """The demo end to end: math-aware, 4 layers, the demo calibration sets, 24 lines of each
    demo benchmark (VLMEvalKit's --limit), VLMEvalKit's exact matching."""
    work = tmp_path_factory.mktemp("work")
    args = [
        *DEMO,
        "--prune",
        "criterion=math,budget=4",
        "--data",
        "PruneDemo_Math",
        "PruneDemo_Nonmath",
        "--judge",
        "exact_matching",
        "--limit",
        "24",
        "--work-dir",
        str(work / "out"),
    ]
    out = launch(args, work, {"LMMS_PRUNE_CACHE": str(work / "cache")})
    return out, work / "out" / "lmms_prune_demo__criterion-math_budget-4"


def test_demo_end_to_end_writes_vlmeval_results_and_the_plan(demo_run):
    import pandas as pd

    from lmms_prune_plugin.core.planner import PruneOptions, derivation_problem

    out, run_dir = demo_run
    assert out.returncode == 0, out.stderr[-4000:]
    plan = PrunePlan.load(run_dir / "plan.json")
    assert (plan.criterion, plan.budget, plan.model.num_layers, len(plan.removed)) == (
        "math",
        4,
        12,
        4,
    )
    assert plan.calibration.sets == {"math": "PruneCalib_Math"}
    assert plan.calibration.samples == {"math": 64}
    assert derivation_problem(plan, PruneOptions.parse(criterion="math", budget="4")) is None
    status = json.loads((run_dir / "status.json").read_text())
    for name in ("PruneDemo_Math", "PruneDemo_Nonmath"):
        acc = pd.read_csv(run_dir / f"lmms_prune_demo__criterion-math_budget-4_{name}_acc.csv")
        assert 0 <= float(acc["Overall"][0]) <= 1
        assert status["datasets"][name]["status"] == "done" and status["datasets"][name]["metrics"]
    preds = pd.read_excel(
        run_dir / "lmms_prune_demo__criterion-math_budget-4_PruneDemo_Nonmath.xlsx"
    )
    assert len(preds) == 24


def test_demo_removes_the_layers_lmms_eval_removes(demo_run):
    """lmms-eval's pruned_vlm on the same demo (the project's environment, which make
    test-vlmeval names in LMMS_PRUNE_MAIN_PYTHON): the same removed layers."""
    main_py = os.environ.get("LMMS_PRUNE_MAIN_PYTHON")
    if not main_py:
        pytest.skip("LMMS_PRUNE_MAIN_PYTHON (the project's Python, with lmms-eval) is not set")
    out, run_dir = demo_run
    assert out.returncode == 0, out.stderr[-4000:]
    code = (
        "from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM; import json; "
        "m = PrunedVLM(criterion='math', budget=4, plan_cache=False); "
        "print('PLAN', json.dumps(m.plan.to_dict()))"
    )
    ref = subprocess.run(
        [main_py, "-c", code],
        capture_output=True,
        text=True,
        timeout=900,
        env=os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    line = next(x for x in ref.stdout.splitlines() if x.startswith("PLAN "))
    theirs = PrunePlan.from_dict(json.loads(line[5:]))
    ours = PrunePlan.load(run_dir / "plan.json")
    assert ours.removed == theirs.removed
    assert max(abs(a - b) for a, b in zip(ours.scores, theirs.scores, strict=True)) < 2e-3


def test_the_ci_example_runs_the_launcher_with_arguments_it_accepts():
    import shlex

    import yaml

    from lmms_prune_plugin.harnesses.vlmeval import check_ours, model_name, split_args

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    wf = yaml.safe_load(open(os.path.join(root, "examples", "ci", "vlmeval.yml")).read())
    runs = "\n".join(s.get("run", "") for s in wf["jobs"]["vlmeval"]["steps"])
    command = runs[runs.index(f"python -m {MODULE}") :].split("\n          done")[0]
    words = shlex.split(command.replace("\\\n", " "))[3:]
    assert "scripts/vlmeval_demo_data.py" in runs
    names = set()
    for budget in ("0", "4"):
        args, rest = split_args([w.replace("$budget", budget) for w in words])
        kwargs = check_ours(args)
        names.add(model_name(args))
        assert kwargs["inner"] == "lmms_prune_demo" and "--judge" in rest and "--data" in rest
    assert len(names) == 2  # two output folders: the runs do not mix


def test_two_processes_under_torchrun_split_calibration_and_evaluation(tmp_path, lmu_data):
    """VLMEvalKit's torchrun data parallelism on CPU (gloo): each rank calibrates half of the
    lines, the plan is the same on both, and rank 0 merges the predictions."""
    work = tmp_path / "out"
    args = [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        MODULE,
        *DEMO,
        "--prune",
        "criterion=math,budget=4",
        "--calib-limit",
        "16",
        "--data",
        "PruneDemo_Nonmath",
        "--judge",
        "exact_matching",
        "--limit",
        "8",
        "--work-dir",
        str(work),
    ]
    env = os.environ | {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-4000:]
    run_dir = work / "lmms_prune_demo__criterion-math_budget-4"
    plan = PrunePlan.load(run_dir / "plan.json")
    assert plan.calibration.samples == {"math": 16} and len(plan.removed) == 4
    assert out.stderr.count("removes layers " + ", ".join(map(str, plan.removed[:-1]))) == 2
    assert (run_dir / "lmms_prune_demo__criterion-math_budget-4_PruneDemo_Nonmath_acc.csv").exists()

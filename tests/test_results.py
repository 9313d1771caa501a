"""lmms-eval's results say what was evaluated: the plan once, at config.prune_plan, for its run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmms_prune_plugin.testing.tiny import save_tiny_vlm, wrapper_kwargs

TASKS = str(Path(__file__).parent / "tasks")
ARCH = "qwen2_5_vl"


def _find_keys(value, key, path=""):
    """Every path at which ``key`` occurs in nested dicts and lists."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key:
                found.append(f"{path}.{k}")
            found += _find_keys(v, key, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _find_keys(v, key, f"{path}[{i}]")
    return found


@pytest.mark.slow
def test_a_config_of_three_runs_records_each_runs_own_plan(tmp_path):
    """pruned (2 layers), plain qwen2_5_vl, pruned (1 layer) in one lmms-eval process: the plain
    run carries no plan, each pruned run its own, and only at config.prune_plan."""
    ckpt = save_tiny_vlm(ARCH, tmp_path / "ckpt", num_layers=4)
    wkw = ",".join(f"{k}={v}" for k, v in wrapper_kwargs(ARCH).items())
    calib = (f"calib_math=prune_test_colours,calib_nonmath=prune_test_colours_b,"
             f"include_path={TASKS},calib_limit=4")  # fmt: skip
    runs = [
        ("pruned_vlm", f"pretrained={ckpt},{wkw},{calib},criterion=math,budget=2"),
        (ARCH, f"pretrained={ckpt},{wkw}"),
        ("pruned_vlm", f"pretrained={ckpt},{wkw},{calib},criterion=last,budget=1"),
    ]
    config = [
        {"model": m, "model_args": a, "tasks": "prune_test_colours", "include_path": TASKS,
         "limit": 2, "output_path": str(tmp_path / f"run{i}")}
        for i, (m, a) in enumerate(runs)
    ]  # fmt: skip
    (tmp_path / "runs.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "lmms_eval", "--config", str(tmp_path / "runs.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    results = []
    for i in range(3):
        found = sorted((tmp_path / f"run{i}").rglob("*_results.json"))
        assert found, f"run {i} wrote no results\n{proc.stderr[-3000:]}"
        results.append(json.loads(found[-1].read_text()))
    first, plain, third = results
    assert _find_keys(plain, "prune_plan") == []
    assert _find_keys(first, "prune_plan") == [".config.prune_plan"]
    assert _find_keys(third, "prune_plan") == [".config.prune_plan"]
    assert len(first["config"]["prune_plan"]["removed"]) == 2
    assert third["config"]["prune_plan"]["removed"] == [3]  # criterion=last: the tail


def test_the_demo_model_gives_the_output_folder_a_name():
    """No pretrained= in model_args: lmms-eval would name the run "" (no model subfolder)."""
    from lmms_eval.loggers.evaluation_tracker import GeneralConfigTracker

    from lmms_prune_plugin.core.plan import ModelIdentity, PrunePlan
    from lmms_prune_plugin.demo import DEMO_MODEL_DIR
    from lmms_prune_plugin.harnesses.lmms_eval import results

    identity = ModelIdentity(str(DEMO_MODEL_DIR), "Qwen2VLForConditionalGeneration", "qwen2_vl",
                             12, "model.language_model.layers")  # fmt: skip
    plan = PrunePlan(identity, "last", {}, "topk", {}, 2, (), (10, 11))
    results.record(plan, identity, results.DEMO_MODEL_NAME)  # what pruned_vlm passes for the demo
    tracker = GeneralConfigTracker()
    tracker.log_experiment_args("pruned_vlm", "criterion=last,budget=2", None, None, False)
    assert tracker.model_name == results.DEMO_MODEL_NAME and tracker.model_name_sanitized
    other = GeneralConfigTracker()
    other.log_experiment_args("qwen2_vl", "device=cpu", None, None, False)
    assert other.model_name == ""  # lmms-eval's own behaviour for other models is unchanged

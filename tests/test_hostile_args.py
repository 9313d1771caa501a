"""Hostile model_args and checkpoints, second round: each ends in one clear error naming the
parameter and the value, before the model is loaded where the arguments alone tell, or in a
correct result; the lmms-eval command exits non-zero when pruned_vlm fails."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmms_prune_plugin.core.plan import PrunePlan
from lmms_prune_plugin.harnesses.lmms_eval import exit_status
from lmms_prune_plugin.testing.tiny import save_tiny_vlm, wrapper_kwargs

TASKS = str(Path(__file__).parent / "tasks")
CALIB = {
    "calib_math": "prune_test_colours",
    "calib_nonmath": "prune_test_colours_b",
    "include_path": TASKS,
    "calib_limit": 2,
}
ARCH = "qwen2_5_vl"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_vlm(ARCH, tmp_path_factory.mktemp("a") / "qwen", num_layers=4)


def pruned(ckpt, **extra):
    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM

    args = {"pretrained": str(ckpt), **wrapper_kwargs(ARCH)}
    args |= {**CALIB, "criterion": "math", "budget": 2} if "plan" not in extra else {}
    return PrunedVLM(**(args | extra))


def copy_ckpt(ckpt, tmp_path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(ckpt, out)
    return out


@pytest.fixture
def plan_file(tmp_path):
    data = {
        "format": 1,
        "criterion": "math",
        "criterion_options": {},
        "strategy": "topk",
        "strategy_options": {},
        "budget": 2,
        "scores": [0.1, 0.2, 0.3, 0.4],
        "removed": [1, 2],
        "model": {
            "name_or_path": "m",
            "architecture": "Qwen2_5_VLForConditionalGeneration",
            "model_type": "qwen2_5_vl",
            "num_layers": 4,
            "layers_path": "model.language_model.layers",
        },
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------ contradictions, empty values
@pytest.mark.parametrize("extra", [{"budget": 3}, {"criterion": "nonmath"}, {"strategy": "spaced"}])
def test_a_plan_with_pruning_options_is_a_contradiction(ckpt, no_load, plan_file, extra):
    with pytest.raises(ValueError, match=r"plan=.* is not allowed together with .*give either"):
        pruned(ckpt, plan=str(plan_file), **extra)
    assert not no_load


@pytest.mark.parametrize(
    "name",
    [
        "plan",
        "pretrained",
        "save_plan",
        "include_path",
        "revision",
        "base",
        "calib_math",
        "calib_nonmath",
        "plan_cache",
        "tokens",
        "engine",
        "budget",
        "criterion",
    ],
)
@pytest.mark.parametrize("empty", ["", "  "])
def test_empty_values_are_errors_not_defaults(ckpt, no_load, name, empty):
    with pytest.raises(ValueError, match=rf"{name}='{empty}' is not allowed: it is empty"):
        pruned(ckpt, **{name: empty})
    assert not no_load


def test_a_key_given_twice_in_model_args_is_refused():
    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM

    with pytest.raises(ValueError, match=r"budget is given twice .*budget=2 and budget=3"):
        PrunedVLM.create_from_arg_string("criterion=math,budget=2,budget=3")


def test_json_values_with_commas_are_not_duplicates():
    exit_status.check_unique_keys('a=1,b={"x":1,"a":2},c=3')  # the inner "a" is inside braces


# ------------------------------------------------------------------ plan and output files
def test_plan_that_is_a_folder_is_named(ckpt, no_load, tmp_path):
    with pytest.raises(ValueError, match=r"plan=.* is not allowed: it is a folder"):
        pruned(ckpt, plan=str(tmp_path))


def test_plan_from_a_device_is_refused_without_reading_it(ckpt, no_load):
    with pytest.raises(ValueError, match=r"plan='/dev/zero' is not allowed: it is not a regular"):
        pruned(ckpt, plan="/dev/zero")


def test_a_huge_or_binary_plan_file_is_refused(tmp_path):
    huge = tmp_path / "huge.json"
    with huge.open("wb") as f:
        f.truncate(65 << 20)  # sparse: no disk used, and never read whole
    with pytest.raises(ValueError, match=r"larger than 64 MiB"):
        PrunePlan.load(huge)
    binary = tmp_path / "bin.json"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(
        ValueError, match=r"plan=.* is not a valid prune plan: it is not UTF-8 text"
    ):
        PrunePlan.load(binary)


@pytest.mark.parametrize("name", ["save_plan", "plan_cache"])
def test_outputs_in_folders_where_nothing_can_be_created_are_named(ckpt, no_load, name):
    target = "/proc/x.json" if name == "save_plan" else "/proc/forbidden"
    with pytest.raises(
        ValueError, match=rf"{name}='{target}' is not allowed: '/proc' is not a writable"
    ):
        pruned(ckpt, **{name: target})
    assert not no_load


def test_plans_are_written_with_the_users_umask(tmp_path, plan_file):
    old = os.umask(0o022)
    try:
        out = PrunePlan.load(plan_file).save(tmp_path / "p.json")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------ task folders
def test_include_path_that_is_not_a_task_folder_is_named(ckpt, no_load, tmp_path):
    (tmp_path / "good.yaml").write_text("task: prune_x\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "two.yaml").write_text("a: 1\n---\nb: 2\n")
    with pytest.raises(
        ValueError,
        match=r"include_path=.* is not allowed: .*two.yaml is not an lmms-eval task YAML",
    ):
        pruned(ckpt, include_path=str(tmp_path))
    assert not no_load


def test_include_path_of_a_system_folder_is_refused_quickly(ckpt, no_load):
    with pytest.raises(ValueError, match=r"include_path='/usr' is not allowed: "):
        pruned(ckpt, include_path="/usr")


# ------------------------------------------------------------------ damaged checkpoints
def test_a_config_that_is_not_json_is_named(ckpt, no_load, tmp_path):
    bad = copy_ckpt(ckpt, tmp_path)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"its config.json is not valid JSON"):
        pruned(ckpt, pretrained=str(bad))


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_truncated_weight_file_is_named_before_loading(ckpt, no_load, tmp_path, keep):
    bad = copy_ckpt(ckpt, tmp_path)
    f = bad / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=r"model.safetensors is damaged: .*truncated"):
        pruned(ckpt, pretrained=str(bad))
    assert not no_load


def test_a_missing_shard_is_named(ckpt, no_load, tmp_path):
    bad = copy_ckpt(ckpt, tmp_path)
    index = {"weight_map": {"x": "model-00002-of-00002.safetensors"}}
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"names shards that are missing: model-00002"):
        pruned(ckpt, pretrained=str(bad))


@pytest.mark.parametrize("depth", [6, 3])
def test_a_config_depth_that_disagrees_with_the_weights_is_refused(ckpt, tmp_path, depth):
    bad = copy_ckpt(ckpt, tmp_path)
    cfg = json.loads((bad / "config.json").read_text())
    text = cfg["text_config"]
    text["num_hidden_layers"] = depth
    for name in ("layer_types",):
        if name in text:
            text[name] = [text[name][0]] * depth
    if "max_window_layers" in text:
        text["max_window_layers"] = depth
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ValueError, match=rf"gives the text decoder {depth} layers, but the weights hold 4"
    ):
        pruned(ckpt, pretrained=str(bad))


def test_the_weights_of_every_tested_architecture_match_their_configs(tmp_path):
    """No false alarm: the depth check finds the decoder and agrees on every tiny architecture."""
    from transformers import AutoModelForImageTextToText

    from lmms_prune_plugin.surgery.checkpoint import check_stored_depth, check_weight_files
    from lmms_prune_plugin.surgery.layers import find_decoder_layers
    from lmms_prune_plugin.testing.tiny import ARCHITECTURES

    for arch in ARCHITECTURES:
        path = save_tiny_vlm(arch, tmp_path / arch, num_layers=3)
        names = check_weight_files(str(path))
        model = AutoModelForImageTextToText.from_pretrained(path)
        layers = find_decoder_layers(model).layers
        check_stored_depth(str(path), names, layers)
        from lmms_prune_plugin.surgery.checkpoint import stored_layer_indices

        layer0 = {n for n, _ in layers[0].named_parameters()}
        assert stored_layer_indices(names, layer0)[1] == {0, 1, 2}, arch


# ------------------------------------------------------------------ the exit status
def test_failures_outside_lmms_evals_cli_only_raise(monkeypatch):
    monkeypatch.setattr(exit_status, "_registered", False)
    with pytest.raises(ValueError), exit_status.exit_nonzero_on_failure():
        raise ValueError("x")
    assert exit_status._registered is False


@pytest.mark.parametrize("model_args", ["budget=abc", "budget=2,budget=3"])
def test_the_lmms_eval_command_exits_non_zero_when_pruned_vlm_fails(tmp_path, model_args):
    import lmms_prune_plugin

    cmd = [
        sys.executable,
        "-m",
        "lmms_eval",
        "--model",
        "pruned_vlm",
        "--model_args",
        f"criterion=math,{model_args}",
        "--tasks",
        "prune_demo_math",
        "--limit",
        "2",
        "--include_path",
        lmms_prune_plugin.TASKS_DIR,
        "--output_path",
        str(tmp_path),
    ]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out[-3000:]
    assert "budget" in out and "exits 1" in out
    assert not list(tmp_path.rglob("*results*.json"))


# ------------------------------------------------------------------ task code that fails
def test_a_task_that_fails_to_build_is_not_blamed_on_being_offline(ckpt, tmp_path):
    """A calibration task without doc_to_target fails inside lmms-eval: the error says its
    files failed, not that a dataset cannot be downloaded."""
    folder = tmp_path / "tasks"
    shutil.copytree(Path(TASKS) / "prune_test", folder)
    text = (folder / "prune_test_colours.yaml").read_text()
    text = text.replace("task: prune_test_colours", "task: prune_test_notarget")
    (folder / "prune_test_colours.yaml").write_text(text.replace("doc_to_target: answer\n", ""))
    (folder / "notext.yaml").unlink()
    (folder / "prune_test_colours_b.yaml").unlink()
    with pytest.raises(
        ValueError, match=r"calib_math='prune_test_notarget'.*YAML or task code"
    ) as err:
        pruned(
            ckpt, calib_math="prune_test_notarget", calib_nonmath="none", include_path=str(folder)
        )
    assert "cannot be downloaded" not in str(err.value)


def test_an_include_path_edited_after_a_good_check_is_checked_again(tmp_path):
    from lmms_prune_plugin.harnesses.lmms_eval.task_folders import check_task_folder

    (tmp_path / "a.yaml").write_text("task: prune_x\n")
    check_task_folder("include_path", str(tmp_path))  # passes, remembered
    (tmp_path / "b.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match=r"b.yaml is not an lmms-eval task YAML"):
        check_task_folder("include_path", str(tmp_path))


# ------------------------------------------------------------------ a second hostile round
def _header_edit(ckpt, tmp_path, change) -> Path:
    """A copy whose safetensors header was edited by ``change(header)``, same data bytes."""
    import struct

    bad = copy_ckpt(ckpt, tmp_path)
    f = bad / "model.safetensors"
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * max(0, n - len(text))
    f.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    return bad


def _first_two(header):
    return sorted(
        (k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0]
    )[:2]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda h: h[_first_two(h)[1]].update(data_offsets=h[_first_two(h)[0]]["data_offsets"]),
            "do not follow each other|has shape",
        ),
        (lambda h: h[_first_two(h)[0]].update(shape=[3, 3, 3, 3, 3]), "has shape"),
        (lambda h: h[_first_two(h)[0]].update(data_offsets=["0", "4"]), "is not a tensor entry"),
    ],
)
def test_a_lying_safetensors_header_is_named_before_loading(
    ckpt, no_load, tmp_path, change, message
):
    bad = _header_edit(ckpt, tmp_path, change)
    with pytest.raises(ValueError, match=rf"model.safetensors is damaged: .*({message})"):
        pruned(ckpt, pretrained=str(bad))
    assert not no_load


def test_an_index_that_maps_a_tensor_to_a_shard_without_it_is_named(ckpt, no_load, tmp_path):
    bad = copy_ckpt(ckpt, tmp_path)
    index = {"weight_map": {"model.extra.weight": "model.safetensors"}}
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"1 tensors it maps are not in their shard"):
        pruned(ckpt, pretrained=str(bad))


def test_a_plan_with_calibration_options_is_a_contradiction(ckpt, no_load, plan_file):
    with pytest.raises(ValueError, match=r"plan=.* is not allowed together with calib_limit=5"):
        pruned(ckpt, plan=str(plan_file), calib_limit=5)


@pytest.mark.parametrize("kind", ["broken", "to a plan"])
def test_save_plan_that_is_a_link_is_refused(ckpt, no_load, tmp_path, plan_file, kind):
    link = tmp_path / "link.json"
    link.symlink_to(plan_file if kind == "to a plan" else tmp_path / "nowhere" / "p.json")
    with pytest.raises(ValueError, match=r"save_plan=.* is a symbolic link"):
        pruned(ckpt, save_plan=str(link))
    assert link.is_symlink()


def test_a_cache_entry_that_is_a_fifo_is_not_read(tmp_path, logged):
    import os

    from lmms_prune_plugin.core.cache import Cache

    cache = Cache(tmp_path)
    os.mkfifo(cache.path("plan", "k"))
    assert cache.get("plan", "k") is None  # returns at once instead of blocking on the pipe
    assert any("not a regular file" in m for m in logged)


def test_an_export_never_replaces_the_checkpoint_it_is_made_from(tmp_path):
    from lmms_prune_plugin.surgery.export import check_not_source

    source = tmp_path / "ckpt"
    source.mkdir()
    for out in (source, tmp_path):
        with pytest.raises(ValueError, match=r"out=.* holds the checkpoint being pruned"):
            check_not_source(out, str(source))
    check_not_source(tmp_path / "elsewhere", str(source))
    check_not_source(source, "org/model")  # a hub id has no folder here


@pytest.mark.parametrize("change", ["short layer_types", "string depth"])
def test_a_config_transformers_refuses_is_named_before_any_weight(ckpt, tmp_path, change):
    bad = copy_ckpt(ckpt, tmp_path)
    cfg = json.loads((bad / "config.json").read_text())
    if change == "short layer_types":
        cfg["text_config"]["layer_types"] = cfg["text_config"]["layer_types"][:1]
    else:
        cfg["text_config"]["num_hidden_layers"] = "4"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"transformers refuses its config.json"):
        pruned(ckpt, pretrained=str(bad))


def test_a_cache_folder_from_the_environment_is_named_as_such(ckpt, no_load, monkeypatch):
    monkeypatch.setenv("LMMS_PRUNE_CACHE", "/proc/cache")
    with pytest.raises(ValueError, match=r"\$LMMS_PRUNE_CACHE \(the plan cache\)='/proc/cache'"):
        pruned(ckpt)


def test_a_cuda_device_without_a_gpu_is_named_before_loading(ckpt, no_load, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    kwargs = {k: v for k, v in wrapper_kwargs(ARCH).items() if k != "device"}
    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM

    with pytest.raises(ValueError, match=r"device='cuda.*' \(the default of base='qwen2_5_vl'\)"):
        PrunedVLM(pretrained=str(ckpt), **kwargs, **CALIB, criterion="math", budget=1)
    assert not no_load


def test_a_users_text_file_as_sweep_out_is_named_and_untouched(tmp_path):
    from lmms_prune_plugin.tools.sweep import check_out

    notes = tmp_path / "notes.jsonl"
    notes.write_text("my notes\n")
    with pytest.raises(
        ValueError, match=r"out=.*notes.jsonl' is not allowed: it exists and is not"
    ):
        check_out(notes)
    assert notes.read_text() == "my notes\n"

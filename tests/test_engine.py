"""The engine path's parts that need no vLLM: argument checks and routing, the cached export,
the generation limits set on lmms-eval's vllm model, and the engine column of reports.
Serving in vLLM itself is tested in tests/vllm (``make test-vllm``)."""

from __future__ import annotations

import pytest

from lmms_prune_plugin.harnesses.lmms_eval import engine as engines


@pytest.mark.parametrize("bad", ["VLLM", "vLLM", "", "sglang", None, 1])
def test_engine_is_hf_or_vllm_exactly(bad):
    with pytest.raises(ValueError, match=r"engine=.* is not allowed; choose one of: hf, vllm"):
        engines.check_engine(bad)


def test_engine_vllm_without_vllm_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda name: None)
    assert engines.check_engine("hf") == "hf"
    with pytest.raises(ValueError, match="needs vLLM installed.*make test-vllm"):
        engines.check_engine("vllm")


def test_pruned_vlm_rejects_a_bad_engine_before_loading(monkeypatch):
    from lmms_prune_plugin.harnesses.lmms_eval import pruned_vlm

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pruned_vlm, "build_wrapper", no_load)
    with pytest.raises(ValueError, match="engine='VLLM' is not allowed"):
        pruned_vlm.PrunedVLM(engine="VLLM", budget=2)


def test_arguments_go_to_the_side_that_takes_them():
    base = {"batch_size", "max_pixels", "device", "device_map"}
    engine = {"batch_size", "tensor_parallel_size", "max_model_len", "device"}
    kwargs = {"batch_size": 8, "max_pixels": 1000, "device": "cpu", "tensor_parallel_size": 2,
              "max_model_len": 512, "typo_arg": 1}  # fmt: skip
    to_base, to_engine = engines.split_args(base, engine, kwargs)
    assert to_engine == {"batch_size": 8, "tensor_parallel_size": 2, "max_model_len": 512}
    # device stays with the wrapper that calibrates; an unknown name stays for its check to name
    assert to_base == {"batch_size": 8, "max_pixels": 1000, "device": "cpu", "typo_arg": 1}


def test_task_generation_limits_reach_vllm():
    """lmms-eval's vllm model takes max(task, own) new tokens and drops ``until``; ours not."""
    cls = engines.engine_class(simple=True)
    lm = cls.__new__(cls)  # no engine: only the request-to-parameters methods are exercised
    lm.max_new_tokens = engines.DEFAULT_MAX_NEW_TOKENS
    assert lm._select_max_new_tokens(8) == 8
    assert lm._select_max_new_tokens(None) == engines.DEFAULT_MAX_NEW_TOKENS
    params = lm._build_sampling_params_dict(
        {"max_new_tokens": 8, "temperature": 0, "top_p": 0.95, "until": ["\n\n", ""]}
    )
    assert params["max_tokens"] == 8 and params["stop"] == ["\n\n"]
    one = lm._build_sampling_params_dict({"max_new_tokens": 4, "temperature": 0, "top_p": 1.0,
                                          "until": "<|end|>"})  # fmt: skip
    assert one["stop"] == ["<|end|>"]
    none = lm._build_sampling_params_dict({"max_new_tokens": 4, "temperature": 0, "top_p": 1.0})
    assert "stop" not in none


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lmms_prune_plugin.core.cache import weights_fingerprint
    from lmms_prune_plugin.core.plan import ModelIdentity
    from lmms_prune_plugin.core.planner import PruneOptions, make_plan
    from lmms_prune_plugin.testing.tiny import build_tiny_vlm, save_tiny_vlm

    path = save_tiny_vlm("qwen2_vl", tmp_path_factory.mktemp("tiny") / "m", num_layers=4)
    model, _ = build_tiny_vlm("qwen2_vl", num_layers=4)
    identity = ModelIdentity.of(model, str(path), None, weights_fingerprint(str(path)))
    plans = [make_plan(identity, {}, PruneOptions(criterion="last", budget=b)) for b in (0, 1, 2)]
    return path, plans


def test_export_is_made_once_per_plan_and_reused(tiny, tmp_path, capsys):
    import json

    path, (unpruned, one, two) = tiny
    assert engines.cached_export(str(path), unpruned, tmp_path) == path  # nothing to export
    first = engines.cached_export(str(path), one, tmp_path)
    assert first.parent == tmp_path and first.name.startswith("export-")
    assert json.loads((first / "config.json").read_text())["text_config"]["num_hidden_layers"] == 3
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert engines.cached_export(str(path), one, tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert "serving the cached export" in capsys.readouterr().err
    other = engines.cached_export(str(path), two, tmp_path)
    assert other != first and sorted(tmp_path.glob("export-*/")) == sorted([first, other])
    assert engines.stored_dtype(first) == "float32"


def test_report_says_which_engine_made_each_row():
    from lmms_prune_plugin.tools.report import leaderboard, to_markdown

    row = {"model": "m", "criterion": "math", "strategy": "topk", "budget": 2, "kept_layers": 6,
           "removed": [3, 4], "metrics": {"prune_demo_math": {"exact_match,none": 0.5}}}  # fmt: skip
    board = leaderboard([row, row | {"engine": "vllm"}])
    assert [r["engine"] for r in board.records] == ["hf", "vllm"]
    lines = to_markdown(board).splitlines()
    assert "| engine |" in lines[0] and "| vllm |" in lines[3]

"""Hostile input: every case ends in one clear error naming the parameter, or a correct recovery.

Most cases fail before any model is loaded: ``build_wrapper`` is replaced by a sentinel that
records what the load would have received, so reaching it is itself an outcome the test checks.
Cases that need a model use one tiny Qwen2.5-VL checkpoint.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
from helpers import Loaded

from lmms_prune_plugin.core.plan import PrunePlan
from lmms_prune_plugin.testing.tiny import save_tiny_vlm, wrapper_kwargs

TASKS = str(Path(__file__).parent / "tasks")
CALIB = {"calib_math": "prune_test_colours", "calib_nonmath": "prune_test_colours_b",
         "include_path": TASKS, "calib_limit": 4}  # fmt: skip
ARCH = "qwen2_5_vl"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_vlm(ARCH, tmp_path_factory.mktemp("h") / "qwen", num_layers=4)


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory):
    """Same architecture and layer count, other weights."""
    return save_tiny_vlm(ARCH, tmp_path_factory.mktemp("h2") / "qwen", num_layers=4, seed=1)


def pruned(ckpt, wrapper_args=True, **extra):
    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM

    args = {"pretrained": str(ckpt), **(wrapper_kwargs(ARCH) if wrapper_args else {})}
    args |= (
        {} if "plan" in extra else {**CALIB, "criterion": "math", "budget": 2}
    )  # a plan fixes these
    args |= extra
    return PrunedVLM(**{k: v for k, v in args.items() if v is not ...})


# --------------------------------------------------------------------------- model_args: errors
BAD_ARGS = [
    ({"trust_remote_code": "maybe"}, r"trust_remote_code='maybe' is not allowed; give true or false"),
    ({"trust_remote_code": 2}, r"trust_remote_code=2 is not allowed"),
    ({"plan_strict": "sometimes"}, r"plan_strict='sometimes' is not allowed"),
    ({"plan_cache": "maybe"}, r"plan_cache='maybe' is not allowed; give true, false or a cache folder"),
    ({"budget": 1000000000}, r"budget=1000000000 removes 1000000000 of 4 layers; at most 3"),
    ({"budget": 4}, r"budget=4 removes 4 of 4 layers"),
    ({"budget": 0.01}, r"budget=0.01 removes 0 of 4 layers"),
    ({"budget": -1}, r"budget=-1 is not allowed; it must be >= 0"),
    ({"budget": 2.5}, r"budget=2.5 is not allowed; above 1 it must be a whole number"),
    ({"budget": "abc"}, r"budget='abc' is not allowed; give a finite number"),
    ({"budget": True}, r"budget=True is not allowed"),
    ({"budget": float("nan")}, r"budget=nan is not allowed"),
    ({"buget": 2}, r"buget=2 is not an argument of pruned_vlm .*did you mean 'budget'"),
    ({"min_pixel": 3136}, r"min_pixel=3136 is not an argument .*did you mean 'min_pixels'"),
    ({"criterion": "nope"}, r"criterion='nope' is not registered; choose one of"),
    ({"strategy": "nope"}, r"strategy='nope' is not registered"),
    ({"alpha": 2}, r"alpha=2.0 is not allowed; it must be a number in \[0, 1\]"),
    ({"alpha": "x"}, r"alpha='x' is not allowed; give a finite number"),
    ({"seed": "x"}, r"seed='x' is not allowed; give an integer"),
    ({"seed": 1.5}, r"seed=1.5 is not allowed; give an integer"),
    ({"min_gap": -1}, r"min_gap=-1 is not allowed; it must be an integer >= 0"),
    ({"protect_first": "x"}, r"protect_first='x' is not allowed"),
    ({"protect_first": 4, "protect_last": 0}, r"only 0 of 4 may be removed"),
    ({"strategy": "spaced", "min_gap": 3, "budget": 3}, r"min_gap=3 is not allowed with budget 3"),
    ({"tokens": "words"}, r"tokens='words' is not allowed; choose one of: all, text, image, last"),
    ({"calib_limit": 0}, r"calib_limit=0 is not allowed; give an integer >= 1 or none"),
    ({"calib_limit": "many"}, r"calib_limit='many' is not allowed"),
    ({"calib_math": 3}, r"calib_math=3 is not allowed"),
    ({"calib_math": "none"}, r"criterion='math' needs calibration on math"),
    ({"criterion": "shortgpt", "calib_math": "none", "calib_nonmath": "none"},
     r"criterion='shortgpt' needs calibration on at least one domain"),
    ({"include_path": "/no/such/tasks"}, r"include_path='/no/such/tasks' is not allowed"),
    ({"final_norm": "maybe"}, r"final_norm='maybe' is not allowed"),
    ({"step": 0}, r"step=0 is not allowed; it must be an integer >= 1"),
    ({"candidates": -1}, r"candidates=-1 is not allowed"),
    ({"angular_tokens": "x"}, r"angular_tokens='x' is not allowed"),
    ({"base": "no_such_wrapper"}, r"base='no_such_wrapper' is not an lmms-eval model; choose one of"),
    ({"plan": "/no/such/plan.json"}, r"plan='/no/such/plan.json': no such file"),
]  # fmt: skip


@pytest.mark.parametrize("extra, message", BAD_ARGS, ids=[m[:40] for _, m in BAD_ARGS])
def test_bad_model_args_fail_before_loading(ckpt, no_load, extra, message):
    with pytest.raises(ValueError, match=message):
        pruned(ckpt, **extra)
    assert "_base" not in no_load or extra.get("base") == "no_such_wrapper"


@pytest.mark.parametrize(
    "pretrained, message",
    [
        ("/no/such/folder", r"pretrained='/no/such/folder' is not allowed: no such folder"),
        ("./relative/missing", r"pretrained='./relative/missing' is not allowed: no such folder"),
        ("someorg/somemodel", r"pretrained='someorg/somemodel': no such local folder, and its config could not be fetched"),
    ],
)  # fmt: skip
def test_missing_checkpoints_are_named(ckpt, no_load, pretrained, message):
    with pytest.raises(ValueError, match=message):
        pruned(ckpt, pretrained=pretrained)


def test_a_file_or_a_folder_without_config_is_not_a_checkpoint(ckpt, no_load, tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        pruned(ckpt, pretrained=str(tmp_path / "f.txt"))
    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        pruned(ckpt, pretrained=str(tmp_path))


@pytest.mark.parametrize("word", ["no", "off", "0", "false", "No", "OFF", False, 0])
def test_trust_remote_code_off_words_keep_remote_code_off(ckpt, no_load, word):
    with pytest.raises(Loaded):
        pruned(ckpt, trust_remote_code=word)
    assert "trust_remote_code" not in no_load


@pytest.mark.parametrize("word", ["yes", "on", "1", "true", True])
def test_trust_remote_code_on_words_turn_it_on(ckpt, no_load, word):
    with pytest.raises(Loaded):  # hf_vlm is the wrapper that runs a checkpoint's own code
        pruned(ckpt, wrapper_args=False, base="hf_vlm", device="cpu", trust_remote_code=word)
    assert no_load["trust_remote_code"] is True


def test_trust_remote_code_with_a_wrapper_that_takes_none_is_refused(ckpt, no_load):
    with pytest.raises(
        ValueError, match="trust_remote_code=true is not allowed with base='qwen2_5_vl'"
    ):
        pruned(ckpt, trust_remote_code="yes")


def test_a_budget_fraction_is_resolved_against_the_real_depth(ckpt, no_load):
    with pytest.raises(Loaded):
        pruned(ckpt, budget=0.5)  # 2 of 4 layers: allowed


# --------------------------------------------------------------------------- paths
def test_plan_cache_that_is_a_file_is_refused(ckpt, no_load, tmp_path):
    f = tmp_path / "cache"
    f.write_text("mine")
    with pytest.raises(ValueError, match="plan_cache=.* it is a file"):
        pruned(ckpt, plan_cache=str(f))
    assert f.read_text() == "mine"


def test_plan_cache_where_no_folder_can_be_made_is_refused_before_loading(ckpt, no_load, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")  # a folder cannot be created below a file, not even by root
    with pytest.raises(ValueError, match="plan_cache=.* is not a writable folder"):
        pruned(ckpt, plan_cache=str(blocker / "cache"))
    assert blocker.read_text() == "mine"


def test_save_plan_never_replaces_a_file_that_is_not_a_plan(ckpt, no_load, tmp_path):
    f = tmp_path / "notes.json"
    f.write_text('{"my": "notes"}')
    with pytest.raises(ValueError, match="save_plan=.* exists and is not a plan"):
        pruned(ckpt, save_plan=str(f))
    assert f.read_text() == '{"my": "notes"}'


def test_save_plan_onto_a_folder_is_refused(ckpt, no_load, tmp_path):
    with pytest.raises(ValueError, match="save_plan=.* is a folder"):
        pruned(ckpt, save_plan=str(tmp_path))


# --------------------------------------------------------------------------- plan files
def _plan_dict(**change):
    data = {
        "format": 1, "criterion": "math", "criterion_options": {}, "strategy": "topk",
        "strategy_options": {}, "budget": 2, "scores": [0.1, 0.2, 0.3, 0.4], "removed": [1, 2],
        "model": {"name_or_path": "m", "architecture": "Qwen2_5_VLForConditionalGeneration",
                  "model_type": "qwen2_5_vl", "num_layers": 4,
                  "layers_path": "model.language_model.layers"},
    }  # fmt: skip
    data.update(change)
    return data


@pytest.mark.parametrize(
    "change, message",
    [
        ({"removed": [1.7, 2]}, r"layers=\[1.7\] are not allowed"),
        ({"removed": [True, 2]}, r"layers=\[True\] are not allowed"),
        ({"removed": [1, 1]}, r"repeats an index"),
        ({"removed": [1, 9]}, r"layers=\[9\] are not allowed; indices must be integers in \[0, 3\]"),
        ({"removed": [1]}, r"holds 1 layers, but budget=2 removes 2 of 4"),
        ({"removed": []}, r"holds 0 layers, but budget=2"),
        ({"removed": "1,2"}, r"removed='1,2' is not allowed in a plan"),
        ({"scores": [0.1, float("nan"), 0.3, 0.4]}, r"scores must be finite numbers"),
        ({"scores": [0.1, 0.2]}, r"2 scores for 4 layers"),
        ({"budget": True}, r"budget=True is not allowed in a plan"),
        ({"format": 99}, r"format=99, this version reads format 1"),
        ({"model": None}, r"not a valid prune plan"),
    ],
)  # fmt: skip
def test_malformed_plan_files_are_refused(tmp_path, change, message):
    f = tmp_path / "plan.json"
    f.write_text(json.dumps(_plan_dict(**change)))
    with pytest.raises(ValueError, match=message):
        PrunePlan.load(f)


def test_garbage_plan_file_is_named(tmp_path):
    f = tmp_path / "plan.json"
    f.write_bytes(b"\x00\xffnot json")
    with pytest.raises(ValueError, match=f"plan='{f}' is not a valid prune plan"):
        PrunePlan.load(f)


# --------------------------------------------------------------------------- with a model
@pytest.fixture(scope="module")
def calibrated(ckpt, tmp_path_factory):
    """One calibrated load; its plan, and the cache it filled."""
    cache = tmp_path_factory.mktemp("cache")
    lm = pruned(ckpt, plan_cache=str(cache))
    return lm.plan, cache, lm.calibration_forwards


def test_a_plan_from_another_checkpoint_is_refused_unless_told(calibrated, other_ckpt, tmp_path):
    from lmms_prune_plugin.harnesses.lmms_eval import results

    plan, _, _ = calibrated
    f = plan.save(tmp_path / "plan.json")
    with pytest.raises(ValueError, match="does not fit this model .*weights.*plan_strict=false"):
        pruned(other_ckpt, plan=str(f), plan_cache="false")
    lm = pruned(other_ckpt, plan=str(f), plan_cache="false", plan_strict="false")
    assert lm.plan.removed == plan.removed
    assert results._STATE["plan"]["evaluated_model"] == str(other_ckpt)
    assert results._STATE["plan"]["model"] == plan.model.name_or_path


def test_a_plan_for_another_layout_is_refused_even_when_not_strict(calibrated, tmp_path):
    from lmms_prune_plugin.testing.tiny import save_tiny_vlm

    plan, _, _ = calibrated
    f = plan.save(tmp_path / "plan.json")
    deeper = save_tiny_vlm(ARCH, tmp_path / "deeper", num_layers=5)
    with pytest.raises(ValueError, match="num_layers: plan has 4, model has 5"):
        pruned(deeper, plan=str(f), plan_cache="false", plan_strict="false")


def test_a_local_copy_of_the_same_weights_accepts_the_plan(calibrated, ckpt, tmp_path):
    plan, _, _ = calibrated
    f = plan.save(tmp_path / "plan.json")
    copy = shutil.copytree(ckpt, tmp_path / "copy")
    assert pruned(copy, plan=str(f), plan_cache="false").plan.removed == plan.removed


def _entries(cache: Path, kind: str) -> list[Path]:
    return sorted(cache.glob(f"{kind}-*.json"))


def _with_copy(cache: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "cache"
    shutil.copytree(cache, dst)
    return dst


CORRUPT = {
    "truncated": lambda text: text[: len(text) // 2],
    "garbage": lambda text: "\x00\x01 not json",
    "a list": lambda text: "[1, 2, 3]",
    "wrong shape": lambda text: json.dumps({"stats": {"nothing": 1}}),
    "another layer count": lambda text: _edit_stats(text, num_layers=5, cos_sum=[0.9] * 5),
    "zero tokens": lambda text: _edit_stats(text, tokens=0),
    "NaN sums": lambda text: _edit_stats(text, cos_sum=[math.nan] * 4),
    "sums beyond the token count": lambda text: _edit_stats(text, cos_sum=[1e9] * 4),
}


def _edit_stats(text: str, **change) -> str:
    data = json.loads(text)
    data["stats"].update(change)
    return json.dumps(data)


@pytest.mark.parametrize("how", list(CORRUPT))
def test_a_bad_calibration_entry_is_reported_and_recomputed(
    calibrated, ckpt, tmp_path, logged, how
):
    plan, cache, forwards = calibrated
    cache = _with_copy(cache, tmp_path)
    for f in _entries(cache, "plan"):
        f.unlink()  # the plan must be made again from the calibration entries
    entries = _entries(cache, "calibration")
    for f in entries:
        f.write_text(CORRUPT[how](f.read_text()))
    lm = pruned(ckpt, plan_cache=str(cache))
    assert lm.plan.removed == plan.removed and lm.plan.scores == pytest.approx(plan.scores)
    assert lm.calibration_forwards == forwards > 0
    assert all(any(str(f) in m and "recomputing" in m for m in logged) for f in entries)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda d: d | {"removed": []}, "not a valid plan"),
        (lambda d: d | {"removed": [0, 1, 2]}, "not a valid plan"),
        (lambda d: d | {"criterion": "nonmath"}, "does not fit"),
        (lambda d: d | {"model": d["model"] | {"fingerprint": "0" * 64}}, "does not fit"),
    ],
    ids=["empty removed", "too many removed", "another criterion", "another checkpoint"],
)
def test_a_bad_plan_entry_is_reported_and_recomputed(
    calibrated, ckpt, tmp_path, logged, edit, problem
):
    plan, cache, _ = calibrated
    cache = _with_copy(cache, tmp_path)
    (entry,) = _entries(cache, "plan")
    entry.write_text(json.dumps(edit(json.loads(entry.read_text()))))
    lm = pruned(ckpt, plan_cache=str(cache))
    assert lm.plan == plan
    assert any(str(entry) in m and problem in m for m in logged)


def test_a_good_cache_is_used_without_a_forward(calibrated, ckpt):
    plan, cache, _ = calibrated
    lm = pruned(ckpt, plan_cache=str(cache))
    assert lm.calibration_forwards == 0 and lm.plan == plan


@pytest.mark.parametrize(
    "change",
    [
        "min_pixels",
        "dtype",
        "tokenizer",
        "chat_template",
        "task_file",
        "version",
        "tokens",
        "limit",
    ],
)
def test_whatever_changes_the_activations_misses_the_cache(
    calibrated, ckpt, tmp_path, monkeypatch, change
):
    _, cache, _ = calibrated
    cache = _with_copy(cache, tmp_path)
    path, extra = ckpt, {}
    if change == "min_pixels":
        extra = {"min_pixels": 2 * wrapper_kwargs(ARCH)["min_pixels"]}
    elif change == "dtype":
        monkeypatch.setattr(
            "lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm.build_wrapper", _float64_wrapper
        )
    elif change in ("tokenizer", "chat_template"):
        path = shutil.copytree(ckpt, tmp_path / "ckpt")
        if change == "tokenizer":
            target = path / "tokenizer_config.json"
            target.write_text(target.read_text().replace("}", " }", 1))  # same JSON, other bytes
        else:
            target = path / "chat_template.jinja"
            assert target.exists()
            target.write_text(target.read_text() + "{# edited #}")
    elif change == "task_file":
        tasks = shutil.copytree(TASKS, tmp_path / "tasks")
        doc = tasks / "prune_test" / "docs.jsonl"
        doc.write_text(doc.read_text() + "\n")
        extra = {"include_path": str(tasks)}
    elif change == "version":
        monkeypatch.setattr("lmms_prune_plugin.__version__", "999.0")
        monkeypatch.setattr("lmms_prune_plugin.core.cache.__version__", "999.0")
    elif change == "tokens":
        extra = {"tokens": "last"}
    elif change == "limit":
        extra = {"calib_limit": 3}
    lm = pruned(path, plan_cache=str(cache), **extra)
    assert lm.calibration_forwards > 0


def _float64_wrapper(name, simple, **kwargs):
    from lmms_prune_plugin.harnesses.lmms_eval.base import build_wrapper

    wrapper = build_wrapper(name, simple, **kwargs)
    wrapper.model.to(dtype=__import__("torch").float64)
    return wrapper


def test_tokens_image_on_a_model_without_image_token_ids_is_refused():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from lmms_prune_plugin.core.capture import LayerCapture

    model = Qwen2ForCausalLM(Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=1, intermediate_size=64, vocab_size=64))  # fmt: skip
    for tokens in ("image", "text"):
        with pytest.raises(
            ValueError, match=f"tokens='{tokens}' is not allowed for .* names no image token id"
        ):
            LayerCapture(model, tokens=tokens)


# --------------------------------------------------------------------------- CLI
def run(*argv):
    from lmms_prune_plugin.tools.cli import main

    return main([str(a) for a in argv])


def test_export_onto_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "out"
    f.write_text("mine")
    assert run("export", "--out", f) == 2
    assert "out=" in capsys.readouterr().err and f.read_text() == "mine"


def test_export_never_replaces_a_folder_that_is_not_an_export(tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert run("export", "--out", out, "--force") == 2
    assert "holds no export of lmms-prune" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "years of work"


def test_an_interrupted_exports_leftovers_are_removed_only_when_provably_ours(
    calibrated, ckpt, tmp_path
):
    from lmms_prune_plugin.surgery.export import MANIFEST_FORMAT, MARKER, export_pruned

    plan, _, _ = calibrated
    out = tmp_path / "export"
    export_pruned(str(ckpt), plan, out)
    finished = tmp_path / ".export.0123456789abcdef.tmp"  # interrupted before the move
    shutil.copytree(out, finished)
    started = tmp_path / ".export.fedcba9876543210.tmp"  # interrupted right after it was made
    started.mkdir()
    marker = {"format": MANIFEST_FORMAT, "state": "writing", "token": "fedcba9876543210"}
    (started / MARKER).write_text(json.dumps(marker | {"files": {}}))
    unproven = tmp_path / ".export.abc123.tmp"  # a marker, but no manifest of its content
    unproven.mkdir()
    (unproven / MARKER).write_text("{}")
    theirs = tmp_path / ".export.keep.tmp"
    theirs.mkdir()
    (theirs / "file").write_text("not ours")
    export_pruned(str(ckpt), plan, out)
    assert not finished.exists() and not started.exists()
    assert (unproven / MARKER).read_text() == "{}" and (theirs / "file").exists()
    assert PrunePlan.load(out / "plan.json") == plan


def test_export_below_a_file_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    assert run("export", "--out", blocker / "x") == 2
    assert "not a writable folder" in capsys.readouterr().err and blocker.read_text() == "mine"


def test_sweep_out_that_is_a_folder_is_refused(tmp_path, capsys):
    assert run("sweep", "--out", tmp_path) == 2
    assert "is a folder; give the sweep JSONL file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "row, problem",
    [
        ({"criterion": "math"}, "no 'model'"),
        ({"model": "m", "criterion": "math", "strategy": "topk", "budget": "2", "tasks": [],
          "metrics": {}, "removed": []}, "budget='2' is not int or float"),
        ({"model": "m", "criterion": "math", "strategy": "topk", "budget": 2, "tasks": [],
          "metrics": {"t": {"acc": "high"}}, "removed": []}, "metrics\\['t'\\] is not a mapping"),
        ({"model": "m", "criterion": "math", "strategy": "topk", "budget": 2, "tasks": [],
          "metrics": {}, "removed": [1.5]}, "removed=\\[1.5\\] is not a list of layer indices"),
        ([1, 2], "a list, not a JSON object"),
    ],
)  # fmt: skip
def test_malformed_sweep_rows_name_file_and_line(tmp_path, capsys, row, problem):
    f = tmp_path / "s.jsonl"
    f.write_text("\n" + json.dumps(row) + "\n")
    assert run("report", f, "--out", tmp_path / "r") == 2
    assert f"{f}:2: not a sweep row: " in capsys.readouterr().err
    assert run("sweep", "--out", f) == 2  # the same check on resume, before loading anything
    err = capsys.readouterr().err
    assert f"{f}:2" in err
    import re

    assert re.search(problem, err)


def test_report_input_that_is_a_folder_is_refused(tmp_path, capsys):
    assert run("report", tmp_path, "--out", tmp_path / "r") == 2
    assert "is a folder; give a sweep JSONL file" in capsys.readouterr().err


def test_the_same_option_as_flag_and_model_arg_is_refused(tmp_path, capsys):
    assert run("rank", "--model_args", "calib_limit=8", "--calib_limit", "4") == 2
    assert "calib_limit is given both in --model_args" in capsys.readouterr().err


def test_rank_bootstrap_of_one_is_refused(capsys):
    assert run("rank", "--bootstrap", "1") == 2
    assert "bootstrap=1 is not allowed" in capsys.readouterr().err

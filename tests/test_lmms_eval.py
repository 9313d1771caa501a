"""pruned_vlm inside lmms-eval: the real CLI in a subprocess, simple_evaluate, plan caching."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmms_prune_plugin.testing.tiny import save_tiny_vlm, wrapper_kwargs

TASKS = str(Path(__file__).parent / "tasks")
CALIB = {
    "calib_math": "prune_test_colours",
    "calib_nonmath": "prune_test_colours_b",
    "include_path": TASKS,
    "calib_limit": 8,
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {
        arch: save_tiny_vlm(arch, root / arch, num_layers=6)
        for arch in ("qwen2_5_vl", "llava_onevision", "qwen2_vl", "idefics3")
    }


def args_for(arch, path, **extra):
    kwargs = {
        "pretrained": str(path),
        **({} if "plan" in extra else CALIB),  # a plan file takes no calibration options
        **(wrapper_kwargs(arch) if arch != "idefics3" else {"device": "cpu"}),
        **extra,
    }
    return kwargs


def run_cli(model_args: dict, out: Path, tasks="prune_test_colours", launcher=(sys.executable,)):
    """Run the real lmms-eval CLI; return (results JSON, finished process)."""
    arg_string = ",".join(f"{k}={v}" for k, v in model_args.items())
    cmd = [*launcher, "-m", "lmms_eval", "--model", "pruned_vlm", "--model_args", arg_string, "--tasks", tasks,
           "--include_path", TASKS, "--limit", "8", "--output_path", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    found = sorted(out.rglob("*_results.json"))
    # lmms-eval exits 0 even when evaluation fails: the results file is the evidence.
    assert found, f"no results file\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(found[-1].read_text()), proc


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch, wrapper",
    [
        ("qwen2_5_vl", "qwen2_5_vl"),
        ("llava_onevision", "llava_hf"),
        ("qwen2_vl", "qwen2_vl"),
        ("idefics3", "hf_vlm"),
    ],
)
def test_cli_end_to_end(checkpoints, tmp_path, arch, wrapper):
    results, proc = run_cli(
        args_for(arch, checkpoints[arch], criterion="math", budget=2), tmp_path / "out"
    )
    plan = results["config"]["prune_plan"]
    assert plan["num_layers"] == 6 and plan["kept_layers"] == 4 and len(plan["removed"]) == 2
    assert plan["criterion"] == "math" and plan["calibration"]["samples"] == {"math": 8}
    assert len(plan["scores"]) == 6
    metrics = results["results"]["prune_test_colours"]
    assert 0.0 <= metrics["exact_match,none"] <= 1.0
    assert f"removed {plan['removed']}" in proc.stderr
    assert f"base={wrapper}" in proc.stderr  # the wrapper picked from the model_type


def _model(arch, path, **extra):
    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM

    return PrunedVLM(**args_for(arch, path, **extra))


@pytest.mark.slow
def test_simple_evaluate_with_a_model_instance(checkpoints):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    lm = _model(
        "qwen2_5_vl", checkpoints["qwen2_5_vl"], criterion="nonmath", budget=3, strategy="spaced"
    )
    assert type(lm.base).__name__ == "Qwen2_5_VL" and lm.is_simple is False
    assert len(lm.hf_model.model.language_model.layers) == 3
    removed = lm.plan.removed
    assert all(b - a >= 2 for a, b in zip(removed, removed[1:]))
    out = simple_evaluate(
        model=lm,
        tasks=["prune_test_colours"],
        limit=4,
        task_manager=TaskManager(include_path=TASKS),
    )
    assert "exact_match,none" in out["results"]["prune_test_colours"]
    assert out["config"]["prune_plan"]["removed"] == list(removed)


def test_wrapper_is_picked_from_model_type(checkpoints):
    from lmms_prune_plugin.harnesses.lmms_eval.base import pick_wrapper, read_config

    assert pick_wrapper(read_config(str(checkpoints["qwen2_5_vl"]))) == "qwen2_5_vl"
    assert pick_wrapper(read_config(str(checkpoints["llava_onevision"]))) == "llava_hf"
    assert pick_wrapper(read_config(str(checkpoints["idefics3"]))) == "hf_vlm"


def test_second_load_reuses_the_cached_plan(checkpoints):
    first = _model("qwen2_5_vl", checkpoints["qwen2_5_vl"], criterion="mixed", budget=2)
    assert first.calibration_forwards > 0
    second = _model("qwen2_5_vl", checkpoints["qwen2_5_vl"], criterion="mixed", budget=2)
    assert second.calibration_forwards == 0 and second.plan == first.plan
    # Statistics are cached per domain: another criterion on the same data calibrates nothing.
    third = _model("qwen2_5_vl", checkpoints["qwen2_5_vl"], criterion="math", budget=1)
    assert third.calibration_forwards == 0 and len(third.plan.removed) == 1


def test_one_pass_per_domain_feeds_every_criterion(checkpoints):
    lm = _model(
        "qwen2_5_vl", checkpoints["qwen2_5_vl"], criterion="shortgpt", budget=1, plan_cache=False
    )
    assert lm.calibration_forwards == 16  # 8 math + 8 non-math prompts, batch size 1


def test_saved_plan_applies_without_calibrating(checkpoints, tmp_path):
    first = _model(
        "qwen2_5_vl",
        checkpoints["qwen2_5_vl"],
        criterion="math",
        budget=2,
        save_plan=tmp_path / "p.json",
        plan_cache=False,
    )
    again = _model(
        "qwen2_5_vl",
        checkpoints["qwen2_5_vl"],
        plan=tmp_path / "p.json",
        plan_cache=False,
    )
    assert again.calibration_forwards == 0 and again.plan == first.plan
    with pytest.raises(ValueError, match=r"not allowed together with calib_math='does_not_exist'"):
        _model(
            "qwen2_5_vl",
            checkpoints["qwen2_5_vl"],
            plan=tmp_path / "p.json",
            calib_math="does_not_exist",
        )  # it would be ignored: refused, not silently
    assert len(again.hf_model.model.language_model.layers) == 4


def test_budget_zero_calibrates_nothing(checkpoints):
    lm = _model("qwen2_5_vl", checkpoints["qwen2_5_vl"], budget=0, calib_math="does_not_exist")
    assert lm.calibration_forwards == 0 and lm.plan.removed == ()
    assert len(lm.hf_model.model.language_model.layers) == 6


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {"base": "no_such_wrapper"},
            "base='no_such_wrapper' is not an lmms-eval model; choose one of:",
        ),
        (
            {"calib_math": "no_such_task"},
            "calib_math='no_such_task': lmms-eval knows no task 'no_such_task'",
        ),
        (
            {"calib_math": "prune_test_noimage"},
            "calib_math='prune_test_noimage': calibration task has no images",
        ),
        ({"budget": -0.5}, r"budget=-0.5 is not allowed; it must be >= 0"),
        ({"budget": 6}, "budget=6 removes 6 of 6 layers"),
        (
            {"criterion": "nonmath", "calib_nonmath": "none"},
            "criterion='nonmath' needs calibration on nonmath, but only .* set calib_nonmath",
        ),
        ({"calib_limit": 0}, "calib_limit=0 is not allowed"),
    ],
)
def test_bad_input_is_reported_clearly(checkpoints, extra, message):
    with pytest.raises(ValueError, match=message):
        _model(
            "qwen2_5_vl", checkpoints["qwen2_5_vl"], **{"criterion": "math", "budget": 2} | extra
        )


def test_corrupt_or_foreign_plan_files_are_refused(checkpoints, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="is not a valid prune plan"):
        _model("qwen2_5_vl", checkpoints["qwen2_5_vl"], plan=bad)
    foreign = tmp_path / "foreign.json"
    _model("qwen2_vl", checkpoints["qwen2_vl"], criterion="math", budget=1, save_plan=foreign)
    with pytest.raises(ValueError, match="does not fit this model.*architecture"):
        _model("qwen2_5_vl", checkpoints["qwen2_5_vl"], plan=foreign)


def test_corrupt_cache_entry_is_reported_and_recomputed(checkpoints, logged):
    from lmms_prune_plugin.core.cache import default_cache_dir

    first = _model("qwen2_5_vl", checkpoints["qwen2_5_vl"], criterion="math", budget=2)
    entries = list(default_cache_dir().glob("*.json"))
    for entry in entries:
        entry.write_text("{broken")
    again = _model("qwen2_5_vl", checkpoints["qwen2_5_vl"], criterion="math", budget=2)
    assert again.calibration_forwards > 0 and again.plan == first.plan
    # Reported through the logger lmms-eval users see (it silences Python warnings), by file.
    reported = [m for m in logged if "is corrupt" in m]
    assert reported and all(any(str(e) in m for m in reported) for e in entries)


@pytest.mark.slow
def test_two_processes_split_calibration_and_agree_on_the_plan(checkpoints, tmp_path):
    """torchrun with 2 CPU processes (gloo): each rank calibrates half, statistics are summed."""
    single = _model(
        "qwen2_5_vl", checkpoints["qwen2_5_vl"], criterion="math", budget=2, plan_cache=False
    ).plan
    torchrun = (str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2")
    margs = args_for(
        "qwen2_5_vl", checkpoints["qwen2_5_vl"], criterion="math", budget=2, plan_cache="false"
    )
    results, proc = run_cli(margs, tmp_path / "out", launcher=torchrun)
    assert "rank 0/2 calibrates 4 of 8 math samples" in proc.stderr
    assert "rank 1/2 calibrates 4 of 8 math samples" in proc.stderr
    plans = re.findall(
        r"6 -> 4 layers \| criterion=math strategy=topk budget=2 \| removed \[[0-9, ]*\] \(scores [^)]*\)",
        proc.stderr,
    )
    assert len(plans) == 2 and plans[0] == plans[1]  # lines of the two ranks may interleave
    plan = results["config"]["prune_plan"]
    assert plan["removed"] == list(single.removed)
    assert plan["calibration"]["samples"] == {"math": 8}
    assert plan["scores"] == pytest.approx(list(single.scores), abs=1e-6)


def test_hf_vlm_loglikelihood_returns_losses(checkpoints):
    """lmms-eval's multiple-choice tasks take the argmin: answers must be losses (NLL > 0)."""
    import math

    from lmms_eval.tasks import TaskManager, get_task_dict

    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLMSimple

    lm = PrunedVLMSimple(
        pretrained=str(checkpoints["idefics3"]), device="cpu", criterion="last", budget=2
    )
    assert lm.base_name == "hf_vlm" and lm.is_simple
    task = get_task_dict(["prune_test_choice"], TaskManager(include_path=TASKS), "simple")[
        "prune_test_choice"
    ]
    task.build_all_requests(limit=2)
    lm.task_dict["prune_test_choice"] = task.dataset
    answers = lm.loglikelihood(task.instances)
    assert len(answers) == 8  # 2 docs x 4 choices
    for doc in range(2):
        losses = [a.text[0] for a in answers[4 * doc : 4 * doc + 4]]
        assert all(math.isfinite(x) and x > 0 for x in losses)
        assert sum(math.exp(-x) for x in losses) <= 1.0 + 1e-6  # distinct continuations


@pytest.mark.slow
def test_multiple_choice_through_the_cli_matches_a_direct_computation(checkpoints, tmp_path):
    """A local multiple-choice task through the real CLI on a base wrapper (qwen2_vl) that has
    no loglikelihood of its own: every document's choice and the accuracy equal those computed
    directly with transformers on the pruned model."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from lmms_prune_plugin.surgery.layers import remove_decoder_layers_

    sys.path.insert(0, str(Path(TASKS) / "prune_test"))
    import utils as task_utils

    ckpt = checkpoints["qwen2_vl"]
    margs = args_for("qwen2_vl", ckpt, criterion="math", budget=2)
    cmd_out = tmp_path / "out"
    arg_string = ",".join(f"{k}={v}" for k, v in margs.items())
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "pruned_vlm", "--model_args", arg_string,
           "--tasks", "prune_test_choice", "--include_path", TASKS, "--limit", "8",
           "--log_samples", "--output_path", str(cmd_out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    found = sorted(cmd_out.rglob("*_results.json"))
    assert found, proc.stderr[-3000:]
    results = json.loads(found[-1].read_text())
    samples = [json.loads(x) for f in cmd_out.rglob("*samples_prune_test_choice*.jsonl")
               for x in f.read_text().splitlines()]  # fmt: skip
    assert len(samples) == 8
    removed = results["config"]["prune_plan"]["removed"]

    kw = wrapper_kwargs("qwen2_vl")
    processor = AutoProcessor.from_pretrained(
        ckpt, min_pixels=kw["min_pixels"], max_pixels=kw["max_pixels"]
    )
    model = AutoModelForImageTextToText.from_pretrained(ckpt).eval()
    remove_decoder_layers_(model, removed)
    docs = [
        json.loads(x) for x in (Path(TASKS) / "prune_test" / "docs.jsonl").read_text().splitlines()
    ]
    choices = ["red", "green", "blue", "yellow"]
    correct = 0
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        doc = docs[sample["doc_id"]]
        image = task_utils.doc_to_visual(doc)
        chat = [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": task_utils.doc_to_text(doc)},
                ],
            }
        ]
        prompt = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        base = processor(text=[prompt], images=[image], return_tensors="pt")
        logprob = []
        for c in choices:
            cont = processor.tokenizer(
                " " + c, add_special_tokens=False, return_tensors="pt"
            ).input_ids
            ids = torch.cat([base["input_ids"], cont], 1)
            inputs = dict(base, input_ids=ids, attention_mask=torch.ones_like(ids))
            if "mm_token_type_ids" in base:  # the answer tokens are text
                inputs["mm_token_type_ids"] = torch.cat([base["mm_token_type_ids"], 0 * cont], 1)
            with torch.no_grad():
                out = model(**inputs).logits[0, base["input_ids"].shape[1] - 1 : -1].log_softmax(-1)
            logprob.append(float(out.gather(1, cont[0][:, None]).sum()))
        losses = [float(r[0]) for r in sample["filtered_resps"]]  # (loss, greedy) per choice
        assert losses == pytest.approx([-x for x in logprob], rel=1e-4, abs=1e-4)
        picked = max(range(4), key=lambda i: logprob[i])
        assert min(range(4), key=lambda i: losses[i]) == picked
        correct += picked == task_utils.doc_to_target(doc)
    assert results["results"]["prune_test_choice"]["acc,none"] == pytest.approx(correct / 8)


@pytest.mark.slow
def test_qwen3_vl_end_to_end_through_its_own_wrapper(tmp_path):
    """The paper's architecture: a tiny Qwen3-VL through the real CLI and lmms-eval's qwen3_vl.

    Its deepstack adds visual features to the hidden states after the first decoder layer (one
    level here); every layer, that one included, must get a measured score.
    """
    import math

    path = save_tiny_vlm("qwen3_vl", tmp_path / "qwen3vl", num_layers=6)
    margs = {"pretrained": str(path), **CALIB, **wrapper_kwargs("qwen3_vl")}
    margs |= {"criterion": "math", "budget": 2, "plan_cache": "false"}
    results, proc = run_cli(margs, tmp_path / "out")
    assert "base=qwen3_vl" in proc.stderr
    plan = results["config"]["prune_plan"]
    assert plan["num_layers"] == 6
    assert plan["kept_layers"] == 4 and len(plan["removed"]) == 2
    assert plan["calibration"]["samples"] == {"math": 8}
    # Mean cos(h_in, h_out) per layer: a layer never measured would score exactly 0.
    assert len(plan["scores"]) == 6
    assert all(math.isfinite(s) and 0.0 < s <= 1.0 for s in plan["scores"])
    assert 0.0 <= results["results"]["prune_test_colours"]["exact_match,none"] <= 1.0


# model_type -> (lmms-eval wrapper, its class, extra pruned_vlm options).
OWN_WRAPPERS = {
    "gemma3": ("gemma3", "Gemma3", {}),
    # Removing a Gemma4 layer that stores the full-length KV (the last of each attention type) is
    # refused: layers [S, F, S, F], the last two protected.
    "gemma4": ("gemma4", "Gemma4", {"protect_last": 2}),
    "glm4v_moe": ("glm4v", "GLM4V", {}),
    "idefics2": ("idefics2", "Idefics2", {}),
    "internvl": ("internvl_hf", "InternVLHf", {}),
    "llava": ("llava_hf", "LlavaHf", {}),
    "llava_next": ("llava_hf", "LlavaHf", {}),
    "mistral3": ("mistral3_vl", "Mistral3_VL", {}),
    "mllama": ("llama_vision", "LlamaVision", {}),
    "qwen3_5": ("qwen3_5", "Qwen3_5", {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", OWN_WRAPPERS)
def test_architecture_is_evaluated_through_lmms_evals_own_wrapper(tmp_path, arch):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM
    from lmms_prune_plugin.surgery.layers import find_decoder_layers
    from lmms_prune_plugin.testing.archs import checkpoint_wrapper_kwargs, save_arch_checkpoint

    base, wrapper, options = OWN_WRAPPERS[arch]
    path = save_arch_checkpoint(arch, tmp_path / arch, num_layers=4)
    margs = {"pretrained": str(path), **CALIB, **checkpoint_wrapper_kwargs(arch, path)}
    lm = PrunedVLM(**margs, criterion="math", budget=1, plan_cache=False, **options)
    assert lm.base_name == base and type(lm.base).__name__ == wrapper
    assert len(find_decoder_layers(lm.hf_model)) == 3
    assert lm.calibration_forwards == 8
    towers = ("vision_tower", "vision_model", "visual")
    tower = next(m for n, m in lm.hf_model.named_modules() if n.rsplit(".", 1)[-1] in towers)
    seen = []
    tower.register_forward_hook(lambda *_: seen.append(1))
    out = simple_evaluate(
        model=lm,
        tasks=["prune_test_colours"],
        limit=2,
        task_manager=TaskManager(include_path=TASKS),
    )
    assert seen  # the wrapper's processor and prompt put the images through the vision tower
    assert 0.0 <= out["results"]["prune_test_colours"]["exact_match,none"] <= 1.0
    assert out["config"]["prune_plan"]["removed"] == list(lm.plan.removed)


@pytest.mark.slow
def test_a_base_that_loads_another_architecture_is_refused_before_calibration(tmp_path):
    """lmms-eval's glm4v picks its model class from the path: a dense GLM-4V checkpoint whose
    path does not say "Flash" loads as GLM-4V-MoE. That is named, not measured."""
    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM
    from lmms_prune_plugin.testing.archs import checkpoint_wrapper_kwargs, save_arch_checkpoint

    path = save_arch_checkpoint("glm4v", tmp_path / "glm4v", num_layers=4)
    margs = {"pretrained": str(path), **CALIB, **checkpoint_wrapper_kwargs("glm4v", path)}
    with pytest.raises(ValueError, match="model_type 'glm4v_moe'.*model_type is 'glm4v'"):
        PrunedVLM(**margs, base="glm4v", criterion="math", budget=1, plan_cache=False)


def test_a_base_whose_wrapper_does_not_import_is_named(monkeypatch):
    from lmms_eval import models

    from lmms_prune_plugin.harnesses.lmms_eval.base import wrapper_class

    def missing(name, force_simple=False):
        raise ModuleNotFoundError("No module named 'librosa'")

    monkeypatch.setattr(models, "get_model", missing)
    with pytest.raises(ValueError, match=r"base='phi4_multimodal' cannot be used.*librosa"):
        wrapper_class("phi4_multimodal", simple=False)


def test_remote_code_runs_only_when_the_user_says_so(tmp_path):
    """gemma4 defaults to trust_remote_code=True: it is given false. qwen3_5 always trusts: a
    checkpoint that ships code is refused before anything loads."""
    import json

    from lmms_prune_plugin.harnesses.lmms_eval.arguments import _check_remote_code
    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM

    kwargs: dict = {}
    _check_remote_code("gemma4", False, str(tmp_path), None, False, kwargs)
    assert kwargs == {"trust_remote_code": False}
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "qwen3_5", "num_hidden_layers": 4,
        "auto_map": {"AutoConfig": "configuration_x.XConfig"},
    }))  # fmt: skip
    with pytest.raises(ValueError, match=r"base='qwen3_5' loads with trust_remote_code=True"):
        PrunedVLM(pretrained=str(tmp_path), **CALIB, criterion="math", budget=1, plan_cache=False)


def test_code_mapped_by_a_processor_file_is_refused_too(tmp_path):
    """mistral3_vl loads its processor with trust_remote_code=True: an auto_map in
    processor_config.json (not config.json) would run the checkpoint's code."""
    import json

    from lmms_prune_plugin.harnesses.lmms_eval.base import ships_code
    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral3"}))
    assert ships_code(str(tmp_path)) == []
    (tmp_path / "processor_config.json").write_text(
        json.dumps({"auto_map": {"AutoProcessor": "processing_x.XProcessor"}})
    )
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_processor": {"auto_map": {"AutoImageProcessor": "x.Y"}}})
    )
    assert ships_code(str(tmp_path)) == ["preprocessor_config.json", "processor_config.json"]
    with pytest.raises(ValueError, match=r"mistral3_vl.*auto_map in preprocessor_config.json"):
        PrunedVLM(pretrained=str(tmp_path), **CALIB, budget=0, plan_cache=False)


def test_a_wrapper_that_hard_codes_remote_code_is_found_from_its_source():
    """Wrappers outside the known list (lfm2_5_vl) that pass trust_remote_code=True in a call
    are treated like the known ones; wrappers that take the argument and honour it (a default of
    True included: vllm) are not."""
    import ast

    from lmms_prune_plugin.harnesses.lmms_eval.base import (
        _literal_trust,
        always_trusts,
        wrapper_class,
    )

    where = always_trusts("lfm2_5_vl", wrapper_class("lfm2_5_vl", simple=False))
    assert where is not None and where.startswith("lmms_eval/models/chat/lfm2_5_vl.py:")
    for name in ("gemma3", "idefics2", "llava_hf", "hf_vlm", "vllm"):
        assert always_trusts(name, wrapper_class(name, simple=False)) is None, name
    # What counts: a literal True passed in a call or a dict; not a default, comment or string.
    source = (
        "def f(trust_remote_code=True):\n"
        "    # load(trust_remote_code=True)\n"
        "    'load(trust_remote_code=True)'\n"
        "    load(x, trust_remote_code=trust_remote_code)\n"
    )
    assert _literal_trust(ast.parse(source)) is None
    assert _literal_trust(ast.parse(source + "    load(x, trust_remote_code=True)\n")) == 5
    assert _literal_trust(ast.parse(source + "    kw = {'trust_remote_code': True}\n")) == 5


def test_a_revision_reaches_the_wrapper_or_is_refused(tmp_path):
    """Wrappers that load model and processor at the revision get it; llama_vision loads its
    processor from the default branch and qwen2_5_vl takes none: refused before loading, as is a
    revision of a local folder."""
    from lmms_prune_plugin.harnesses.lmms_eval.arguments import _check_revision

    kwargs: dict = {}
    _check_revision("hf_vlm", "org/name", "v1", kwargs)
    assert kwargs == {"revision": "v1"}
    _check_revision("qwen2_5_vl", "org/name", None, kwargs := {})
    assert kwargs == {}
    for base in ("qwen2_5_vl", "llama_vision"):
        with pytest.raises(ValueError, match=rf"revision='v1' is not allowed with base='{base}'"):
            _check_revision(base, "org/name", "v1", {})
    with pytest.raises(ValueError, match="it is a local folder, which has no revisions"):
        _check_revision("hf_vlm", str(tmp_path), "v1", {})


def test_a_checkpoint_without_model_type_is_refused_before_loading(tmp_path):
    import json

    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM

    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 4}))
    for base in (None, "qwen2_5_vl"):
        with pytest.raises(ValueError, match="its config.json has no model_type"):
            PrunedVLM(pretrained=str(tmp_path), base=base, **CALIB, budget=1, plan_cache=False)


@pytest.mark.slow
def test_a_wrapper_that_cannot_load_the_architecture_is_named(tmp_path):
    """llava_hf looks the model_type up in its own map: a KeyError from inside lmms-eval becomes
    an error that names the base, the checkpoint and its model_type."""
    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM
    from lmms_prune_plugin.testing.archs import checkpoint_wrapper_kwargs, save_arch_checkpoint

    path = save_arch_checkpoint("idefics2", tmp_path / "idefics2", num_layers=4)
    kwargs = checkpoint_wrapper_kwargs("idefics2", path)
    kwargs.pop("dtype", None)
    with pytest.raises(
        ValueError, match=r"base='llava_hf' could not load .*model_type 'idefics2'.*KeyError"
    ):
        PrunedVLM(
            pretrained=str(path), base="llava_hf", **CALIB, **kwargs, budget=1, plan_cache=False
        )


def test_trust_remote_code_true_with_a_wrapper_that_always_trusts_is_accepted():
    """qwen3_vl has no trust_remote_code argument but always loads with it: asking for it is
    what the wrapper does anyway, so the argument is not passed on and not refused."""
    from lmms_prune_plugin.harnesses.lmms_eval.arguments import (
        _check_base_kwargs,
        _check_remote_code,
    )

    for base, simple in (("qwen3_vl", True), ("lfm2_5_vl", False)):
        kwargs: dict = {"trust_remote_code": True}
        _check_remote_code(base, simple, "unused", None, True, kwargs)
        assert "trust_remote_code" not in kwargs
        _check_base_kwargs(base, simple, kwargs)  # nothing left to refuse
    # A wrapper that neither takes nor always uses remote code still refuses it.
    with pytest.raises(ValueError, match="trust_remote_code=true is not allowed"):
        kwargs = {"trust_remote_code": True}
        _check_remote_code("qwen2_5_vl", True, "unused", None, True, kwargs)
        _check_base_kwargs("qwen2_5_vl", True, kwargs)


def test_errors_of_memory_and_bad_values_while_loading_pass_through_unchanged(monkeypatch):
    """Only a wrapper's failed lookups (KeyError, AttributeError) are reported as "cannot load
    this architecture"; running out of memory or a bad value is not about the architecture."""
    import torch

    from lmms_prune_plugin.harnesses.lmms_eval import pruned_vlm

    for error in (torch.OutOfMemoryError("CUDA out of memory"), ValueError("invalid literal")):

        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(pruned_vlm, "build_wrapper", fail)
        with pytest.raises(type(error)) as caught:
            pruned_vlm.PrunedVLM(budget=0, plan_cache=False)
        assert caught.value is error

"""lmms-prune inside EleutherAI's lm-evaluation-harness: the task folder, the calibration source
that runs lm-eval's own requests, pruned_vlm / pruned_lm, and the launcher."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lmms_prune_plugin.core.plan import PrunePlan  # noqa: E402
from lmms_prune_plugin.demo import DEMO_MODEL_DIR, TASKS_DIR  # noqa: E402
from lmms_prune_plugin.harnesses.lm_eval_source import (  # noqa: E402
    LM_EVAL_TASKS_DIR,
    LmEvalSource,
    PromptSettings,
)

TASKS = LM_EVAL_TASKS_DIR
LAUNCHER = [sys.executable, "-m", "lmms_prune_plugin.harnesses.lm_eval"]


class Loaded(Exception):
    """The parent's model load was reached: every argument check before it passed."""


@pytest.fixture
def no_load(monkeypatch):
    """Replace lm-eval's HF constructors by a sentinel; returns the kwargs they were given."""
    from lm_eval.models.hf_vlms import HFMultimodalLM
    from lm_eval.models.huggingface import HFLM

    seen = {}

    def load(self, pretrained, **kwargs):
        seen.update(kwargs, _pretrained=pretrained)
        raise Loaded

    monkeypatch.setattr(HFMultimodalLM, "__init__", load)
    monkeypatch.setattr(HFLM, "__init__", load)
    return seen


@pytest.fixture(scope="module")
def demo_lm():
    """lm-eval's own hf-multimodal model on the packaged demo checkpoint."""
    from lm_eval.models.hf_vlms import HFMultimodalLM

    return HFMultimodalLM(pretrained=str(DEMO_MODEL_DIR), device="cpu")


@pytest.fixture(scope="module")
def text_lm_dir(tmp_path_factory):
    """A tiny text-only causal LM (Qwen2, 4 layers) with a ChatML template, saved offline."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from lmms_prune_plugin.testing.tiny import QWEN3_TEMPLATE, build_tokenizer

    tok = build_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.eos_token, tok.pad_token, tok.chat_template = "<|im_end|>", "<|endoftext|>", QWEN3_TEMPLATE
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    path = tmp_path_factory.mktemp("lm") / "tiny-qwen2"
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=TASKS, include_defaults=False)


# -- the task folder ---------------------------------------------------------------------------
def test_image_tasks_read_the_lmms_eval_documents_and_images():
    from lmms_prune_plugin.demo.data.items import render_doc
    from lmms_prune_plugin.demo.data.prompts import POST_PROMPT

    tasks = _manager().load(["prune_calib_math", "prune_demo_nonmath"])["tasks"]
    for name, folder in (("prune_calib_math", "prune_calib"), ("prune_demo_nonmath", "prune_demo")):
        lines = (Path(TASKS_DIR) / folder / f"{name}.jsonl").read_text().splitlines()
        want = [json.loads(x) for x in lines]
        docs = list(tasks[name].test_docs())
        # datasets gives every row every column: a key another row has is None here.
        assert len(docs) == len(want)
        for doc, row in zip(docs, want):
            assert {k: doc[k] for k in row} == row and all(doc[k] is None for k in doc.keys() - row)
        task = tasks[name]
        assert task.doc_to_text(docs[3]) == f"<image>{want[3]['question']}{POST_PROMPT}"
        (image,) = task.doc_to_image(docs[3])
        assert image.tobytes() == render_doc(want[3]).tobytes()


def test_word_problem_solutions_compute_their_answers():
    from lmms_prune_plugin.harnesses.lm_eval_tasks.utils import reading_questions, word_problems

    docs = word_problems(3002, 40)
    assert word_problems(3002, 40) == docs and word_problems(3001, 40) != docs  # seeded
    for doc in docs:
        steps, answer = doc["answer"].split("\n#### ")
        values = []
        for a, op, b, result in re.findall(r"(\d+) ([-+x/]) (\d+) = (\d+)", steps):
            a, b, result = int(a), int(b), int(result)
            assert {"+": a + b, "-": a - b, "x": a * b, "/": a / b}[op] == result, doc
            values.append(result)
        assert len(values) == 2 and values[-1] == int(answer) >= 0, doc
    for doc in reading_questions(3101, 30):
        assert doc["answer"].lower() in doc["question"].lower()


def test_every_task_of_the_folder_loads_in_lm_eval():
    manager = _manager()
    names = [n for n in manager.all_tasks if n.startswith("prune_")]
    assert {"prune_demo", "prune_gsm_demo", "prune_calib_text_math"} <= set(names)
    tasks = manager.load([n for n in names if n != "prune_demo"])["tasks"]
    assert set(tasks) == set(names) - {"prune_demo"}
    assert all(t.get_config("output_type") == "generate_until" for t in tasks.values())
    group = manager.load(["prune_demo"])
    assert set(group["tasks"]) == {"prune_demo_math", "prune_demo_nonmath"}


# -- the calibration source --------------------------------------------------------------------
def test_documents_are_lm_eval_requests_of_one_token(demo_lm):
    chat = LmEvalSource(demo_lm, PromptSettings.parse(True))
    docs = chat.documents("prune_calib_math", 6, 0, 1, "calib_math")
    assert docs.task == "prune_calib_math" and docs.count == docs.total == 6
    ctx, kwargs, aux = docs.payload[0].args
    assert ctx.startswith("<|im_start|>system") and "<|vision_start|><|image_pad|>" in ctx
    assert kwargs["max_gen_toks"] == 1 and kwargs["do_sample"] is False
    assert len(aux["visual"]) == 1 and demo_lm.chat_applied is False  # restored
    plain = LmEvalSource(demo_lm, PromptSettings.parse(False))
    other = plain.documents("prune_calib_math", 6, 0, 1, "calib_math")
    assert other.payload[0].args[0].startswith("<image>")
    assert other.fingerprint != docs.fingerprint and plain.data_key() != chat.data_key()
    # Two ranks split the documents and agree on what the whole set is.
    halves = [chat.documents("prune_calib_math", 6, r, 2, "calib_math") for r in (0, 1)]
    assert [h.count for h in halves] == [3, 3] and {h.fingerprint for h in halves} == {
        docs.fingerprint
    }
    assert halves[1].payload[0].doc_id == 1


def test_the_model_sees_exactly_what_lm_eval_builds(demo_lm):
    """The prefill input ids are the processor's encoding of lm-eval's context and image."""
    from lmms_prune_plugin.core.capture import LayerCapture

    source = LmEvalSource(demo_lm, PromptSettings.parse(True))
    docs = source.documents("prune_calib_math", 4, 0, 1, "calib_math")
    seen = []

    def record(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None or cache.get_seq_length() == 0:
            ids = kwargs["input_ids"]
            mask = kwargs.get("attention_mask")  # transformers drops an all-ones mask
            mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
            seen.extend(row[m].tolist() for row, m in zip(ids, mask))

    hook = demo_lm.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.inference_mode(), LayerCapture(demo_lm.model, tokens="all") as cap:
            source.run(docs, 3)
    finally:
        hook.remove()
    want = []
    for inst in docs.payload:
        ctx, _, aux = inst.args
        want.append(demo_lm.processor(text=[ctx], images=aux["visual"])["input_ids"][0])
    assert sorted(map(list, want)) == sorted(seen)
    # The rendered 112x112 canvas is 4x4 cells of 28x28 pixels: one visual token each.
    image_pad = demo_lm.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert all(row.count(image_pad) == 16 for row in seen)
    stats = cap.statistics()
    assert stats.num_layers == 12 and stats.samples == 4 and stats.tokens == sum(map(len, seen))
    assert all(abs(c) <= stats.tokens and c == c for c in stats.cos_sum)  # finite, bounded
    assert demo_lm.batch_size_per_gpu == 1  # restored


def test_text_calibration_through_the_vlm_covers_every_layer(demo_lm):
    from lmms_prune_plugin.core.capture import LayerCapture

    source = LmEvalSource(demo_lm, PromptSettings.parse(True))
    docs = source.documents("prune_calib_text_math", 3, 0, 1, "calib_math")
    assert "visual" not in str(docs.payload[0].args) and docs.payload[0].args[0].endswith(
        "<|im_start|>assistant\n"
    )
    with torch.inference_mode(), LayerCapture(demo_lm.model, tokens="all") as cap:
        source.run(docs, 2)
    stats = cap.statistics()
    means = [c / stats.tokens for c in stats.cos_sum]
    assert len(means) == 12 and stats.samples == 3 and all(-1 <= m <= 1 for m in means)


@pytest.mark.parametrize(
    "task, pattern",
    [
        ("prune_calib_mth", r"calib_math='prune_calib_mth': lm-eval knows no task .*did you mean"),
        ("prune_calib_math", r"task 'prune_calib_math' has images, and .* is a text-only model"),
    ],
)
def test_documents_refuse_unknown_and_unfit_tasks(task, pattern):
    class TextOnly:
        MULTIMODAL = False

    with pytest.raises(ValueError, match=pattern):
        LmEvalSource(TextOnly()).documents(task, 2, 0, 1, "calib_math")


# -- pruned_vlm / pruned_lm: arguments, checked before anything loads ---------------------------
def _vlm(**kwargs):
    from lmms_prune_plugin.harnesses.lm_eval_models import PrunedVLM

    return PrunedVLM(**kwargs)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"budget": "four"}, r"budget='four' is not allowed"),
        ({"criterion": "math", "budget": 12}, r"budget"),
        ({"criterion": "sideways", "budget": 2}, r"sideways"),
        ({"budjet": 4}, r"budjet=4 is not an argument of pruned_vlm \(did you mean 'budget'\?\)"),
        ({"calib_limit": 0}, r"calib_limit=0 is not allowed"),
        ({"plan": "p.json", "budget": 2}, r"plan='p.json' is not allowed together with budget=2"),
        ({"plan": "/nonexistent/plan.json"}, r"no such file"),
        ({"fewshot_as_multiturn": True}, r"fewshot_as_multiturn=True is not allowed without"),
        ({"system_instruction": " "}, r"system_instruction=' ' is not allowed: it is empty"),
        ({"include_path": "/nonexistent"}, r"include_path='/nonexistent' is not allowed"),
        ({"calib_math": "none", "criterion": "math", "budget": 2}, r"math"),
        ({"pretrained": "/nonexistent/model"}, r"pretrained='/nonexistent/model'"),
    ],
)
def test_bad_arguments_fail_before_loading(no_load, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        _vlm(**kwargs)
    assert no_load == {}


def test_good_arguments_reach_the_parent_without_ours(no_load):
    with pytest.raises(Loaded):
        _vlm(criterion="math", budget=4, calib_limit=8, apply_chat_template=True, batch_size=2)
    assert no_load == {"_pretrained": str(DEMO_MODEL_DIR), "batch_size": 2}


def test_save_plan_never_replaces_a_file_that_is_not_a_plan(no_load, tmp_path):
    mine = tmp_path / "notes.json"
    mine.write_text("my notes")
    with pytest.raises(ValueError, match="the file exists and is not a plan"):
        _vlm(criterion="math", budget=2, save_plan=str(mine))
    with pytest.raises(ValueError, match="is a folder"):
        _vlm(criterion="math", budget=2, save_plan=str(tmp_path))
    assert mine.read_text() == "my notes" and no_load == {}


def test_the_wrong_model_kind_is_named(no_load, text_lm_dir):
    from lmms_prune_plugin.harnesses.lm_eval_models import PrunedLM

    with pytest.raises(ValueError, match=r"model_type 'qwen2' .* use --model pruned_lm"):
        _vlm(pretrained=str(text_lm_dir), criterion="math", budget=1)
    with pytest.raises(ValueError, match=r"model_type 'qwen2_vl' .* use --model pruned_vlm"):
        PrunedLM(pretrained=str(DEMO_MODEL_DIR), criterion="math", budget=1)
    with pytest.raises(ValueError, match="pretrained is required by pruned_lm"):
        PrunedLM(criterion="math", budget=1)
    with pytest.raises(ValueError, match="revision='v2' is not allowed .* local folder"):
        PrunedLM(pretrained=str(text_lm_dir), revision="v2")
    assert no_load == {}


def test_image_and_text_requests_each_take_their_path_and_keep_their_order(monkeypatch):
    from lm_eval.api.instance import Instance
    from lm_eval.models.hf_vlms import HFMultimodalLM

    from lmms_prune_plugin.harnesses.lm_eval_models import PrunedVLM

    calls = []

    def parent(self, requests, disable_tqdm=False):
        kinds = {len(r.args) for r in requests}
        calls.append(kinds)
        assert len(kinds) == 1  # hf-multimodal's own generate_until needs one kind per call
        return [f"{len(r.args)}:{r.args[0]}" for r in requests]

    monkeypatch.setattr(HFMultimodalLM, "generate_until", parent)
    lm = object.__new__(PrunedVLM)
    lm._calibrating = True  # no prompt check: this is about routing

    def request(i, image):
        args = (f"q{i}", {"until": []}, *([{"visual": []}] if image else []))
        return Instance("generate_until", {}, args, idx=0, metadata=("t", i, 1))

    mixed = [request(i, image=i % 3 == 0) for i in range(7)]
    assert lm.generate_until(mixed) == [f"{len(r.args)}:{r.args[0]}" for r in mixed]
    assert calls == [{3}, {2}]


# -- the launcher ------------------------------------------------------------------------------
def _demo_argv(*extra):
    return [
        "--model",
        "pruned_vlm",
        "--tasks",
        "prune_demo_math",
        "--include_path",
        TASKS,
        "--device",
        "cpu",
        *extra,
    ]


@pytest.mark.parametrize(
    "extra, pattern",
    [
        (["--model_args", "criterion=math,budget=20"], "budget"),
        (["--model_args", "budget=2", "budget=3"], "budget is given twice in --model_args"),
        (["--model_args", "apply_chat_template=true"], "in model_args is not allowed with this"),
    ],
)
def test_launcher_refusals_exit_non_zero(no_load, logged, extra, pattern):
    from lmms_prune_plugin.harnesses.lm_eval import main

    assert main(_demo_argv(*extra)) == 1
    assert any(re.search(pattern, m) for m in logged) and no_load == {}


def test_only_our_refusals_are_reported_without_a_traceback():
    from lmms_prune_plugin.core.planner import PruneOptions
    from lmms_prune_plugin.harnesses.lm_eval import _failure

    with pytest.raises(ValueError) as ours:
        PruneOptions.parse(budget="four")
    with pytest.raises(ValueError) as theirs:
        _ctx, _kwargs, _aux = ("context", {})  # what lm-eval's hf-multimodal hits on mixed requests
    assert _failure(ours.value) == f"lmms-prune lm-eval: {ours.value}"
    text = _failure(theirs.value)
    assert "Traceback" in text and "test_lm_eval.py" in text and "not enough values" in text


def test_the_plan_is_written_beside_new_results_and_never_over_another(tmp_path, monkeypatch):
    from lmms_prune_plugin.core.plan import ModelIdentity
    from lmms_prune_plugin.core.planner import unpruned_plan
    from lmms_prune_plugin.harnesses import lm_eval, lm_eval_models

    plan = unpruned_plan(ModelIdentity("m", "Arch", "t", 4, "model.layers"))
    monkeypatch.setitem(lm_eval_models._LOADED, "plan", plan)
    out = tmp_path / "out"
    old = out / "earlier" / "results_1.json"
    old.parent.mkdir(parents=True)
    old.write_text("{}")
    before = lm_eval._results_files(str(out))
    with pytest.raises(RuntimeError, match="lm-eval wrote no results file there"):
        lm_eval.write_plan_beside_results(str(out), before)
    assert not (old.parent / "plan.json").exists()  # not this run's folder
    new = out / "model" / "results_2.json"
    new.parent.mkdir()
    new.write_text("{}")
    assert lm_eval.write_plan_beside_results(str(out), before) == [new.parent / "plan.json"]
    assert PrunePlan.load(new.parent / "plan.json") == plan
    assert lm_eval.write_plan_beside_results(str(out), before) == []  # the same plan: kept
    (new.parent / "plan.json").write_text("my notes")
    with pytest.raises(ValueError, match="holds another plan .* it is not replaced"):
        lm_eval.write_plan_beside_results(str(out), before)
    assert (new.parent / "plan.json").read_text() == "my notes"


def test_launcher_shares_lm_eval_prompt_settings(no_load):
    from lmms_prune_plugin.harnesses.lm_eval import main

    argv = _demo_argv(
        "--model_args",
        "criterion=math,budget=2",
        "--apply_chat_template",
        "--system_instruction",
        "Be brief, exact.",
    )
    assert main(argv) == 1  # the sentinel stops the load
    assert no_load["_pretrained"] == str(DEMO_MODEL_DIR)
    # The parent received none of ours: the settings reached pruned_vlm, which popped them.
    assert not {"apply_chat_template", "system_instruction", "include_path"} & set(no_load)


def test_launcher_passes_resolved_settings_into_model_args():
    from lm_eval._cli import HarnessCLI

    from lmms_prune_plugin.harnesses.lm_eval import _argv, register, share_prompt_settings

    register()
    argv = _demo_argv(
        "--model_args",
        "budget=2",
        "--apply_chat_template",
        "--system_instruction",
        "Be brief, exact.",
    )
    parser = HarnessCLI()
    with _argv(argv):
        args = parser.parse_args()
    share_prompt_settings(args, argv)
    assert args.model_args == {
        "budget": 2,
        "apply_chat_template": True,
        "fewshot_as_multiturn": True,
        "system_instruction": "Be brief, exact.",
        "include_path": TASKS,
    }


# -- end to end --------------------------------------------------------------------------------
def _results(out: Path) -> dict:
    found = sorted(out.rglob("results_*.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


@pytest.mark.slow
def test_demo_end_to_end_through_the_launcher(tmp_path):
    from transformers import Qwen2VLForConditionalGeneration

    saved = tmp_path / "plan.json"
    args = f"criterion=math,budget=4,calib_limit=32,save_plan={saved}"
    cmd = [
        *LAUNCHER,
        "--model",
        "pruned_vlm",
        "--model_args",
        args,
        "--tasks",
        "prune_demo",
        "--include_path",
        TASKS,
        "--apply_chat_template",
        "--device",
        "cpu",
        "--batch_size",
        "8",
        "--limit",
        "24",
        "--output_path",
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = _results(tmp_path / "out")
    plan, config = PrunePlan.load(saved), results["config"]
    (beside,) = (tmp_path / "out").rglob("plan.json")  # for lmms-prune report
    assert PrunePlan.load(beside) == plan and beside.parent.glob("results_*.json")
    assert config["prune_plan"]["removed"] == list(plan.removed) and len(plan.removed) == 4
    top = sorted(range(12), key=lambda i: -plan.scores[i])[:4]
    assert sorted(top) == list(plan.removed)  # the plan follows from its scores
    assert plan.calibration.sets == {"math": "prune_calib_math"}
    assert plan.calibration.samples == {"math": 32}
    assert config["prune_calibration"]["prompts"]["apply_chat_template"] is True
    # The evaluated model is the pruned one: four decoder layers fewer parameters.
    full = Qwen2VLForConditionalGeneration.from_pretrained(DEMO_MODEL_DIR)
    layer = sum(p.numel() for p in full.model.language_model.layers[0].parameters())
    assert config["model_num_parameters"] == full.num_parameters() - 4 * layer
    for task in ("prune_demo_math", "prune_demo_nonmath"):
        assert 0.0 <= results["results"][task]["exact_match,none"] <= 1.0
        assert results["n-samples"][task]["effective"] == 24
    assert f"removed {list(plan.removed)}" in proc.stderr


@pytest.mark.slow
def test_a_failing_run_exits_non_zero(tmp_path):
    cmd = [
        *LAUNCHER,
        "--model",
        "pruned_vlm",
        "--model_args",
        "criterion=math,budget=20",
        "--tasks",
        "prune_demo_math",
        "--include_path",
        TASKS,
        "--device",
        "cpu",
        "--output_path",
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "budget" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_text_only_task_with_pruned_lm(text_lm_dir, tmp_path):
    from lm_eval import simple_evaluate

    from lmms_prune_plugin.harnesses.lm_eval_models import PrunedLM

    lm = PrunedLM(
        pretrained=str(text_lm_dir),
        device="cpu",
        criterion="nonmath",
        budget=1,
        calib_limit=6,
        save_plan=str(tmp_path / "plan.json"),
    )
    assert len(lm.model.model.layers) == 3 and lm.calibration_forwards > 0
    out = simple_evaluate(model=lm, tasks=["prune_gsm_demo"], limit=3, task_manager=_manager())
    metrics = out["results"]["prune_gsm_demo"]
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(metrics)
    assert out["config"]["prune_plan"]["removed"] == list(lm.plan.removed)
    assert out["n-shot"]["prune_gsm_demo"] == 3


def test_evaluation_prompts_must_match_calibration(text_lm_dir):
    from lm_eval import simple_evaluate

    from lmms_prune_plugin.harnesses.lm_eval_models import PrunedLM

    lm = PrunedLM(
        pretrained=str(text_lm_dir), device="cpu", criterion="math", budget=1, calib_limit=4
    )
    with pytest.raises(ValueError, match="calibrated on prompts without the chat template"):
        simple_evaluate(
            model=lm,
            tasks=["prune_calib_text_math"],
            limit=2,
            task_manager=_manager(),
            apply_chat_template=True,
        )


def test_plans_are_cached_by_prompt_settings_and_saved_plans_reload(text_lm_dir, tmp_path):
    from lmms_prune_plugin.harnesses.lm_eval_models import PrunedLM

    common = {"pretrained": str(text_lm_dir), "device": "cpu", "calib_limit": 4}
    first = PrunedLM(**common, criterion="math", budget=2, save_plan=str(tmp_path / "p.json"))
    again = PrunedLM(**common, criterion="math", budget=2)
    assert first.calibration_forwards > 0 and again.calibration_forwards == 0
    assert again.plan == first.plan and len(again.model.model.layers) == 2
    chat = PrunedLM(**common, criterion="math", budget=2, apply_chat_template=True)
    assert chat.calibration_forwards > 0  # other prompts: other statistics
    assert chat.plan.calibration.content_hash != first.plan.calibration.content_hash
    replay = PrunedLM(**common, plan=str(tmp_path / "p.json"))
    assert replay.calibration_forwards == 0 and replay.plan == first.plan
    assert len(replay.model.model.layers) == 2


@pytest.mark.slow
def test_text_and_image_tasks_together_through_pruned_vlm():
    """hf-multimodal picks one path per call from the first request; pruned_vlm runs image and
    text-only requests of one evaluation each on its own path."""
    from lm_eval import simple_evaluate

    lm = _vlm(
        criterion="math",
        budget=2,
        calib_math="prune_calib_text_math",
        calib_limit=8,
        apply_chat_template=True,
        device="cpu",
    )
    assert len(lm.model.model.language_model.layers) == 10
    out = simple_evaluate(
        model=lm,
        tasks=["prune_demo_math", "prune_gsm_demo"],
        limit=3,
        task_manager=_manager(),
        apply_chat_template=True,
        fewshot_as_multiturn=True,
    )
    assert "exact_match,flexible-extract" in out["results"]["prune_gsm_demo"]
    assert 0 <= out["results"]["prune_demo_math"]["exact_match,none"] <= 1
    assert out["config"]["prune_plan"]["calibration"]["sets"] == {"math": "prune_calib_text_math"}


@pytest.mark.slow
def test_same_layers_as_lmms_eval_on_the_demo():
    """Both harnesses calibrate the demo model on the same documents with the same prompt text
    (lmms-eval sends the image through a JPEG round trip): the plans agree."""
    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM as LmmsEvalPrunedVLM

    common = {"criterion": "math", "budget": 4, "calib_limit": 32}
    ours = _vlm(**common, apply_chat_template=True, device="cpu")
    theirs = LmmsEvalPrunedVLM(**common)
    assert ours.plan.removed == theirs.plan.removed
    assert ours.plan.calibration.sets == theirs.plan.calibration.sets


def test_the_ci_example_runs_lm_eval_commands_that_parse():
    import shlex

    import yaml
    from lm_eval._cli import HarnessCLI

    from lmms_prune_plugin.harnesses.lm_eval import _argv, register

    register()
    workflow = Path(__file__).resolve().parents[1] / "examples" / "ci" / "lm_eval.yml"
    steps = yaml.safe_load(workflow.read_text())["jobs"]["lm-eval"]["steps"]
    runs = [
        s["run"].replace('"$TASKS"', TASKS)
        for s in steps
        if "harnesses.lm_eval " in s.get("run", "")
    ]
    assert len(runs) == 2
    known = set(_manager().all_tasks)
    for run in runs:
        command = run.replace("\\\n", " ").split("python -m lmms_prune_plugin.harnesses.lm_eval", 1)
        words = shlex.split(command[1])
        with _argv(words):
            args = HarnessCLI().parse_args()
        assert args.model == "pruned_vlm" and set(args.tasks) <= known
        assert args.apply_chat_template is True and args.include_path == TASKS


def test_only_the_lm_eval_modules_import_lm_eval():
    core = "lmms_prune_plugin lmms_prune_plugin.core.planner lmms_prune_plugin.harnesses lmms_prune_plugin.tools.cli"
    code = (
        f"import importlib, sys\nfor m in {core.split()!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'lm_eval'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"

"""Batches change how fast calibration and healing run, never what they compute.

Calibration runs through the base wrapper at its batch size (lmms-eval's ``--batch_size``); the
teacher's answers for healing are generated a batch at a time, left-padded. On a float64 model
(so that float32 rounding of a batched matmul cannot hide a counting error), every per-layer sum
at batch 16 equals the one at batch 1 to float64 rounding, with left and right padding,
documents of very different lengths and images of several sizes; and the batched teacher
answers are the unbatched ones, token for token.
"""

import json
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from lmms_prune_plugin.core.calibration import CalibrationConfig, Calibrator
from lmms_prune_plugin.core.training_data import Example, collate_prompts, prompt_batches
from lmms_prune_plugin.harnesses.lmms_eval.source import LmmsEvalSource
from lmms_prune_plugin.testing.tiny import build_tiny_vlm, wrapper_kwargs

ARCH = "qwen2_vl"
TASK = "prune_batch_lengths"
WORDS = "how many red squares and blue circles can you count in this small picture".split()
SIZES = [(28, 28), (112, 112), (56, 28), (84, 56), (56, 56)]
UTILS = """
from PIL import Image


def doc_to_visual(doc):
    w, h = doc["size"]
    return [Image.new("RGB", (w, h), tuple(doc["colour"]))]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]
"""
YAML = f"""
task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: docs.jsonl
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 3
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory) -> Path:
    """20 documents from 1 to 70 words, images of five sizes (4 to 16 visual tokens)."""
    root = tmp_path_factory.mktemp("tasks")
    (root / "utils.py").write_text(UTILS)
    (root / f"{TASK}.yaml").write_text(textwrap.dedent(YAML))
    docs = []
    for i in range(20):
        n = 1 + (i * 37) % 70
        question = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(n)) + "?"
        size, colour = SIZES[i % len(SIZES)], [(40 * i) % 256, 200, (90 * i) % 256]
        docs.append({"question": question, "size": size, "colour": colour, "answer": "red"})
    (root / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    return root


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory):
    """lmms-eval's own qwen2_vl wrapper on a float64 tiny checkpoint."""
    import lmms_eval.models

    model, processor = build_tiny_vlm(ARCH, num_layers=4)
    path = tmp_path_factory.mktemp("ckpt") / "q64"
    model.to(torch.float64).save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    w = lmms_eval.models.get_model(ARCH)(pretrained=str(path), **wrapper_kwargs(ARCH))
    assert w.model.dtype == torch.float64
    return w


def calibrate(
    wrapper,
    folder: Path,
    batch_size: int,
    side: str = "left",
    masks=None,
    tokens: str = "all",
    **options,
):
    """One calibration pass through the wrapper at ``batch_size``, padding on ``side``; the
    attention mask of every forward is appended to ``masks``."""
    wrapper.batch_size_per_gpu = batch_size
    wrapper.processor.tokenizer.padding_side = side
    config = CalibrationConfig.parse(
        calib_math=TASK,
        calib_nonmath="none",
        calib_limit=None,
        tokens=tokens,
        include_path=str(folder),
        plan_cache=False,
    )
    source = LmmsEvalSource(wrapper, config.task_paths)
    cal = Calibrator(source, wrapper.model, config, run_key="batching")

    def keep(module, args, kwargs):
        if masks is not None and kwargs.get("attention_mask") is not None:
            masks.append(kwargs["attention_mask"].clone())

    handle = wrapper.model.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        return cal.calibrate("math", **options)
    finally:
        handle.remove()
        wrapper.batch_size_per_gpu = 1


def assert_same_sums(a, b) -> None:
    """Equal counts, and every float64 sum equal to float64 rounding."""
    assert (a.tokens, a.samples, a.last_tokens) == (b.tokens, b.samples, b.last_tokens)
    close = dict(rel=1e-10, abs=1e-10)
    assert list(a.cos_sum) == pytest.approx(list(b.cos_sum), **close)
    assert a.angular_sum.keys() == b.angular_sum.keys()
    for n in a.angular_sum:
        assert list(a.angular_sum[n]) == pytest.approx(list(b.angular_sum[n]), **close)
        assert list(a.angular_last_sum[n]) == pytest.approx(list(b.angular_last_sum[n]), **close)
        assert a.norm_angular_sum[n] == pytest.approx(b.norm_angular_sum[n], **close)
    assert a.norm_cos_sum == pytest.approx(b.norm_cos_sum, **close)


@pytest.mark.parametrize("side", ["left", "right"])
def test_calibration_sums_at_batch_16_equal_batch_1(wrapper, task_folder, side):
    many_masks = []
    opts = dict(block_sizes=(1, 2), per_sample=True)
    one = calibrate(wrapper, task_folder, 1, side, **opts)
    many = calibrate(wrapper, task_folder, 16, side, many_masks, **opts)
    # The batches were padded on the side asked for (batch 1 needs no padding).
    assert one.stats.forwards == 20 and many.stats.forwards == 2
    edge = 0 if side == "left" else -1
    assert any(not bool(m[:, edge].all()) for m in many_masks)
    padding = sum(int((m == 0).sum()) for m in many_masks)
    assert padding > many.stats.tokens // 4  # lengths differ a lot: much of a batch is padding
    # So every real token was counted once, and no padding token was.
    assert one.stats.tokens == many.stats.tokens == sum(int(m.sum()) for m in many_masks)
    assert_same_sums(one.stats, many.stats)
    # Each sample's own sums too, in the same order (the wrapper sorts by length either way).
    assert len(one.per_sample) == len(many.per_sample) == 20
    for a, b in zip(one.per_sample, many.per_sample, strict=True):
        assert_same_sums(a, b)


@pytest.mark.parametrize("tokens", ["image", "last"])
def test_token_selections_at_batch_16_equal_batch_1(wrapper, task_folder, tokens):
    one = calibrate(wrapper, task_folder, 1, tokens=tokens).stats
    many = calibrate(wrapper, task_folder, 16, tokens=tokens).stats
    assert one.forwards == 20 and many.forwards == 2
    # 4 to 16 visual tokens per document; one last token per document
    assert 80 <= one.tokens <= 320 if tokens == "image" else one.tokens == 20
    assert_same_sums(one, many)


def test_output_divergence_at_batch_16_equals_batch_1(wrapper, task_folder):
    """The answer-position KL of the pruned model against the unpruned one (left padding, as
    generation needs)."""
    out = []
    for batch_size in (1, 16):
        got = calibrate(wrapper, task_folder, batch_size, removed=(1,), outputs=True)
        out.append(got.stats)
    one, many = out
    assert one.divergence_samples == many.divergence_samples == 20
    assert one.divergence_sum > 0
    assert one.divergence_sum == pytest.approx(many.divergence_sum, rel=1e-9, abs=1e-12)
    assert_same_sums(one, many)


def test_the_prefill_forward_measures_what_generate_measures(wrapper, task_folder):
    """Calibration answers the wrapper's ``generate`` with the prompt's forward alone: the same
    statistics and answer distributions as the model's own ``generate``, padding included."""
    from lmms_prune_plugin.core.calibration import run_capture

    wrapper.batch_size_per_gpu, wrapper.processor.tokenizer.padding_side = 16, "left"
    config = CalibrationConfig.parse(
        calib_math=TASK,
        calib_nonmath="none",
        calib_limit=None,
        include_path=str(task_folder),
        plan_cache=False,
    )
    source = LmmsEvalSource(wrapper, config.task_paths)
    docs = Calibrator(source, wrapper.model, config, run_key="batching").documents("math")
    got = {}
    for prefill in (True, False):
        stats = run_capture(
            source,
            wrapper.model,
            docs,
            block_sizes=(2,),
            prefill_only=prefill,
            record_answers=True,
        )
        got[prefill] = stats
    wrapper.batch_size_per_gpu = 1
    assert "generate" not in vars(wrapper.model)  # the model's own generate is back
    assert got[True].forwards == got[False].forwards == 2
    assert_same_sums(got[True], got[False])


def test_a_wrapper_that_drops_a_request_is_named(wrapper, task_folder, monkeypatch):
    given = wrapper.generate_until
    monkeypatch.setattr(wrapper, "generate_until", lambda reqs: given(reqs[1:]) + [""])
    with pytest.raises(ValueError, match="for 19 samples of the 20 documents"):
        calibrate(wrapper, task_folder, 4)


# -- healing: the teacher's answers ------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher():
    model, processor = build_tiny_vlm(ARCH, num_layers=4, seed=3)
    return model.to(torch.float64), processor


def examples_for(processor, n: int = 12) -> list[Example]:
    """One unpadded prompt per example, as the wrapper builds them: lengths and images vary."""
    out = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        image = Image.new("RGB", (w, h), ((50 * i) % 256, 90, 30))
        text = " ".join(WORDS[: 1 + (i * 5) % len(WORDS)])
        content = [{"type": "image"}, {"type": "text", "text": text}]
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        inputs = processor(text=[prompt], images=[image], return_tensors="pt")
        out.append(Example(dict(inputs), "t", i))
    return out


def test_batched_teacher_answers_equal_one_prompt_at_a_time(teacher):
    from lmms_prune_plugin.core.heal import add_continuations_

    model, processor = teacher
    tok = processor.tokenizer
    one, many = examples_for(processor), examples_for(processor)
    assert len({e.prompt_len for e in many}) > 4  # prompts of many lengths share batches
    eos = model.generation_config.eos_token_id
    for e in one:  # the reference: generate on each unpadded prompt alone
        with torch.no_grad():
            out = model.generate(
                **e.inputs,
                max_new_tokens=8,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id,
            )
        new = out[0, e.prompt_len :].tolist()
        e.answer = torch.tensor(new[: new.index(eos) + 1] if eos in new else new)
    add_continuations_(model, many, tok, max_new_tokens=8, batch_size=5)
    assert [e.answer.tolist() for e in many] == [e.answer.tolist() for e in one]


def test_prompt_batches_left_pad_and_keep_every_example(teacher):
    model, processor = teacher
    examples = examples_for(processor, n=7)
    batches = prompt_batches(examples, 3)
    assert sorted(e.doc_id for b in batches for e in b) == list(range(7))
    assert all(len(b) <= 3 for b in batches)
    inputs, width = collate_prompts(batches[-1], pad_id=0)
    for row, e in enumerate(batches[-1]):
        p = e.prompt_len
        assert torch.equal(inputs["input_ids"][row, width - p :], e.inputs["input_ids"][0])
        assert int(inputs["attention_mask"][row].sum()) == p
        assert not bool(inputs["attention_mask"][row, : width - p].any())
    grids = torch.cat([e.inputs["image_grid_thw"] for e in batches[-1]])
    assert torch.equal(inputs["image_grid_thw"], grids)
    text_only = Example({"input_ids": torch.ones(1, 4, dtype=torch.long)}, "t", 99)
    assert len(prompt_batches([*examples[:2], text_only], 8)) == 2  # different tensors
    with pytest.raises(ValueError, match="cannot share a batch"):
        collate_prompts([examples[0], text_only], pad_id=0)


def test_targets_are_tokenized_as_one_at_a_time(teacher):
    from lmms_prune_plugin.core.heal import add_targets_

    model, processor = teacher
    tok = processor.tokenizer
    examples = [Example({}, "t", i, target=t) for i, t in enumerate(["red", "two blue", "7 + 5"])]
    add_targets_(model, examples, tok)
    eos = model.generation_config.eos_token_id
    for e in examples:
        assert e.answer.tolist() == tok.encode(e.target, add_special_tokens=False) + [eos]

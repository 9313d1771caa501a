"""lmms-prune's VLMEvalKit chat class and calibration source, on a tiny checkpoint and on the
packaged demo model."""

import numpy as np
import pytest
import torch
from PIL import Image

from lmms_prune_plugin.core.capture import LayerCapture
from lmms_prune_plugin.harnesses.base import CalibrationSource
from lmms_prune_plugin.harnesses.vlmeval_source import (
    VLMEvalSource,
    build_messages,
    find_hf_model,
    load_dataset,
    one_new_token,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lmms_prune_plugin.harnesses.vlmeval_models import HFChat
    from lmms_prune_plugin.testing.tiny import save_tiny_vlm

    folder = tmp_path_factory.mktemp("tiny")
    path = save_tiny_vlm("qwen2_vl", folder / "ckpt", num_layers=3)
    image = folder / "image.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(image)
    return HFChat(str(path), max_new_tokens=5), str(image)


def test_chat_class_answers_as_a_direct_transformers_greedy_call(tiny):
    chat, image = tiny
    message = [{"type": "image", "value": image}, {"type": "text", "value": "What is it?"}]
    answer = chat.generate(message)
    # The same conversation built the other way: template as text, then the processor.
    processor, model = chat.processor, chat.model
    conv = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}
    ]
    text = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.open(image).convert("RGB")], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    want = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert isinstance(answer, str) and answer == want[0].strip()
    assert chat.generate(message) == answer  # greedy: the same answer again


def test_chat_class_refuses_video_and_a_checkpoint_without_template(tiny, tmp_path):
    chat, image = tiny
    with pytest.raises(ValueError, match="takes text and images, not 'video'"):
        chat.generate_inner([{"type": "video", "value": image}])
    from lmms_prune_plugin.harnesses.vlmeval_models import HFChat
    from lmms_prune_plugin.testing.tiny import save_tiny_vlm

    path = save_tiny_vlm("qwen2_vl", tmp_path / "bare", num_layers=2)
    for f in path.glob("chat_template*"):
        f.unlink()
    cfg = path / "processor_config.json"
    if cfg.exists():
        import json

        data = json.loads(cfg.read_text())
        data.pop("chat_template", None)
        cfg.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no chat template"):
        HFChat(str(path))


def test_one_new_token_whatever_the_caller_asks_and_generate_restored(tiny):
    chat, image = tiny
    model = chat.model
    inputs = chat.processor(text=["hello"], return_tensors="pt")
    with one_new_token(model):
        out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 1
    assert "generate" not in vars(model)
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    # Nested in a generate set on the instance (the core's prefill-only one): that one is
    # called inside and restored after.
    seen = []
    model.generate = lambda *a, **k: seen.append(k["max_new_tokens"])
    try:
        with one_new_token(model):
            model.generate(max_new_tokens=9)
        assert seen == [1] and vars(model)["generate"] is not None
        model.generate(max_new_tokens=9)
        assert seen == [1, 9]
    finally:
        del model.generate


def test_hf_model_is_found_and_an_api_model_is_refused(tiny):
    chat, _ = tiny
    assert find_hf_model(chat) is chat.model

    class Api:
        model = "gpt-4o"

    with pytest.raises(ValueError, match="no transformers model"):
        find_hf_model(Api(), "--model gpt")


def test_demo_model_answers_vlmeval_questions(demo_chat):
    from vlmeval.utils.matching_util import can_infer

    for name in ("PruneDemo_Math", "PruneDemo_Nonmath"):
        dataset = load_dataset(name, "--data")
        demo_chat.set_dump_image(dataset.dump_image)
        hits = 0
        for i in range(8):
            line = dataset.data.iloc[i]
            answer = demo_chat.generate(build_messages(demo_chat, dataset, line), dataset=name)
            choices = {k: line[k] for k in "ABCD" if isinstance(line[k], str) or line[k] == line[k]}
            hits += can_infer(answer, {k: str(v) for k, v in choices.items()}) == line["answer"]
        assert hits >= 6, (name, hits)


def test_calibration_messages_are_the_lmms_eval_prompts_and_pixels(demo_chat):
    from lmms_prune_plugin.demo.data.task_utils import doc_to_text, doc_to_visual
    from lmms_prune_plugin.harnesses.vlmeval_data import read_docs

    source = VLMEvalSource(demo_chat, sets=["PruneCalib_Math"])
    assert isinstance(source, CalibrationSource) and source.harness == "vlmeval"
    docs = source.documents("PruneCalib_Math", 6, 0, 1, "calib_math")
    assert (docs.task, docs.count, docs.total) == ("PruneCalib_Math", 6, 6)
    raw = read_docs("prune_calib/prune_calib_math.jsonl")
    for (_, message), doc in zip(docs.payload[1], raw, strict=False):
        image, text = message
        assert text["value"] == doc_to_text(doc)
        with Image.open(image["value"]) as seen:
            assert seen.convert("RGB").tobytes() == doc_to_visual(doc)[0].tobytes()


def test_ranks_split_the_lines_and_agree_on_the_fingerprint(demo_chat):
    source = VLMEvalSource(demo_chat)
    halves = [source.documents("PruneCalib_Nonmath", 10, r, 2, "calib_nonmath") for r in (0, 1)]
    ids = [[i for i, _ in d.payload[1]] for d in halves]
    assert [d.count for d in halves] == [5, 5] and {d.total for d in halves} == {10}
    assert not set(ids[0]) & set(ids[1]) and len({d.fingerprint for d in halves}) == 1
    assert source.documents("PruneCalib_Nonmath", 9, 0, 1, "x").fingerprint != halves[0].fingerprint
    key = source.data_key()
    assert key == VLMEvalSource(demo_chat).data_key()
    assert key != VLMEvalSource(demo_chat, sets=["PruneCalib_Math"]).data_key()


def test_unknown_calibration_set_names_the_parameter_and_the_file(demo_chat):
    with pytest.raises(ValueError, match=r"calib_math='NoSuchSet' is not allowed.*NoSuchSet\.tsv"):
        VLMEvalSource(demo_chat).documents("NoSuchSet", 4, 0, 1, "calib_math")


def test_statistics_through_vlmeval_messages_cover_every_layer_and_match_direct_inputs(demo_chat):
    from lmms_prune_plugin.demo.data.task_utils import doc_to_text, doc_to_visual
    from lmms_prune_plugin.harnesses.vlmeval_data import read_docs

    hf = find_hf_model(demo_chat)
    source = VLMEvalSource(demo_chat, hf)
    docs = source.documents("PruneCalib_Math", 6, 0, 1, "calib_math")
    with LayerCapture(hf, tokens="all") as cap:
        source.run(docs, 1)
    stats = cap.statistics()
    assert (stats.num_layers, stats.samples, stats.forwards) == (12, 6, 6)
    means = [c / stats.tokens for c in stats.cos_sum]
    assert all(np.isfinite(means)) and all(-1 <= m <= 1 for m in means)
    # The same documents built directly (as lmms-eval's prompt and rendering make them).
    with LayerCapture(hf, tokens="all") as direct, torch.inference_mode():
        for doc in read_docs("prune_calib/prune_calib_math.jsonl")[:6]:
            content = [
                {"type": "image", "image": doc_to_visual(doc)[0]},
                {"type": "text", "text": doc_to_text(doc)},
            ]
            inputs = demo_chat.processor.apply_chat_template(
                [{"role": "user", "content": content}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
            )
            hf(**inputs)
    want = direct.statistics()
    assert want.tokens == stats.tokens
    assert np.allclose(stats.cos_sum, want.cos_sum, rtol=1e-5, atol=1e-5)

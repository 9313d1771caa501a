"""The tiny random VLMs: real classes, consistent token ids, save/reload, lmms-eval wrappers."""

import importlib.util

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from lmms_prune_plugin.surgery.layers import find_decoder_layers
from lmms_prune_plugin.testing.tiny import (
    ARCHITECTURES,
    LMMS_EVAL_WRAPPERS,
    build_tiny_vlm,
    build_tokenizer,
    save_tiny_vlm,
    wrapper_kwargs,
)

MODEL_CLASSES = {
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
    "llava_onevision": ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor"),
    "idefics3": ("Idefics3ForConditionalGeneration", "Idefics3Processor"),
    "smolvlm": ("SmolVLMForConditionalGeneration", "SmolVLMProcessor"),
}
PLACEHOLDERS = {
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "llava_onevision": "<image>",
    "idefics3": "<image>",
    "smolvlm": "<image>",
}
NUM_LAYERS = 3  # not the default, so the argument is seen to be honoured


def _needs(arch):
    # SmolVLMProcessor refuses to build without num2words (it spells out video timestamps).
    if arch == "smolvlm" and importlib.util.find_spec("num2words") is None:
        pytest.skip("SmolVLMProcessor needs the num2words package")


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch(request):
    _needs(request.param)
    return request.param


@pytest.fixture(scope="module")
def saved(arch, tmp_path_factory):
    """(arch, built model, built processor, folder it was saved to): built once per arch."""
    path = tmp_path_factory.mktemp(f"tiny-{arch}")
    assert save_tiny_vlm(arch, path, num_layers=NUM_LAYERS, seed=7) == path
    model, processor = build_tiny_vlm(arch, num_layers=NUM_LAYERS, seed=7)
    return arch, model, processor, path


def _inputs(processor, size=(80, 60)):
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}],
        }
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = Image.new("RGB", size, (200, 40, 30))
    return text, processor(text=text, images=[image], return_tensors="pt")


def _token_ids(config):
    """Every integer token id anywhere in a config (top level and sub-configs)."""
    found = {}

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif str(k).endswith(("token_id", "token_index", "token_ids")) and v is not None:
                found[f"{prefix}{k}"] = v if isinstance(v, list) else [v]

    walk(config.to_dict(), "")
    return found


def test_real_classes_small_and_decoder_where_expected(saved):
    arch, model, processor, _ = saved
    assert (type(model).__name__, type(processor).__name__) == MODEL_CLASSES[arch]
    assert model.config.model_type == arch
    layers = find_decoder_layers(model).layers
    assert isinstance(layers, torch.nn.ModuleList) and len(layers) == NUM_LAYERS
    assert model.config.get_text_config().num_hidden_layers == NUM_LAYERS
    assert model.config.get_text_config().hidden_size == 64
    assert sum(p.numel() for p in model.parameters()) < 1_000_000  # a few MB in float32


def test_reload_with_auto_classes_and_generate(saved):
    arch, model, _, path = saved
    assert (path / "model.safetensors").is_file()
    reloaded = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    assert (type(reloaded).__name__, type(processor).__name__) == MODEL_CLASSES[arch]
    assert len(find_decoder_layers(reloaded).layers) == NUM_LAYERS
    built = model.state_dict()
    assert all(torch.equal(v, built[k]) for k, v in reloaded.state_dict().items())

    text, batch = _inputs(processor)
    assert PLACEHOLDERS[arch] in text
    with torch.no_grad():
        out = reloaded.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    prompt_len = batch["input_ids"].shape[1]
    assert out.shape == (1, prompt_len + 3)
    assert torch.equal(out[:, :prompt_len], batch["input_ids"])
    assert isinstance(processor.batch_decode(out[:, prompt_len:])[0], str)


def test_same_seed_same_weights_other_seed_other_weights(saved):
    arch, model, processor, _ = saved
    again, processor2 = build_tiny_vlm(arch, num_layers=NUM_LAYERS, seed=7)
    other, _ = build_tiny_vlm(arch, num_layers=NUM_LAYERS, seed=8)
    a, b, c = model.state_dict(), again.state_dict(), other.state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert processor.tokenizer.get_vocab() == processor2.tokenizer.get_vocab()


def test_config_token_ids_match_the_tokenizer(saved):
    arch, model, processor, path = saved
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.get_vocab() == processor.tokenizer.get_vocab()
    vocab_size = model.config.get_text_config().vocab_size
    assert len(tok) <= vocab_size == model.get_input_embeddings().num_embeddings
    ids = _token_ids(model.config)
    assert ids and all(0 <= i < len(tok) for v in ids.values() for i in v), ids

    image_id = getattr(model.config, "image_token_id", None) or model.config.image_token_index
    assert tok.convert_ids_to_tokens(image_id) == processor.image_token
    if arch.startswith("qwen"):
        names = {"video_token_id": "<|video_pad|>", "vision_start_token_id": "<|vision_start|>"}
        for attr, token in names.items():
            assert tok.convert_ids_to_tokens(getattr(model.config, attr)) == token
    gen = model.generation_config
    assert gen.eos_token_id == tok.eos_token_id == model.config.get_text_config().eos_token_id
    assert gen.pad_token_id == tok.pad_token_id is not None
    # Special tokens are atomic, ordinary text round-trips.
    assert len(tok(tok.eos_token, add_special_tokens=False).input_ids) == 1
    sentence = "How many apples are on the table? 42."
    assert tok.decode(tok(sentence, add_special_tokens=False).input_ids) == sentence
    assert tok.chat_template == processor.chat_template is not None


def test_placeholder_expands_to_what_the_model_consumes(saved):
    arch, model, processor, _ = saved
    _, batch = _inputs(processor, size=(90, 50))
    image_id = processor.image_token_id
    n_image = int((batch["input_ids"] == image_id).sum())
    assert n_image > 1  # expanded, not a lone placeholder
    with torch.no_grad():
        logits = model(**batch).logits  # the model checks tokens == features itself
    assert logits.shape[:2] == batch["input_ids"].shape
    # ... and that check is real: one image token fewer is refused.
    ids = batch["input_ids"][0].tolist()
    drop = ids.index(image_id)
    short = dict(batch)
    short["input_ids"] = torch.tensor([ids[:drop] + ids[drop + 1 :]])
    short["attention_mask"] = torch.ones_like(short["input_ids"])
    short.pop("mm_token_type_ids", None)
    with pytest.raises(Exception, match="do not match|mismatch"):
        with torch.no_grad():
            model(**short)


def test_left_padded_batch_generates(saved):
    arch, model, processor, _ = saved
    processor.tokenizer.padding_side = "left"
    try:
        texts = [
            processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                add_generation_prompt=True,
            )
            for q in ("Hi?", "How many apples are on the table today?")
        ]
        images = [Image.new("RGB", (56, 56), c) for c in ((0, 0, 255), (0, 255, 0))]
        if arch in ("idefics3", "smolvlm"):
            images = [[im] for im in images]  # one list of images per prompt
        batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    finally:
        processor.tokenizer.padding_side = "right"
    assert (batch["attention_mask"][:, 0] == 0).any()  # really padded on the left
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 2)


def test_overrides_reach_the_configs():
    model, _ = build_tiny_vlm(
        "qwen2_vl", num_layers=2, hidden_size=32, intermediate_size=48, vision_config={"depth": 1}
    )
    text = model.config.get_text_config()
    assert (text.num_hidden_layers, text.hidden_size, text.intermediate_size) == (2, 32, 48)
    assert len(model.model.visual.blocks) == 1
    model, _ = build_tiny_vlm("idefics3", num_layers=1, text_config={"intermediate_size": 40})
    assert model.config.text_config.intermediate_size == 40
    assert len(model.model.text_model.layers) == 1


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="not one of"):
        build_tiny_vlm("gpt2")
    with pytest.raises(ValueError, match="no lmms-eval wrapper"):
        wrapper_kwargs("idefics3")


def test_build_tokenizer_specials_first_and_deterministic():
    specials = ["<s>", "</s>", "<img>"]
    tok = build_tokenizer(specials, vocab_size=300)
    assert [tok.convert_tokens_to_ids(t) for t in specials] == [0, 1, 2]
    assert len(tok) <= 300
    assert tok("a <img> b", add_special_tokens=False).input_ids.count(2) == 1
    assert tok.decode(tok("Red, green: 3.14!").input_ids) == "Red, green: 3.14!"
    assert build_tokenizer(specials, vocab_size=300).get_vocab() == tok.get_vocab()
    custom = build_tokenizer(["<pad>"], corpus=["zebra zebra zebra"] * 5, vocab_size=280)
    assert "zebra" in custom.get_vocab() or "Ġzebra" in custom.get_vocab()


@pytest.mark.parametrize("arch", sorted(LMMS_EVAL_WRAPPERS))
@pytest.mark.parametrize("simple", [False, True], ids=["chat", "simple"])
def test_lmms_eval_wrapper_loads_and_generates(arch, simple, tmp_path):
    from lmms_eval.api.instance import Instance
    from lmms_eval.models import get_model

    cls = get_model(LMMS_EVAL_WRAPPERS[arch], force_simple=simple)
    if cls.is_simple != simple:
        pytest.skip(f"lmms-eval has no chat class for {arch}")
    path = save_tiny_vlm(arch, tmp_path / arch, num_layers=2)
    wrapper = cls(pretrained=str(path), **wrapper_kwargs(arch))
    assert type(wrapper.model).__name__ == MODEL_CLASSES[arch][0]
    assert len(find_decoder_layers(wrapper.model).layers) == 2

    image = Image.new("RGB", (80, 60), (20, 120, 200))
    wrapper.task_dict = {"t": {"test": [{"q": "What colour is it?"}]}}
    gen = {"max_new_tokens": 3, "temperature": 0, "until": ["\n\n"]}
    if simple:
        args = ("What colour is it?", gen, lambda doc: [image], 0, "t", "test")
    else:

        def to_messages(doc):
            content = [{"type": "image", "url": image}, {"type": "text", "text": doc["q"]}]
            return [{"role": "user", "content": content}]

        args = ("What colour is it?", to_messages, gen, 0, "t", "test")
    # Some wrappers swallow generation errors and answer "": watch the HF generate itself.
    model, generated = wrapper.model, []
    original = model.generate

    def spy(*a, **kw):
        out = original(*a, **kw)
        generated.append(out.shape[1] - kw["input_ids"].shape[1])
        return out

    model.generate = spy
    meta = {"task": "t", "doc_id": 0, "repeats": 1}
    [out] = wrapper.generate_until([Instance("generate_until", args, 0, meta)])
    assert isinstance(getattr(out, "text", out), str)
    assert len(generated) == 1 and 1 <= generated[0] <= 3

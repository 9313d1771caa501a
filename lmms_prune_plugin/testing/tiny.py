"""Tiny random vision-language models, built offline in about a second, for tests and examples.

Each architecture is the real transformers image-text-to-text class with its real processor
class, shrunk to a vision tower of one or two narrow layers and a text decoder of ``num_layers``
layers of width ``hidden_size`` (64 by default). The tokenizer is a byte-level BPE trained on the
spot on a small English corpus with the architecture's special tokens, so every token id in the
model config points at the token it names and saved folders load back with the plain Auto classes
(and with lmms-eval's own wrappers, see :func:`wrapper_kwargs`) without any hub access.
``SmolVLMProcessor`` itself needs the ``num2words`` package; the other five need nothing extra.

Example::

    model, processor = build_tiny_vlm("qwen2_5_vl", num_layers=4)
    path = save_tiny_vlm("qwen2_5_vl", "/tmp/tiny-qwen2_5_vl")
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)

from lmms_prune_plugin.harnesses.lmms_eval.base import WRAPPERS

ARCHITECTURES: tuple[str, ...] = (
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "llava_onevision",
    "idefics3",
    "smolvlm",
)

#: model_type -> the lmms-eval wrapper ``pruned_vlm`` delegates to, for the architectures above
#: that have one (Idefics3 and SmolVLM go to the package's own ``hf_vlm``).
LMMS_EVAL_WRAPPERS: dict[str, str] = {a: WRAPPERS[a] for a in ARCHITECTURES if a in WRAPPERS}

# Pixel budgets for the Qwen image processors: factor = patch_size * merge_size (28 for
# Qwen2/2.5-VL, 32 for Qwen3-VL); min = 2x2 factors (4 visual tokens), max = 4x4 (16 tokens).
_QWEN_PIXELS: dict[str, tuple[int, int]] = {
    "qwen2_vl": (56 * 56, 112 * 112),
    "qwen2_5_vl": (56 * 56, 112 * 112),
    "qwen3_vl": (64 * 64, 128 * 128),
}

# A few hundred words of plain English and digits: enough for BPE to learn real merges, and
# small enough to train in milliseconds.
_CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "A picture of a cat sitting on a red chair next to the window.",
    "What is shown in this image? Answer with a single word or phrase.",
    "The image shows two people walking along a beach at sunset.",
    "How many apples are on the table? There are three apples on the table.",
    "Question: What color is the car? Answer: The car is blue.",
    "Describe the image in detail. The photo contains a tree, a house and a small garden.",
    "Is there a dog in the picture? Yes, there is a dog lying on the grass.",
    "Please read the text in the image and answer the question below.",
    "The chart compares sales in 2019, 2020, 2021 and 2022 for four regions.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 20 25 50 75 100 250 500 1000 2024 3.14 0.5 42.",
    "Choose the correct option. A. circle B. square C. triangle D. rectangle",
    "The answer is A. The answer is B. The answer is C. The answer is D.",
    "You are a helpful assistant. Think step by step and give a short answer.",
    "She opened the door, looked outside, and saw that it was raining heavily.",
    "Scientists measured the temperature every hour for 24 hours and plotted the results.",
    "The table lists the name, age, height and weight of each student in the class.",
    "In the diagram, the angle between the two lines is 45 degrees.",
    "He bought 12 eggs, 2 loaves of bread and 1 bottle of milk at the market.",
    "The map shows rivers, mountains, roads and the capital city of the country.",
    "Yes. No. Maybe. True. False. Left. Right. Up. Down. Red. Green. Blue. Yellow.",
    "This is a photo of a street with cars, buses, bicycles and pedestrians.",
    "The man is holding an umbrella while the woman reads a newspaper.",
    "Count the objects: one, two, three, four, five, six, seven, eight, nine, ten.",
)


def build_tokenizer(
    extra_special_tokens: list[str],
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer whose special tokens are ``extra_special_tokens``.

    The special tokens take ids ``0 .. len(extra_special_tokens) - 1`` in the given order and are
    never split. ``vocab_size`` is an upper bound: a small ``corpus`` (by default the built-in
    English/digits one) may stop short of it. Named special tokens (bos/eos/pad) are left unset
    for the caller, who knows which of the extra tokens plays which role.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    # Byte-level like GPT-2/Qwen/Llama-3: every byte is in the alphabet, so nothing is ever <unk>.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(extra_special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus if corpus is not None else _CORPUS), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        extra_special_tokens=list(extra_special_tokens),
        model_max_length=8192,
    )


# --------------------------------------------------------------------------- chat templates
# ChatML as in the Qwen2-VL / Qwen2.5-VL checkpoints (default system turn, image placeholder
# wrapped in vision start/end); string contents are accepted too.
QWEN_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL: same ChatML without the default system turn, as in the Qwen3-VL checkpoints.
QWEN3_TEMPLATE = QWEN_TEMPLATE.replace(
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}",
    "",
)

# LLaVA-OneVision, as in the llava-hf checkpoints: images, then videos, then "\n" + each text;
# plain string contents (lmms-eval's simple llava_hf sends those) are accepted too.
LLAVA_OV_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\\n' + content['text'] }}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endif %}{{ '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Idefics3 / SmolVLM: "User:<image>question<end_of_utterance>\nAssistant:" after a bos token.
IDEFICS_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}<image>{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


# --------------------------------------------------------------------------- per-arch specs
QWEN_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
IDEFICS_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    "<video>",
    *[f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)],
]


@dataclass(frozen=True)
class _Spec:
    tokens: list[str]
    bos: str | None
    eos: str
    pad: str
    template: str


_SPECS: dict[str, _Spec] = {
    "qwen2_vl": _Spec(QWEN_TOKENS, None, "<|im_end|>", "<|endoftext|>", QWEN_TEMPLATE),
    "qwen2_5_vl": _Spec(QWEN_TOKENS, None, "<|im_end|>", "<|endoftext|>", QWEN_TEMPLATE),
    "qwen3_vl": _Spec(QWEN_TOKENS, None, "<|im_end|>", "<|endoftext|>", QWEN3_TEMPLATE),
    "llava_onevision": _Spec(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        None,
        "<|im_end|>",
        "<|endoftext|>",
        LLAVA_OV_TEMPLATE,
    ),
    "idefics3": _Spec(
        ["<|begin_of_text|>", *IDEFICS_TOKENS],
        "<|begin_of_text|>",
        "<end_of_utterance>",
        "<|endoftext|>",
        IDEFICS_TEMPLATE,
    ),
    "smolvlm": _Spec(
        IDEFICS_TOKENS, "<|im_start|>", "<end_of_utterance>", "<|im_end|>", IDEFICS_TEMPLATE
    ),
}

# Tiny vision towers: 32 wide, 2 heads; SigLIP-style ones see 32x32 images in 8x8 patches.
_VISION_WIDTH = 32
_SIGLIP_IMAGE, _SIGLIP_PATCH = 32, 8


def _tiny_tokenizer(arch: str) -> PreTrainedTokenizerFast:
    spec = _SPECS[arch]
    tok = build_tokenizer(spec.tokens)
    tok.eos_token = spec.eos
    tok.pad_token = spec.pad
    if spec.bos is not None:
        tok.bos_token = spec.bos
    tok.chat_template = spec.template
    return tok


def tokenizer_vocab_size(tokenizer: PreTrainedTokenizerFast) -> int:
    # Round up like real checkpoints do, so a few more added tokens would still fit.
    return -(-len(tokenizer) // 64) * 64


def _split_overrides(config_cls: type, overrides: dict[str, Any]) -> tuple[dict, dict, dict]:
    """Split ``overrides`` into (top-level, text, vision) config kwargs.

    ``text_config=`` / ``vision_config=`` dicts go to their sub-config; any other key goes to the
    top-level config when its class declares it (e.g. ``scale_factor``), else to the text config.
    """
    overrides = dict(overrides)
    text = dict(overrides.pop("text_config", None) or {})
    vision = dict(overrides.pop("vision_config", None) or {})
    own = inspect.get_annotations(config_cls)
    top = {k: v for k, v in overrides.items() if k in own}
    text.update({k: v for k, v in overrides.items() if k not in own})
    return top, text, vision


def _text_kwargs(num_layers: int, hidden_size: int, tok: PreTrainedTokenizerFast) -> dict:
    heads = max(1, hidden_size // 16)  # head_dim 16
    return {
        "vocab_size": tokenizer_vocab_size(tok),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),  # grouped-query attention, as the real ones
        "max_position_embeddings": 4096,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "tie_word_embeddings": False,
    }


def _mrope_section(head_dim: int, weights: tuple[int, int, int]) -> list[int]:
    # Multimodal RoPE splits head_dim/2 rotary frequencies over (time, height, width).
    half = head_dim // 2
    sec = [half * w // sum(weights) for w in weights]
    sec[0] += half - sum(sec)
    return sec


def _qwen_vision(arch: str, hidden_size: int, head_dim: int, text: dict) -> tuple[dict, dict]:
    """(vision config, rope parameters) of a tiny Qwen-VL; Qwen3-VL also sets ``head_dim``."""
    if arch == "qwen2_vl":
        vision = {
            "depth": 2,
            "embed_dim": _VISION_WIDTH,
            "hidden_size": hidden_size,  # = the merger's output width
            "num_heads": 2,
            "mlp_ratio": 2,
        }
        return vision, {
            "rope_type": "default",
            "mrope_section": _mrope_section(head_dim, (2, 3, 3)),
        }
    vision = {
        "depth": 2,
        "hidden_size": _VISION_WIDTH,
        "out_hidden_size": hidden_size,
        "intermediate_size": 2 * _VISION_WIDTH,
        "num_heads": 2,
    }
    if arch == "qwen2_5_vl":
        vision["fullatt_block_indexes"] = [1]  # layer 0 windowed, layer 1 full, like the real mix
        return vision, {
            "rope_type": "default",
            "mrope_section": _mrope_section(head_dim, (2, 3, 3)),
        }
    vision["num_position_embeddings"] = 256  # 16x16 learned grid, interpolated per image
    vision["deepstack_visual_indexes"] = [0]
    text["head_dim"] = head_dim
    rope = {"rope_type": "default", "mrope_section": _mrope_section(head_dim, (2, 1, 1))}
    return vision, rope | {"mrope_interleaved": True}


def _build_config(
    arch: str, num_layers: int, hidden_size: int, tok: PreTrainedTokenizerFast, overrides: dict
) -> PreTrainedConfig:
    from transformers import CONFIG_MAPPING, AutoConfig

    text = _text_kwargs(num_layers, hidden_size, tok)
    head_dim = hidden_size // text["num_attention_heads"]
    ids = {t: tok.convert_tokens_to_ids(t) for t in _SPECS[arch].tokens}
    top_o, text_o, vision_o = _split_overrides(CONFIG_MAPPING[arch], overrides)

    if arch in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        vision, rope = _qwen_vision(arch, hidden_size, head_dim, text)
        text["rope_parameters"] = {"rope_theta": 1_000_000.0, **rope}
        return AutoConfig.for_model(
            arch,
            text_config={**text, **text_o},
            vision_config={**vision, **vision_o},
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=False,
            **top_o,
        )
    return _siglip_config(arch, text | text_o, vision_o, ids, tok, top_o)


def _siglip_config(arch: str, text: dict, vision_o: dict, ids: dict, tok, top_o: dict):
    """LLaVA-OneVision, or Idefics3 / SmolVLM (a Llama text model behind a pixel-shuffle
    connector), with a tiny SigLIP tower."""
    from transformers import AutoConfig

    siglip = {
        "hidden_size": _VISION_WIDTH,
        "intermediate_size": 2 * _VISION_WIDTH,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": _SIGLIP_IMAGE,
        "patch_size": _SIGLIP_PATCH,
    }
    if arch == "llava_onevision":
        side = _SIGLIP_IMAGE
        return AutoConfig.for_model(
            arch,
            text_config={"model_type": "qwen2", **text},
            vision_config={"model_type": "siglip_vision_model", **siglip, **vision_o},
            image_token_index=ids["<image>"],
            video_token_index=ids["<video>"],
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            image_grid_pinpoints=[[side * r, side * c] for r in (1, 2) for c in (1, 2)],
            tie_word_embeddings=False,
            **top_o,
        )
    return AutoConfig.for_model(
        arch,
        text_config={"model_type": "llama", **text},
        vision_config={**siglip, **vision_o},
        image_token_id=ids["<image>"],
        pad_token_id=tok.pad_token_id,  # top-level copy, else it defaults to Llama-3's 128002
        scale_factor=2,
        tie_word_embeddings=False,
        **top_o,
    )


def _build_processor(
    arch: str, config: PreTrainedConfig, tok: PreTrainedTokenizerFast
) -> ProcessorMixin:
    import transformers as tf

    template = _SPECS[arch].template
    if arch in _QWEN_PIXELS:
        lo, hi = _QWEN_PIXELS[arch]
        patch = config.vision_config.patch_size
        size = {"shortest_edge": lo, "longest_edge": hi}
        common = {"size": size, "patch_size": patch, "merge_size": 2, "temporal_patch_size": 2}
        if arch == "qwen3_vl":
            # Qwen3-VL normalises to [-1, 1] and has its own video processor.
            image = tf.Qwen2VLImageProcessor(**common, image_mean=[0.5] * 3, image_std=[0.5] * 3)
            video = tf.Qwen3VLVideoProcessor(**common, image_mean=[0.5] * 3, image_std=[0.5] * 3)
            cls = tf.Qwen3VLProcessor
        else:
            image = tf.Qwen2VLImageProcessor(**common)
            video = tf.Qwen2VLVideoProcessor(**common)
            cls = tf.Qwen2VLProcessor if arch == "qwen2_vl" else tf.Qwen2_5_VLProcessor
        return cls(
            image_processor=image, tokenizer=tok, video_processor=video, chat_template=template
        )

    side = config.vision_config.image_size
    tokens_per_tile = (side // config.vision_config.patch_size) ** 2
    if arch == "llava_onevision":
        kw = {
            "size": {"height": side, "width": side},
            "image_grid_pinpoints": config.image_grid_pinpoints,
        }
        return tf.LlavaOnevisionProcessor(
            image_processor=tf.LlavaOnevisionImageProcessor(**kw),
            tokenizer=tok,
            video_processor=tf.LlavaOnevisionVideoProcessor(size={"height": side, "width": side}),
            num_image_tokens=tokens_per_tile,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            chat_template=template,
            vision_aspect_ratio=config.vision_aspect_ratio,
        )
    # Images resize to at most 2x2 tiles of `side` plus the global view; each tile gives
    # tokens_per_tile / scale_factor**2 image tokens after the pixel shuffle.
    seq_len = tokens_per_tile // config.scale_factor**2
    kw = {"size": {"longest_edge": 2 * side}, "max_image_size": {"longest_edge": side}}
    if arch == "idefics3":
        return tf.Idefics3Processor(
            image_processor=tf.Idefics3ImageProcessor(**kw),
            tokenizer=tok,
            image_seq_len=seq_len,
            chat_template=template,
        )
    return tf.SmolVLMProcessor(
        image_processor=tf.SmolVLMImageProcessor(**kw),
        tokenizer=tok,
        video_processor=tf.SmolVLMVideoProcessor(**kw),
        image_seq_len=seq_len,
        chat_template=template,
    )


def build_tiny_vlm(
    arch: str,
    num_layers: int = 4,
    seed: int = 0,
    hidden_size: int = 64,
    **overrides: Any,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build a random ``arch`` model (real HF class) and its real processor, fully offline.

    ``num_layers`` decoder layers of width ``hidden_size`` (head_dim 16, half as many KV heads);
    weights are drawn after ``torch.manual_seed(seed)``, so equal arguments give equal weights.
    ``overrides`` tweak the config: ``text_config={...}`` / ``vision_config={...}`` dicts go to
    the sub-configs, other keys to the top-level config when it declares them, else to the text
    config (e.g. ``intermediate_size=256``).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch={arch!r} is not one of {', '.join(ARCHITECTURES)}")
    from transformers import AutoModelForImageTextToText, GenerationConfig

    tok = _tiny_tokenizer(arch)
    config = _build_config(arch, num_layers, hidden_size, tok, overrides)
    processor = _build_processor(arch, config, tok)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32).eval()
    # Generation stops on the chat turn's end token and pads with the tokenizer's pad token.
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
    )
    return model, processor


def save_tiny_vlm(
    arch: str,
    path: str | Path,
    num_layers: int = 4,
    seed: int = 0,
    **overrides: Any,
) -> Path:
    """Build a tiny ``arch`` model and save it with its processor (safetensors) under ``path``."""
    path = Path(path)
    model, processor = build_tiny_vlm(arch, num_layers=num_layers, seed=seed, **overrides)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path


def wrapper_kwargs(arch: str) -> dict[str, Any]:
    """Extra lmms-eval ``model_args`` (besides ``pretrained``) for a tiny ``arch`` on CPU.

    What the lmms-eval 0.7.3 wrappers do with a tiny checkpoint (transformers 5.24, CPU only):

    * All of them default to CUDA: ``device`` defaults to ``"cuda"`` and ``device_map`` to
      ``"auto"`` (Qwen2.5/Qwen3), ``"cuda"`` (Qwen2-VL) or ``""`` (llava_hf, which then calls
      ``model.to(device)``); the chat Qwen wrappers also move inputs to ``"cuda"`` whenever
      ``device_map == "auto"``. Hence ``device="cpu", device_map="cpu"`` for every one.
    * Every constructor asserts that it got no unknown kwargs, so only pass what it declares:
      ``min_pixels``/``max_pixels`` exist on the Qwen wrappers only, not on ``llava_hf``.
    * ``qwen2_vl`` has a simple wrapper only (``get_model("qwen2_vl")`` is the simple class);
      it loads with ``torch_dtype="auto"`` (float32 here) and sdpa attention
      (``use_flash_attention_2=False``). ``min_pixels`` defaults to 3136, ``max_pixels`` to 602112.
    * ``qwen2_5_vl`` and ``qwen3_vl`` resolve to their chat classes and always load in
      bfloat16 (fine on CPU); ``attn_implementation`` defaults to None, i.e. sdpa. Their
      ``min_pixels`` defaults to 256*28*28 = 200704, which blows every image up to >= 256
      visual tokens (about 3 s per request instead of 0.6 s for tiny Qwen2.5-VL on 2 cores),
      so pass the tiny processor's own budget. The wrappers hand min/max_pixels both to
      ``AutoProcessor.from_pretrained`` (overriding the saved image-processor size) and to
      ``qwen_vl_utils.process_vision_info``.
    * ``qwen3_vl`` picks the MoE class when the ``pretrained`` string matches ``A\\d+B`` (as in
      "30B-A3B"): keep such text out of the checkpoint path.
    * ``llava_hf`` reads ``config.model_type`` (``llava_onevision`` here), loads with
      ``dtype="auto"`` (float32 here) and ``attn_implementation=None`` (sdpa), and builds
      prompts with the tokenizer's chat template (string contents in the simple class, content
      lists in the chat class), so the tiny tokenizer carries the template too.

    With these kwargs every wrapper constructs on a saved tiny folder in well under a second,
    its ``.model`` is the HF model, and ``generate_until`` (simple and chat classes) returns text.
    The CLI works end to end too, e.g. ``python -m lmms_eval --model qwen2_5_vl --model_args
    pretrained=DIR,device=cpu,device_map=cpu,min_pixels=3136,max_pixels=12544 --tasks TASK
    --limit 2`` (about 20-25 s on 2 cores, nearly all of it start-up).
    """
    if arch not in LMMS_EVAL_WRAPPERS:
        known = ", ".join(LMMS_EVAL_WRAPPERS)
        raise ValueError(f"arch={arch!r} has no lmms-eval wrapper (have: {known})")
    kwargs: dict[str, Any] = {"device": "cpu", "device_map": "cpu"}
    if arch in _QWEN_PIXELS:
        kwargs["min_pixels"], kwargs["max_pixels"] = _QWEN_PIXELS[arch]
    return kwargs


def main(argv: list[str] | None = None) -> int:
    """``python -m lmms_prune_plugin.testing.tiny ARCH PATH [--layers N] [--seed S]``: save a tiny model."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m lmms_prune_plugin.testing.tiny", description=main.__doc__
    )
    p.add_argument("arch", choices=ARCHITECTURES)
    p.add_argument("path")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    path = save_tiny_vlm(a.arch, a.path, num_layers=a.layers, seed=a.seed)
    extra = (
        ",".join(f"{k}={v}" for k, v in wrapper_kwargs(a.arch).items())
        if a.arch in LMMS_EVAL_WRAPPERS
        else "device=cpu"
    )
    print(f"pretrained={path},{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Tiny random models of every decoder-only image-text-to-text architecture tried with the surgery.

Unlike :mod:`.tiny` (six architectures with real processors and tokenizers, for end-to-end
runs), these are models only: each architecture's default config shrunk to a text decoder of
``num_layers`` layers of width ``hidden_size``, a one-layer vision tower and a 256-token
vocabulary, plus the layer structure that makes the architecture interesting (Llama4
interleaved MoE, Qwen3-VL-MoE dense layers, Mllama cross-attention layers, Gemma3n KV sharing,
...). Built from configs, offline, in well under a second each; fed with token ids.

Example::

    model = build_arch_model("llama4", num_layers=5)
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedConfig, PreTrainedModel

VOCAB = 256
#: Token ids 0..RESERVED-1 are left to the special tokens (image, bos, eos, pad, ...).
RESERVED = 16

# model_type -> overrides of the text config (given num_layers), then of the top-level config.
_TEXT: dict[str, Any] = {
    "gemma3n": lambda n: {
        "intermediate_size": [64] * n,
        "activation_sparsity_pattern": [0.95] + [0.0] * (n - 1),
        "layer_types": ["sliding_attention", "full_attention"] * (n // 2)
        + ["full_attention"] * (n % 2),
        "num_kv_shared_layers": 2,
        "hidden_size_per_layer_input": 8,
        "vocab_size_per_layer_input": VOCAB,
        "laurel_rank": 4,
        "sliding_window": 16,
    },
    "gemma4": lambda n: {
        "layer_types": ["sliding_attention", "full_attention"] * (n // 2)
        + ["full_attention"] * (n % 2),
        "hidden_size_per_layer_input": 8,
        "vocab_size_per_layer_input": VOCAB,
        "global_head_dim": 32,  # full-attention layers differ: a per_layer_config
        "num_kv_shared_layers": 2,
        "sliding_window": 16,
    },
    "gemma3": lambda n: {"sliding_window": 16},
    "llama4": lambda n: {
        "interleave_moe_layer_step": 2,
        "moe_layers": None,
        "no_rope_layers": None,
        "no_rope_layer_interval": 2,
        "num_local_experts": 2,
        "intermediate_size_mlp": 64,
        "attention_chunk_size": 16,
    },
    "qwen3_vl_moe": lambda n: {"mlp_only_layers": [1, n - 1], "num_experts": 4},
    "glm4v_moe": lambda n: {"first_k_dense_replace": 2, "n_routed_experts": 4},
    "mllama": lambda n: {"cross_attention_layers": [1, n - 2]},
    "qwen3_5": lambda n: {
        "layer_types": ["linear_attention", "full_attention"] * (n // 2)
        + ["full_attention"] * (n % 2),
    },
}

_ARCHS = (
    "aya_vision",
    "gemma3",
    "gemma3n",
    "gemma4",
    "glm4v",
    "glm4v_moe",
    "idefics2",
    "idefics3",
    "internvl",
    "llama4",
    "llava",
    "llava_next",
    "llava_onevision",
    "mistral3",
    "mllama",
    "paligemma",
    "phi4_multimodal",
    "qwen2_5_vl",
    "qwen2_vl",
    "qwen3_5",
    "qwen3_vl",
    "qwen3_vl_moe",
    "smolvlm",
)

#: Every architecture :func:`build_arch_model` knows.
ARCH_MODELS: tuple[str, ...] = _ARCHS

# Their modeling code defaults the multimodal RoPE split to full-size head dims.
_MROPE = ("qwen2_vl", "qwen2_5_vl", "glm4v", "glm4v_moe")

# Text-config ints set whenever the config has them.
_TEXT_SIZES = {
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "max_position_embeddings": 512,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "n_group": 1,
    "topk_group": 1,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 2,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 8,
    "linear_conv_kernel_dim": 2,
    "num_experts": 4,
    "num_local_experts": 2,
    "n_routed_experts": 4,
    "altup_num_inputs": 2,
}
# Vision / audio tower ints set whenever the sub-config has them.
_TOWER_SIZES = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_global_layers": 1,
    "depth": 1,
    "num_attention_heads": 2,
    "num_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "embed_dim": 32,
    "out_hidden_size": 32,
    "projection_dim": 32,
    "vision_output_dim": 32,
    "image_size": 32,
    "patch_size": 8,
    "num_position_embeddings": 16,
}


def _shrink_tower(sub: PreTrainedConfig, text_hidden: int) -> None:
    for key, value in _TOWER_SIZES.items():
        if isinstance(getattr(sub, key, None), int) and not isinstance(getattr(sub, key), bool):
            setattr(sub, key, value)
    if isinstance(getattr(sub, "out_hidden_size", None), int):
        sub.out_hidden_size = text_hidden
    for key in ("deepstack_visual_indexes", "fullatt_block_indexes"):
        if getattr(sub, key, None):
            setattr(sub, key, [0])
    if getattr(sub, "intermediate_layers_indices", None):
        sub.intermediate_layers_indices = [0]


def _fit_mrope(model_type: str, text: dict) -> None:
    """Multimodal RoPE splits the rotary half of head_dim over (t, h, w): fit the split."""
    rope = text.get("rope_parameters") or {}
    if not rope.get("mrope_section") and model_type not in _MROPE:
        return
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    half = int(head_dim * rope.get("partial_rotary_factor", 1.0)) // 2
    sec = [half // 4, (half - half // 4) // 2]
    rope["mrope_section"] = [sec[0], sec[1], half - sec[0] - sec[1]]
    text["rope_parameters"] = rope


def _fix_token_ids(cfg: PreTrainedConfig) -> None:
    """Point every special token id outside the tiny vocabulary at a reserved low id."""
    free = iter(range(1, RESERVED))
    seen: dict[int, int] = {}

    def remap(v):
        if isinstance(v, int) and not isinstance(v, bool) and v >= RESERVED:
            if v not in seen:
                seen[v] = next(free)
            return seen[v]
        return v

    for key, value in list(vars(cfg).items()):
        if key.endswith(("token_id", "token_index", "token_ids")):
            new = [remap(v) for v in value] if isinstance(value, list) else remap(value)
            setattr(cfg, key, new)


def arch_config(model_type: str, num_layers: int = 5, hidden_size: int = 32) -> PreTrainedConfig:
    """The default config of ``model_type`` shrunk as described in the module docstring."""
    from transformers import AutoConfig

    if model_type not in ARCH_MODELS:
        raise ValueError(f"model_type={model_type!r} is not one of {', '.join(ARCH_MODELS)}")
    cfg = AutoConfig.for_model(model_type)
    text = cfg.get_text_config()
    text_kwargs = {
        "vocab_size": VOCAB,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        **{k: v for k, v in _TEXT_SIZES.items() if k in text.to_dict()},
        **_TEXT.get(model_type, lambda n: {})(num_layers),
    }
    text_dict = text.to_dict()
    text_dict.update(text_kwargs)
    for key in ("layer_types",):
        if key not in _TEXT.get(model_type, lambda n: {})(num_layers):
            text_dict.pop(key, None)  # recomputed for the new depth
    text_dict.pop("per_layer_config", None)
    _fit_mrope(model_type, text_dict)
    text_dict.pop("full_attn_idxs", None)
    new_text = type(text)(**{k: v for k, v in text_dict.items() if k != "model_type"})
    if text is cfg:
        cfg = new_text
    else:
        for key, value in vars(cfg).items():
            if value is text:
                setattr(cfg, key, new_text)
    for value in list(vars(cfg).values()):
        if isinstance(value, PreTrainedConfig) and value is not new_text:
            _shrink_tower(value, hidden_size)
    for obj in (cfg, new_text):
        _fix_token_ids(obj)
    if model_type == "gemma3n":
        # A tiny timm test network instead of MobileNetV5-300M; the audio tower shrunk.
        cfg.vision_config.architecture, cfg.vision_config.hidden_size = "test_vit", 64
        audio = cfg.audio_config
        audio.hidden_size, audio.conf_num_hidden_layers, audio.conf_num_attention_heads = 32, 1, 2
        audio.input_feat_size, audio.sscp_conv_channel_size = 16, [8, 8]
    for key in ("projector_hidden_size", "mm_hidden_size", "projection_dim"):
        if isinstance(getattr(cfg, key, None), int):
            setattr(cfg, key, hidden_size)
    cfg.tie_word_embeddings = False
    return cfg


def build_arch_model(
    model_type: str, num_layers: int = 5, hidden_size: int = 32, seed: int = 0
) -> PreTrainedModel:
    """A random ``model_type`` model (the real image-text-to-text class) from :func:`arch_config`."""
    cfg = arch_config(model_type, num_layers, hidden_size)
    torch.manual_seed(seed)
    return auto_class(model_type).from_config(cfg, dtype=torch.float32).eval()


def auto_class(model_type: str):
    """The transformers Auto class that loads ``model_type``: image-text-to-text, else causal LM
    (Phi-4-multimodal is registered only there)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def text_batch(seed: int = 0, lengths: tuple[int, ...] = (9, 6)) -> dict[str, torch.Tensor]:
    """Left-padded token ids from the non-special part of the vocabulary, with their mask."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = torch.randint(RESERVED, VOCAB, (n,), generator=g)
        mask[row, width - n :] = 1
    return {"input_ids": ids, "attention_mask": mask}


#: Architectures :func:`save_arch_checkpoint` saves with a processor, for lmms-eval wrappers.
CHECKPOINTS: tuple[str, ...] = (
    "gemma3",
    "gemma4",
    "glm4v",
    "glm4v_moe",
    "idefics2",
    "internvl",
    "llava",
    "llava_next",
    "mistral3",
    "mllama",
    "phi4_multimodal",
    "qwen3_5",
)

_GEMMA3_TOKENS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]
# Gemma3 turns; an image content becomes <start_of_image>, which the processor expands.
_GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<start_of_image>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def save_arch_checkpoint(model_type: str, path, num_layers: int = 4, seed: int = 0):
    """Save a tiny ``model_type`` model with a real processor and chat template under ``path``.

    The vocabulary is the tiny byte-level BPE of :mod:`.tiny` with the architecture's special
    tokens, so the processor and the model agree on every token id. Returns the folder.
    """
    from pathlib import Path

    import transformers as tf

    if model_type not in CHECKPOINTS:
        raise ValueError(f"model_type={model_type!r} is not one of {', '.join(CHECKPOINTS)}")
    cfg = arch_config(model_type, num_layers, hidden_size=32)
    builders = {
        "gemma3": _gemma3_processor,
        "gemma4": _gemma4_processor,
        "glm4v": _glm4v_processor,
        "glm4v_moe": _glm4v_processor,
        "idefics2": _idefics2_processor,
        "internvl": _internvl_processor,
        "llava": _llava_processor,
        "llava_next": _llava_processor,
        "mistral3": _mistral3_processor,
        "mllama": _mllama_processor,
        "phi4_multimodal": _phi4_multimodal_processor,
        "qwen3_5": _qwen3_5_processor,
    }
    tok, processor = builders[model_type](cfg)
    text = cfg.get_text_config()
    for obj in (cfg, text):
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if hasattr(obj, key):
                setattr(obj, key, getattr(tok, key))
    torch.manual_seed(seed)
    model = auto_class(model_type).from_config(cfg, dtype=torch.float32).eval()
    model.generation_config = tf.GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _gemma3_processor(cfg):
    import transformers as tf

    media = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    tok = _tokenizer(
        cfg,
        _GEMMA3_TOKENS,
        _GEMMA3_TEMPLATE,
        pad_token="<pad>",
        eos_token="<end_of_turn>",
        bos_token="<bos>",
        **media,
    )
    cfg.mm_tokens_per_image = 4  # 4x4 patches pooled to 2x2
    cfg.boi_token_id, cfg.eoi_token_id = tok.boi_token_id, tok.eoi_token_id
    cfg.image_token_id = tok.image_token_id
    side = cfg.vision_config.image_size
    processor = tf.Gemma3Processor(
        image_processor=tf.Gemma3ImageProcessor(size={"height": side, "width": side}),
        tokenizer=tok,
        image_seq_length=cfg.mm_tokens_per_image,
        chat_template=_GEMMA3_TEMPLATE,
    )
    return tok, processor


def _idefics2_processor(cfg):
    import transformers as tf

    from lmms_prune_plugin.testing.tiny import IDEFICS_TEMPLATE

    tokens = ["<unk>", "<s>", "<fake_token_around_image>", "<image>", "<end_of_utterance>"]
    tok = _tokenizer(
        cfg,
        tokens,
        IDEFICS_TEMPLATE,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<end_of_utterance>",
        pad_token="<unk>",
        image_token="<image>",
        image_boundary_token="<fake_token_around_image>",
    )
    cfg.image_token_id = tok.image_token_id
    cfg.perceiver_config.resampler_n_latents, cfg.perceiver_config.resampler_depth = 4, 1
    side = cfg.vision_config.image_size
    size = {"shortest_edge": side, "longest_edge": side}
    processor = tf.Idefics2Processor(
        image_processor=tf.Idefics2ImageProcessor(size=size, do_image_splitting=False),
        tokenizer=tok,
        image_seq_len=cfg.perceiver_config.resampler_n_latents,
        chat_template=IDEFICS_TEMPLATE,
    )
    return tok, processor


def _qwen3_5_processor(cfg):
    import transformers as tf

    from lmms_prune_plugin.testing.tiny import (
        QWEN3_TEMPLATE,
        QWEN_TOKENS,
        build_tokenizer,
        tokenizer_vocab_size,
    )

    tok = build_tokenizer(QWEN_TOKENS)
    tok.eos_token, tok.pad_token, tok.chat_template = "<|im_end|>", "<|endoftext|>", QWEN3_TEMPLATE
    cfg.get_text_config().vocab_size = tokenizer_vocab_size(tok)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_TOKENS}
    cfg.image_token_id, cfg.video_token_id = ids["<|image_pad|>"], ids["<|video_pad|>"]
    cfg.vision_start_token_id = ids["<|vision_start|>"]
    cfg.vision_end_token_id = ids["<|vision_end|>"]
    classes = tf.Qwen3VLProcessor, tf.Qwen2VLImageProcessor, tf.Qwen3VLVideoProcessor
    return tok, _grid_processor(classes, cfg, tok, QWEN3_TEMPLATE)


def _grid_processor(classes, cfg, tok, template: str):
    """A (processor, image processor, video processor) triple of the Qwen-style patch grids."""
    processor_cls, image_cls, video_cls = classes
    common = _grid_kwargs(cfg.vision_config)
    return processor_cls(
        image_processor=image_cls(**common),
        tokenizer=tok,
        video_processor=video_cls(**common),
        chat_template=template,
    )


def _grid_kwargs(vision) -> dict[str, Any]:
    """Image/video processor kwargs of the Qwen-style patch grids (Qwen3.5, GLM-4V): images
    resized to 2x2 .. 4x4 merged patches, so 4 to 16 visual tokens."""
    factor = vision.patch_size * 2  # merge_size 2
    return {
        "size": {"shortest_edge": (2 * factor) ** 2, "longest_edge": (4 * factor) ** 2},
        "patch_size": vision.patch_size,
        "merge_size": 2,
        "temporal_patch_size": vision.temporal_patch_size,
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
    }


def _glm4v_processor(cfg):
    import transformers as tf

    template = _chat_template(
        "<|{{ m['role'] }}|>\n",
        "",
        "<|begin_of_image|><|image|><|end_of_image|>",
        "<|assistant|>\n",
    )
    media = [
        "<|begin_of_image|>",
        "<|end_of_image|>",
        "<|image|>",
        "<|begin_of_video|>",
        "<|end_of_video|>",
        "<|video|>",
    ]
    turns = ["<|system|>", "<|user|>", "<|assistant|>"]
    tok = _tokenizer(
        cfg,
        ["<|endoftext|>", "[gMASK]", *turns, *media],
        template,
        bos_token="[gMASK]",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    ids = [tok.convert_tokens_to_ids(t) for t in media]
    (
        cfg.image_start_token_id,
        cfg.image_end_token_id,
        cfg.image_token_id,
        cfg.video_start_token_id,
        cfg.video_end_token_id,
        cfg.video_token_id,
    ) = ids
    classes = tf.Glm4vProcessor, tf.Glm4vImageProcessor, tf.Glm4vVideoProcessor
    return tok, _grid_processor(classes, cfg, tok, template)


def _gemma4_token_ids(cfg, tok) -> None:
    cfg.boi_token_id, cfg.eoi_token_id = tok.boi_token_id, tok.eoi_token_id
    cfg.image_token_id = tok.image_token_id
    cfg.video_token_id = tok.convert_tokens_to_ids("<|video|>")
    cfg.audio_token_id, cfg.boa_token_id = tok.audio_token_id, tok.boa_token_id
    cfg.eoa_token_index = tok.eoa_token_id
    text = cfg.get_text_config()  # the per-layer input table covers the whole vocabulary
    text.vocab_size_per_layer_input = text.vocab_size
    # In generate, Gemma4 runs its KV-shared layers on the last position only, which calibration
    # cannot measure (refused): this checkpoint has none, so the wrapper itself is what is tested.
    text.num_kv_shared_layers = 0


def _gemma4_processor(cfg):
    import transformers as tf

    # The default Gemma4 config has no vision tower: a one-layer one, 8-pixel patches pooled 3x3.
    cfg.vision_config = tf.Gemma4VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        patch_size=8,
        position_embedding_size=1024,
    )
    media = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
        "audio_token": "<audio_soft_token>",
        "boa_token": "<start_of_audio>",
        "eoa_token": "<end_of_audio>",
    }
    template = _chat_template(
        "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n",
        "<end_of_turn>\n",
        "<image_soft_token>",
        "<start_of_turn>model\n",
    )
    tokens = [
        "<pad>",
        "<eos>",
        "<bos>",
        "<start_of_turn>",
        "<end_of_turn>",
        *media.values(),
        "<|video|>",
    ]
    tok = _tokenizer(
        cfg,
        tokens,
        template,
        pad_token="<pad>",
        eos_token="<end_of_turn>",
        bos_token="<bos>",
        **media,
    )
    _gemma4_token_ids(cfg, tok)
    patch = {"patch_size": 8, "max_soft_tokens": 70, "pooling_kernel_size": 3}
    processor = tf.Gemma4Processor(
        feature_extractor=tf.Gemma4AudioFeatureExtractor(),
        image_processor=tf.Gemma4ImageProcessor(**patch),
        tokenizer=tok,
        video_processor=tf.Gemma4VideoProcessor(**patch),
        image_seq_length=70,
        chat_template=template,
    )
    return tok, processor


def _phi4_multimodal_processor(cfg):
    import transformers as tf

    template = _chat_template("<|{{ m['role'] }}|>", "<|end|>", "<|image|>", "<|assistant|>")
    tokens = [
        "<|endoftext|>",
        "<|system|>",
        "<|user|>",
        "<|assistant|>",
        "<|end|>",
        "<|image|>",
        "<|audio|>",
    ]
    tok = _tokenizer(
        cfg,
        tokens,
        template,
        bos_token="<|endoftext|>",
        eos_token="<|end|>",
        pad_token="<|endoftext|>",
        image_token="<|image|>",
        audio_token="<|audio|>",
    )
    cfg.vision_config.image_token_id, cfg.audio_config.audio_token_id = (
        tok.image_token_id,
        tok.audio_token_id,
    )
    side, patch = cfg.vision_config.image_size, cfg.vision_config.patch_size
    processor = tf.Phi4MultimodalProcessor(
        image_processor=tf.Phi4MultimodalImageProcessor(
            size={"height": side, "width": side}, patch_size=patch, dynamic_hd=1
        ),
        audio_processor=tf.Phi4MultimodalFeatureExtractor(),
        tokenizer=tok,
        chat_template=template,
    )
    return tok, processor


def _chat_template(turn: str, end: str, image: str, prompt: str) -> str:
    """A chat template whose messages are ``turn`` + contents + ``end`` (jinja, ``m`` is the
    message), an image content becoming ``image`` (the placeholder the processor expands), and
    ``prompt`` the generation prompt."""
    return (
        "{{ bos_token }}{% for m in messages %}"
        + turn
        + "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}" + image + "{% elif c['type'] == 'text' %}{{ c['text'] }}"
        "{% endif %}{% endfor %}{% endif %}" + end + "{% endfor %}"
        "{% if add_generation_prompt %}" + prompt + "{% endif %}"
    )


def _tokenizer(cfg, tokens: list[str], template: str, **named: Any):
    """The tiny BPE with ``tokens`` as its special tokens; ``named``: bos/eos/pad/unk roles and
    the processor's named tokens (``image_token``, ...). The text vocabulary is sized to it."""
    import transformers as tf

    from lmms_prune_plugin.testing.tiny import build_tokenizer, tokenizer_vocab_size

    roles = {
        k: named.pop(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token") if k in named
    }
    tok = tf.PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(tokens).backend_tokenizer,
        extra_special_tokens=named,
        chat_template=template,
        **roles,
    )
    cfg.get_text_config().vocab_size = tokenizer_vocab_size(tok)
    return tok


def _internvl_processor(cfg):
    import transformers as tf

    image = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    template = _chat_template(
        "<|im_start|>{{ m['role'] }}\n",
        "<|im_end|>\n",
        "<IMG_CONTEXT>\n",
        "<|im_start|>assistant\n",
    )
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *image.values()]
    tok = _tokenizer(
        cfg,
        tokens,
        template,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        **image,
    )
    cfg.image_token_id = tok.context_image_token_id
    # 56x56 pixels in 14x14 patches, pixel-shuffled by 0.5: 4 tokens per image.
    cfg.vision_config.image_size, cfg.vision_config.patch_size = [56, 56], [14, 14]
    cfg.image_seq_length = 4
    size = {"height": 56, "width": 56}
    processor = tf.InternVLProcessor(
        image_processor=tf.GotOcr2ImageProcessor(size=size),
        tokenizer=tok,
        video_processor=tf.InternVLVideoProcessor(size=size),
        image_seq_length=cfg.image_seq_length,
        chat_template=template,
    )
    return tok, processor


def _mllama_processor(cfg):
    import transformers as tf

    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    template = _chat_template(
        header.format("{{ m['role'] }}"), "<|eot_id|>", "<|image|>", header.format("assistant")
    )
    tokens = [
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|finetune_right_pad_id|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|image|>",
        "<|python_tag|>",
    ]
    tok = _tokenizer(
        cfg,
        tokens,
        template,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        image_token="<|image|>",
    )
    cfg.image_token_index = tok.image_token_id
    vision = cfg.vision_config  # the projector reads the last and the intermediate hidden states
    vision.vision_output_dim = vision.hidden_size * (len(vision.intermediate_layers_indices) + 1)
    side = vision.image_size
    processor = tf.MllamaProcessor(
        # Tiles are padded to the vision tower's max_num_tiles (4), each side x side pixels.
        image_processor=tf.MllamaImageProcessor(size={"height": side, "width": side}),
        tokenizer=tok,
        chat_template=template,
    )
    return tok, processor


def _llava_processor(cfg):
    """LLaVA and LLaVA-NeXT (a 2x2 grid of tiles at most), with a CLIP tower whose class token
    counts as one more image token unless the strategy drops it."""
    import transformers as tf

    from lmms_prune_plugin.testing.tiny import LLAVA_OV_TEMPLATE

    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
    tok = _tokenizer(
        cfg,
        tokens,
        LLAVA_OV_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        image_token="<image>",
    )
    cfg.image_token_id = tok.image_token_id
    side, patch = cfg.vision_config.image_size, cfg.vision_config.patch_size
    size, crop = {"shortest_edge": side}, {"height": side, "width": side}
    if cfg.model_type == "llava_next":
        cfg.image_grid_pinpoints = [[side * r, side * c] for r in (1, 2) for c in (1, 2)]
        image = tf.LlavaNextImageProcessor(
            size=size, crop_size=crop, image_grid_pinpoints=cfg.image_grid_pinpoints
        )
        cls = tf.LlavaNextProcessor
    else:
        image, cls = tf.CLIPImageProcessor(size=size, crop_size=crop), tf.LlavaProcessor
    processor = cls(
        image_processor=image,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        num_additional_image_tokens=1,
        chat_template=LLAVA_OV_TEMPLATE,
        image_token="<image>",
    )
    return tok, processor


def _mistral3_processor(cfg):
    import transformers as tf

    template = _chat_template(
        "{% if m['role'] == 'user' %}[INST]{% endif %}",
        "{% if m['role'] == 'user' %}[/INST]{% else %}</s>{% endif %}",
        "[IMG]",
        "",
    )
    tokens = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]
    tok = _tokenizer(
        cfg,
        tokens,
        template,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
    )
    cfg.image_token_index = tok.convert_tokens_to_ids("[IMG]")
    side, patch = cfg.vision_config.image_size, cfg.vision_config.patch_size
    processor = tf.PixtralProcessor(
        image_processor=tf.PixtralImageProcessor(size={"longest_edge": side}, patch_size=patch),
        tokenizer=tok,
        patch_size=patch,
        spatial_merge_size=cfg.spatial_merge_size,
        chat_template=template,
    )
    return tok, processor


def checkpoint_wrapper_kwargs(model_type: str, path) -> dict[str, Any]:
    """lmms-eval ``model_args`` for a checkpoint of :func:`save_arch_checkpoint` on CPU."""
    import json
    from pathlib import Path

    kwargs: dict[str, Any] = {"device": "cpu", "device_map": "cpu"}
    if model_type == "idefics2":
        kwargs["dtype"] = "float32"  # the wrapper defaults to float16
    if model_type == "qwen3_5":
        pre = json.loads((Path(path) / "processor_config.json").read_text())["image_processor"]
        kwargs["min_pixels"] = pre["size"]["shortest_edge"]
        kwargs["max_pixels"] = pre["size"]["longest_edge"]
    return kwargs

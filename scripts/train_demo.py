"""Train the packaged demo VLM (a small Qwen2-VL) on CPU, from scratch, reproducibly.

    python scripts/train_demo.py                 # about 40 min on 2 CPU cores
    python scripts/train_demo.py --smoke --out /tmp/demo-smoke   # tiny config, < 1 min

The result is a plain transformers checkpoint (Qwen2VLForConditionalGeneration, its tokenizer,
Qwen2VLProcessor with a chat template) in ``lmms_prune_plugin/demo/model_files``, which
lmms-eval's ``qwen2_vl`` wrapper loads with ``lmms_prune_plugin.demo.model.demo_model_args()``.

Inputs are built exactly as that wrapper builds them at evaluation (system prompt, one image
then the question, chat template, image sent as a JPEG data URL and decoded by qwen_vl_utils,
left padding), and the loss covers the answer tokens plus ``<|im_end|>``. The vision tower is
first trained alone with linear probes that read each 28x28 cell (one merged visual token) and
a pull of each visual token towards the text embeddings of the words naming its cell; both stay
on as auxiliary losses during end-to-end training. Training batches are encoded by
:class:`BatchEncoder`, checked at start-up to equal the one-document path above.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Sleeping (not spinning) OpenMP workers: on a shared 2-core machine spinning threads that wait
# for a busy core slow training several-fold. Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from demo_targets import (  # noqa: E402
    COLOR_NAMES,
    EASYVQA_SHAPE_NAMES,
    IGNORE,
    MAX_COUNT,
    cell_words,
    token_targets,
)

from lmms_prune_plugin.demo.data import (  # noqa: E402
    HEIGHT,
    WIDTH,
    doc_to_text,
    held_out_docs,
    render_doc,
    shuffled_docs,
    train_stream,
)
from lmms_prune_plugin.demo.data.canvas import COLS, GLYPHS, ROWS, SHAPES  # noqa: E402
from lmms_prune_plugin.demo.data.nonmath_items import easyvqa_pool  # noqa: E402
from lmms_prune_plugin.demo.data.prompts import POST_PROMPT  # noqa: E402

DEFAULT_OUT = ROOT / "lmms_prune_plugin" / "demo" / "model_files"
SYSTEM_PROMPT = "You are a helpful assistant."  # lmms-eval qwen2_vl's default system prompt
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
#: The image is never resized: both pixel bounds equal its area (a multiple of 28 x 28).
PIXELS = WIDTH * HEIGHT

# Qwen2-VL's ChatML template: a default system turn, images as vision start/pad/end.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Model size and training schedule."""

    hidden: int = 128
    layers: int = 12
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 384
    vision_dim: int = 128
    vision_depth: int = 4
    vision_heads: int = 4
    batch: int = 24
    pretrain_steps: int = 300
    pretrain_batch: int = 48
    pretrain_warmup: int = 20
    steps: int = 3600
    lr: float = 1e-3  # 2e-3 and above stall this 12-layer decoder
    pretrain_lr: float = 3e-3
    warmup: int = 100
    math_fraction: float = 0.6  # math is the harder half
    # Arithmetic is memorised fact by fact (255 problems): it needs the most examples.
    math_weights: tuple[tuple[str, float], ...] = (
        ("arith", 0.55),
        ("bar_diff", 0.2),
        ("bar_value", 0.1),
        ("count_sum", 0.15),
    )
    aux_weight: float = 0.5
    align_weight: float = 1.0
    jpeg_prob: float = 0.8  # qwen2_vl sends JPEGs; chat wrappers send the PIL image itself
    seed: int = 0
    eval_every: int = 600
    tokenizer_docs: int = 4000


FULL = Config()
SMOKE = Config(
    hidden=32,
    layers=2,
    heads=2,
    kv_heads=1,
    intermediate=64,
    vision_dim=32,
    vision_depth=1,
    vision_heads=2,
    batch=4,
    pretrain_steps=3,
    pretrain_batch=4,
    pretrain_warmup=1,
    steps=6,
    warmup=2,
    eval_every=3,
    tokenizer_docs=200,
)


# --------------------------------------------------------------------------- tokenizer/model
def build_tokenizer(corpus: list[str]):
    """Byte-level BPE over the task vocabulary, digits kept apart, ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Single digits, as in Qwen's own tokenizer: numbers are read and written digit by digit.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        extra_special_tokens=SPECIAL_TOKENS,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",  # batched generation needs the prompts flush right
        model_max_length=4096,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tokenizer_corpus(n_docs: int) -> list[str]:
    """Everything the tokenizer will see: chat scaffolding, questions and answers."""
    lines = [SYSTEM_PROMPT, "system\nuser\nassistant\n", POST_PROMPT.strip()]
    for group in easyvqa_pool("train").values():
        lines += [f"{q[0].upper()}{q[1:]}\n{a}" for q, a, _ in group]
    stream = train_stream(seed=12345)  # its own seed: vocabulary only, not training data
    for _ in range(n_docs):
        d = next(stream)
        lines.append(f"{d['question']}\n{d['answer']}")
    return lines


def build_processor(tokenizer):
    """Qwen2VLProcessor whose image bounds keep the canvas at its rendered size."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    common = {
        "size": {"shortest_edge": PIXELS, "longest_edge": PIXELS},
        "patch_size": 14,
        "merge_size": 2,
        "temporal_patch_size": 2,
    }
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**common),
        video_processor=Qwen2VLVideoProcessor(**common),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(cfg: Config, tokenizer):
    """A randomly initialised Qwen2VLForConditionalGeneration of size ``cfg``."""
    from transformers import GenerationConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    head_dim = cfg.hidden // cfg.heads
    half = head_dim // 2
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # (t, h, w) frequencies
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = -(-len(tokenizer) // 64) * 64
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": vocab,
            "hidden_size": cfg.hidden,
            "intermediate_size": cfg.intermediate,
            "num_hidden_layers": cfg.layers,
            "num_attention_heads": cfg.heads,
            "num_key_value_heads": cfg.kv_heads,
            "max_position_embeddings": 1024,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": mrope,
            },
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": None,
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": cfg.vision_depth,
            "embed_dim": cfg.vision_dim,
            "hidden_size": cfg.hidden,
            "num_heads": cfg.vision_heads,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], do_sample=False
    )
    return model


# --------------------------------------------------------------------------- inputs
def wrapper_image(image, as_jpeg: bool):
    """The image as lmms-eval's qwen2_vl wrapper hands it to the processor (JPEG round trip)."""
    if not as_jpeg:
        return image
    from lmms_eval.models.model_utils.media_encoder import encode_image_to_data_url
    from qwen_vl_utils import fetch_image

    url = encode_image_to_data_url(
        image, image_format="JPEG", mime_type="image/jpeg", convert_rgb=True, quality=85
    )
    return fetch_image({"image": url, "min_pixels": PIXELS, "max_pixels": PIXELS})


def prompt_text(processor, doc: dict[str, Any]) -> str:
    """The chat-formatted prompt, built from the same messages the qwen2_vl wrapper builds."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": "", "max_pixels": PIXELS, "min_pixels": PIXELS},
                {"type": "text", "text": doc_to_text(doc)},
            ],
        },
    ]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode(processor, doc: dict[str, Any], as_jpeg: bool) -> dict[str, Any]:
    """Token ids, image tensors and answer ids of one document."""
    image = wrapper_image(render_doc(doc), as_jpeg)
    out = processor(text=[prompt_text(processor, doc)], images=[image], return_tensors="pt")
    answer = processor.tokenizer(doc["answer"] + "<|im_end|>", add_special_tokens=False)
    return {
        "prompt": out["input_ids"][0].tolist(),
        "mm": out["mm_token_type_ids"][0].tolist(),
        "answer": answer["input_ids"],
        "pixel_values": out["pixel_values"],
        "grid": out["image_grid_thw"],
        "doc": doc,
    }


class BatchEncoder:
    """Encodes many documents at once, exactly as :func:`encode` does one at a time.

    The prompt ids depend only on the question (every image is the same canvas, hence the same
    number of visual tokens), so they are cached per question; the images of a batch go through
    the image processor in one call. ``check`` compares both paths on real documents.
    """

    def __init__(self, processor) -> None:
        self.processor = processor
        self._prompts: dict[str, tuple[list[int], list[int]]] = {}
        self._answers: dict[str, list[int]] = {}

    def _prompt(self, doc: dict[str, Any]) -> tuple[list[int], list[int]]:
        text = doc_to_text(doc)
        if text not in self._prompts:
            e = encode(self.processor, doc, False)
            self._prompts[text] = (e["prompt"], e["mm"])
        return self._prompts[text]

    def _answer(self, answer: str) -> list[int]:
        if answer not in self._answers:
            ids = self.processor.tokenizer(answer + "<|im_end|>", add_special_tokens=False)
            self._answers[answer] = ids["input_ids"]
        return self._answers[answer]

    def __call__(self, docs: list[dict[str, Any]], jpeg: list[bool]) -> list[dict[str, Any]]:
        pics = [wrapper_image(render_doc(d), j) for d, j in zip(docs, jpeg, strict=True)]
        pixels = self.processor.image_processor(images=pics, return_tensors="pt")
        per_image = pixels["pixel_values"].shape[0] // len(docs)
        out = []
        for i, d in enumerate(docs):
            prompt, mm = self._prompt(d)
            out.append(
                {
                    "prompt": prompt,
                    "mm": mm,
                    "answer": self._answer(d["answer"]),
                    "pixel_values": pixels["pixel_values"][i * per_image : (i + 1) * per_image],
                    "grid": pixels["image_grid_thw"][i : i + 1],
                    "doc": d,
                }
            )
        return out

    def check(self, docs: list[dict[str, Any]]) -> None:
        """Raise if the batched path differs from :func:`encode` on ``docs``."""
        for j in (False, True):
            for fast, d in zip(self(docs, [j] * len(docs)), docs, strict=True):
                ref = encode(self.processor, d, j)
                for key in ("prompt", "mm", "answer"):
                    if fast[key] != ref[key]:
                        raise AssertionError(f"batched encoding differs in {key} for {d['key']}")
                for key in ("pixel_values", "grid"):
                    if not torch.equal(fast[key], ref[key]):
                        raise AssertionError(f"batched encoding differs in {key} for {d['key']}")


def collate(examples: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompt+answer batch; labels only on the answer tokens (and end token)."""
    seqs = [e["prompt"] + e["answer"] for e in examples]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    mm = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE)
    for i, (e, seq) in enumerate(zip(examples, seqs, strict=True)):
        start = width - len(seq)
        ids[i, start:] = torch.tensor(seq)
        mask[i, start:] = 1
        mm[i, start : start + len(e["prompt"])] = torch.tensor(e["mm"])
        labels[i, width - len(e["answer"]) :] = torch.tensor(e["answer"])
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "mm_token_type_ids": mm,
        "labels": labels,
        "pixel_values": torch.cat([e["pixel_values"] for e in examples]),
        "image_grid_thw": torch.cat([e["grid"] for e in examples]),
    }


# --------------------------------------------------------------------------- vision probes
class Probes(nn.Module):
    """Linear read-outs of the merged visual tokens (what the language model receives)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.glyph = nn.Linear(hidden, len(GLYPHS))
        self.color = nn.Linear(hidden, len(COLOR_NAMES))
        self.bar = nn.Linear(hidden, MAX_COUNT + 1)
        self.counts = nn.Linear(hidden, len(SHAPES) * (MAX_COUNT + 1))
        self.evqa_color = nn.Linear(hidden, len(COLOR_NAMES) - 1)
        self.evqa_shape = nn.Linear(hidden, len(EASYVQA_SHAPE_NAMES))

    def loss(self, merged: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of cross-entropies; ``merged`` is (images * cells, hidden)."""
        tokens = merged.view(-1, ROWS * COLS, merged.shape[-1])
        pooled = tokens.mean(dim=1)
        ce = lambda logits, y: F.cross_entropy(logits, y, ignore_index=IGNORE)  # noqa: E731
        total = merged.sum() * 0.0
        for name in ("glyph", "color"):
            if (targets[name] != IGNORE).any():
                total = total + ce(getattr(self, name)(merged), targets[name].flatten())
        if (targets["bar"] != IGNORE).any():
            total = total + ce(self.bar(merged), targets["bar"].flatten())
        counts = self.counts(pooled).view(-1, MAX_COUNT + 1)
        if (targets["counts"] != IGNORE).any():
            total = total + ce(counts, targets["counts"].flatten())
        for name in ("evqa_color", "evqa_shape"):
            if (targets[name] != IGNORE).any():
                total = total + ce(getattr(self, name)(pooled), targets[name])
        return total


class Aligner:
    """Pulls visual tokens towards the summed text embeddings of the words naming their cell.

    Each word counts in both spellings the tokenizer knows it by: as an answer ("red") and
    inside a question (" red"). The language model then finds image content the way it finds
    words of its prompt, which it learns much faster than reading raw visual features.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._ids: dict[str, list[int]] = {}

    def ids(self, word: str) -> list[int]:
        if word not in self._ids:
            ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
            spaced = self.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
            self._ids[word] = ids + (spaced if len(spaced) == 1 else [])
        return self._ids[word]

    def target(self, words: list[str], embed: torch.Tensor) -> torch.Tensor:
        ids = [i for w in words for i in self.ids(w)]
        return embed[ids].sum(dim=0)

    def loss(self, merged: torch.Tensor, docs: list[dict[str, Any]], embed: torch.Tensor):
        """Mean relative squared error over the cells (and pooled images) that have words."""
        embed = embed.detach()
        tokens = merged.view(len(docs), ROWS * COLS, merged.shape[-1])
        preds, targets = [], []
        for doc, toks in zip(docs, tokens, strict=True):
            cells, pooled = cell_words(doc)
            for cell, words in enumerate(cells):
                if words:
                    preds.append(toks[cell])
                    targets.append(self.target(words, embed))
            if pooled:
                preds.append(toks.mean(dim=0))
                targets.append(self.target(pooled, embed))
        if not preds:
            return merged.sum() * 0.0
        pred, target = torch.stack(preds), torch.stack(targets)
        return ((pred - target).pow(2).sum(-1) / target.pow(2).sum(-1).clamp_min(1e-6)).mean()


def probe_targets(docs: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    per_doc = [token_targets(d) for d in docs]
    return {k: torch.tensor([t[k] for t in per_doc]) for k in per_doc[0]}


class MergedTokens:
    """Keeps the vision merger's last output (a forward hook; removed by ``close``)."""

    def __init__(self, model) -> None:
        self.value: torch.Tensor | None = None
        self._handle = model.model.visual.merger.register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        self.value = output

    def close(self) -> None:
        self._handle.remove()


# --------------------------------------------------------------------------- training
def batches(processor, cfg: Config, seed: int, size: int) -> Iterator[list[dict[str, Any]]]:
    """Endless encoded training batches (documents from the seeded training stream)."""
    stream = train_stream(seed, cfg.math_fraction, dict(cfg.math_weights))
    jpeg = random.Random(seed + 1)
    encoder = BatchEncoder(processor)
    while True:
        docs = [next(stream) for _ in range(size)]
        yield encoder(docs, [jpeg.random() < cfg.jpeg_prob for _ in docs])


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain_vision(model, probes: Probes, processor, cfg: Config, log, aligner=None) -> None:
    """Train the vision tower and merger alone, on the cell probes (and the alignment)."""
    visual = model.model.visual
    embed = model.get_input_embeddings()
    params = list(visual.parameters()) + list(probes.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.pretrain_lr, weight_decay=0.01)
    data = batches(processor, cfg, seed=cfg.seed + 100, size=cfg.pretrain_batch)
    for step in range(cfg.pretrain_steps):
        batch = next(data)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.pretrain_steps, cfg.pretrain_warmup, cfg.pretrain_lr)
        pixels = torch.cat([e["pixel_values"] for e in batch])
        grid = torch.cat([e["grid"] for e in batch])
        merged = visual(pixels, grid_thw=grid).pooler_output
        docs = [e["doc"] for e in batch]
        loss = probes.loss(merged, probe_targets(docs))
        if aligner is not None:
            loss = loss + cfg.align_weight * aligner.loss(merged, docs, embed.weight)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == cfg.pretrain_steps - 1:
            log(f"vision step {step:4d}/{cfg.pretrain_steps} probe loss {loss.item():.3f}")


def train(model, probes: Probes, processor, cfg: Config, eval_docs, log, aligner=None) -> list[str]:
    """End-to-end training; returns the keys of every training document drawn."""
    params = list(model.parameters()) + list(probes.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.01)
    pad = processor.tokenizer.pad_token_id
    hook = MergedTokens(model)
    data = batches(processor, cfg, seed=cfg.seed, size=cfg.batch)
    keys: list[str] = []
    started = time.time()
    try:
        for step in range(cfg.steps):
            model.train()
            batch = next(data)
            keys += [e["doc"]["key"] for e in batch]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg.steps, cfg.warmup, cfg.lr)
            out = model(**collate(batch, pad))
            docs = [e["doc"] for e in batch]
            aux = probes.loss(hook.value, probe_targets(docs))
            if aligner is not None:
                embed = model.get_input_embeddings().weight
                aux = aux + cfg.align_weight * aligner.loss(hook.value, docs, embed)
            loss = out.loss + cfg.aux_weight * aux
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % 20 == 0:
                rate = (step + 1) / (time.time() - started)
                log(
                    f"step {step:5d}/{cfg.steps} lm {out.loss.item():.3f} aux {aux.item():.3f} "
                    f"({rate:.2f} steps/s)"
                )
            if (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
                log(
                    f"step {step + 1} held-out sample: {summary(evaluate(model, processor, eval_docs))}"
                )
    finally:
        hook.close()
    return keys


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, processor, docs, batch_size: int = 32) -> dict[str, list[bool]]:
    """Greedy exact match per kind, computed in one teacher-forced pass per batch.

    Greedy decoding yields exactly the answer iff, at every answer position, the most likely
    next token is the answer's next token (end token included), which one forward pass shows.
    """
    model.eval()
    pad = processor.tokenizer.pad_token_id
    hits: dict[str, list[bool]] = defaultdict(list)
    encoder = BatchEncoder(processor)
    for i in range(0, len(docs), batch_size):
        chunk = docs[i : i + batch_size]
        batch = encoder(chunk, [True] * len(chunk))
        inputs = collate(batch, pad)
        labels = inputs.pop("labels")
        logits = model(**inputs).logits[:, :-1]
        target = labels[:, 1:]
        ok = ((logits.argmax(-1) == target) | (target == IGNORE)).all(dim=1)
        for d, good in zip(chunk, ok.tolist(), strict=True):
            hits[d["kind"]].append(good)
    return hits


def summary(hits: dict[str, list[bool]]) -> str:
    return " ".join(f"{k}={sum(v) / len(v):.2f}" for k, v in sorted(hits.items()))


def accuracy(hits: dict[str, list[bool]]) -> dict[str, float]:
    """Per kind and overall accuracy."""
    acc = {k: round(sum(v) / len(v), 4) for k, v in sorted(hits.items())}
    every = [x for v in hits.values() for x in v]
    acc["all"] = round(sum(every) / len(every), 4)
    return acc


def overlap(train_keys: list[str], docs: list[dict[str, Any]]) -> dict[str, float]:
    """Per kind: the fraction of held-out problems that also occur (other render) in training."""
    seen = set(train_keys)
    per_kind: dict[str, list[bool]] = defaultdict(list)
    for d in docs:
        per_kind[d["kind"]].append(d["key"] in seen)
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(per_kind.items())}


# --------------------------------------------------------------------------- main
def save(model, processor, out: Path, report: dict[str, Any]) -> None:
    """Write the checkpoint, processor and training report into ``out`` (replacing it)."""
    tmp = Path(tempfile.mkdtemp(prefix=".demo_vlm-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the checkpoint is meant to be shared
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    (tmp / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few steps")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override a Config field"
    )
    args = parser.parse_args(argv)
    # Fail now, not after training, if the output folder cannot be written.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tempfile.TemporaryFile(dir=args.out.parent).close()
    cfg = SMOKE if args.smoke else FULL
    for item in args.set:
        name, _, value = item.partition("=")
        kind = type(getattr(cfg, name))
        cfg = dataclasses.replace(cfg, **{name: kind(value)})
    torch.set_num_threads(2)
    torch.manual_seed(cfg.seed)
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {msg}", flush=True)

    tokenizer = build_tokenizer(tokenizer_corpus(cfg.tokenizer_docs))
    processor = build_processor(tokenizer)
    model = build_model(cfg, tokenizer)
    probes = Probes(cfg.hidden)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"config {cfg}")
    log(f"vocab {len(tokenizer)}, parameters {n_params / 1e6:.2f}M")

    math_docs, nonmath_docs = held_out_docs("prune_demo_math"), held_out_docs("prune_demo_nonmath")
    if args.smoke:
        math_docs, nonmath_docs = math_docs[:8], nonmath_docs[:6]
    sample = math_docs[::3] + nonmath_docs[::5]  # strides coprime with the kind rotation
    BatchEncoder(processor).check(math_docs[:4] + nonmath_docs[:6])  # fast path == wrapper's

    aligner = Aligner(tokenizer) if cfg.align_weight > 0 else None
    pretrain_vision(model, probes, processor, cfg, log, aligner)
    train_keys = train(model, probes, processor, cfg, sample, log, aligner)
    train_time = time.time() - started
    log(f"training done in {train_time / 60:.1f} min; evaluating held-out sets")

    results = {}
    for name, docs in (("math", math_docs), ("nonmath", nonmath_docs)):
        results[name] = accuracy(evaluate(model, processor, docs))
        shuffled = shuffled_docs(docs)
        results[f"{name}_shuffled_images"] = accuracy(evaluate(model, processor, shuffled))
        log(f"{name}: {results[name]}")
        log(f"{name} with shuffled images: {results[f'{name}_shuffled_images']}")
    report = {
        "config": dataclasses.asdict(cfg),
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "train_docs": len(train_keys),
        "train_kinds": dict(Counter(k.split(":")[0] for k in train_keys)),
        "train_wall_time_s": round(train_time, 1),
        "held_out_greedy_exact_match": results,
        "held_out_problems_seen_in_training": {
            "math": overlap(train_keys, math_docs),
            "nonmath": overlap(train_keys, nonmath_docs),
        },
        "torch": torch.__version__,
    }
    log(f"overlap with training problems: {report['held_out_problems_seen_in_training']}")
    model.to(torch.float32)
    save(model, processor, args.out, report)
    size = sum(f.stat().st_size for f in args.out.glob("*.safetensors"))
    log(f"saved to {args.out} ({size / 1e6:.1f} MB of weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``hf_vlm``: a thin lmms-eval wrapper for any ``AutoModelForImageTextToText`` checkpoint.

lmms-eval's generic ``huggingface`` wrapper does not work with transformers 5.x (it passes an
``audios`` keyword and loads the base model without ``lm_head``), so architectures without a
dedicated wrapper (Idefics3, SmolVLM, ...) are evaluated through this one. Images go through
the checkpoint's own processor and chat template.
"""

from __future__ import annotations

from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages
from tqdm import tqdm


class HFVLM(lmms):
    """Chat-style generic VLM wrapper (greedy unless the task asks for sampling)."""

    is_simple = False

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        device_map: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 1,
        revision: str | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        max_new_tokens: int = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        from lmms_prune_plugin.core.args import parse_bool

        trust_remote_code = parse_bool("trust_remote_code", trust_remote_code)
        if kwargs:
            raise ValueError(f"hf_vlm: unknown model_args {sorted(kwargs)}")
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            self._rank, self._world_size = dist.get_rank(), dist.get_world_size()
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        self._model = AutoModelForImageTextToText.from_pretrained(
            pretrained,
            dtype=dtype,
            revision=revision,
            trust_remote_code=trust_remote_code,
            device_map=device_map or str(self._device),
            **extra,
        ).eval()
        self.processor = AutoProcessor.from_pretrained(
            pretrained, revision=revision, trust_remote_code=trust_remote_code
        )
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)

    @property
    def model(self) -> torch.nn.Module:
        return self._model

    @property
    def device(self) -> torch.device:
        return self._device

    # -- request -> (messages, images) ------------------------------------------------------
    @staticmethod
    def _gen_kwargs(args: tuple) -> dict:
        return dict(args[2] or {})  # chat requests: (ctx, doc_to_messages, gen_kwargs, ...)

    def _conversation(self, args: tuple) -> tuple[list[dict], list]:
        ctx, fn, _gen, doc_id, task, split = args
        doc = self.task_dict[task][split][doc_id]
        chat = ChatMessages(messages=fn(doc))
        images, _videos, _audios = chat.extract_media()
        messages = chat.to_hf_messages()
        for message in messages:  # the processor gets the images separately
            message["content"] = [
                {"type": "image"} if c["type"] == "image" else c for c in message["content"]
            ]
        return messages, images

    @staticmethod
    def _text_conversation(ctx: str, doc_to_visual, doc: dict) -> tuple[list[dict], list]:
        from lmms_prune_plugin.harnesses.lmms_eval.scoring import conversation

        visuals = [v for v in (doc_to_visual(doc) or []) if v is not None]
        return conversation(ctx, visuals), visuals

    def _encode(
        self, conversations: list[tuple[list[dict], list]], suffixes: list[str] | None = None
    ):
        texts = [
            self.processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
            for m, _ in conversations
        ]
        if suffixes is not None:
            texts = [t + s for t, s in zip(texts, suffixes, strict=True)]
        images = [imgs for _, imgs in conversations]
        kwargs = {"images": images} if any(images) else {}
        inputs = self.processor(text=texts, padding=True, return_tensors="pt", **kwargs)
        return inputs.to(self._device)

    # -- lmms API ---------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"  # generation continues each row from its last real token
        out: list[str] = []
        try:
            for start in tqdm(
                range(0, len(requests), self.batch_size), disable=self.rank != 0, desc="hf_vlm"
            ):
                chunk = requests[start : start + self.batch_size]
                gen = self._gen_kwargs(chunk[0].args)
                inputs = self._encode([self._conversation(r.args) for r in chunk])
                greedy = float(gen.get("temperature", 0) or 0) == 0
                ids = self._model.generate(
                    **inputs,
                    max_new_tokens=int(gen.get("max_new_tokens", self.max_new_tokens)),
                    do_sample=not greedy,
                    temperature=None if greedy else float(gen["temperature"]),
                    top_p=None,
                    top_k=None,
                    pad_token_id=tok.pad_token_id,
                )
                new = ids[:, inputs["input_ids"].shape[1] :]
                for text in self.processor.batch_decode(new, skip_special_tokens=True):
                    for stop in gen.get("until", []) or []:
                        if isinstance(stop, str) and stop and stop in text:
                            text = text.split(stop)[0]
                    out.append(text)
        finally:
            tok.padding_side = side
        return out

    def loglikelihood(self, requests: list[Instance]) -> list:
        from lmms_prune_plugin.harnesses.lmms_eval.scoring import loglikelihood

        return loglikelihood(self._model, self.processor, self.task_dict, requests, self.rank)

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("hf_vlm does not support multi-round generation")


class HFVLMSimple(HFVLM):
    """Simple-style generic VLM wrapper: requests carry ``doc_to_visual`` and a text context."""

    is_simple = True

    @staticmethod
    def _gen_kwargs(args: tuple) -> dict:
        return dict(args[1] or {})  # simple requests: (ctx, gen_kwargs, doc_to_visual, ...)

    def _conversation(self, args: tuple) -> tuple[list[dict], list]:
        ctx, _gen, doc_to_visual, doc_id, task, split = args
        return self._text_conversation(ctx, doc_to_visual, self.task_dict[task][split][doc_id])

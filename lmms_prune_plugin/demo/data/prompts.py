"""Prompt text and answer matching, shared by the lmms-eval tasks and the demo trainer."""

from __future__ import annotations

from typing import Any

#: Appended to every question: keeps answers short for real VLMs evaluated on the same tasks.
POST_PROMPT = "\nAnswer with a single word or number."


def doc_to_text(doc: dict[str, Any], pre_prompt: str = "", post_prompt: str = POST_PROMPT) -> str:
    """The user text of ``doc`` (the image comes separately, before it)."""
    return f"{pre_prompt}{doc['question']}{post_prompt}"


def normalize_answer(text: str) -> str:
    """Lower case, surrounding whitespace and one trailing period removed."""
    text = text.strip().lower()
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text


def is_correct(prediction: str, answer: str) -> bool:
    """Exact match after :func:`normalize_answer` on both sides."""
    return normalize_answer(prediction) == normalize_answer(answer)

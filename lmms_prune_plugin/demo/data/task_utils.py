"""lmms-eval hooks of the ``prune_demo`` and ``prune_calib`` tasks.

The tasks' ``utils.py`` files re-export these, so YAMLs can say ``!function utils.doc_to_visual``.
Images are rendered from the document on every call, so no image files ship with the tasks.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from lmms_prune_plugin.demo.data.items import render_doc
from lmms_prune_plugin.demo.data.prompts import POST_PROMPT, is_correct
from lmms_prune_plugin.demo.data.prompts import doc_to_text as _doc_to_text


def doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    """The document's single image, rendered."""
    return [render_doc(doc)]


def doc_to_text(
    doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None
) -> str:
    """Question plus the task's post prompt (``lmms_eval_specific_kwargs`` may override both)."""
    kwargs = lmms_eval_specific_kwargs or {}
    return _doc_to_text(doc, kwargs.get("pre_prompt", ""), kwargs.get("post_prompt", POST_PROMPT))


def doc_to_target(doc: dict[str, Any]) -> str:
    """The reference answer."""
    return doc["answer"]


def process_results(doc: dict[str, Any], results: list[Any]) -> dict[str, float]:
    """Exact match overall and under the document's kind (``exact_match_<kind>``)."""
    prediction = results[0]
    text = getattr(prediction, "text", prediction)  # chat wrappers may return result objects
    score = float(is_correct(str(text), doc["answer"]))
    return {"exact_match": score, f"exact_match_{doc['kind']}": score}

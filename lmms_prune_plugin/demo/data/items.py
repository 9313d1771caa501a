"""The document format shared by every item generator, and rendering a document's image.

A document is a flat JSON-able dict::

    {"domain": "math" | "nonmath", "kind": str, "question": str, "answer": str,
     "image": "<JSON image spec>", "key": str, ...}

``image`` is a JSON *string* (not a nested object) so that every row of a JSONL file has the
same flat schema whatever the image type. ``key`` names the underlying problem independently of
its rendering (e.g. ``"arith:7+5"``); it is what the train/held-out overlap is measured on.
"""

from __future__ import annotations

import json
import random
from typing import Any

from PIL import Image

from lmms_prune_plugin.demo.data.canvas import render_spec


def make_doc(
    domain: str,
    kind: str,
    question: str,
    answer: str,
    cells: list[dict[str, Any]],
    rng: random.Random,
    key: str,
    divider: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A document whose image is drawn from ``cells`` with a render seed drawn from ``rng``."""
    spec = {"type": "cells", "seed": rng.randrange(2**31), "cells": cells}
    if divider:
        spec["divider"] = True
    return make_doc_from_spec(domain, kind, question, answer, spec, key, **extra)


def make_doc_from_spec(
    domain: str,
    kind: str,
    question: str,
    answer: str,
    spec: dict[str, Any],
    key: str,
    **extra: Any,
) -> dict[str, Any]:
    """A document with an explicit image spec (see :mod:`lmms_prune_plugin.demo.data.canvas`)."""
    doc = {"domain": domain, "kind": kind, "question": question, "answer": answer}
    doc.update(image=json.dumps(spec, sort_keys=True), key=key, **extra)
    return doc


def image_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The parsed image spec of ``doc``."""
    return json.loads(doc["image"])


def render_doc(doc: dict[str, Any]) -> Image.Image:
    """The image of ``doc`` (always the same pixels for the same document)."""
    return render_spec(image_spec(doc))

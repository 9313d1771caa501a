"""A tiny offline task for end-to-end tests: a coloured square, 'What colour is it?'."""

from PIL import Image

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 30),
    "blue": (30, 30, 220),
    "yellow": (230, 220, 20),
}


def doc_to_visual(doc):
    return [Image.new("RGB", (56, 56), COLOURS[doc["answer"]])]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"])}


def doc_to_target(doc):
    return list(COLOURS).index(doc["answer"])

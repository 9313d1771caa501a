"""Shared test inputs."""


def vlm_batch(
    processor, prompts=("What colour is the shape?", "How many apples are on the table today?")
):
    """A left-padded batch of chat prompts, one random image each (different lengths -> padding)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)) for _ in prompts]
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for p in prompts
    ]
    tok = getattr(processor, "tokenizer", processor)
    tok.padding_side = "left"
    nested = any(k in type(processor).__name__ for k in ("Idefics", "SmolVLM"))
    imgs = [[im] for im in images] if nested else images
    return processor(text=texts, images=imgs, padding=True, return_tensors="pt")


class Loaded(Exception):
    """A model load was reached: every check before it passed (see the ``no_load`` fixture)."""

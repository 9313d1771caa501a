"""Pruned exports for the vLLM tests, and the greedy outputs of the running transformers on them.

Both Python environments run this file: the project's (transformers 5.24) makes the exports and
its reference outputs, vLLM's (transformers 5.19) loads the same exports and writes its own, so
the tests compare the two transformers versions and vLLM on identical prompt strings and images.

    python tests/vllm/exports.py make OUT                # exports + OUT/manifest.json
    python tests/vllm/exports.py reference OUT FILE.json  # greedy outputs of every export

Tiny models: every architecture of ``lmms_prune_plugin.testing.tiny``, 6 decoder layers of width
128 with head_dim 32 (the smallest head size vLLM's CPU attention takes), 2 layers removed by a
seeded random plan (middle layers go, so the export must renumber the ones after them). The demo
model: ``lmms-prune export --criterion math --budget 4`` (calibrated), prompts from its tasks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TINY_LAYERS, TINY_HIDDEN, TINY_HEADS, TINY_KV_HEADS = 6, 128, 4, 2
TINY_BUDGET = 2
NEW_TOKENS = 8
TIE = 1e-3  # top-1 minus top-2 log-probability below this: both tokens are right answers
DEMO_PROMPTS = 12  # per domain
_QUESTIONS = (
    "What colour is the shape?",
    "How many objects are in the picture?",
    "Describe the image in one word.",
    "Is there a circle? Answer yes or no.",
)
_COLOURS = ((200, 40, 30), (30, 160, 60), (40, 60, 200), (230, 200, 40))


def tiny_overrides(arch: str) -> dict:
    """head_dim 32 instead of tiny.py's 16 (vLLM's CPU attention has no 16)."""
    head_dim = TINY_HIDDEN // TINY_HEADS
    text = {"num_attention_heads": TINY_HEADS, "num_key_value_heads": TINY_KV_HEADS}
    if arch == "qwen3_vl":  # explicit head_dim and an mrope split of its 16 frequencies
        text |= {"head_dim": head_dim}
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": [8, 4, 4],
            "mrope_interleaved": True,
        }
    elif arch in ("qwen2_vl", "qwen2_5_vl"):
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": [4, 6, 6],
        }
    return {"text_config": text}


def _tiny_images(folder: Path) -> list[str]:
    from PIL import Image, ImageDraw

    paths = []
    for i, colour in enumerate(_COLOURS):
        img = Image.new("RGB", (64 + 16 * i, 64), (250, 250, 250))
        ImageDraw.Draw(img).ellipse((8, 8, 48, 48), fill=colour)
        path = folder / f"image{i}.png"
        img.save(path)
        paths.append(str(path))
    return paths


def _chat_prompt(processor, question: str) -> str:
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def make(out: Path) -> dict:
    """Every tiny architecture and the demo model, pruned and exported under ``out``."""
    from transformers import AutoProcessor

    from lmms_prune_plugin.core.plan import ModelIdentity
    from lmms_prune_plugin.core.planner import PruneOptions, make_plan
    from lmms_prune_plugin.surgery.export import export_pruned
    from lmms_prune_plugin.testing.tiny import ARCHITECTURES, build_tiny_vlm, save_tiny_vlm

    out.mkdir(parents=True, exist_ok=True)
    images = _tiny_images(out)
    cases = {}
    for arch in ARCHITECTURES:
        original = save_tiny_vlm(arch, out / arch / "original", num_layers=TINY_LAYERS, seed=1,
                                 hidden_size=TINY_HIDDEN, **tiny_overrides(arch))  # fmt: skip
        model, _ = build_tiny_vlm(arch, num_layers=TINY_LAYERS, seed=1, hidden_size=TINY_HIDDEN,
                                  **tiny_overrides(arch))  # fmt: skip
        from lmms_prune_plugin.core.cache import weights_fingerprint

        identity = ModelIdentity.of(model, str(original), None, weights_fingerprint(str(original)))
        plan = make_plan(identity, {}, PruneOptions(criterion="random", budget=TINY_BUDGET, seed=3))
        export = export_pruned(str(original), plan, out / arch / "export")
        processor = AutoProcessor.from_pretrained(export)
        prompts = [
            {"text": _chat_prompt(processor, q), "image": images[i % len(images)]}
            for i, q in enumerate(_QUESTIONS * 2)
        ]
        cases[arch] = _case(original, export, plan, prompts)
    cases["demo"] = _demo(out)
    manifest = {"cases": cases, "new_tokens": NEW_TOKENS}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _case(original: Path, export: Path, plan, prompts: list[dict]) -> dict:
    return {"original": str(original), "export": str(export), "removed": list(plan.removed),
            "num_layers": plan.model.num_layers, "prompts": prompts}  # fmt: skip


def _demo(out: Path) -> dict:
    """The packaged demo model through the CLI, as a user exports it; prompts from its tasks."""
    from transformers import AutoProcessor

    from lmms_prune_plugin.core.plan import PrunePlan
    from lmms_prune_plugin.demo import DEMO_MODEL_DIR, TASKS_DIR
    from lmms_prune_plugin.demo.data.task_utils import doc_to_text, doc_to_visual
    from lmms_prune_plugin.tools.cli import main as cli

    export = out / "demo" / "export"
    assert cli(["export", "--criterion", "math", "--budget", "4", "--out", str(export)]) == 0
    processor = AutoProcessor.from_pretrained(export)
    prompts = []
    for domain in ("math", "nonmath"):
        lines = (Path(TASKS_DIR) / "prune_demo" / f"prune_demo_{domain}.jsonl").read_text()
        for n, line in enumerate(lines.splitlines()[:DEMO_PROMPTS]):
            doc = json.loads(line)
            image = out / "demo" / f"{domain}{n}.png"
            doc_to_visual(doc)[0].save(image)
            prompts.append({"text": _chat_prompt(processor, doc_to_text(doc)), "image": str(image)})
    return _case(DEMO_MODEL_DIR, export, PrunePlan.load(export / "plan.json"), prompts)


def load_inputs(processor, prompt: dict):
    """The processor's tensors for one prompt (Idefics3/SmolVLM take one image list per text)."""
    from PIL import Image

    image = Image.open(prompt["image"]).convert("RGB")
    nested = any(k in type(processor).__name__ for k in ("Idefics", "SmolVLM"))
    return processor(text=[prompt["text"]], images=[[image]] if nested else [image],
                     return_tensors="pt")  # fmt: skip


def reference(folder: Path, which: str = "export") -> dict:
    """Greedy float32 outputs of the running transformers for every case of the manifest:
    new token ids and, per step, top-1 minus top-2 log-probability (to tell ties)."""
    import torch
    import transformers
    from transformers import AutoModelForImageTextToText, AutoProcessor

    manifest = json.loads((folder / "manifest.json").read_text())
    outputs = {}
    for name, case in manifest["cases"].items():
        path = case[which]
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
        processor = AutoProcessor.from_pretrained(path)
        layers = model.config.get_text_config(decoder=True).num_hidden_layers
        runs = []
        for prompt in case["prompts"]:
            inputs = load_inputs(processor, prompt)
            with torch.no_grad():
                gen = model.generate(**inputs, max_new_tokens=manifest["new_tokens"],
                                     do_sample=False, output_logits=True,
                                     return_dict_in_generate=True)  # fmt: skip
            new = gen.sequences[0, inputs["input_ids"].shape[1] :].tolist()
            margins = []
            for logits in gen.logits:
                top = torch.log_softmax(logits[0].float(), -1).topk(2).values
                margins.append(float(top[0] - top[1]))
            runs.append({"tokens": new, "margins": margins})
        outputs[name] = {"layers": layers, "runs": runs}
    return {"transformers": transformers.__version__, "outputs": outputs}


def compare(a: list[int], b: list[int], margins: list[float]) -> str:
    """``same``; ``tie`` when they part where the reference's top two were within TIE (then
    either continuation is right); else ``differ``. ``margins`` belong to ``a``."""
    if a == b:
        return "same"
    step = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if step < len(margins) and margins[step] < TIE:
        return "tie"
    return "differ"


def main(argv: list[str]) -> int:
    cmd, folder = argv[0], Path(argv[1])
    if cmd == "make":
        make(folder)
    elif cmd == "reference":
        Path(argv[2]).write_text(json.dumps(reference(folder, *argv[3:4])))
    else:
        raise SystemExit(f"unknown command {cmd!r}; use make or reference")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    raise SystemExit(main(sys.argv[1:]))

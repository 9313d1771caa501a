"""The packaged demo model: a small Qwen2-VL trained on the ``prune_demo`` task families.

It lets anyone without a GPU or hub access watch layer pruning change real accuracies::

    from lmms_prune_plugin.demo.model import DEMO_MODEL_DIR, check_demo_model, demo_model_args

    check_demo_model()
    args = {"pretrained": str(DEMO_MODEL_DIR), **demo_model_args()}
    # lmms-eval --model qwen2_vl --model_args pretrained=...,device_map=cpu,... \\
    #           --tasks prune_demo --include_path lmms_prune_plugin/demo/tasks

The weights are produced by ``python scripts/train_demo.py`` (CPU, about 40 minutes on 2 cores).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmms_prune_plugin.demo import DEMO_MODEL_DIR, TASKS_DIR
from lmms_prune_plugin.demo.data.canvas import HEIGHT, WIDTH

__all__ = ["DEMO_MODEL_DIR", "TASKS_DIR", "check_demo_model", "demo_model_args"]
REGENERATE = "python scripts/train_demo.py"

_REQUIRED = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "processor_config.json",
)


class DemoModelError(RuntimeError):
    """The packaged demo model is missing or damaged."""


def _fail(path: Path, problem: str) -> DemoModelError:
    return DemoModelError(
        f"demo model at {path}: {problem}. Regenerate it from a source checkout with "
        f"`{REGENERATE}` (CPU only, about 40 minutes), or pass path= to a good copy."
    )


def check_demo_model(path: str | Path = DEMO_MODEL_DIR) -> Path:
    """Check that ``path`` holds a complete, readable demo checkpoint; return it.

    Raises :class:`DemoModelError` naming what is missing or unreadable (config, processor and
    tokenizer files, the safetensors weights and their header) and the command that rebuilds
    the model. Reads only file headers, so it is fast.
    """
    path = Path(path)
    if not path.is_dir():
        raise _fail(path, "the folder does not exist")
    missing = [name for name in _REQUIRED if not (path / name).is_file()]
    if missing:
        raise _fail(path, f"missing {', '.join(missing)}")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise _fail(path, "no *.safetensors weight file")
    for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
        try:
            json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise _fail(path, f"{name} is not valid JSON ({exc})") from exc
    for file in weights:
        _check_safetensors(file, path)
    return path


def _check_safetensors(file: Path, root: Path) -> None:
    # A safetensors file is an 8-byte header length, a JSON header, then the tensor bytes; a
    # cut-short download keeps a valid header, so compare the size the header promises.
    size = file.stat().st_size
    try:
        with file.open("rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            if size < 8 or header_len > size - 8:
                raise ValueError("header length exceeds the file")
            header = json.loads(handle.read(header_len))
        offsets = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _fail(root, f"{file.name} is unreadable ({exc})") from exc
    if not offsets:
        raise _fail(root, f"{file.name} holds no tensors")
    expected = 8 + header_len + max(offsets)
    if size != expected:
        raise _fail(root, f"{file.name} is truncated or padded ({size} bytes, expected {expected})")


def demo_model_args() -> dict[str, Any]:
    """lmms-eval ``qwen2_vl`` wrapper kwargs the demo model needs (besides ``pretrained``).

    ``min_pixels`` = ``max_pixels`` = the canvas area, so neither qwen_vl_utils nor the image
    processor resizes the rendered images: each 28x28 cell stays one visual token.
    """
    return {
        "device": "cpu",
        "device_map": "cpu",
        "min_pixels": WIDTH * HEIGHT,
        "max_pixels": WIDTH * HEIGHT,
    }

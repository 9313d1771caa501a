"""On-disk cache of calibration statistics and plans, as JSON, written atomically.

A key is a hash of everything that changes the cached result; a cheap fingerprint of files
(name, size, mtime) stands for their content where reading them would cost more than a load.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from loguru import logger

from . import __version__
from .plan import PrunePlan, atomic_write_text

ENV_VAR = "LMMS_PRUNE_CACHE"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_TASK_SUFFIXES = (".yaml", ".yml", ".py", ".json", ".jsonl", ".parquet", ".csv")


def default_cache_dir() -> Path:
    """``$LMMS_PRUNE_CACHE``, else ``$XDG_CACHE_HOME/lmms_prune``, else ``~/.cache/lmms_prune``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmms_prune"


def key(**parts: Any) -> str:
    """A stable hash of JSON-able parts (sorted keys) and the package version."""
    blob = json.dumps(parts | {"package_version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _stat_line(f: Path, root: Path) -> bytes:
    st = f.stat()
    return f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode()


def _sampled(f: Path, samples: int = 256, width: int = 64) -> bytes:
    """The file's size, its first 64 KiB (a safetensors header) and ``samples`` evenly spaced
    slices of its data: another checkpoint of the same shapes differs there, and reading it
    costs milliseconds however large the file."""
    size = f.stat().st_size
    out = [str(size).encode()]
    with f.open("rb") as handle:
        out.append(handle.read(65536))
        for i in range(samples):
            handle.seek(size * i // samples)
            out.append(handle.read(width))
    return b"".join(out)


def weights_fingerprint(name_or_path: str, revision: str | None = None) -> str:
    """Which weights these are. Local folders: every weight file's name and sampled content (a
    copy of the same weights matches, other weights do not). Hub ids: id@revision."""
    path = Path(name_or_path)
    if not path.is_dir():
        return f"{name_or_path}@{revision or 'main'}"
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES):
        h.update(f.name.encode() + b"\0" + _sampled(f))
    return h.hexdigest()


def files_fingerprint(name_or_path: str) -> str:
    """Every file of a local checkpoint but its weights (config, processor, tokenizer, chat
    template) by content; "" for a hub id (its revision is in the weights fingerprint)."""
    path = Path(name_or_path)
    if not path.is_dir():
        return ""
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        if f.suffix not in _WEIGHT_SUFFIXES:  # large stray files: sampled, not read
            small = f.stat().st_size < 64 << 20
            h.update(f.name.encode() + b"\0" + (f.read_bytes() if small else _sampled(f)))
    return h.hexdigest()


def folder_fingerprint(path: str | os.PathLike) -> str:
    """Task files below ``path`` by relative name, size and mtime: edits invalidate entries."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.suffix in _TASK_SUFFIXES and "__pycache__" not in f.parts and f.is_file():
            h.update(_stat_line(f, root))
    return h.hexdigest()


class Cache:
    """Entries ``calibration-<key>.json`` and ``plan-<key>.json``; a bad one is reported and ignored."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.dir = Path(directory) if directory else default_cache_dir()

    def path(self, kind: str, k: str) -> Path:
        return self.dir / f"{kind}-{k}.json"

    def get(self, kind: str, k: str) -> dict | None:
        """The JSON object ``<kind>-<k>.json``, or None when missing or unreadable (reported)."""
        path = self.path(kind, k)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            logger.warning(f"lmms-prune: cache entry {path} is corrupt ({err}); recomputing it")
            return None
        if not isinstance(data, dict):
            logger.warning(f"lmms-prune: cache entry {path} is not a JSON object; recomputing it")
            return None
        return data

    def put(self, kind: str, k: str, data: dict) -> Path:
        return atomic_write_text(self.path(kind, k), json.dumps(data, sort_keys=True))

    def get_plan(self, k: str) -> PrunePlan | None:
        data = self.get("plan", k)
        if data is None:
            return None
        try:
            return PrunePlan.from_dict(data)
        except ValueError as err:
            logger.warning(
                f"lmms-prune: cache entry {self.path('plan', k)} is not a valid plan ({err}); recomputing it"
            )
            return None

    def put_plan(self, k: str, plan: PrunePlan) -> Path:
        return plan.save(self.path("plan", k))

    def check_writable(self) -> None:
        """Fail now, before calibration, if entries cannot be written here."""
        from .args import check_writable

        check_writable("plan_cache", self.dir)

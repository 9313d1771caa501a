"""On-disk cache of calibration statistics and plans, as JSON, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from . import __version__
from .plan import PrunePlan, atomic_write_text

ENV_VAR = "LMMS_PRUNE_CACHE"


def default_cache_dir() -> Path:
    """``$LMMS_PRUNE_CACHE``, else ``$XDG_CACHE_HOME/lmms_prune``, else ``~/.cache/lmms_prune``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmms_prune"


def key(**parts: Any) -> str:
    """A stable hash of JSON-able parts (sorted keys)."""
    blob = json.dumps(parts | {"package_version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def weights_fingerprint(name_or_path: str, revision: str | None = None) -> str:
    """Local folders: names, sizes and mtimes of weights plus config.json; hub ids: id@revision."""
    path = Path(name_or_path)
    if not path.is_dir():
        return f"{name_or_path}@{revision or 'main'}"
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    if (path / "config.json").exists():
        h.update((path / "config.json").read_bytes())
    return h.hexdigest()


class Cache:
    """Entries ``calibration-<key>.json`` and ``plan-<key>.json``; a corrupt one is reported and ignored."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.dir = Path(directory) if directory else default_cache_dir()

    def _read(self, name: str) -> dict | None:
        path = self.dir / name
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            warnings.warn(
                f"lmms-prune: cache entry {path} is corrupt ({err}); recomputing it", stacklevel=3
            )
            return None

    def get(self, kind: str, k: str) -> dict | None:
        """The JSON entry ``<kind>-<k>.json``, or None when missing or corrupt."""
        return self._read(f"{kind}-{k}.json")

    def put(self, kind: str, k: str, data: dict) -> Path:
        return atomic_write_text(self.dir / f"{kind}-{k}.json", json.dumps(data, sort_keys=True))

    def get_plan(self, k: str) -> PrunePlan | None:
        data = self._read(f"plan-{k}.json")
        try:
            return PrunePlan.from_dict(data) if data is not None else None
        except ValueError as err:
            warnings.warn(
                f"lmms-prune: cache entry plan-{k}.json is corrupt ({err}); recomputing it",
                stacklevel=2,
            )
            return None

    def put_plan(self, k: str, plan: PrunePlan) -> Path:
        return plan.save(self.dir / f"plan-{k}.json")

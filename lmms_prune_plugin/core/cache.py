"""On-disk cache of calibration statistics and plans, as JSON, written atomically.

A key is a hash of everything that changes the cached result, and every entry records the key,
kind and package version it was computed for: an entry copied or renamed from another run is
refused, not trusted. Checkpoint and task files count by their whole content (xxh3_128); the
hash of a large file is remembered by (resolved path, size, mtime_ns, inode, ctime_ns), as
git's index does, so a second load reads no weights to tell which they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import xxhash
from loguru import logger
from tqdm import tqdm

from lmms_prune_plugin import __version__
from lmms_prune_plugin.core.args import read_small_file
from lmms_prune_plugin.core.files import atomic_write_text

ENV_VAR = "LMMS_PRUNE_CACHE"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_TASK_SUFFIXES = (".yaml", ".yml", ".py", ".json", ".jsonl", ".parquet", ".csv")
MEMO_FILE = "fingerprints.json"
MEMO_FORMAT = 1
CHUNK = 16 << 20  # bytes read at a time: large reads keep a disk busy and Python out of the way
PROGRESS_FROM = 1 << 30  # a file this large shows a progress bar while it is hashed
REMEMBER_FROM = 1 << 20  # smaller files are read again each time (cheaper than a memo entry)
_STAT_FIELDS = ("size", "mtime_ns", "ino", "ctime_ns")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_META = ("_key", "_kind", "_package_version")  # what every entry records about itself


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


# -- content hashes -------------------------------------------------------------------------
def hash_file(path: str | os.PathLike, size: int | None = None) -> str:
    """xxh3_128 of the whole file, read in large chunks (a progress bar for large files)."""
    path = Path(path)
    size = path.stat().st_size if size is None else size
    if size < CHUNK:
        return xxhash.xxh3_128(path.read_bytes()).hexdigest()
    h, buf = xxhash.xxh3_128(), bytearray(CHUNK)
    view = memoryview(buf)
    bar = tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        desc=f"fingerprint {path.name}",
        disable=size < PROGRESS_FROM,
        leave=False,
    )
    with path.open("rb", buffering=0) as fh, bar:
        if hasattr(os, "posix_fadvise"):  # read-ahead for one sequential pass
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while n := fh.readinto(buf):
            h.update(view[:n])
            bar.update(n)
    return h.hexdigest()


def _stat(st: os.stat_result) -> dict[str, int]:
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ino": st.st_ino,
        "ctime_ns": st.st_ctime_ns,
    }


def _racy(st: os.stat_result, start_ns: int) -> bool:
    """Whether a change right after hashing could leave the stat unchanged ("racily clean" in
    git): timestamps not older than the hashing, by the file system's granularity (2 s where
    timestamps are whole milliseconds or coarser, as on FAT or ext3)."""
    newest = max(st.st_mtime_ns, st.st_ctime_ns)
    coarse = st.st_mtime_ns % 1_000_000 == 0 and st.st_ctime_ns % 1_000_000 == 0
    return newest >= start_ns - (2_000_000_000 if coarse else 0)


def _memo_problem(data: object) -> str | None:
    """Why ``data`` is not a fingerprint memo, or None."""
    if not isinstance(data, dict) or data.get("format") != MEMO_FORMAT:
        return f"not a fingerprint memo of format {MEMO_FORMAT}"
    files = data.get("files")
    if not isinstance(files, dict):
        return "no 'files' mapping"
    for name, entry in files.items():
        ok = (
            isinstance(entry, dict)
            and all(type(entry.get(f)) is int for f in _STAT_FIELDS)
            and isinstance(entry.get("xxh3_128"), str)
            and _HEX32.fullmatch(entry["xxh3_128"])
        )
        if not ok:
            return f"the entry for {name!r} is not (size, mtime_ns, ino, ctime_ns, xxh3_128)"
    return None


class FileHashes:
    """Content hashes of files, remembered in ``<cache>/fingerprints.json`` for files of 1 MiB
    or more while their resolved path, size, mtime_ns, inode and ctime_ns stay those they were
    hashed with. A memo that cannot be read is reported and never trusted; a folder that
    cannot be written only means the hashes are not remembered."""

    def __init__(self, directory: str | os.PathLike | None = None, remember: bool = True):
        folder = Path(directory).expanduser() if directory else default_cache_dir()
        self.path = folder / MEMO_FILE if remember else None
        self.entries = self._load()
        self.changed = False

    def _load(self) -> dict[str, dict]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(read_small_file("fingerprint memo", self.path, "memo"))
            problem = _memo_problem(data)
        except (OSError, ValueError) as err:  # a FIFO or device is refused, not read
            problem = f"{type(err).__name__}: {err}"
        if problem:
            logger.warning(
                f"lmms-prune: fingerprint memo {self.path} is corrupt ({problem}); every file is "
                "hashed again and the memo rewritten"
            )
            self.changed = True
            return {}
        return data["files"]

    def digest(self, path: str | os.PathLike) -> str:
        """xxh3_128 of the file's content, from the memo when its stat is unchanged."""
        f = Path(path).resolve()
        st = f.stat()
        if self.path is None or st.st_size < REMEMBER_FROM:
            return hash_file(f, st.st_size)
        entry = self.entries.get(str(f))
        if entry is not None and {k: entry[k] for k in _STAT_FIELDS} == _stat(st):
            return entry["xxh3_128"]
        start = time.time_ns()
        digest = hash_file(f, st.st_size)
        if _stat(f.stat()) != _stat(st):
            logger.warning(f"lmms-prune: {f} changed while it was hashed; not remembered")
        elif not _racy(st, start):
            self.entries[str(f)] = _stat(st) | {"xxh3_128": digest}
            self.changed = True
        return digest

    def save(self) -> None:
        """Write the memo atomically (entries of files that are gone are dropped)."""
        if self.path is None or not self.changed:
            return
        live = {name: e for name, e in self.entries.items() if os.path.exists(name)}
        text = json.dumps({"format": MEMO_FORMAT, "files": live}, sort_keys=True)
        try:
            atomic_write_text(self.path, text)
            self.changed = False
        except OSError as err:  # a read-only cache: hashing still works, it is just not kept
            logger.debug(f"lmms-prune: fingerprint memo {self.path} not written ({err})")


def _fingerprint(files: list[Path], root: Path, hashes: FileHashes) -> str:
    h = hashlib.sha256(b"xxh3_128\n")
    for f in files:
        h.update(f"{f.relative_to(root)}\0{hashes.digest(f)}\n".encode())
    hashes.save()
    return h.hexdigest()


# -- fingerprints ---------------------------------------------------------------------------
def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _hub_snapshot(name: str, revision: str | None) -> Path | None:
    """The local snapshot folder of hub repo ``name`` at ``revision`` (default main), if cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "config.json", revision=revision)
    except ValueError:  # not a repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def _folder(name_or_path: str, revision: str | None) -> Path | None:
    path = Path(name_or_path).expanduser()
    return path if path.is_dir() else _hub_snapshot(name_or_path, revision)


def weights_fingerprint(
    name_or_path: str,
    revision: str | None = None,
    memo_dir: str | os.PathLike | None = None,
    remember: bool = True,
) -> str:
    """Which weights these are: every weight file's name and whole content (any changed byte
    changes it; a copy of the same weights matches). Hub ids: their local snapshot at
    ``revision``; id@revision when none is cached. Hashes of large files are remembered in
    ``memo_dir`` (default: the cache folder) unless ``remember`` is False."""
    folder = _folder(name_or_path, revision)
    if folder is None:
        logger.info(f"lmms-prune: no local files of {name_or_path!r}; it is known by its name")
        return f"{name_or_path}@{revision or 'main'}"
    files = _files(folder)
    # No file with a known weight suffix: every file counts, so such folders never look alike.
    weights = [f for f in files if f.suffix in _WEIGHT_SUFFIXES] or files
    return _fingerprint(weights, folder, FileHashes(memo_dir, remember))


def files_fingerprint(
    name_or_path: str,
    revision: str | None = None,
    memo_dir: str | os.PathLike | None = None,
    remember: bool = True,
) -> str:
    """Every file of a checkpoint but its weights (config, processor, tokenizer, chat template,
    stray files of any size) by whole content; "" for a hub id with no local snapshot."""
    folder = _folder(name_or_path, revision)
    if folder is None:
        return ""
    files = [f for f in _files(folder) if f.suffix not in _WEIGHT_SUFFIXES]
    return _fingerprint(files, folder, FileHashes(memo_dir, remember))


def folder_fingerprint(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """Task files below ``path`` by relative name and content: any edit invalidates entries."""
    root = Path(path)
    files = [
        f
        for f in sorted(root.rglob("*"))
        if f.suffix in _TASK_SUFFIXES and "__pycache__" not in f.parts and f.is_file()
    ]
    return _fingerprint(files, root, FileHashes(memo_dir))


# -- entries --------------------------------------------------------------------------------
def _entry_problem(data: dict, kind: str, k: str) -> str | None:
    """Why an entry read as ``<kind>-<k>.json`` was not computed for that key, or None."""
    if "_key" not in data:
        return "records no key (written by an older lmms-prune or by hand)"
    if data["_key"] != k:
        return f"was computed for key {data['_key']!r}, not {k!r} (copied from another run?)"
    if data.get("_kind") != kind:
        return f"is a {data.get('_kind')!r} entry, not a {kind!r} one"
    if data.get("_package_version") != __version__:
        return f"was written by lmms-prune {data.get('_package_version')!r}, this is {__version__}"
    return None


class Cache:
    """Entries ``<kind>-<key>.json`` (calibration, plan, ...), each recording the key it was
    computed for; a bad or foreign one is reported and ignored (then recomputed)."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.dir = Path(directory) if directory else default_cache_dir()

    def path(self, kind: str, k: str) -> Path:
        return self.dir / f"{kind}-{k}.json"

    def get(self, kind: str, k: str) -> dict | None:
        """The JSON object stored by ``put(kind, k, ...)``, or None when missing, unreadable or
        computed for another key (both reported)."""
        path = self.path(kind, k)
        if not path.exists():
            return None
        try:  # a FIFO, a device or a huge file is refused, not read
            data = json.loads(read_small_file("cache entry", path, "cache entry"))
        except (OSError, ValueError) as err:
            logger.warning(f"lmms-prune: cache entry {path} is corrupt ({err}); recomputing it")
            return None
        if not isinstance(data, dict):
            logger.warning(f"lmms-prune: cache entry {path} is not a JSON object; recomputing it")
            return None
        problem = _entry_problem(data, kind, k)
        if problem:
            logger.warning(f"lmms-prune: cache entry {path} {problem}; recomputing it")
            return None
        return {name: v for name, v in data.items() if name not in _META}

    def put(self, kind: str, k: str, data: dict) -> Path:
        """Write ``data`` atomically with the key, kind and package version it is for."""
        entry = dict(data) | {"_key": k, "_kind": kind, "_package_version": __version__}
        return atomic_write_text(self.path(kind, k), json.dumps(entry, sort_keys=True))

    def check_writable(self) -> None:
        """Fail now, before calibration, if entries cannot be written here."""
        from lmms_prune_plugin.core.args import check_writable

        from_env = os.environ.get(ENV_VAR) and self.dir == default_cache_dir()
        check_writable(f"${ENV_VAR} (the plan cache)" if from_env else "plan_cache", self.dir)

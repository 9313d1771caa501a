"""Parse user-given values (lmms-eval model_args, CLI flags) strictly, with errors that say why.

lmms-eval turns only ``true``/``false`` into booleans and digits into numbers; everything else
arrives as a string, so ``trust_remote_code=no`` would be a truthy ``"no"`` unless parsed here.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_NONE = ("", "none", "null")
MAX_JSON_BYTES = 64 << 20  # plans, results and cache entries are kilobytes


def is_none(value: Any) -> bool:
    """``None`` or a string meaning nothing (``none``, ``null``, empty), case-insensitive."""
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE)


def optional(value: Any) -> Any:
    """``None`` for the ways of saying nothing, else the value unchanged."""
    return None if is_none(value) else value


def parse_bool(name: str, value: Any) -> bool:
    """true/false/1/0/yes/no/on/off (any case) or a bool; anything else is an error."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, float) and value in (0.0, 1.0):  # lmms-eval may parse "1" as 1.0
        return bool(value)
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(
        f"{name}={value!r} is not allowed; give true or false (also 1/0, yes/no, on/off)"
    )


def parse_int(name: str, value: Any, minimum: int | None = None, allow_none: bool = False) -> Any:
    """An integer (``3``, ``"3"``, ``3.0``) at least ``minimum``; ``None`` only if allowed."""
    if allow_none and is_none(value):
        return None
    out = None
    if isinstance(value, int) and not isinstance(value, bool):
        out = value
    elif isinstance(value, float) and value.is_integer():
        out = int(value)
    elif isinstance(value, str):
        try:
            out = int(value.strip())
        except ValueError:
            out = None
    allowed = "an integer" + (f" >= {minimum}" if minimum is not None else "")
    if allow_none:
        allowed += " or none"
    if out is None or (minimum is not None and out < minimum):
        raise ValueError(f"{name}={value!r} is not allowed; give {allowed}")
    return out


def parse_float(name: str, value: Any) -> float:
    """A finite number given as a number or a numeric string."""
    import math

    try:
        if isinstance(value, bool):
            raise TypeError
        out = float(value)
    except (TypeError, ValueError):
        out = math.nan
    if not math.isfinite(out):
        raise ValueError(f"{name}={value!r} is not allowed; give a finite number")
    return out


def closest(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` when ``name`` is close to one of ``choices``, else ''."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def reject_empty(name: str, value: Any) -> None:
    """An empty or blank string is never a value: ``plan=`` would otherwise mean "no plan"."""
    if isinstance(value, str) and not value.strip():
        raise ValueError(
            f"{name}={value!r} is not allowed: it is empty; give a value or leave {name} out"
        )


def check_writable(name: str, path: str | os.PathLike) -> Path:
    """``path`` can be created or written: its nearest existing ancestor is a folder in which a
    file can really be created (``os.access`` says yes for root on /proc; a file on the way makes
    it impossible even for root)."""
    target = Path(path).expanduser()
    probe = target
    while not probe.exists() and not probe.is_symlink():
        probe = probe.parent
    if probe == target and (target.is_file() or target.is_symlink()):
        probe = target.parent  # the file itself is what will be replaced
    reason = "" if probe.is_dir() else "it is not a folder"
    if not reason:
        try:  # our own empty temporary file, removed at once
            tempfile.TemporaryFile(dir=probe).close()
        except OSError as err:
            reason = err.strerror or type(err).__name__
    if reason:
        raise ValueError(
            f"{name}={str(path)!r} is not allowed: {str(probe)!r} is not a writable folder "
            f"({reason}); give a path in a folder you can write"
        )
    return target


def read_small_file(
    name: str, path: str | os.PathLike, what: str = "file", limit: int = MAX_JSON_BYTES
) -> str:
    """The text of a regular file of at most ``limit`` bytes, read with that cap: a folder, a
    device (``/dev/zero``), a pipe or a huge file is refused before it is read."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{name}={str(path)!r}: no such file")
    if path.is_dir():
        raise ValueError(f"{name}={str(path)!r} is not allowed: it is a folder; give a file")
    if not path.is_file():
        raise ValueError(
            f"{name}={str(path)!r} is not allowed: it is not a regular file (a device or pipe)"
        )
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(
            f"{name}={str(path)!r} is not allowed: it is larger than {limit >> 20} MiB, far "
            "larger than any file of this kind"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{name}={str(path)!r} is not a valid {what}: it is not UTF-8 text ({err})"
        ) from err

"""Parse user-given values (lmms-eval model_args, CLI flags) strictly, with errors that say why.

lmms-eval turns only ``true``/``false`` into booleans and digits into numbers; everything else
arrives as a string, so ``trust_remote_code=no`` would be a truthy ``"no"`` unless parsed here.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_NONE = ("", "none", "null")


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


def check_writable(name: str, path: str | os.PathLike) -> Path:
    """``path`` can be created or written: its nearest existing ancestor is a writable folder
    (a file on the way makes that impossible, even for root)."""
    target = Path(path).expanduser()
    probe = target
    while not probe.exists():
        probe = probe.parent
    if probe == target and target.is_file():
        probe = target.parent  # the file itself is what will be replaced
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(
            f"{name}={str(path)!r} is not allowed: {str(probe)!r} is not a writable folder"
        )
    return target

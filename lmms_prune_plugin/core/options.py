"""One option surface: typed records whose fields derive model_args, CLI flags, parsing,
choice checks and error messages, once.

A record is a frozen dataclass whose fields are declared with :func:`option`. From it:
``names()`` are its model_args, ``parse(**raw)`` turns user-given values (lmms-eval's
model_args, CLI strings) into typed ones with errors that name the option, the value and what
is allowed, and ``add_flags(parser)`` adds one ``--name`` flag per field with its help text. A
new option is one field: it reaches model_args, the CLI and ``lmms-prune options`` from there.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

from lmms_prune_plugin.core.args import (
    closest,
    is_none,
    parse_bool,
    parse_float,
    parse_int,
    reject_empty,
)

R = TypeVar("R", bound="OptionRecord")
Parser = Callable[[str, Any], Any]


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    parse: Parser | None = None,
    none: bool = False,
    flag: str | None = None,
    cli: bool = True,
) -> Any:
    """A field of an option record. ``choices`` may be a callable (registered plugins);
    ``none``: ``none``/``null`` mean None; ``parse(name, value)`` replaces the parsing by type;
    ``cli=False`` keeps it out of the CLI."""
    meta = {
        "help": help,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "parse": parse,
        "none": none,
        "flag": flag,
        "cli": cli,
    }
    if isinstance(default, list | dict | set):
        raise TypeError("option defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata=meta)


def choose(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``, else the one error every option gives."""
    allowed = list(choices)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"{name}={value!r} is not allowed{closest(str(value), allowed)}; choose one of: "
            f"{', '.join(allowed)}"
        )
    return value


def parse_list(name: str, value: Any) -> tuple[str, ...]:
    """A comma list (``a,b``) or a sequence of names; no empty item."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out = tuple(str(x).strip() for x in items)
    if not out or not all(out):
        raise ValueError(f"{name}={value!r} is not allowed: it has an empty item; give a,b,...")
    return out


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed) of an annotation."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return (rest[0] if len(rest) == 1 else typing.Union[rest]), True  # noqa: UP007
    return tp, False


def _in_range(name: str, value: float, meta: dict) -> None:
    lo, hi = meta["minimum"], meta["maximum"]
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = (
            f"in [{lo}, {hi}]"
            if lo is not None and hi is not None
            else (f">= {lo}" if lo is not None else f"<= {hi}")
        )
        raise ValueError(f"{name}={value!r} is not allowed; it must be {span}")


def parse_value(f: dataclasses.Field, tp: Any, value: Any) -> Any:
    """One field's value from what a user typed, by its declared type and metadata."""
    meta = f.metadata
    name = meta["flag"] or f.name  # what the user typed
    reject_empty(name, value)
    base, optional = _base_type(tp)
    optional = optional or meta["none"]
    if optional and is_none(value):
        return None
    if meta["parse"] is not None:
        return meta["parse"](name, value)
    if base is bool:
        return parse_bool(name, value)
    if base is int:
        minimum = None if meta["minimum"] is None else int(meta["minimum"])
        out = parse_int(name, value, minimum=minimum, allow_none=optional)
    elif base is float:
        out = parse_float(name, value)
    elif base in (tuple, tuple[str, ...]) or typing.get_origin(base) is tuple:
        return parse_list(name, value)
    else:
        if isinstance(value, bool) or not isinstance(value, str | int | float | os.PathLike):
            raise ValueError(f"{name}={value!r} is not allowed; give a name or a path")
        # lmms-eval turns digits into numbers (a revision may be one); Python callers pass Paths
        out = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if meta["choices"] is not None:
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        return choose(name, out, choices)
    if isinstance(out, int | float):
        _in_range(name, out, meta)
    return out


def _flag_type(name: str, is_list: bool) -> Callable[[str], str]:
    """What argparse can refuse at once (an empty value, an empty list item), naming the flag;
    the rest is parsed with the record, as model_args are."""

    def check(value: str) -> str:
        try:
            reject_empty(name, value)
            if is_list:
                parse_list(name, value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value

    return check


class OptionRecord:
    """Base of option records (frozen dataclasses whose fields come from :func:`option`)."""

    title: ClassVar[str] = "options"

    @classmethod
    def fields(cls) -> tuple[dataclasses.Field, ...]:
        found = dataclasses.fields(cls)  # type: ignore[arg-type]
        clash = [f.name for f in found if hasattr(OptionRecord, f.name)]
        if clash:  # a field would hide the method of that name
            raise TypeError(f"{cls.__name__}: option names {clash} are taken by OptionRecord")
        return found

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in cls.fields())

    @classmethod
    def flag_name(cls, name: str) -> str:
        """The CLI flag (without ``--``) of field ``name``."""
        return next(f.metadata["flag"] or f.name for f in cls.fields() if f.name == name)

    @classmethod
    def parse(cls: type[R], **raw: Any) -> R:
        """Typed and checked values from user-given ones; unknown names are errors."""
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in cls.fields()}
        unknown = [k for k in raw if k not in known]
        if unknown:
            k = unknown[0]
            raise ValueError(
                f"{k}={raw[k]!r} is not one of the {cls.title}{closest(k, known)}; they are: "
                f"{', '.join(known)}"
            )
        return cls(**{k: parse_value(known[k], hints[k], v) for k, v in raw.items()})

    @classmethod
    def add_flags(
        cls, parser: argparse.ArgumentParser, skip: Iterable[str] = (), **defaults: Any
    ) -> None:
        """One ``--name`` flag per field; values stay strings until :meth:`parse` (so CLI and
        model_args give the same errors), but an empty one is refused at once. ``defaults``
        are the command's own defaults (None: unset, the record's default applies)."""
        group = parser.add_argument_group(cls.title)
        for f in cls.fields():
            if f.name in skip or not f.metadata.get("cli", True):
                continue
            choices = f.metadata["choices"]
            listed = choices() if callable(choices) else choices
            extra = f" (one of: {', '.join(listed)})" if listed else ""
            shown = defaults.get(f.name, f.default)
            flag = f.metadata["flag"] or f.name
            group.add_argument(
                f"--{flag}",
                dest=flag,
                type=_flag_type(flag, isinstance(f.default, tuple)),
                default=defaults.get(f.name),
                help=f"{f.metadata['help']}{extra} [default: {shown}]",
            )

    @classmethod
    def given(cls, namespace: argparse.Namespace, skip: Iterable[str] = ()) -> dict[str, Any]:
        """The flags of this record that were given on the command line, by field name."""
        out = {}
        for f in cls.fields():
            value = getattr(namespace, f.metadata["flag"] or f.name, None)
            if f.name not in skip and value is not None:
                out[f.name] = value
        return out

    @classmethod
    def table(cls) -> str:
        """A Markdown table of the options (name, default, meaning) for the docs."""
        rows = [
            f"| `{f.metadata['flag'] or f.name}` | `{f.default}` | {f.metadata['help']} |"
            for f in cls.fields()
        ]
        return "\n".join(["| option | default | meaning |", "|---|---|---|", *rows])

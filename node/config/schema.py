"""A config section is a frozen dataclass; this module reads and writes it as a TOML table.

Why: a section's keys, types and defaults are written once, as the dataclass the node
uses. The reader, the ``did you mean`` for a misspelt key and the writer (``to_toml``,
which the consortium writer and provisioning use) all follow from those fields, so a key
can no longer be read by the node yet dropped by the writer, or mistyped and silently
ignored.

Field metadata: ``KEY`` the TOML key when it is not the field's name; ``AUTO`` the string
that stands for None (``gamma = "auto"``); ``DOC`` a one-line comment for written files;
``FLATTEN`` a nested dataclass whose fields live in the same table; ``DEFAULTS`` (with
``FLATTEN``) a function of the raw table giving the nested dataclass whose values stand
for the keys left out (``[train]``: a segmentation model's training defaults are not a
table classifier's).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from node.errors import ConfigError

KEY, AUTO, DOC, FLATTEN = "toml_key", "toml_auto", "toml_doc", "toml_flatten"
DEFAULTS = "toml_defaults"
T = TypeVar("T")


def did_you_mean(name: str, known: typing.Iterable[str]) -> str:
    """`` (did you mean 'lr'?)`` when ``name`` is close to a known name, else ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fields(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Any]]:
    """Each init field of ``cls`` with its resolved type hint."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.init:
            yield f, hints[f.name]


def keys(cls: type) -> list[str]:
    """Every TOML key a section accepts, nested flattened sections included."""
    out: list[str] = []
    for f, hint in _fields(cls):
        if f.metadata.get(FLATTEN):
            out.extend(keys(hint))
        else:
            out.append(f.metadata.get(KEY, f.name))
    return out


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _describe(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    origin = typing.get_origin(hint)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"an array of {_plural(args[0])}"
        return "a [" + ", ".join(_describe(a).split(" ", 1)[-1] for a in args) + "] pair"
    if origin is dict:
        return "a table"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, "a string" if hint is Path else str(hint))


def _plural(hint: Any) -> str:
    text = _describe(hint).split(" ", 1)[-1]
    return text.replace("pair", "pairs") if text.endswith("pair") else text + "s"


class _BadValueError(Exception):
    """``value`` is not of the field's type; ``args[0]``, when given, says which part."""


def _convert(value: Any, hint: Any) -> Any:
    """``value`` from TOML as ``hint``; raises _BadValueError when it is not one."""
    if isinstance(hint, types.UnionType):
        for arg in typing.get_args(hint):
            if arg is not type(None):
                try:
                    return _convert(value, arg)
                except _BadValueError:
                    continue
        raise _BadValueError
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, list):
            raise _BadValueError
        if len(args) == 2 and args[1] is Ellipsis:
            items = []
            for item in value:
                try:
                    items.append(_convert(item, args[0]))
                except _BadValueError:
                    raise _BadValueError(f"{item!r} is not {_describe(args[0])}") from None
            return tuple(items)
        if len(value) != len(args):
            raise _BadValueError
        return tuple(_convert(v, a) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise _BadValueError
        return {_convert(k, args[0]): _convert(v, args[1]) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise _BadValueError
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _BadValueError
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _BadValueError
        return float(value)
    if hint in (str, Path):
        if not isinstance(value, str):
            raise _BadValueError
        return hint(value)
    raise TypeError(f"config fields of type {hint!r} are not supported")


def _values(cls: type, table: dict[str, Any], section: str, problems: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f, hint in _fields(cls):
        if f.metadata.get(FLATTEN):
            base = f.metadata[DEFAULTS](table) if DEFAULTS in f.metadata else None
            nested = read_section(hint, table, section, problems, check_unknown=False, base=base)
            if nested is not None:
                values[f.name] = nested
            continue
        key = f.metadata.get(KEY, f.name)
        if key not in table:
            if _required(f):
                problems.append(f"[{section}] {key} is missing")
            continue
        raw = table[key]
        if AUTO in f.metadata and raw == f.metadata[AUTO]:
            values[f.name] = None
            continue
        try:
            values[f.name] = _convert(raw, hint)
        except _BadValueError as exc:
            if exc.args:
                problems.append(f"[{section}] {key}: {exc.args[0]}")
                continue
            auto = f" or {f.metadata[AUTO]!r}" if AUTO in f.metadata else ""
            problems.append(f"[{section}] {key} must be {_describe(hint)}{auto}, got {raw!r}")
    return values


def read_section(
    cls: type[T],
    table: Any,
    section: str,
    problems: list[str],
    check_unknown: bool = True,
    base: T | None = None,
) -> T | None:
    """``table`` as a ``cls``, or None with every problem appended to ``problems``;
    the keys left out take ``base``'s values where given, else the field defaults."""
    if table is None:
        table = {}
    if not isinstance(table, dict):
        problems.append(f"[{section}] must be a table")
        return None
    if check_unknown:
        known = keys(cls)
        problems.extend(
            f"[{section}] unknown key {key!r}{did_you_mean(key, known)}"
            for key in table
            if key not in known
        )
    before = len(problems)
    values = _values(cls, table, section, problems)
    if len(problems) > before:
        return None
    try:
        if base is not None:
            return dataclasses.replace(base, **values)  # type: ignore[type-var]
        return cls(**values)
    except ConfigError as exc:
        problems.append(f"[{section}] {exc}")
        return None


def _basic_string(text: str) -> str:
    """A TOML basic string: JSON's escapes, but any Unicode as itself (JSON's surrogate
    pairs for characters past U+FFFF are not TOML) and DEL escaped (TOML forbids it raw)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    """One TOML value: strings JSON-quoted (a TOML basic string), arrays, inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, Path)):
        return _basic_string(str(value))
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_basic_string(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, (int, float)):
        return repr(value)
    raise TypeError(f"cannot write {value!r} to TOML")


def table_lines(obj: Any, comments: bool = False) -> list[str]:
    """``key = value`` lines for a section; None values are left out (TOML has no null),
    or written as a commented-out line when ``comments`` is set."""
    lines: list[str] = []
    for f, _hint in _fields(type(obj)):
        value = getattr(obj, f.name)
        if f.metadata.get(FLATTEN):
            lines.extend(table_lines(value, comments))
            continue
        key = f.metadata.get(KEY, f.name)
        if comments and DOC in f.metadata:
            lines.append(f"# {f.metadata[DOC]}")
        if value is None and AUTO in f.metadata:
            value = f.metadata[AUTO]
        if value is None:
            if comments:
                lines.append(f"# {key} = …")
            continue
        text = toml_value(value)
        if len(key) + len(text) > 90 and isinstance(value, (list, tuple)):
            text = "[\n" + "".join(f"    {toml_value(v)},\n" for v in value) + "]"
        if len(key) + len(text) > 90 and isinstance(value, dict):  # dotted keys, one a line
            lines.extend(
                f"{key}.{_basic_string(str(k))} = {toml_value(v)}" for k, v in value.items()
            )
            continue
        lines.append(f"{key} = {text}")
    return lines

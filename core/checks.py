"""Checking a configuration dataclass's values against its field types before any work: every m2u tool refuses a
bad option with one sentence naming it, instead of failing later in a worker (where a pool re-spawns a worker
that keeps failing) or computing with NaN. Floats must be finite; ints are not bools; Literal fields take one of
their values; tuples have their length and element types.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """typing.get_type_hints, once per class (it evaluates every annotation)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _describe(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is float:
        return "a finite number"
    if hint is int:
        return "an integer"
    if hint is bool:
        return "true or false"
    if hint is str:
        return "a string"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    return getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, tuple | list):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
    if origin in (list, dict) or hint in (list, dict):
        return isinstance(value, origin or hint)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a type this check does not know: the class's own validation decides


def check_types(config: Any, prefix: str = "") -> None:
    """Raise ValueError naming the first field of the dataclass instance `config` whose value does not fit its
    type; `prefix` is put before the field name (e.g. "--detector-option ")."""
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        hint = hints.get(f.name, Any)
        if not _matches(value, hint):
            raise ValueError(f"{prefix}{f.name} must be {_describe(hint)}, got {value!r}")


def build_checked(cls: type, options: dict[str, Any], option: str) -> Any:
    """`cls(**options)` with unknown keys and bad values refused in one sentence naming `option`."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"{option}: unknown option(s) {', '.join(unknown)}; {cls.__name__} takes {', '.join(known)}"
        )
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{option}: {exc}") from None

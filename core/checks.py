"""Checking a configuration dataclass's values against its field types before any work: every m2u tool refuses a
bad option with one sentence naming it, instead of failing later in a worker (where a pool re-spawns a worker
that keeps failing) or computing with NaN. Floats must be finite; ints are not bools; Literal fields take one of
their values; tuples have their length and element types.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from m2u.core.errors import SettingError

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """typing.get_type_hints, once per class (it evaluates every annotation)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _describe(hint: Any, written: bool = False) -> str:
    """`hint` in words; `written`: as a config file or --set gives it (a group of options is a mapping there, not
    the Python class a caller of the library passes)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a, written) for a in args)
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
            return f"a list of {_describe(args[0], written)}"
        return f"a list of {len(args)} values ({', '.join(_describe(a, written) for a in args)})"
    # In a config file's words, not Python's: `gan: 3` "must be a mapping of options", not "GanTrainConfig".
    if written and isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return "a mapping of options (key: value)"
    if origin is list or hint is list:
        return "a list"
    if origin is dict or hint is dict:
        return "a mapping (key: value)"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in hint)
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
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        # A dataclass that converts a written value to its Enum (ImageFormat("jpg")) takes the value too.
        return isinstance(value, hint) or value in {member.value for member in hint}
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a type this check does not know: the class's own validation decides


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _accepts(hint: Any, kind: type) -> bool:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_accepts(a, kind) for a in get_args(hint))
    return hint is kind


def number_from_text(value: Any, hint: Any) -> Any:
    """`value` with numbers written as text read as numbers where `hint` wants one: YAML 1.1 (PyYAML) reads
    ``1e3`` and ``5e-1`` as strings, which a numeric field must still take (``1e3`` for an integer field only
    when it is a whole number). Anything else is returned as it is, for the type check to judge."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        number = float(value)
        if _accepts(hint, float):
            return number
        if _accepts(hint, int) and number.is_integer():
            return int(number)
        return value
    if isinstance(value, list | tuple) and get_origin(hint) is tuple:
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return type(value)(number_from_text(v, args[0]) for v in value)
        if len(args) == len(value):
            return type(value)(number_from_text(v, a) for v, a in zip(value, args, strict=True))
    return value


def field_problem(cls: type, name: str, value: Any) -> str:
    """What is wrong with `value` for the field `name` of the dataclass `cls` ("" when it fits its type)."""
    hint = _hints(cls).get(name, Any)
    return "" if _matches(value, hint) else f"must be {_describe(hint, written=True)}, got {value!r}"


def field_hint(cls: type, name: str) -> Any:
    return _hints(cls).get(name, Any)


def check_types(config: Any) -> None:
    """Raise SettingError naming the first field of the dataclass instance `config` whose value does not fit its
    type (the field name is the setting's configuration key)."""
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        hint = hints.get(f.name, Any)
        if not _matches(value, hint):
            raise SettingError(f.name, f"must be {_describe(hint)}, got {value!r}")


def build_checked(cls: type, options: dict[str, Any], setting: str) -> Any:
    """`cls(**options)` with unknown keys and bad values refused in one sentence (a SettingError) naming the
    setting that holds `options` (e.g. ``detector_options``)."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SettingError(
            setting, f"unknown option(s) {', '.join(unknown)}; {cls.__name__} takes {', '.join(known)}"
        )
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise SettingError(setting, str(exc)) from None


def check_at_least(config: Any, minimums: dict[str, float]) -> None:
    """Raise SettingError naming the first field of `config` in `minimums` below its minimum (None: unset, fine)."""
    for name, low in minimums.items():
        value = getattr(config, name)
        if value is not None and value < low:
            raise SettingError(name, f"must be >= {low}, got {value!r}")


def check_at_most(config: Any, maximums: dict[str, float]) -> None:
    """Raise SettingError naming the first field of `config` in `maximums` above its maximum (None: unset, fine):
    a value too large to work with (a kernel or a picture of that size) is refused before any work, not met as a
    MemoryError on every file."""
    for name, high in maximums.items():
        value = getattr(config, name)
        if value is not None and value > high:
            raise SettingError(name, f"must be <= {high}, got {value!r}")

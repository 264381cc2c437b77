"""Config files and `--set KEY=VALUE` overrides for every command that takes a configuration dataclass.

One syntax everywhere (m2u-train, m2u-eval, m2u-pipeline): a config file is a YAML (YAML aliases refused),
TOML or JSON mapping of option names to values, nested dataclasses as nested mappings; `--set a.b=VALUE` sets
one option by its dotted path, the value read as a YAML scalar (`10`, `0.5`, `true`, `null`, `[1, 2]`).
Unknown keys are refused with an error that names the key (its dotted path) and the keys known there.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from m2u.core.checks import field_hint, field_problem, number_from_text
from m2u.core.errors import SettingError

CONFIG_SUFFIXES = (".yaml", ".yml", ".toml", ".json")
CONFIG_MAX_BYTES = 1_000_000  # a configuration is a few kB; anything this large is not one


class ConfigError(ValueError):
    """A configuration file or override that does not fit the configuration dataclass."""


class ConfigSettingError(ConfigError, SettingError):
    """A dataclass's own refusal of one setting (a SettingError from its validation), with the setting's dotted
    path in the config: a command says it as that setting's option (m2u.core.cli.cli_message), not as "invalid
    value under the top level: mseg_checkpoint: ..."."""

    def __init__(self, setting: str, message: str):
        SettingError.__init__(self, setting, message)


def written_at(source: str, key: str) -> str:
    """Where a config file, a preset or `--set` wrote the value of a setting, as every command's messages say it
    (m2u-train's and m2u-eval's ValueSources, m2u-pipeline's config): "from --set KEY" (`source` "--set"), else
    "from SOURCE, key KEY" (SOURCE a config file's path, "the preset smoke"). KEY as the user wrote it."""
    return f"from --set {key}" if source == "--set" else f"from {source}, key {key}"


def as_written(message: str, field: str, key: str) -> str:
    """`message`, a refusal naming the config field `field` (its dotted path, or "invalid value under GROUP: LEAF"
    or "...: CLASS.LEAF" where GROUP.LEAF is that path), naming instead the key `key` the user wrote for it:
    `--set gan.lr=abc` sets gan.optimizer.learning_rate, and "gan.optimizer.learning_rate must be a finite number,
    got 'abc'" becomes "gan.lr must be a finite number, got 'abc'". Quoted values ('abc') are kept as they are."""
    group, _, leaf = field.rpartition(".")
    # "invalid value under mseg.model: MSegConfig.levels must be >= 2": the leaf may carry its class's name
    under = rf"invalid value under {re.escape(group)}: (?:[A-Z]\w*\.)?{re.escape(leaf)}\b" if group else None
    whole = rf"(?<![\w.]){re.escape(field)}(?![\w])"
    pieces = re.split(r"('[^']*')", message)  # odd pieces are quoted values
    for index in range(0, len(pieces), 2):
        if under is not None:
            pieces[index] = re.sub(under, lambda _: key, pieces[index])
        pieces[index] = re.sub(whole, lambda _: key, pieces[index])
    return "".join(pieces)


def _refusal(error: ValueError | TypeError, where: str) -> ConfigError:
    """What config_from_dict and apply_overrides raise for a value the dataclass rejects."""
    if isinstance(error, SettingError):
        return ConfigSettingError(f"{where}{error.setting}", error.message)
    if (
        not where
    ):  # the class's own words, which name the setting ("--split must be one of ..."); no "top level"
        return ConfigError(str(error))
    return ConfigError(f"invalid value under {where.rstrip('.')}: {error}")


class _AliasRefused(yaml.YAMLError):
    def __init__(self, anchor: str, line: int):
        super().__init__(f"line {line}: YAML aliases (*{anchor}) are not accepted; write the value out")
        self.line = line


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int):
        super().__init__(f"line {line}: {key!r} is given twice")


class _JsonDuplicateKey(ValueError):
    pass


def _refuse_duplicate_json_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads, like PyYAML, keeps the last of two equal keys silently
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _JsonDuplicateKey(f"{key!r} is given twice")
        data[key] = value
    return data


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader without anchors/aliases: a config is plain data (and alias bombs cannot expand)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasRefused(event.anchor, event.start_mark.line + 1)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        # PyYAML keeps the last of two equal keys without a word; a config that says a thing twice is refused
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, typing.Hashable) and key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a .yaml/.yml, .toml or .json file; ConfigError naming the file when it is not one."""
    from m2u.core.imageio import ImageReadError, read_input_bytes

    path = Path(path)
    try:
        text = read_input_bytes(path, max_bytes=CONFIG_MAX_BYTES).decode("utf-8")  # never blocks on a FIFO
    except ImageReadError as error:
        raise ConfigError(f"cannot read config file {path}: {error.reason}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text") from error
    try:
        if path.suffix in (".yaml", ".yml"):
            data = _load_yaml(text) or {}
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text, object_pairs_hook=_refuse_duplicate_json_keys)
        else:
            raise ConfigError(f"{path}: config files are {', '.join(CONFIG_SUFFIXES)}")
    except (_AliasRefused, _DuplicateKey) as error:
        raise ConfigError(f"{path}, {error}") from error
    except _JsonDuplicateKey as error:
        raise ConfigError(f"{path}: {error}") from error
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path} is not valid: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option names to values")
    return _nested(data, path)


def _nested(data: dict[str, Any], path: Path, above: str = "") -> dict[str, Any]:
    """`data` with its dotted keys as groups (`optimizer.betas: [0.5, 0.9]` is `optimizer: {betas: [...]}`), as
    `--set` takes them and the example configs say a file may write them; a value given both ways is refused."""
    tree: dict[str, Any] = {}
    for key, value in data.items():
        parts = key.split(".") if isinstance(key, str) else [key]
        if not all(parts):
            raise ConfigError(f"{path}: {above}{key!r} is not a dotted option name")
        node = tree
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{path}: {above}{'.'.join(parts[: depth + 1])} is a value, not a group")
        leaf = parts[-1]
        if isinstance(value, dict):
            value = _nested(value, path, f"{above}{key}.")
            if isinstance(node.get(leaf), dict):
                shared = sorted(set(node[leaf]) & set(value))
                if shared:
                    raise ConfigError(f"{path}: {above}{key}.{shared[0]} is given twice")
                node[leaf].update(value)
                continue
        if leaf in node:
            raise ConfigError(f"{path}: {above}{key} is given twice")
        node[leaf] = value
    return tree


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`["gan.max_steps=10", "seed=1"]` → {"gan": {"max_steps": 10}, "seed": 1}; values are YAML scalars."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or not all(parts):
            raise ConfigError(
                f"`sets` {item!r} is not KEY=VALUE (KEY a dotted option name, e.g. gan.max_steps=10)"
            )
        try:
            value = _load_yaml(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"`sets` {key}: cannot read the value {raw!r} ({error})") from error
        node = tree
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"`sets` {key}: {'.'.join(parts[: depth + 1])} is already set to a value")
            node = child
        node[parts[-1]] = value
    return tree


def merge_overrides(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Nested mappings merged left to right (later layers win, key by key)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                merged[key] = merge_overrides(merged[key], value)
            else:
                merged[key] = dict(value) if isinstance(value, Mapping) else value
    return merged


# A configuration class's keys beside its fields' names: m2u-train's config files take its long option names (`lr`
# for optimizer.learning_rate, `workers` for num_workers), which an unknown key is matched against and listed with.
OPTION_KEYS: dict[type, frozenset[str]] = {}


def register_option_keys(cls: type, keys: Iterable[str]) -> None:
    """Record `keys` (a command's long option names, as its config files give them) as keys of `cls`."""
    OPTION_KEYS[cls] = frozenset(keys)


def _check_keys(cls: type, values: Mapping[str, Any], where: str) -> set[str]:
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in values:
        if key not in names:
            known = sorted(names | OPTION_KEYS.get(cls, frozenset()))
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.75)
            hint = f"did you mean {where + close[0]!r}? " if close else ""
            raise ConfigError(f"unknown option {where + str(key)!r}; {hint}known here: {known}")
    return names


def _nested_class(cls: type, name: str) -> type | None:
    hint = typing.get_type_hints(cls).get(name)
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _checked(cls: type, key: str, value: Any, where: str) -> Any:
    """`value` for the field `key` of `cls`, numbers written as text read as numbers (YAML 1.1), refused with
    ConfigError naming the key when it does not fit the field's type (NaN and infinities included): the one
    check every value meets, whichever way it came (option, config file, --set, preset, saved run config)."""
    value = number_from_text(value, field_hint(cls, key))
    problem = field_problem(cls, key, value)
    if problem:
        raise ConfigError(f"{where}{key} {problem}")
    return value


def config_from_dict(cls: type, values: Mapping[str, Any], where: str = "") -> Any:
    """Build the dataclass `cls` (nested dataclasses from nested mappings); unknown keys are refused, and every
    value is type-checked first (see _checked).

    A value the dataclass rejects (its own validation) fails with ConfigError naming where it was."""
    _check_keys(cls, values, where)
    kwargs = {}
    for key, value in values.items():
        nested = _nested_class(cls, key)
        if nested is not None and isinstance(value, Mapping):
            value = config_from_dict(nested, value, where=f"{where}{key}.")
        else:
            value = _checked(cls, key, value, where)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise _refusal(error, where) from error


def apply_overrides(config: Any, overrides: Mapping[str, Any], where: str = "") -> Any:
    """A copy of the dataclass `config` with `overrides` applied (recursively), unknown keys refused.

    dataclasses.replace re-runs each dataclass's own validation, so a bad value fails with that class's message.
    """
    _check_keys(type(config), overrides, where)
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        current = getattr(config, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            value = apply_overrides(current, value, where=f"{where}{key}.")
        else:
            value = _checked(type(config), key, value, where)
        changes[key] = value
    try:
        return dataclasses.replace(config, **changes)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise _refusal(error, where) from error

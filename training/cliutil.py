"""What the model-using CLIs (m2u-eval, m2u-unmask, m2u-export) share: the model-file options, user errors."""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import click
from click.core import ParameterSource

from m2u.core.cli import cli_message

# Errors a user can cause with bad arguments or files: shown as one clean line, not a traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, OSError)


def user_errors() -> tuple[type[BaseException], ...]:
    from m2u.training.checkpoint import CheckpointError

    return (*_USER_ERRORS, CheckpointError)


def model_file_options(function):
    """The two model files every two-stage command takes; neither given: the model shipped with m2u."""
    model_file = click.Path(exists=True, dir_okay=False)
    function = click.option(
        "--generator",
        "generator_path",
        default=None,
        type=model_file,
        help="CARU2-Net model file (default: the model shipped with m2u).",
    )(function)
    return click.option(
        "--mseg",
        "mseg_path",
        default=None,
        type=model_file,
        help="M-Seg model file (default: the model shipped with m2u).",
    )(function)


def config_file_options(function):
    """`-c/--config FILE`, `--set KEY=VALUE` and `--print-config` (m2u.core.cli.config_options), and the
    positional CONFIG_FILE of the previous release (kept for one release; CHANGELOG.md)."""
    from m2u.core.cli import config_options

    function = config_options(function)
    return click.argument("legacy_config_file", required=False, type=click.Path(exists=True, dir_okay=False))(
        function
    )


# Parameters of the config options themselves: never config values.
_CONFIG_PARAMETERS = frozenset({"config_file", "legacy_config_file", "sets", "print_config", "quiet", "help"})


def _long_name(param: click.Parameter) -> str:
    """A parameter's config key: its longest long option name, dashes as underscores (--batch-size: batch_size)."""
    longs = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
    return max(longs, key=len)[2:].replace("-", "_") if longs else str(param.name)


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{path}: {part} is a value, not a group")
        node = child
    node[leaf] = value


def _get_path(tree: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _pop_path(tree: dict[str, Any], path: str) -> None:
    *parents, leaf = path.split(".")
    node = tree
    for part in parents:
        node = node[part]
    node.pop(leaf, None)
    if parents and not node:
        _pop_path(tree, ".".join(parents))


@dataclass(frozen=True)
class ConfigBinding:
    """How a command's options fill a configuration dataclass.

    `paths`: option (parameter) name -> dotted field path, "!path" for a flag that sets the field to False;
    an option not listed fills the top-level field of its own name. `other`: options that are not config fields
    (files the command reads, ...); a config file may still give them, by their option name. Precedence:
    dataclass defaults < CONFIG_FILE < options given on the command line < --set.

    Config keys (file and --set) are the long option names (`batch_size` for --batch-size, `lr` for --lr,
    `mseg` for --mseg), nested groups as dotted names; a field without an option is set by its dotted field
    path (`optimizer.betas`), and so is one with an option (`optimizer.learning_rate`)."""

    cls: type
    paths: Mapping[str, str] = field(default_factory=dict)
    other: frozenset[str] = frozenset()

    def path_of(self, name: str) -> tuple[str, bool]:
        path = self.paths.get(name, name)
        return path.lstrip("!"), path.startswith("!")

    def _config_params(self, command: click.Command) -> list[click.Parameter]:
        from m2u.core.cli import is_alias

        return [
            p
            for p in command.params
            if isinstance(p, click.Option) and p.name not in _CONFIG_PARAMETERS and not is_alias(p)
        ]

    def keys(self, command: click.Command) -> dict[str, str]:
        """Config key -> parameter name, for every option of `command` that a config may hold."""
        return {_long_name(p): str(p.name) for p in self._config_params(command)}

    def given(self, ctx: click.Context, params: Mapping[str, Any]) -> dict[str, Any]:
        """The options given on the command line (not left at their default), as a nested mapping."""
        tree: dict[str, Any] = {}
        for name, value in params.items():
            if name in self.other or name in _CONFIG_PARAMETERS:
                continue
            if ctx.get_parameter_source(name) in (None, ParameterSource.DEFAULT):
                continue
            path, negated = self.path_of(name)
            if negated:
                if not value:
                    continue
                value = False
            if isinstance(value, tuple) and value == ():
                continue
            _set_path(tree, path, value)
        return tree

    def translate(self, command: click.Command, values: Mapping[str, Any]) -> tuple[dict, dict]:
        """A config file's (or --set's) mapping with option-name keys → (config field tree, other options)."""
        keys = self.keys(command)
        tree: dict[str, Any] = {}
        others: dict[str, Any] = {}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            name = keys.get(key)
            if name is not None and name in self.other:
                others[name] = value
            elif name is not None:
                path, negated = self.path_of(name)
                if negated and isinstance(value, bool):
                    value = not value
                if isinstance(value, Mapping):
                    value = dict(value)
                _set_path(tree, path, value)
            else:
                tree = _merge(tree, {key: value})
        return tree, others

    def build(self, params: dict[str, Any], base: Mapping[str, Any] | None = None) -> Any:
        """The config from `base` (fixed values), CONFIG_FILE, the given options and --set; one clear error.
        Options in `other` a config file or --set gives fill `params` where the command line did not."""
        from m2u.core.configfile import ConfigError, config_from_dict, parse_overrides, read_config_file

        ctx = click.get_current_context()
        config_file = params.get("config_file") or params.get("legacy_config_file")
        try:
            from_file, file_others = self.translate(
                ctx.command, read_config_file(config_file) if config_file else {}
            )
            from_sets, set_others = self.translate(ctx.command, parse_overrides(params.get("sets", ())))
            for name, value in {**file_others, **set_others}.items():
                if name in set_others or ctx.get_parameter_source(name) in (None, ParameterSource.DEFAULT):
                    params[name] = value
            values = _merge(base or {}, from_file, self.given(ctx, params), from_sets)
            return config_from_dict(self.cls, values)
        except ConfigError as error:
            raise click.UsageError(f"{cli_message(error)}{self.flags_named(ctx, str(error))}") from None
        except ValueError as error:
            raise click.UsageError(cli_message(error)) from None

    def flags_named(self, ctx: click.Context, message: str) -> str:
        """The suffix " (on the command line: --mseg, ...)" for the config fields a library message names: library
        errors speak of settings, the user of a command types options."""
        flags = []
        for param in ctx.command.params:
            if not isinstance(param, click.Option) or param.name is None:
                continue
            field_path = self.path_of(param.name)[0]
            if re.search(rf"\b{re.escape(field_path.rsplit('.', 1)[-1])}\b", message):
                flags.append(max(param.opts, key=len))
        return f" (on the command line: {', '.join(flags)})" if flags else ""

    def as_options(self, command: click.Command, config: Any, others: Mapping[str, Any]) -> dict[str, Any]:
        """`config` as a config file: every option by its key (options first, in --help order), then the fields
        no option sets, nested; reading it back (`build`) gives the same config."""
        import dataclasses
        import json

        fields_tree = json.loads(json.dumps(dataclasses.asdict(config), default=str))
        result: dict[str, Any] = {}
        for param in self._config_params(command):
            name = str(param.name)
            if name in self.other:
                value = others.get(name)
                if value is not None and value != ():
                    result[_long_name(param)] = list(value) if isinstance(value, tuple) else value
                continue
            path, negated = self.path_of(name)
            found, value = _get_path(fields_tree, path)
            if not found:
                continue
            _pop_path(fields_tree, path)
            result[_long_name(param)] = (not value) if negated and isinstance(value, bool) else value
        for key, value in fields_tree.items():
            if key in result:  # an option named like a field group would make the file ambiguous
                raise ValueError(f"config key {key!r} is both an option and a group of {self.cls.__name__}")
            result[key] = value
        return result

    def print_config(self, command: click.Command, config: Any, others: Mapping[str, Any]) -> None:
        import yaml

        click.echo(yaml.safe_dump(self.as_options(command, config, others), sort_keys=False), nl=False)


def _merge(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    from m2u.core.configfile import merge_overrides

    return merge_overrides(*layers)


@contextlib.contextmanager
def model_warnings() -> Iterator[None]:
    """Show the warnings model files give (an option contradicting a file, a resized dataset) as one
    'warning: ...' line each on stderr, as they happen."""
    from m2u.training.checkpoint import ModelUsageWarning

    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ModelUsageWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            previous(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", ModelUsageWarning)
        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = previous

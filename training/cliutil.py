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

from m2u.core.cli import cli_message, notice

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

    def message(self, error: BaseException) -> str:
        """cli_message, with the nested settings this command has an option for said as that option
        (`generator.width_multiplier`: --width-multiplier); other nested settings stay the `--set` keys they are."""
        from m2u.core.cli import flag_of

        text = cli_message(error)
        for name, path in self.paths.items():
            path = path.lstrip("!")
            flag = flag_of(name) if "." in path else None
            if flag:
                text = text.replace(f"`{path}`", flag)
        return text

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

    def translate(
        self, command: click.Command, values: Mapping[str, Any], origins: dict[str, str] | None = None
    ) -> tuple[dict, dict]:
        """A config file's (or --set's) mapping with option-name keys → (config field tree, other options).
        `origins`, when given, is filled with each field path set → the key that set it (`lr` for
        optimizer.learning_rate; a group's keys by their dotted path), for errors to say where a value came from."""
        from m2u.core.configfile import register_option_keys

        keys = self.keys(command)
        register_option_keys(
            self.cls, keys
        )  # an unknown key is matched against them too (`workerz`: `workers`)
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
                if origins is not None:
                    origins[path] = str(raw_key)
            else:
                tree = _merge(tree, {key: value})
                if origins is not None:
                    origins.update({path: path for path in _paths(key, value)})
        return tree, others

    def build(
        self, params: dict[str, Any], base: Mapping[str, Any] | None = None, base_source: str | None = None
    ) -> Any:
        """The config from `base` (fixed values: a resumed run's saved config, read from `base_source`),
        CONFIG_FILE, the given options and --set; one clear error, saying where the values it names came from.
        Options in `other` a config file or --set gives fill `params` where the command line did not."""
        from m2u.core.configfile import ConfigError, config_from_dict, parse_overrides, read_config_file

        ctx = click.get_current_context()
        config_file = params.get("config_file") or params.get("legacy_config_file")
        sources = ValueSources(config_file=str(config_file) if config_file else None, base_source=base_source)
        try:
            # An error here is about the file or a --set item itself, and names it: no suffix.
            from_file, file_others = self.translate(
                ctx.command, read_config_file(config_file) if config_file else {}, sources.file_keys
            )
            from_sets, set_others = self.translate(
                ctx.command, parse_overrides(params.get("sets", ())), sources.set_keys
            )
        except ValueError as error:  # ConfigError included
            raise click.UsageError(cli_message(error)) from None
        for name, value in {**file_others, **set_others}.items():
            if name in set_others or ctx.get_parameter_source(name) in (None, ParameterSource.DEFAULT):
                params[name] = value
        sources.base_keys = {path: path for key, value in (base or {}).items() for path in _paths(key, value)}
        try:
            values = _merge(base or {}, from_file, self.given(ctx, params), from_sets)
            return config_from_dict(self.cls, values)
        except ConfigError as error:
            said, suffix = self.sources_named(ctx, self._said(error, sources), sources)
            raise click.UsageError(f"{said}{suffix}") from None
        except ValueError as error:
            raise click.UsageError(cli_message(error)) from None

    @staticmethod
    def _said(error: ValueError, sources: ValueSources) -> str:
        """A config's refusal of one setting (ConfigSettingError) is said as its option, unless a config file, --set
        or the resumed run gave the value: then as the key written there (the suffix says where)."""
        from m2u.core.errors import SettingError

        written = {**sources.file_keys, **sources.set_keys, **sources.base_keys}
        if isinstance(error, SettingError) and error.setting in written:
            return cli_message(ValueError(str(error)))
        return cli_message(error)

    def sources_named(self, ctx: click.Context, message: str, sources: ValueSources) -> tuple[str, str]:
        """`message` speaking of the keys a config file or --set wrote, and the suffix saying where the values it
        names came from: " (batch_size: from FILE, key batch_size)", "(lr: from --set lr)" (the message's
        optimizer.learning_rate said as `lr`, the key the user typed), "(seed: from the command line, --seed)",
        "(epochs: the default, --epochs sets it)". Library errors speak of settings; the user gave them in a file,
        a --set or an option (the suffix said "on the command line: --batch-size" for a value read from a config
        file)."""
        # An unknown key is the file's or a --set's: where it was written, not the fields listed as known.
        unknown = re.match(r"unknown option '([^']+)'", message)
        if unknown:
            where = sources.place_of_key(unknown.group(1))
            return message, f" ({where})" if where else ""
        text = re.sub(r"'[^']*'", "", message)  # the values quoted in it ('abc') name no setting
        named: dict[str, click.Option | None] = {}
        for param in ctx.command.params:
            if not isinstance(param, click.Option) or param.name is None:
                continue
            if param.name in self.other or param.name in _CONFIG_PARAMETERS:
                continue
            path = self.path_of(param.name)[0]
            if _mentions(text, path):
                named.setdefault(path, param)
        # Fields no option sets (optimizer.betas), as a config file or --set wrote them.
        for keys in (sources.set_keys, sources.file_keys):
            for path in keys:
                leaf = not any(other.startswith(f"{path}.") for other in keys)  # not a group of them
                if leaf and _mentions(text, path):
                    named.setdefault(path, None)
        from m2u.core.configfile import as_written

        parts = []
        for path, option in named.items():
            name, where = sources.source_of(ctx, path, option)
            message = as_written(message, path, name) if name != path else message
            parts.append(f"{name}: {where}")
        return message, f" ({'; '.join(parts)})" if parts else ""

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


@dataclass
class ValueSources:
    """Where the values of one `ConfigBinding.build` came from, for its error messages: the config file's keys
    and --set's (field path → the key written there), a resumed run's saved config (`base`); what none of them
    set is the command line's or the default."""

    config_file: str | None = None
    base_source: str | None = None
    file_keys: dict[str, str] = field(default_factory=dict)
    set_keys: dict[str, str] = field(default_factory=dict)
    base_keys: dict[str, str] = field(default_factory=dict)

    def place_of_key(self, path: str) -> str:
        """Where the key `path` (dotted) was written: "from --set KEY", "in FILE", "" when unknown."""
        from m2u.core.configfile import written_at

        if path in self.set_keys:
            return written_at("--set", self.set_keys[path])
        if path in self.file_keys:
            return f"in {self.config_file}"
        if path in self.base_keys:
            return f"in {self.base_source or 'the resumed run'}"
        return ""

    def source_of(self, ctx: click.Context, path: str, param: click.Option | None) -> tuple[str, str]:
        """What to call the field `path` and where its value came from, by precedence: --set, the command line,
        the config file, the resumed run's saved config, the default. A value a config file or --set wrote under
        a key of its own (`lr` for optimizer.learning_rate) is called by that key."""
        from m2u.core.configfile import written_at

        flag = max(param.opts, key=len) if param is not None else None
        if _key_for(self.set_keys, path):
            return self.set_keys.get(path, path), written_at("--set", str(_key_for(self.set_keys, path)))
        if param is not None and ctx.get_parameter_source(str(param.name)) not in (
            None,
            ParameterSource.DEFAULT,
        ):
            return path, f"from the command line, {flag}"
        if _key_for(self.file_keys, path):
            return self.file_keys.get(path, path), written_at(
                str(self.config_file), str(_key_for(self.file_keys, path))
            )
        if _key_for(self.base_keys, path):
            return path, f"from {self.base_source or 'the resumed run'}"
        return path, f"the default, {flag} sets it" if flag else "the default"


def _key_for(keys: Mapping[str, str], path: str) -> str | None:
    """The key that set the field `path`, or a group holding it (`model` for model.levels)."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        key = keys.get(".".join(parts[:end]))
        if key is not None:
            return key
    return None


def _paths(key: str, value: Any) -> list[str]:
    """`key` and the dotted paths of everything under it where `value` is a mapping (a config group)."""
    paths = [key]
    if isinstance(value, Mapping):
        for child, inner in value.items():
            paths += _paths(f"{key}.{child}", inner)
    return paths


def _mentions(message: str, path: str) -> bool:
    """Whether `message` names the field `path` (its last part, as a word)."""
    return re.search(rf"\b{re.escape(path.rsplit('.', 1)[-1])}\b", message) is not None


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
            notice(f"warning: {cli_message(message)}")  # settings said as this command's flags, by rank 0
        else:
            previous(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", ModelUsageWarning)
        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = previous

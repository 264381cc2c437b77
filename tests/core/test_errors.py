"""Library errors name settings by their configuration key; the CLIs say the flag (m2u.core.errors,
m2u.core.cli.cli_message). Library code holds no CLI flag in its error messages (checked from the AST)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from m2u.core.cli import cli_message
from m2u.core.errors import SettingError
from m2u.core.inputs import OutputFolderError
from m2u.datasets.config import BuildConfig

REPO = Path(__file__).resolve().parents[2]
LIBRARY = ("core", "masking", "datasets", "training", "inference", "evaluation", "pipelines")
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")


def _m2u_flags() -> set[str]:
    """Every long option of every m2u command (from the Click objects)."""
    from tests.test_cli_family import COMMANDS

    commands = [*COMMANDS.values()]
    flags = set()
    for command in commands:
        for param in command.params:
            flags |= {o for o in getattr(param, "opts", ()) if o.startswith("--")}
    return flags


def _raised_texts():
    """(file:line, text) of every string constant inside a raise statement of the library (cli.py modules are the
    CLI layer: they may name their flags)."""
    for package in LIBRARY:
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name == "cli.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Raise) and node.exc is not None:
                    for sub in ast.walk(node.exc):
                        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                            yield f"{path.relative_to(REPO)}:{sub.lineno}", sub.value


def test_library_errors_name_no_cli_flag():
    flags = _m2u_flags()
    assert {
        "--limit",
        "--detector-option",
        "--threshold",
        "--overwrite",
    } <= flags  # the scan sees the commands
    texts = list(_raised_texts())
    assert len(texts) > 300, "the scan reads the library's raise statements"
    offending = [
        f"{where}: {text!r}"
        for where, text in texts
        if text.lstrip().startswith("--") or {f"--{m}" for m in FLAG.findall(text)} & flags
    ]
    assert not offending, "name the setting (SettingError, or `key` in backticks):\n" + "\n".join(offending)


def _context(command: click.Command) -> click.Context:
    return click.Context(command, info_name=command.name)


def test_a_setting_error_is_a_value_error_naming_the_key():
    with pytest.raises(ValueError, match=r"^limit: must be >= 1, got 0$") as caught:
        BuildConfig(limit=0)
    assert isinstance(caught.value, SettingError) and caught.value.setting == "limit"
    with pytest.raises(SettingError, match=r"^detector_options: unknown option\(s\) upsampel"):
        BuildConfig(detector_options={"upsampel": 2})


def test_the_cli_says_the_flag_of_the_running_command():
    from m2u.datasets.cli import main as make_dataset_main
    from m2u.inference.cli import unmask_main

    dataset, unmask = _context(make_dataset_main), _context(unmask_main)
    assert (
        cli_message(SettingError("limit", "must be >= 1, got 0"), dataset) == "--limit: must be >= 1, got 0"
    )
    # a repeatable option that fills a dict setting, and a setting whose flag is spelled otherwise
    assert cli_message(SettingError("detector_options", "x"), dataset) == "--detector-option: x"
    assert cli_message(SettingError("mask_threshold", "x"), unmask) == "--threshold: x"
    # a setting the command has no option for (set by --mask-option, --set, a config file): the key itself, never
    # a flag the command does not have
    assert cli_message(SettingError("max_pixels", "x"), unmask) == "`max_pixels`: x"
    # settings a message mentions in backticks become the command's flags; other backticked words stay
    error = OutputFolderError("`out_dir` runs/x holds a build; use `overwrite` to replace it (`ray start`)")
    assert (
        cli_message(error, dataset)
        == "--out runs/x holds a build; use --overwrite to replace it (`ray start`)"
    )
    assert cli_message(ValueError("plain text"), dataset) == "plain text"


def test_a_setting_error_reaches_the_user_as_the_flag(tmp_path):
    from m2u.datasets.cli import main as make_dataset_main

    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"")
    result = CliRunner().invoke(
        make_dataset_main,
        [str(photo), "-o", str(tmp_path / "ds"), "--detector-option", "upsample=9", "--quiet"],
    )
    assert result.exit_code == 2, result.output
    assert "--detector-option: upsample" in result.output and "detector_options" not in result.output


def test_a_boolean_setting_named_with_its_value_reaches_the_user_as_the_switch_that_gives_it():
    """A library message says how to do without BlazeFace as "give `blazeface_first`=false"; m2u-mask said "turn
    --blazeface off" (the flag that turns it on). Each command now says the switch it has for that value, and a
    command without one keeps the key and value."""
    from m2u.datasets.cli import main as make_dataset_main
    from m2u.masking.cli import main as mask_main

    mask, dataset = _context(mask_main), _context(make_dataset_main)
    error = ValueError("BlazeFace needs x; or give `blazeface_first`=false (dlib's detectors alone)")
    assert cli_message(error, mask) == "BlazeFace needs x; or give --no-blazeface (dlib's detectors alone)"
    assert cli_message(ValueError("give `blazeface_first`=true"), mask) == "give --blazeface"
    assert cli_message(error, dataset) == str(
        error
    )  # no such option there: the key and value, as typed in a file

    @click.command()
    @click.option("--strict", type=bool, default=True)
    @click.option("--quiet", is_flag=True)
    def probe(strict, quiet):  # pragma: no cover - only its options are read
        pass

    context = _context(probe)
    assert cli_message(ValueError("or `strict`=false"), context) == "or --strict false"
    assert cli_message(ValueError("or `quiet`=true"), context) == "or --quiet"
    # A lone switch cannot give the other value: the key and value stay (never the switch that does the opposite).
    assert cli_message(ValueError("or `quiet`=false"), context) == "or `quiet`=false"

"""Every m2u command the README shows parses as written: each option exists under that spelling and each value is
accepted (Click's own parsing, from the command objects). The commands' behaviour is tested beside each tool;
here the README cannot drift from the option family."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import click
import pytest

from m2u.datasets.cli import main as make_dataset_main
from m2u.evaluation.cli import main as eval_main
from m2u.inference.cli import export_main, unmask_main
from m2u.masking.cli import main as mask_main
from m2u.pipelines.cli import main as pipeline_main
from m2u.training.cli import train_main

REPO = Path(__file__).resolve().parents[1]
COMMANDS: dict[str, click.Command] = {
    "m2u-mask": mask_main,
    "m2u-make-dataset": make_dataset_main,
    "m2u-train": train_main,
    "m2u-eval": eval_main,
    "m2u-unmask": unmask_main,
    "m2u-export": export_main,
    "m2u-pipeline": pipeline_main,
}


def readme_commands() -> list[str]:
    """The m2u command lines of the README's bash blocks (continuations joined, comments dropped)."""
    readme = (REPO / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(("m2u-", ".venv/bin/m2u-", "$(BIN)/m2u-")):
                lines.append(line.removeprefix(".venv/bin/"))
    return lines


def _placeholders(args: list[str], cwd: Path) -> None:
    """The model and list files a command names, as empty files (Click checks that they exist)."""
    for arg in args:
        if arg.endswith((".safetensors", ".txt", ".pth")) and not arg.startswith("/"):
            path = cwd / arg
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()


def test_the_readme_shows_every_command():
    shown = {line.split()[0] for line in readme_commands()}
    assert set(COMMANDS) <= shown, set(COMMANDS) - shown


@pytest.mark.parametrize("line", readme_commands())
def test_a_readme_command_parses_as_written(line, tmp_path, monkeypatch):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    line = re.sub(r"\[([^\]]*)\]", r"\1", line)  # "[--mask-source gt]": an optional part, shown with it
    line = line.split(">")[0].split("|")[0]
    name, *args = shlex.split(line)
    args = [a.replace("$SLURM_ARRAY_TASK_ID", "0").replace("$SLURM_CPUS_PER_TASK", "2") for a in args]
    if "..." in args:
        pytest.skip(f"an elided command: {line}")
    _placeholders(args, tmp_path)
    command = COMMANDS[name]
    if isinstance(
        command, click.Group
    ):  # m2u-train mseg, m2u-export onnx, m2u-pipeline run (no group options)
        name, *args = args
        command = command.commands[name]
    try:
        command.make_context(name, list(args))
    except click.UsageError as error:
        pytest.fail(f"{line}: {error.format_message()}")

"""Every m2u command the README and the docs/ pages it links to show parses as written: each option exists under
that spelling and each value is accepted (Click's own parsing, from the command objects), and every folder those
commands create in the repository root is ignored by git. The commands' behaviour is tested beside each tool; here the
documentation cannot drift from the option family."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
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


# The pages whose commands a user copies: the README and the docs it links to.
DOCUMENTATION = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))


def readme_commands(pages: tuple[Path, ...] = DOCUMENTATION) -> list[str]:
    """The m2u command lines of the pages' bash blocks (continuations joined, comments dropped)."""
    readme = "\n".join(page.read_text() for page in pages)
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
    shown = {line.split()[0] for line in readme_commands((REPO / "README.md",))}
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


# Options whose value is a folder (or file) a command creates.
_OUTPUT_OPTIONS = r"(?:-o|--out|--work|--contact-sheet|--package)"


def readme_outputs() -> set[str]:
    """The top-level names the shell commands of the README and docs/ write into, relative to where they run."""
    readme = "\n".join(page.read_text() for page in DOCUMENTATION)
    outputs = set()
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for target in re.findall(_OUTPUT_OPTIONS + r"\s+(\S+)", block):
            if target.startswith(("/", "..", "$", "s3://", "OUT", "REPORT", "RUN")) or "://" in target:
                continue
            outputs.add(target.split("/")[0])
    return outputs


def test_git_ignores_every_folder_the_readme_commands_create():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    outputs = readme_outputs()
    assert {"runs", "data", "reports", "onnx", "masked", "out"} <= outputs  # the parser sees the commands
    for name in sorted(outputs):
        done = subprocess.run(["git", "check-ignore", "-q", f"{name}/x"], cwd=REPO)
        assert done.returncode == 0, f"{name}/ (written by a README command) is not ignored by git"

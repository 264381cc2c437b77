"""Working in the repository root as the README shows leaves it clean: ruff never takes a user's output folder (onnx/)
for a module, and installing gives no setuptools warnings (that git ignores every folder the documented commands
create is tested beside the commands, tests/test_readme_commands.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_does_not_take_an_output_folder_for_a_module(tmp_path):
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed beside this Python")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "onnx").mkdir()  # what `m2u-export onnx -o onnx/` leaves
    (tmp_path / "onnx" / "export.json").write_text("{}")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("import numpy\nimport onnx\nimport pytest\n\nimport m2u\n")
    done = subprocess.run(
        [str(ruff), "check", "--no-cache", "--select", "I", "tests"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout


def test_every_folder_setuptools_installs_is_a_listed_package():
    import configparser

    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    options = parser["options"]
    listed = set(options["packages"].split())
    mapping = dict(line.split(" = ") for line in options["package_dir"].strip().splitlines())
    for package, folder in mapping.items():
        for sub in (REPO / folder).iterdir():
            data = [p for p in sub.iterdir()] if sub.is_dir() and sub.name.isidentifier() else []
            if sub.name.startswith(("_", ".")) or not data:
                continue
            assert f"{package}.{sub.name}" in listed, f"{folder}/{sub.name} is installed but not listed"


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> tuple[Path, str]:
    """The wheel `pip install .` would install (seconds), and what pip said building it. Built from a copy of the
    files git tracks or would track: setuptools' build/ folder in a checkout keeps earlier builds' files, which
    would hide a file the configuration no longer installs."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    source = tmp_path_factory.mktemp("source")
    for name in listed.stdout.splitlines():
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = out.glob("m2u-*.whl")
    return wheel, done.stdout + done.stderr


def test_building_the_package_gives_no_setuptools_warning(built_wheel):
    _, said = built_wheel
    assert "Warning" not in said.replace("WARNING: Location", ""), said[-3000:]


def test_the_wheel_holds_every_module_and_data_file_the_packages_track(built_wheel):
    """`pip install .` (not editable) must carry what the code reads at run time: the shipped model, the masked-face
    HOG filter, the presets, and every module (setup.cfg lists packages by hand); and the licence."""
    import configparser
    import zipfile

    wheel, _ = built_wheel
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    mapping = dict(line.split(" = ") for line in parser["options"]["package_dir"].strip().splitlines())
    folders = sorted({folder for folder in mapping.values() if "/" not in folder})
    tracked = subprocess.run(
        ["git", "ls-files", *folders], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    names = set(zipfile.ZipFile(wheel).namelist())
    # Documentation beside the code (the model card excepted) and m2u's own write record are not run-time files.
    wanted = [
        path
        for path in tracked
        if not path.endswith(".m2u-written") and (not path.endswith(".md") or "pretrained/" in path)
    ]
    missing = [path for path in wanted if f"m2u/{path}" not in names]
    assert missing == []
    assert any(name.endswith("dist-info/licenses/LICENSE") for name in names)


def _requirement_names(lines: str) -> set[str]:
    """Canonical project names of requirement lines ("ray>=2.40", "moto[server]>=5.0" -> "ray", "moto")."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = (line.split("#", 1)[0].strip() for line in lines.splitlines())
    return {canonicalize_name(Requirement(line).name) for line in lines if line}


def test_every_dependency_is_pinned_in_the_constraints_make_setup_installs():
    """A dependency added to setup.cfg without a pin would install whatever is newest on a fresh machine: CI would
    no longer test what it installs. torch is left to the Makefile (CPU or CUDA build)."""
    import configparser
    import re

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    wanted = _requirement_names(parser["options"]["install_requires"])
    wanted |= _requirement_names(parser["options.extras_require"]["test"])
    pins = set()
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pin = Requirement(line)
            specifiers = list(pin.specifier)
            assert len(specifiers) == 1 and specifiers[0].operator == "==", f"not an exact pin: {line}"
            pins.add(canonicalize_name(pin.name))
    assert "torch" not in pins
    assert sorted(wanted - {"torch"} - pins) == []
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"pip install -q \$\(if \$\(CONSTRAINTS\),-c \$\(CONSTRAINTS\)\) -e", makefile)

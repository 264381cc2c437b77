"""The rooms of m2u and their walls: what each package may import, and that every CLI answers -h."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _modules_after_import(*modules: str) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_inference_never_imports_evaluation_or_its_metric_libraries():
    loaded = _modules_after_import(
        "m2u.inference",
        "m2u.inference.unmask",
        "m2u.inference.export",
        "m2u.inference.cli",
    )
    forbidden = [
        m
        for m in loaded
        if m.startswith(("m2u.evaluation", "scipy", "lpips", "torchmetrics", "torch_fidelity", "pytorch_fid"))
    ]
    assert forbidden == []
    assert "m2u.inference.restore" in loaded  # the check saw the package load


def test_data_flows_one_way():
    # A package imports only from packages to its left: core <- masking <- datasets <- training <- inference <- evaluation <- pipelines.
    order = ["core", "masking", "datasets", "training", "inference", "evaluation", "pipelines"]
    offenders = []
    for i, package in enumerate(order):
        later = order[i + 1 :]
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text()
            offenders += [f"{path.relative_to(REPO)} imports m2u.{p}" for p in later if f"m2u.{p}" in text]
    assert offenders == []


def _console_scripts() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return [line.split("=")[0].strip() for line in lines]


_SUBCOMMANDS = {"m2u-train": ["mseg", "gan"], "m2u-pipeline": ["run", "ablate"], "m2u-export": ["onnx"]}


@pytest.mark.parametrize(
    "command", [[s] for s in _console_scripts()] + [[s, c] for s, cs in _SUBCOMMANDS.items() for c in cs]
)
def test_every_cli_answers_dash_h(command):
    exe = Path(sys.executable).with_name(command[0])
    assert exe.exists(), f"{command[0]} is not installed beside {sys.executable}"
    out = subprocess.run([str(exe), *command[1:], "-h"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout


def test_package_imports_stay_light():
    # The packages resolve their names lazily: importing them loads none of the heavy libraries.
    loaded = _modules_after_import("m2u.masking", "m2u.datasets", "m2u.training")
    assert {"torch", "cv2", "dlib"} & loaded == set()
    assert "m2u.core.lazy" in loaded

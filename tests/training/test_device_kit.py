"""The device kit (issue 27).

The rehearsal (slow): benchmarks/device_run.sh, the command a lent GPU machine runs, end to end on this CPU in a
fresh virtual environment with no network: its packages are an image like the device's (this environment's
site-packages without what the device lacks: m2u itself, dlib, webdataset, braceexpand, face-recognition-models,
linked, torch included, so nothing is downloaded or rebuilt) plus only what the kit carries, installed by the script
with pip --no-index. Skips, saying why, when `make device-kit` has not prepared .kit here.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KIT = Path(os.environ.get("M2U_KIT") or REPO / ".kit")  # another prepared kit: M2U_KIT
sys.path.insert(0, str(REPO / "benchmarks"))
import device_kit  # noqa: E402

# What the device image lacks of this environment (KINDS.md's package list against setup.cfg), plus m2u itself.
DEVICE_LACKS = {"m2u", "dlib-bin", "webdataset", "braceexpand", "face-recognition-models"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_kit_wheels_cover_every_requirement_the_device_lacks():
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    required = {_name(line) for line in parser["options"]["install_requires"].splitlines() if line.strip()}
    carried = {_name(pin) for pin in device_kit.DEVICE_WHEELS}
    # face-recognition-models holds dlib's detector/identity model files: the device run needs neither (the pack
    # carries landmarks; the identity metric is computed here afterwards).
    assert (required & DEVICE_LACKS) - {"face-recognition-models"} <= carried
    assert all(
        "==" in pin for pin in device_kit.DEVICE_WHEELS
    )  # one version of each: pip --no-index is exact


def test_kit_wheels_are_the_versions_make_setup_installs(tmp_path):
    pinned = {
        _name(line): line.strip()
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert all(pinned[_name(pin)] == pin for pin in device_kit.DEVICE_WHEELS)
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# pins\nWebDataset==9.9 # a comment\n")
    assert device_kit.constraint_pins(("webdataset",), constraints) == ("WebDataset==9.9",)
    with pytest.raises(SystemExit, match="pins no version of dlib-bin"):
        device_kit.constraint_pins(("webdataset", "dlib-bin"), constraints)


def test_link_site_gives_every_m2u_package(tmp_path):
    device_kit.link_site(tmp_path)
    linked = {p.name for p in (tmp_path / "m2u").iterdir()}
    assert {"core", "masking", "datasets", "training", "inference", "evaluation", "pipelines"} <= linked
    assert (tmp_path / "m2u" / "training" / "models").is_dir()  # subpackages come with their parent


def _device_image(folder: Path) -> Path:
    """This environment's site-packages as links, without the distributions the device lacks."""
    site = Path(sysconfig.get_paths()["purelib"])
    excluded: set[str] = set()
    for dist in importlib.metadata.distributions():
        if _name(dist.metadata["Name"]) not in DEVICE_LACKS:
            continue
        # Its files' top-level names (packages, modules, extension files, its .dist-info folder).
        excluded |= {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    folder.mkdir()
    for entry in site.iterdir():
        if entry.name in excluded or entry.suffix == ".pth" or entry.name.startswith("__editable__"):
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


def _run(command: list[str], env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_rehearsal_runs_the_device_command_end_to_end(tmp_path):
    wheels_here = KIT / "wheels-here"
    if not (KIT / "pack" / "pack.json").is_file() or not (wheels_here / "requirements.txt").is_file():
        pytest.skip(
            "the device kit is not prepared here (.kit/pack, .kit/wheels-here): run `make device-kit`"
        )
    # No network and no other package source than the kit: pip's configured indexes and find-links are dropped.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    venv = tmp_path / "venv"
    base_python = Path(sys.base_prefix) / "bin" / "python{}.{}".format(*sys.version_info[:2])
    subprocess.run([str(base_python), "-m", "venv", str(venv)], check=True, env=env)
    python = venv / "bin" / "python"
    image = _device_image(tmp_path / "image")
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env)
    (Path(purelib.stdout.strip()) / "device_image.pth").write_text(f"{image}\n")
    missing = _run([str(python), "-c", "import torch, cv2, numpy\n"
                    "for name in ('m2u', 'dlib', 'webdataset'):\n"
                    "    try:\n        __import__(name)\n    except ImportError:\n        print('lacks', name)"], env)  # fmt: skip
    assert missing.returncode == 0, missing.stderr[-2000:]
    assert missing.stdout.split() == ["lacks", "m2u", "lacks", "dlib", "lacks", "webdataset"]

    out = tmp_path / "out"
    env.update(PYTHON=str(python), OUT=str(out), M2U_SITE=str(tmp_path / "site"), M2U_WHEELS=str(wheels_here))
    command = ["bash", "benchmarks/device_run.sh", "--rehearsal", "--budget", "240", "--check-seconds", "90",
               "--check-steps", "env,train-gan", "--eval-seconds", "60", "--package-seconds", "30",
               "--workers", "1", "--batch-size", "2", "--max-steps", "3", "--val-batches", "1",
               "--max-test-samples", "8", "--work", str(tmp_path / "work")]  # fmt: skip
    done = _run(command, env)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]

    # What comes back from a device: at most 8 plain files, at most 2 folders down, each under 16 MiB.
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files)
    assert all(p.stat().st_size < 16 * 2**20 for p in files)
    names = {p.relative_to(out).as_posix() for p in files}
    package = device_kit.PACKAGE_NAME
    assert {"device_run.json", "gpu_check.json", "log.txt", f"{package}.tar"} <= names
    with tarfile.open(out / f"{package}.tar") as tar:
        members = set(tar.getnames())
    assert {f"{package}/{name}" for name in ("generator.safetensors", "mseg.safetensors", "MODEL_CARD.md",
            "card.json", "checksums.json")} == members  # fmt: skip
    report = json.loads((out / "device_run.json").read_text())
    assert "error" not in report
    assert set(report["phases"]) == {"preflight", "gpu_check", "training", "evaluation", "package"}
    assert report["preflight"]["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    for network in ("mseg", "gan"):
        figures = report["training"][network]
        # The clock or --max-steps stops each network; the wait share is a share of its training time.
        assert 1 <= figures["steps"] <= 3 and 0 <= figures["data_wait_share"] <= 1, figures
    comparison = report["evaluation"]["versus_shipped_128"]
    assert comparison["new_256_at_256"]["samples"] == 8 and comparison["shipped_128_at_128"]["psnr"] > 0
    assert json.loads((out / "gpu_check.json").read_text())["gpu_found"] is False
    assert "device_run: wheels installed" in (out / "log.txt").read_text()


def test_device_run_help_and_a_missing_kit_create_nothing(tmp_path):
    """bash benchmarks/device_run.sh --help prints its usage and exits 0; bad options and a missing kit exit 2; none
    of them makes $OUT (default runs/device), which is made only once the options and the kit are checked."""
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "out"),
        "M2U_KIT": str(tmp_path / "nokit"),
    }
    default_out = REPO / "runs" / "device"
    existed = default_out.exists()

    def run(*args: str, **overrides: str) -> subprocess.CompletedProcess:
        command = ["bash", str(REPO / "benchmarks" / "device_run.sh"), *args]
        return subprocess.run(command, env={**env, **overrides}, capture_output=True, text=True, timeout=120)

    shown = run("--help")
    assert shown.returncode == 0, shown.stderr
    assert "usage: bash benchmarks/device_run.sh" in shown.stdout and "--budget" in shown.stdout
    assert run("--budgt", "5").returncode == 2  # device_kit.py run's parser refuses it
    missing = run("--budget", "5")
    assert missing.returncode == 2 and "no kit at" in missing.stderr
    assert not (tmp_path / "out").exists()
    without_out = {k: v for k, v in env.items() if k != "OUT"}
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "device_run.sh"), "--help"], env=without_out, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and default_out.exists() == existed


def test_a_kit_prepared_by_another_mask_engine_is_not_reused(tmp_path):
    """prepare keeps .kit/source and .kit/pack from an earlier run: one drawn by another mask engine (a dataset
    from before render versions counts as the first) would train version-N masks against version-1 test pairs."""
    from m2u.masking.render import RENDER_VERSION

    source, pack = tmp_path / "source", tmp_path / "pack"
    source.mkdir()
    (source / "stats.json").write_text(json.dumps({"arguments": {"mask_engine": "m2u"}}))
    with pytest.raises(
        SystemExit, match=rf"drawn by mask engine version 1, and this m2u draws version {RENDER_VERSION}"
    ):
        device_kit.stale_engine(source, pack)
    (source / "stats.json").write_text(
        json.dumps({"arguments": {"mask_engine": "m2u"}, "render_version": RENDER_VERSION})
    )
    device_kit.stale_engine(source, pack)  # the current engine's source, no pack yet: kept
    pack.mkdir()
    (pack / "pack.json").write_text(json.dumps({"format": 1, "size": 64, "store_size": 48}))
    with pytest.raises(SystemExit, match=r"pack was drawn by mask engine version 1"):
        device_kit.stale_engine(source, pack)


def test_a_kit_prepared_at_other_sizes_is_not_reused(tmp_path):
    """prepare keeps .kit/source and .kit/pack: `prepare --size 128` over a 256 kit (the real-mask M-Seg run wants
    128) kept the 256 pack and said nothing."""
    import argparse

    source, pack = tmp_path / "source", tmp_path / "pack"
    source.mkdir()
    (source / "stats.json").write_text(json.dumps({"arguments": {"size": 256}}))
    asked = argparse.Namespace(size=128, store_size=128)
    with pytest.raises(SystemExit, match=r"source was prepared with size 256, and this prepare asks for 128"):
        device_kit.other_sizes(asked, source, pack)
    device_kit.other_sizes(argparse.Namespace(size=256, store_size=128), source, pack)  # the same size: kept
    pack.mkdir()
    (pack / "pack.json").write_text(json.dumps({"store_size": 256}))
    with pytest.raises(
        SystemExit, match=r"pack was prepared with store size 256, and this prepare asks for 128"
    ):
        device_kit.other_sizes(argparse.Namespace(size=256, store_size=128), source, pack)


@pytest.mark.parametrize(
    "extra",
    [
        ["--low-res", "0.3"],  # the augmentation's share without the augmentation
        ["--augment", "--low-res", "1.5"],
        ["--init-from", "inference/pretrained/m2unet-celeba-128", "--width-multiplier", "0.5"],
        ["--init-from", "no/such/package"],
    ],
)
def test_run_options_that_would_be_ignored_or_are_out_of_range_are_refused(extra, capsys):
    with pytest.raises(SystemExit) as refused:
        device_kit.parse_args(["run", *extra])
    assert refused.value.code == 2 and "error:" in capsys.readouterr().err

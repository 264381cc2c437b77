"""Each per-file command finds its inputs once: the folder is scanned one time, and what the scan passed over (a
file without an image suffix) is still said, from that same scan."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import m2u.core.inputs as inputs
from m2u.datasets.cli import main as make_dataset_main
from m2u.inference.cli import unmask_main
from m2u.masking.cli import main as mask_main

SKIPPED = "1 file(s) in the input folders have no image suffix and were not read (.txt 1)"


@pytest.fixture
def folder(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):  # small pictures without a face
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(photos / f"p{k}.png")
    (photos / "notes.txt").write_text("not a photo")
    return photos


@pytest.fixture
def scans(monkeypatch):
    """The folders the input discovery walks, one entry per walk."""
    walked = []
    real = inputs._scan_folder

    def counted(folder, *args, **kwargs):
        walked.append(folder)
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(inputs, "_scan_folder", counted)
    return walked


def _check(result, scans, folder):
    assert scans == [folder], f"the input folder was scanned {len(scans)} times"
    assert SKIPPED in result.output, result.output


def test_m2u_mask_discovers_once(folder, scans, tmp_path):
    result = CliRunner().invoke(mask_main, [str(folder), "-o", str(tmp_path / "out"), "--quiet"])
    assert (tmp_path / "out" / "report.csv").is_file(), result.output
    _check(result, scans, folder)


def test_m2u_make_dataset_discovers_once(folder, scans, tmp_path):
    args = [
        str(folder),
        "-o",
        str(tmp_path / "ds"),
        "--mask-engine",
        "synthetic",
        "--workers",
        "0",
        "--quiet",
    ]
    result = CliRunner().invoke(make_dataset_main, args)
    assert (tmp_path / "ds" / "manifest.parquet").is_file(), result.output
    _check(result, scans, folder)


def test_m2u_unmask_discovers_once(folder, scans, tmp_path, tiny_models):
    mseg, generator = tiny_models
    args = ["--mseg", str(mseg), "--generator", str(generator), "-o", str(tmp_path / "out"), "--quiet"]
    result = CliRunner().invoke(unmask_main, [*args, "--device", "cpu", str(folder)])
    assert (tmp_path / "out" / "report.csv").is_file(), result.output
    _check(result, scans, folder)

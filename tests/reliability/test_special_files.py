"""FIFOs, device files and symbolic links to them are error rows, found before any byte is read: no tool hangs on
a FIFO or reads /dev/zero until the memory is gone. Every test has a timeout: a regression hangs, then fails."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from m2u.core.imageio import ImageReadError, read_image, read_input_bytes
from m2u.core.inputs import discover, probe
from m2u.datasets.cli import main as make_dataset_main
from m2u.datasets.layout import read_manifest
from m2u.inference.cli import unmask_main
from m2u.masking.cli import main as mask_main

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform"),
]
DEVICE = Path("/dev/zero")


def _special_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder with one good picture and every kind of special file under an image name; name -> a word the
    reason must hold."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((48, 48, 3), 90, np.uint8)).save(folder / "plain.png")
    os.mkfifo(folder / "fifo.jpg")
    os.symlink(folder / "fifo.jpg", folder / "link-to-fifo.png")
    expected = {"fifo.jpg": "FIFO", "link-to-fifo.png": "FIFO"}
    if DEVICE.exists():
        os.symlink(DEVICE, folder / "zero.png")
        expected["zero.png"] = "device"
    return folder, expected


def test_discovery_reports_special_files_without_opening_them(tmp_path):
    folder, expected = _special_folder(tmp_path)
    found = {e.path.name: e.problem for e in discover([folder]).entries}
    assert found.pop("plain.png") == ""
    assert set(found) == set(expected)
    for name, word in expected.items():
        assert word in found[name], (name, found[name])


def test_readers_refuse_special_files_at_once(tmp_path):
    folder, expected = _special_folder(tmp_path)
    for name in expected:
        start = time.monotonic()
        for reader in (read_image, read_input_bytes):
            with pytest.raises(ImageReadError, match="not a regular file"):
                reader(folder / name)
        assert time.monotonic() - start < 5
    # The check is made on the open descriptor too: a file replaced by a FIFO after discovery is refused.
    swapped = folder / "was-a-file.jpg"
    swapped.write_bytes(b"x")
    assert probe(swapped) == ""
    swapped.unlink()
    os.mkfifo(swapped)
    with pytest.raises(ImageReadError, match="FIFO"):
        read_input_bytes(swapped)


def _rows(report: Path, column: str) -> dict[str, dict[str, str]]:
    with report.open(newline="") as handle:
        return {Path(r[column]).name: r for r in csv.DictReader(handle)}


def test_m2u_make_dataset_gives_special_files_error_rows(tmp_path):
    folder, expected = _special_folder(tmp_path)
    # A list file naming the FIFO and the device directly, besides the folder.
    listing = tmp_path / "list.txt"
    listing.write_text(f"{folder / 'fifo.jpg'}\n{DEVICE if DEVICE.exists() else folder / 'fifo.jpg'}\n")
    out = tmp_path / "ds"
    args = [str(folder), str(listing), "-o", str(out), "--mask-engine", "synthetic", "--size", "64"]
    result = CliRunner().invoke(make_dataset_main, [*args, "--workers", "2", "--quiet"])
    assert result.exit_code == 1, result.output  # nothing had a face: "no pair was written"
    rows = {Path(r["source"]).name: r for r in read_manifest(out / "manifest.parquet").to_dict("records")}
    for name, word in expected.items():
        assert rows[name]["status"] == "error" and word in rows[name]["reason"], rows[name]
        assert pd.isna(rows[name]["source_sha256"])  # never read, so never hashed (a null)
    if DEVICE.exists():
        assert rows["zero"]["status"] == "error" and "device" in rows["zero"]["reason"]
    assert rows["plain.png"]["status"] == "no_face"


def test_m2u_mask_gives_special_files_error_rows(tmp_path):
    folder, expected = _special_folder(tmp_path)
    out = tmp_path / "masked"
    result = CliRunner().invoke(mask_main, [str(folder), "-o", str(out), "--workers", "2", "--quiet"])
    assert result.exit_code == 1, result.output  # special files are error rows: exit code 1
    rows = _rows(out / "report.csv", "path")
    for name, word in expected.items():
        assert rows[name]["status"] == "error" and word in rows[name]["reason"], rows[name]


def test_m2u_unmask_gives_special_files_rows(tmp_path, tiny_models):
    folder, expected = _special_folder(tmp_path)
    out = tmp_path / "restored"
    mseg, generator = tiny_models
    args = ["--mseg", str(mseg), "--generator", str(generator), "-o", str(out), "--quiet", "--device", "cpu"]
    result = CliRunner().invoke(unmask_main, [*args, "--", str(folder)])
    assert result.exit_code == 1, result.output  # unreadable special files: exit code 1
    rows = _rows(out / "report.csv", "input")
    for name, word in expected.items():
        assert rows[name]["status"] == "error" and word in rows[name]["reason"], rows[name]


def test_an_identity_file_or_config_file_that_is_a_fifo_is_refused_at_once(tmp_path):
    from m2u.datasets.sources import read_identity_file
    from m2u.pipelines.config import ConfigError, read_config_file

    os.mkfifo(tmp_path / "ids.txt")
    os.mkfifo(tmp_path / "config.yaml")
    with pytest.raises(ValueError, match="identity_file: .*FIFO"):
        read_identity_file(tmp_path / "ids.txt")
    with pytest.raises(ConfigError, match="FIFO"):
        read_config_file(tmp_path / "config.yaml")

"""File names a file system takes but text does not: a name that is not UTF-8 (Latin-1 bytes, as old cameras and
Windows archives write them) and one near the 255-byte limit. Every tool reads such a photo, writes its outputs
and records it in its report (the name's undecodable bytes as escapes), instead of crashing or dropping it."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from m2u.core.fileio import NAME_MAX_BYTES, fit_stem
from m2u.datasets.cli import main as make_dataset_main
from m2u.datasets.layout import read_manifest
from m2u.inference.cli import unmask_main
from m2u.masking.cli import main as mask_main

from .conftest import _celeba_faces, _encoded, _photo

LATIN1_NAME = os.fsdecode(b"caf\xe9.jpg")  # "café" in Latin-1: not UTF-8
LATIN1_SHOWN = "caf\\udce9.jpg"  # as the reports write it
LONG_NAME = "L" * 240 + ".jpg"


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("odd") / "in"
    folder.mkdir()
    faces = _celeba_faces(1)
    data = _encoded(faces[0] if faces else _photo((64, 64)), "JPEG", quality=95)
    for name in (LATIN1_NAME, LONG_NAME, "plain.jpg"):
        (folder / name).write_bytes(data)
    return folder


def _report(path: Path, column: str) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:  # valid UTF-8 whatever the names
        return {Path(row[column]).name: row for row in csv.DictReader(handle)}


def test_fit_stem_cuts_only_what_does_not_fit_and_keeps_long_names_distinct():
    assert fit_stem("photo") == "photo"
    long_a, long_b = "é" * 150 + "a", "é" * 150 + "b"  # 301 bytes each, one start
    cut_a, cut_b = fit_stem(long_a), fit_stem(long_b)
    assert cut_a != cut_b and cut_a.startswith("éé")
    assert len(os.fsencode(cut_a)) + 64 + len("..12345678.tmp") <= NAME_MAX_BYTES  # ".<name>.<hex>.tmp"
    assert cut_a.encode("utf-8")  # cut between letters, never inside one


def test_m2u_mask_writes_and_reports_odd_names(odd_folder, tmp_path):
    out = tmp_path / "masked"
    result = CliRunner().invoke(mask_main, [str(odd_folder), "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = _report(out / "report.csv", "path")
    assert set(rows) == {LATIN1_SHOWN, LONG_NAME, "plain.jpg"}
    assert len({row["status"] for row in rows.values()}) == 1  # the same photo: the same outcome
    if rows["plain.jpg"]["status"] == "ok":
        written = {p.name for p in out.iterdir()}
        assert any(n.startswith(os.fsdecode(b"caf\xe9_")) for n in written)  # the name's own bytes
        assert any(n.startswith("L" * 100) for n in written)
        # a rerun may replace them: their names were recorded as m2u's, bytes and all
        again = CliRunner().invoke(mask_main, [str(odd_folder), "-o", str(out), "--quiet"])
        assert again.exit_code == 0, again.output


def test_m2u_make_dataset_builds_and_records_odd_names(odd_folder, tmp_path):
    out = tmp_path / "dataset"
    args = [str(odd_folder), "-o", str(out), "--mask-engine", "synthetic", "--workers", "1", "--size", "64"]
    result = CliRunner().invoke(make_dataset_main, [*args, "--quiet"])
    assert result.exit_code in (0, 1), result.output  # 1 only when no face was found (no pair)
    manifest = read_manifest(out)
    assert {Path(s).name for s in manifest["source"]} == {LATIN1_SHOWN, LONG_NAME, "plain.jpg"}
    assert manifest["key"].is_unique and (manifest["status"] != "error").all()
    rerun = CliRunner().invoke(
        make_dataset_main, [*args, "--quiet"]
    )  # resumes: the inputs' hashes still match
    assert rerun.exit_code == result.exit_code, rerun.output


def test_m2u_unmask_reports_odd_names(odd_folder, tiny_models, tmp_path):
    mseg, generator = tiny_models
    out = tmp_path / "unmasked"
    options = ["--mseg", str(mseg), "--generator", str(generator), "-o", str(out), "--size", "64", "--quiet"]
    result = CliRunner().invoke(unmask_main, [str(odd_folder), *options, "--all-faces"])
    assert result.exit_code == 0, result.output
    rows = _report(out / "report.csv", "input")
    assert set(rows) == {LATIN1_SHOWN, LONG_NAME, "plain.jpg"}
    assert len({row["status"] for row in rows.values()}) == 1


@pytest.mark.parametrize("tool", ["m2u-mask", "m2u-unmask", "m2u-make-dataset"])
def test_a_dash_for_standard_input_is_told_what_to_give_instead(tmp_path, tiny_models, tool, monkeypatch):
    """`ls *.jpg | m2u-unmask - -o out` said only "input '-' does not exist": the line now says inputs are not read
    from standard input and to give a list file, for every command that takes INPUTS (m2u.core.inputs)."""
    monkeypatch.chdir(tmp_path)  # no file named '-' here
    mseg, generator = tiny_models
    command, extra = {
        "m2u-mask": (mask_main, []),
        "m2u-unmask": (unmask_main, ["--mseg", str(mseg), "--generator", str(generator)]),
        "m2u-make-dataset": (make_dataset_main, []),
    }[tool]
    result = CliRunner().invoke(command, ["-", "-o", str(tmp_path / "out"), *extra], input="a.jpg\n")
    assert result.exit_code == 2, result.output
    assert "inputs are not read from standard input; write the paths into a list file" in result.output
    assert not (tmp_path / "out").exists()

"""m2u-mask, m2u-make-dataset and m2u-unmask find the same inputs by the same rules (m2u.core.inputs): folders
searched recursively, globs, list files, hidden files passed over and counted, files without an image suffix
counted, every entry a row."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from m2u.datasets.cli import main as make_dataset_main
from m2u.datasets.layout import read_manifest
from m2u.inference.cli import unmask_main
from m2u.masking.cli import main as mask_main


def _inputs(tmp_path: Path) -> tuple[list[str], set[str]]:
    """Arguments of every kind, and the files they must give (absolute paths)."""
    folder, other = tmp_path / "photos", tmp_path / "more"
    wanted = []
    for name in ("a.png", "sub/b.jpg", ".hidden/c.png", ".d.png", "notes.txt"):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 40, 3), 80, np.uint8)).save(path, format="PNG")
        if not any(part.startswith(".") for part in Path(name).parts) and path.suffix != ".txt":
            wanted.append(path)
    for name in ("g1.png", "g2.png", "listed.png"):
        other.mkdir(exist_ok=True)
        Image.fromarray(np.full((40, 40, 3), 20, np.uint8)).save(other / name)
    wanted += [other / "g1.png", other / "g2.png", other / "listed.png", other / "missing.png"]
    listing = tmp_path / "list.txt"
    listing.write_text("# a comment\nmore/listed.png\nmore/missing.png\n")
    arguments = [str(folder), str(other / "g*.png"), str(listing)]
    return arguments, {str(p.resolve()) for p in wanted}


def _report(path: Path, column: str) -> set[str]:
    with path.open(newline="") as handle:
        return {str(Path(row[column]).resolve()) for row in csv.DictReader(handle)}


def test_the_three_tools_find_the_same_inputs(tmp_path, tiny_models):
    arguments, wanted = _inputs(tmp_path)
    skipped = "2 image file(s) in the input folders are hidden"

    masked = CliRunner().invoke(mask_main, [*arguments, "-o", str(tmp_path / "m"), "--quiet"])
    assert masked.exit_code == 1, masked.output  # one unreadable input
    assert _report(tmp_path / "m" / "report.csv", "path") == wanted
    assert skipped in masked.output and "(.txt 1)" in masked.output

    args = [*arguments, "-o", str(tmp_path / "d"), "--mask-engine", "synthetic", "--size", "64", "--quiet"]
    built = CliRunner().invoke(make_dataset_main, args)
    assert built.exit_code == 1, built.output  # no faces: rows only
    sources = set(read_manifest(tmp_path / "d" / "manifest.parquet")["source"])
    assert {str(Path(s).resolve()) for s in sources} == wanted
    assert skipped in built.output

    mseg, generator = tiny_models
    models = ["--mseg", str(mseg), "--generator", str(generator), "--device", "cpu", "--quiet"]
    restored = CliRunner().invoke(unmask_main, [*models, "-o", str(tmp_path / "u"), "--", *arguments])
    assert restored.exit_code == 1, restored.output
    assert _report(tmp_path / "u" / "report.csv", "input") == wanted
    assert skipped in restored.output

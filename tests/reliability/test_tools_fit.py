"""The tools fit together: m2u-mask's output folder goes into m2u-unmask and m2u-make-dataset as it is (its mask
files passed over and counted), m2u-unmask keeps each photo's format, m2u-export defaults to the shipped model,
and the release recipe replaces the shipped model only with --install."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from m2u.core.inputs import discover, is_mask_file
from m2u.datasets.cli import main as make_dataset_main
from m2u.inference.cli import export_main, unmask_main

REPO = Path(__file__).resolve().parents[2]


def _masked_folder(root: Path) -> Path:
    """What m2u-mask writes for two photos (masked JPEG, 0/255 mask PNG, metadata JSON) and its report."""
    folder = root / "masked"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for stem in ("a_surgical", "b_n95"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(folder / f"{stem}.jpg")
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / f"{stem}_mask.png")
        (folder / f"{stem}.json").write_text("{}")
    (folder / "report.csv").write_text("path,status\n")
    # A user's own photo that merely ends in _mask, without m2u-mask's JSON beside it: still a photo.
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(folder / "carnival_mask.png")
    return folder


def test_mask_files_are_recognised_and_counted(tmp_path):
    folder = _masked_folder(tmp_path)
    found = discover([folder])
    names = sorted(e.path.name for e in found.entries)
    assert names == ["a_surgical.jpg", "b_n95.jpg", "carnival_mask.png"]
    assert found.mask_files == 2 and "2 mask file(s) written by m2u-mask" in found.describe_skipped()
    assert is_mask_file(folder / "a_surgical_mask.png") and not is_mask_file(folder / "carnival_mask.png")


def test_m2u_mask_output_feeds_m2u_unmask_and_m2u_make_dataset(tmp_path, tiny_models):
    folder = _masked_folder(tmp_path)
    mseg, generator = tiny_models
    models = ["--mseg", str(mseg), "--generator", str(generator), "--device", "cpu", "-q"]
    result = CliRunner().invoke(unmask_main, [str(folder), "-o", str(tmp_path / "u"), "--aligned", *models])
    assert result.exit_code == 0, result.output
    with (tmp_path / "u" / "report.csv").open(newline="") as handle:
        inputs = sorted(Path(r["input"]).name for r in csv.DictReader(handle))
    assert inputs == ["a_surgical.jpg", "b_n95.jpg", "carnival_mask.png"]  # no mask file "restored"
    assert "2 mask file(s) written by m2u-mask" in result.output

    args = [str(folder), "-o", str(tmp_path / "d"), "--mask-engine", "synthetic", "--size", "64", "-q"]
    built = CliRunner().invoke(make_dataset_main, args)
    assert "2 mask file(s) written by m2u-mask" in built.output, built.output
    import pandas as pd

    sources = {Path(s).name for s in pd.read_parquet(tmp_path / "d" / "manifest.parquet")["source"]}
    assert sources == {"a_surgical.jpg", "b_n95.jpg", "carnival_mask.png"}


def test_m2u_unmask_keeps_each_photos_format_unless_asked(tmp_path, tiny_models):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(photos / "one.jpg", quality=90)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(photos / "two.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(photos / "three.gif")
    mseg, generator = tiny_models
    models = [
        "--mseg",
        str(mseg),
        "--generator",
        str(generator),
        "--device",
        "cpu",
        "-q",
        "--aligned",
        "--all-faces",
    ]
    same = CliRunner().invoke(unmask_main, [str(photos), "-o", str(tmp_path / "same"), *models])
    assert same.exit_code == 0, same.output
    written = {p.name for p in (tmp_path / "same").iterdir() if p.suffix in (".jpg", ".png")}
    assert written == {"one.jpg", "two.png", "three.png"}  # GIF: written as lossless PNG
    assert Image.open(tmp_path / "same" / "one.jpg").format == "JPEG"
    assert Image.open(tmp_path / "same" / "two.png").format == "PNG"
    as_jpg = CliRunner().invoke(
        unmask_main, [str(photos), "-o", str(tmp_path / "jpg"), "--format", "jpg", *models]
    )
    assert as_jpg.exit_code == 0, as_jpg.output
    assert {p.name for p in (tmp_path / "jpg").glob("*.jpg")} == {"one.jpg", "two.jpg", "three.jpg"}
    limited = CliRunner().invoke(
        unmask_main, [str(photos), "-o", str(tmp_path / "l"), "--limit", "1", *models]
    )
    assert limited.exit_code == 0 and "1 files" in limited.output.replace("1 file ", "1 files "), (
        limited.output
    )


def test_m2u_export_defaults_to_the_shipped_model(tmp_path):
    from m2u.inference.pretrained import pretrained_paths

    mseg, generator = pretrained_paths()
    if not mseg.is_file():
        pytest.skip("no shipped model in this checkout")
    result = CliRunner().invoke(export_main, ["onnx", "-o", str(tmp_path), "--static-shape"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "export.json").read_text())
    assert summary["mseg"]["source"] == str(mseg) and summary["generator"]["source"] == str(generator)
    inputs = {t["name"]: t for t in summary["generator"]["inputs"]}
    size = summary["generator"]["image_size"]
    assert inputs["masked"]["shape"] == [1, 3, size, size] and "[-1, 1]" in inputs["masked"]["range"]
    assert "{0, 1}" in inputs["mask"]["range"]
    assert "[-1, 1]" in summary["generator"]["outputs"][0]["range"]


def test_release_recipe_installs_only_when_asked(tmp_path, load_benchmark):
    recipe = load_benchmark("release_recipe")
    package = tmp_path / "work" / "package"
    package.mkdir(parents=True)
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "mseg.safetensors").write_bytes(b"old")
    with pytest.raises(SystemExit, match="not a complete package"):
        recipe.install_package(package, shipped)
    assert (shipped / "mseg.safetensors").read_bytes() == b"old"
    for name in ("mseg.safetensors", "generator.safetensors", "card.json", "MODEL_CARD.md", "checksums.json"):
        (package / name).write_bytes(name.encode())
    recipe.install_package(package, shipped)
    assert (shipped / "mseg.safetensors").read_bytes() == b"mseg.safetensors"
    # Without --package the package goes into the work folder; the shipped model is not a default any more.
    import argparse

    assert (
        recipe.package_folder(argparse.Namespace(work=tmp_path / "w", package=None))
        == tmp_path / "w" / "package"
    )

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


def test_a_file_named_twice_is_one_input_and_an_earlier_runs_outputs_inside_are_not_inputs(tmp_path):
    from m2u.core.fileio import atomic_write_bytes

    photos = tmp_path / "photos"
    photos.mkdir()
    picture = np.full((8, 8, 3), 90, np.uint8)
    Image.fromarray(picture).save(photos / "a.png")
    Image.fromarray(picture).save(photos / "b.png")
    # an earlier run wrote into photos/results (its record says so): masked photos, not bare ones
    atomic_write_bytes(photos / "results" / "a_surgical.png", (photos / "a.png").read_bytes())
    (photos / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(picture).save(photos / "nested" / "deeper" / "c.png")  # a user's own subfolder: read

    found = inputs.discover([str(photos), str(photos / "a.png")])
    assert sorted(e.relative for e in found.entries) == ["a.png", "b.png", "nested/deeper/c.png"]
    said = found.describe_skipped()
    assert "1 file(s) named more than once by the inputs were read once" in said
    assert "1 file(s) in folders an earlier m2u run wrote into (holding .m2u-written)" in said
    again = inputs.discover([str(photos / "nested"), f"{photos}/./nested"])  # one folder, spelt two ways
    assert [e.relative for e in again.entries] == ["deeper/c.png"] and again.repeated == 1
    # given itself, such a folder is read (m2u-unmask on m2u-mask's outputs), its subfolders too: m2u-mask kept
    # the inputs' subfolders and recorded what it wrote in each (they were passed over as earlier runs)
    atomic_write_bytes(photos / "results" / "sub" / "d_surgical.png", (photos / "a.png").read_bytes())
    given = inputs.discover([str(photos / "results")])
    assert [e.relative for e in given.entries] == ["a_surgical.png", "sub/d_surgical.png"]
    assert given.m2u_outputs == 0


def test_a_photo_named_through_a_linked_folder_and_directly_is_one_input(tmp_path):
    """`photos_link photos/a.png` (photos_link -> photos) gave two inputs of one photo: m2u-make-dataset built it
    twice, a duplicate sample. The folder is resolved; a link to a photo stays an input of its own."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, value in (("a.png", 90), ("b.png", 120)):
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(photos / name)
    (tmp_path / "photos_link").symlink_to(photos, target_is_directory=True)
    (photos / "alias.png").symlink_to(photos / "a.png")
    found = inputs.discover(
        [str(tmp_path / "photos_link"), str(photos / "a.png"), f"{photos}/../photos/b.png"]
    )
    assert [e.relative for e in found.entries] == ["a.png", "alias.png", "b.png"]
    assert found.repeated == 2
    assert "2 file(s) named more than once by the inputs were read once" in found.describe_skipped()


def test_jfif_and_jpe_photos_are_found_and_m2us_own_locks_are_not_counted(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jfif", "b.jpe", "c.jpg"):
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(photos / name, format="JPEG")
    (photos / ".m2u-unmask.lock").write_bytes(b"")  # an earlier run wrote into this folder itself
    found = inputs.discover([str(photos)])
    assert sorted(e.relative for e in found.entries) == ["a.jfif", "b.jpe", "c.jpg"]
    assert found.describe_skipped() == ""


def test_an_empty_or_folder_entry_of_a_list_file_is_an_error_row_never_a_crash_nor_a_file_named_none(
    tmp_path,
):
    """A Parquet null became a file named "None"; an empty CSV cell, "." or "/" crashed m2u-mask (a path with no
    name to write outputs by). Each is now a row of its own with its reason, beside the photos listed."""
    import pandas as pd

    folder = tmp_path / "lists"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(folder / "a.png")
    (folder / "None").write_bytes((folder / "a.png").read_bytes())  # what a null would have been read as
    (folder / "l.csv").write_text('path\na.png\n""\n')
    (folder / "l.txt").write_text("a.png\n.\n/\n")
    pd.DataFrame({"path": ["a.png", None]}).to_parquet(folder / "l.parquet")
    for name, reasons in (
        ("l.csv", ["an empty path (row 2 of l.csv)"]),
        ("l.txt", ["not a regular file (a folder)"] * 2),
        ("l.parquet", ["an empty path (row 2 of l.parquet)"]),
    ):
        out = tmp_path / f"out-{name}"
        result = CliRunner().invoke(mask_main, [str(folder / name), "-o", str(out), "-q"])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        rows = (out / "report.csv").read_text().splitlines()[1:]
        assert len(rows) == 1 + len(reasons) and rows[0].startswith(f"{folder / 'a.png'},")
        assert all(reason in row for reason, row in zip(reasons, rows[1:], strict=True)), rows
        assert not any("None" in row for row in rows)


def test_one_path_given_as_a_string_is_one_input_not_its_characters(folder, scans, tmp_path, monkeypatch):
    """`unmask_files("photo.png", ...)` iterated the string: "p", "h", ... and "." (the whole working folder; "/"
    for an absolute path: the whole file system)."""
    from pathlib import Path

    from m2u.core.inputs import discover, find_inputs
    from m2u.datasets.build import BuildConfig, plan_build
    from m2u.datasets.shardcheck import verify_shards
    from m2u.datasets.sources import discover_inputs

    monkeypatch.chdir(folder)
    photo = "p0.png"
    assert [e.path.name for e in discover(photo).entries] == ["p0.png"]
    assert [e.path.name for e in find_inputs(Path(photo), tmp_path / "out").entries] == ["p0.png"]
    assert [e.path.name for e in discover(str(folder)).entries] == ["p0.png", "p1.png"]
    assert scans == [folder]  # the folder given as one string: scanned once, as a folder
    config = BuildConfig(mask_engine="synthetic", size=64, workers=1, progress=False)
    assert [Path(item.source).name for item in discover_inputs(photo)] == ["p0.png"]
    assert len(plan_build(photo, config).items) == 1
    assert list(verify_shards(str(tmp_path / "none.tar"))) == [str(tmp_path / "none.tar")]
    with pytest.raises(TypeError, match="not bytes"):
        discover(b"p0.png")

"""Every tool meets the bad-input corpus (see conftest.py): one row per input with a status and a reason, counts
that balance, no crash, and nothing written for inputs that failed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from m2u.datasets.cli import main as make_dataset_main
from m2u.datasets.layout import SPLITS, read_manifest, split_shards
from m2u.inference.cli import unmask_main
from m2u.masking.cli import main as mask_main

# Per tool: the statuses each kind of input may get.
MASK_STATUSES = {"unreadable": {"error"}, "no_face": {"no_face"}, "face": {"ok"}}
DATASET_STATUSES = MASK_STATUSES
# One status vocabulary (m2u.core.outcome); an unmasked face is left as it is by m2u-unmask (not_masked).
UNMASK_STATUSES = {**MASK_STATUSES, "face": {"ok", "not_masked"}}


def _check_rows(corpus, rows: dict[str, dict[str, str]], allowed: dict[str, set[str]]) -> None:
    assert set(rows) == set(corpus.expected), "every input, and only the inputs, has a row"
    for name, kind in corpus.expected.items():
        row = rows[name]
        assert row["status"] in allowed[kind], (name, kind, row)
        if row["status"] != "ok":
            assert row["reason"].strip(), f"{name}: status {row['status']} without a reason"
    for name in corpus.names("unreadable"):
        # the reason says what is wrong, not a traceback
        assert "Traceback" not in rows[name]["reason"] and "unexpected" not in rows[name]["reason"]


def _read_csv(path: Path, column: str) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    names = [Path(row[column]).name for row in rows]
    assert len(names) == len(set(names)), "an input reported twice"
    return dict(zip(names, rows, strict=True))


def test_m2u_mask_accounts_for_every_input(corpus, tmp_path):
    out = tmp_path / "masked"
    result = CliRunner().invoke(mask_main, [str(corpus.folder), "-o", str(out), "--quiet"])
    assert result.exit_code == 1, result.output  # unreadable inputs: their rows, and exit code 1
    rows = _read_csv(out / "report.csv", "path")
    _check_rows(corpus, rows, MASK_STATUSES)
    total = len(corpus.expected)
    counts = {s: sum(r["status"] == s for r in rows.values()) for s in ("ok", "no_face", "refused", "error")}
    assert sum(counts.values()) == total
    assert f"{total} inputs: {counts['ok']} masked" in result.output
    assert (
        f"{counts['no_face']} without a face, {counts['refused']} refused, {counts['error']} errors"
        in result.output
    )
    assert "1 file(s) in the input folders have no image suffix and were not read (.txt 1)" in result.output
    # outputs exist for the masked inputs and for nothing else
    written = {p.name for p in out.rglob("*.jpg")}
    assert written == {f"{Path(n).stem}_surgical.jpg" for n, r in rows.items() if r["status"] == "ok"}
    for name in corpus.names("face"):
        info = json.loads((out / f"{Path(name).stem}_surgical.json").read_text())
        assert len(info["faces"]) == int(rows[name]["faces"]) >= 1
    if "many-faces.jpg" in rows:
        assert int(rows["many-faces.jpg"]["faces"]) >= 2, "every face of a group photo is masked"


def test_m2u_make_dataset_accounts_for_every_input(corpus, tmp_path):
    out = tmp_path / "dataset"
    args = [str(corpus.folder), "-o", str(out), "--mask-engine", "synthetic", "--workers", "1"]
    result = CliRunner().invoke(make_dataset_main, [*args, "--size", "64", "--shard-size", "4", "--quiet"])
    assert result.exit_code == 1, result.output  # unreadable inputs (and, without faces, no pair)
    manifest = read_manifest(out)
    rows = {Path(row["source"]).name: row for row in manifest.to_dict("records")}
    assert len(rows) == len(manifest)
    _check_rows(corpus, rows, DATASET_STATUSES)
    # keys: unique and webdataset-safe even for "with space"/"with-space", unicode-only names and leading dashes
    assert manifest["key"].is_unique
    assert manifest["key"].str.fullmatch(r"[a-z0-9][a-z0-9_-]*").all()
    a, b = corpus.duplicates
    assert rows[a]["source_sha256"] == rows[b]["source_sha256"] and rows[a]["key"] != rows[b]["key"]
    # counts balance: manifest = stats = shard contents
    stats = json.loads((out / "stats.json").read_text())
    assert stats["inputs"] == len(corpus.expected) == sum(stats["counts"]["by_status"].values())
    assert stats["counts"]["by_status"]["ok"] == len(corpus.names("face"))
    assert "1 file(s) in the input folders have no image suffix and were not read (.txt 1)" in result.output
    stored = sorted(
        member.split(".", 1)[0]
        for split in SPLITS
        for shard in split_shards(out, split)
        for member in _tar_names(shard)
        if member.endswith(".json")
    )
    assert stored == sorted(manifest.loc[manifest["status"] == "ok", "key"])
    assert not list(out.rglob("*.tmp"))


def _tar_names(path: Path) -> list[str]:
    import tarfile

    with tarfile.open(path) as tar:
        return tar.getnames()


def test_m2u_unmask_accounts_for_every_input(corpus, tiny_models, tmp_path):
    mseg, generator = tiny_models
    out = tmp_path / "unmasked"
    result = CliRunner().invoke(
        unmask_main,
        [str(corpus.folder), "--mseg", str(mseg), "--generator", str(generator), "-o", str(out)]
        + ["--size", "64", "--quiet"],
    )
    assert result.exit_code == 1, result.output  # unreadable inputs
    rows = _read_csv(out / "report.csv", "input")
    _check_rows(corpus, rows, UNMASK_STATUSES)
    assert f"{len(corpus.expected)} files" in result.output
    assert "1 file(s) in the input folders have no image suffix and were not read (.txt 1)" in result.output
    assert {p.name for p in out.iterdir() if p.suffix in (".png", ".jpg", ".bmp", ".tif", ".webp")} == {
        Path(r["output"]).name for r in rows.values() if r["status"] == "ok"
    }
    assert any(r["status"] in ("ok", "not_masked") for r in rows.values())  # the face photos were read


@pytest.mark.parametrize("tool", ["mask", "unmask"])
def test_a_file_named_like_an_option_is_an_input_after_the_separator(corpus, tiny_models, tmp_path, tool):
    target = corpus.folder / "-leading-dash.png"
    out = tmp_path / "out"
    if tool == "mask":
        result = CliRunner().invoke(mask_main, ["-o", str(out), "--quiet", "--", str(target)])
        column = "path"
    else:
        mseg, generator = tiny_models
        options = ["--mseg", str(mseg), "--generator", str(generator), "-o", str(out), "--quiet"]
        result = CliRunner().invoke(unmask_main, [*options, "--", str(target)])
        column = "input"
    assert result.exit_code == 0, result.output
    assert list(_read_csv(out / "report.csv", column)) == ["-leading-dash.png"]


def test_unreadable_permissions_give_a_reason(corpus):
    from m2u.masking import ImageReadError, read_image

    from .conftest import RUNNING_AS_ROOT, UNREADABLE_NAME

    if RUNNING_AS_ROOT:
        pytest.skip("running as root: a chmod 000 file is still readable, so there is no failure to observe")
    with pytest.raises(ImageReadError, match="ermission"):
        read_image(corpus.folder / UNREADABLE_NAME)


def test_m2u_mask_never_leaves_a_partial_output_under_its_name(corpus, tmp_path, monkeypatch):
    """A crash between writing an output and naming it (here: the rename fails) leaves neither the output nor
    its temporary file; a full disk stops the run instead of failing every later file the same way."""
    import m2u.masking.batch as mask_cli
    from m2u.core.inputs import InputEntry

    faces = sorted(corpus.names("face"))
    if not faces:
        pytest.skip("shared data not available: no face photo to mask")

    def failing_replace(source, target):
        raise OSError(28, "No space left on device")

    import m2u.core.fileio as fileio

    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    out = tmp_path / "masked"
    # A full disk stops the run (every later file would fail the same way; the CLI says it in one line).
    with pytest.raises(OSError, match="No space left"):
        mask_cli.run(
            [(InputEntry(corpus.folder / faces[0], faces[0], str(corpus.folder)), Path(Path(faces[0]).stem))],
            mask_cli.Job(out, mask_cli.MaskConfig(), mask_cli.DetectorConfig(), 0, 10**8),
            workers=1,
            progress=False,
        )
    # Only m2u's record of what it writes there may remain (m2u.core.fileio.commit records an output's name just
    # before the rename, so that a writer killed right after it leaves no file of its own a rerun would refuse).
    left = [p for p in out.rglob("*") if p.is_file() and p.name != fileio.RECORD_NAME]
    assert not left, "nothing partial, no temporary file"

"""m2u-mask end to end: outputs, report.csv for every input, exit codes, determinism."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from m2u.core.inputs import discover
from m2u.masking.batch import output_stems
from m2u.masking.cli import main


def _report(out):
    with (out / "report.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_bad_and_faceless_inputs_get_rows_and_exit_1(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "empty.jpg").write_bytes(b"")
    (src / "text.png").write_text("hello")
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(src / "sub" / "blank.png")
    (src / "notes.txt").write_text("not an image suffix: not an input")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [str(src), "-o", str(out), "--quiet"])
    assert result.exit_code == 1, result.output  # two unreadable inputs: the run went on, and says so
    rows = {r["path"].split("/")[-1]: r for r in _report(out)}
    assert set(rows) == {"empty.jpg", "text.png", "blank.png"}
    assert rows["empty.jpg"]["status"] == "error" and "empty" in rows["empty.jpg"]["reason"]
    assert rows["text.png"]["status"] == "error" and rows["text.png"]["reason"]
    assert rows["blank.png"]["status"] == "no_face"
    assert "3 inputs" in result.output
    # Each input that could not be used is named on stderr, as m2u-unmask names it, not only counted ("2 errors").
    said = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert said == [
        f"error: {src / 'empty.jpg'}: {rows['empty.jpg']['reason']}",
        f"error: {src / 'text.png'}: {rows['text.png']['reason']}",
    ], result.output


def test_an_input_that_gets_no_output_this_run_keeps_an_earlier_runs_outputs(tmp_path, astronaut_portrait):
    """The same output folder again, where photos that were masked before now get no output (a rerun with a
    mistyped --min-score, or the photos changed): the earlier run's outputs were deleted, finished work lost without
    a word. They stay (as m2u-unmask keeps an earlier restoration), each row's reason names its masked photo kept,
    and the run's note counts them."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(astronaut_portrait).save(src / "face.png")
    Image.fromarray(astronaut_portrait).save(src / "other.png")
    assert CliRunner().invoke(main, [str(src), "-o", str(out), "--quiet"]).exit_code == 0
    outputs = sorted(p.name for p in out.iterdir() if p.name.startswith("face_"))
    assert outputs == ["face_surgical.jpg", "face_surgical.json", "face_surgical_mask.png"], outputs
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith(("face_", "other_"))}
    # One replaced by hand with a person's own file (m2u's record still names it): theirs, so the run is refused
    # before anything is written or removed.
    (out / "other_surgical.jpg").unlink()
    (out / "other_surgical.jpg").write_bytes(b"a person's own picture")
    result = CliRunner().invoke(main, [str(src), "-o", str(out), "--quiet", "--min-score", "5"])
    assert (
        result.exit_code == 2 and "other_surgical.jpg exists and is not the file m2u wrote" in result.output
    )
    assert (out / "other_surgical.jpg").read_bytes() == b"a person's own picture"
    (out / "other_surgical.jpg").write_bytes(before["other_surgical.jpg"])  # put back: m2u's own again
    # A score no detection reaches: no output for either photo this time.
    result = CliRunner().invoke(main, [str(src), "-o", str(out), "--quiet", "--min-score", "5"])
    rows = {Path(r["path"]).name: r for r in _report(out)}
    assert rows["face.png"]["status"] == rows["other.png"]["status"] == "no_face", result.output
    assert rows["face.png"]["output"] == ""
    assert rows["face.png"]["reason"].endswith(
        f"{out / 'face_surgical.jpg'} is an earlier run's output, left as it is"
    )
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith(("face_", "other_"))}
    assert after == before  # every earlier output kept, byte for byte
    assert (
        "note: 2 output(s) of an earlier run here are kept, though their inputs were given" in result.output
    )
    assert "not in this report" not in result.output  # they were given: not said as inputs left out


def test_nothing_readable_exits_1(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    result = CliRunner().invoke(main, [str(tmp_path / "a.jpg"), "-o", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 1
    assert _report(tmp_path / "out")[0]["status"] == "error"


def test_bad_options_are_usage_errors(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    result = CliRunner().invoke(
        main, [str(tmp_path / "a.jpg"), "-o", str(tmp_path / "o"), "--mask-type", "balaclava"]
    )
    assert result.exit_code == 2 and "unknown mask type" in result.output


def test_discover_keeps_subfolders_and_deduplicates_names(tmp_path):
    for rel in ("a/x.jpg", "b/x.jpg", "a/y.PNG", "a/z.txt", "b/Y.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = discover((str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "a" / "x.jpg")))
    stems = [s.as_posix() for _, s in output_stems(found.entries)]
    # a/x.jpg, named twice, is one input; b/Y.jpg's outputs and a/y.PNG's are one file on macOS and Windows
    assert stems == ["x", "y", "Y-2", "x-2"]


def test_a_rerun_in_another_order_keeps_each_inputs_output_stem(tmp_path):
    """Equal stems are numbered in input order; an input named by the earlier run's report.csv in OUT keeps its
    stem whatever the order (its outputs are replaced, not another input's), and a new one gets a fresh stem."""
    from m2u.masking.batch import output_paths, write_report

    for rel in ("a/x.jpg", "b/x.jpg", "c/x.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()

    def stems(*folders: str) -> dict[str, str]:
        found = discover([str(tmp_path / f) for f in folders], exclude=[out])
        named = output_stems(found.entries, out)
        return {e.path.parent.name: s.as_posix() for e, s in named}

    first = stems("a", "b")
    assert first == {"a": "x", "b": "x-2"}
    rows = [
        {"path": str(tmp_path / f / "x.jpg"), "status": "ok", "mask_type": mask, "output": str(jpg)}
        for f, stem in first.items()
        for mask in ("cloth", "surgical")
        for jpg in output_paths(out, Path(stem), mask)[:1]
    ]
    write_report(rows, out / "report.csv")
    assert stems("b", "a") == first
    assert stems("c", "b", "a") == {**first, "c": "x-3"}


def test_an_input_not_given_in_the_last_run_keeps_its_stem_from_a_new_input_of_its_name(tmp_path):
    """The last run's report.csv was the only memory: a/x.jpg masked, then b/y.jpg alone, then c/x.jpg took a's
    stem and replaced a's outputs. Every run's stems are kept (write_report adds them to the names ledger)."""
    from m2u.masking.batch import output_paths, write_report

    for rel in ("a/x.jpg", "b/y.jpg", "c/x.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()

    def run(folder: str) -> str:
        found = discover([str(tmp_path / folder)], exclude=[out])
        ((entry, stem),) = output_stems(found.entries, out)
        jpg = output_paths(out, stem, "surgical")[0]
        write_report(
            [{"path": str(entry.path), "status": "ok", "mask_type": "surgical", "output": str(jpg)}],
            out / "report.csv",
        )
        return stem.as_posix()

    assert [run("a"), run("b"), run("c"), run("a"), run("c")] == ["x", "y", "x-2", "x", "x-2"]


@pytest.mark.shared
def test_masks_real_faces_deterministically_with_two_workers(tmp_path, celeba_first):
    src = tmp_path / "in"
    src.mkdir()
    for path in celeba_first(4):
        shutil.copy(path, src / path.name)
    (src / "broken.jpg").write_bytes(celeba_first(1)[0].read_bytes()[:500])
    runs = []
    for name, workers in (("one", "1"), ("two", "2")):
        out = tmp_path / name
        result = CliRunner().invoke(
            main,
            [
                str(src),
                "-o",
                str(out),
                "--seed",
                "5",
                "--workers",
                workers,
                "--mask-type",
                "random",
                "--quiet",
            ],
        )
        assert result.exit_code == 1, result.output  # broken.jpg is an error row
        runs.append(out)
    rows = _report(runs[0])
    assert len(rows) == 5 and sum(r["status"] == "ok" for r in rows) >= 3
    assert [r["status"] for r in rows if r["path"].endswith("broken.jpg")] == ["error"]
    for row in rows:
        if row["status"] != "ok":
            continue
        stem = row["path"].split("/")[-1].rsplit(".", 1)[0]
        files = [f"{stem}_random.jpg", f"{stem}_random_mask.png", f"{stem}_random.json"]
        for f in files:
            # Worker count changes nothing: per-face seeds come from the file name, not the schedule.
            assert (runs[0] / f).read_bytes() == (runs[1] / f).read_bytes()
        mask = np.asarray(Image.open(runs[0] / files[1]))
        photo = Image.open(row["path"])
        assert mask.shape == (photo.height, photo.width) and set(np.unique(mask)) == {0, 255}
        meta = json.loads((runs[0] / files[2]).read_text())
        face = meta["faces"][0]
        assert {"type", "color", "pattern", "anchors", "landmarks", "pose", "seed"} <= set(face)


def test_the_summary_counts_inputs_and_pairs_apart_with_every_mask_type(tmp_path, celeba_first):
    (photo,) = celeba_first(1)
    out = tmp_path / "all"
    result = CliRunner().invoke(main, [str(photo), "-o", str(out), "--mask-type", "all", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = _report(out)
    pairs = len(rows)
    assert pairs > 1 and f"1 inputs ({pairs} input and mask type pairs): {pairs} masked" in result.output
    # each row names the photo it wrote (names may carry -2: the report is how a row finds its files)
    outputs = [Path(row["output"]) for row in rows]
    assert len(set(outputs)) == pairs and all(p.is_file() and p.suffix == ".jpg" for p in outputs)
    assert all(row["mask_type"] in p.name for row, p in zip(rows, outputs, strict=True))


def test_quiet_means_one_summary_line_even_from_the_native_detector(tmp_path, celeba_first):
    import subprocess
    import sys
    from pathlib import Path

    (photo,) = celeba_first(1)
    tool = Path(sys.executable).parent / "m2u-mask"
    done = subprocess.run(
        [str(tool), str(photo), "-o", str(tmp_path / "out"), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "XNNPACK" not in done.stderr and done.stderr.count("\n") == 1, (
        done.stderr
    )  # LiteRT's INFO line gone


def test_the_rows_say_what_the_outputs_cannot_keep_and_a_grey_photo_stays_grey(tmp_path, astronaut_portrait):
    """m2u-mask wrote a transparent PNG's copy as a JPEG on white and an animated GIF's first frame without a word,
    and drew colour masks on black-and-white photos (a pair no camera takes)."""
    import cv2

    from m2u.masking.batch import TRANSPARENCY_LOST

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rgba = np.dstack([astronaut_portrait, np.full((200, 200), 255, np.uint8)])
    rgba[:20, :20, 3] = 0
    Image.fromarray(rgba).save(src / "clear.png")
    frames = [Image.fromarray(astronaut_portrait), Image.fromarray(astronaut_portrait[:, ::-1].copy())]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])
    grey = cv2.cvtColor(astronaut_portrait, cv2.COLOR_RGB2GRAY)
    Image.fromarray(grey).save(src / "grey.png")
    Image.fromarray(astronaut_portrait).save(src / "plain.png")
    assert CliRunner().invoke(main, [str(src), "-o", str(out), "--quiet", "--color", "red"]).exit_code == 0
    rows = {Path(r["path"]).name: r for r in _report(out)}
    assert {name: row["status"] for name, row in rows.items()} == dict.fromkeys(rows, "ok")
    assert rows["clear.png"]["reason"] == TRANSPARENCY_LOST
    assert rows["anim.gif"]["reason"].startswith("frame 1 of 2 only")
    assert rows["plain.png"]["reason"] == rows["grey.png"]["reason"] == ""
    greyed = np.asarray(Image.open(out / "grey_surgical_mask.png")) > 0
    masked = np.asarray(Image.open(out / "grey_surgical.jpg")).astype(int)
    assert greyed.any() and np.abs(masked[..., 0] - masked[..., 2])[greyed].max() <= 3  # JPEG's rounding only
    coloured = np.asarray(Image.open(out / "plain_surgical.jpg")).astype(int)
    assert (
        np.abs(coloured[..., 0] - coloured[..., 2])[greyed].mean() > 50
    )  # red where the colour photo is masked


def test_a_face_whose_mask_would_lie_beyond_the_photos_edge_is_refused_by_m2u_mask_and_the_dataset_build(
    tmp_path, astronaut_portrait
):
    """The astronaut cut a little below the nose tip: BlazeFace still finds the face, and m2u-mask wrote a
    "masked" photo whose mask was a sliver at the bottom edge with its ear loops, the dataset build a pair whose
    mask lay on the aligned crop's border fill (the photo's last row, replicated). Both now refuse the face and say
    why (report.csv, the manifest), and the whole portrait is masked as before."""
    from m2u.datasets.cli import main as dataset_main
    from m2u.datasets.layout import read_manifest

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.ascontiguousarray(astronaut_portrait[:99])).save(src / "cut.png")
    Image.fromarray(astronaut_portrait).save(src / "whole.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [str(src), "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r for r in _report(out)}
    assert rows["whole.png"]["status"] == "ok"
    assert rows["cut.png"]["status"] == "refused", rows["cut.png"]
    assert "of the mask's body lies inside the image" in rows["cut.png"]["reason"]
    assert not (out / "cut_surgical.jpg").exists()
    dataset = tmp_path / "dataset"
    result = CliRunner().invoke(
        dataset_main, [str(src), "-o", str(dataset), "--workers", "0", "--split", "1,0,0", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    manifest = read_manifest(dataset)
    status = dict(zip(manifest["source"].map(lambda s: Path(s).name), manifest["status"], strict=True))
    reasons = dict(zip(manifest["source"].map(lambda s: Path(s).name), manifest["reason"], strict=True))
    assert status == {"whole.png": "ok", "cut.png": "refused"}, manifest
    assert "of the mask's body lies inside the image" in reasons["cut.png"]


def test_a_rerun_stopped_midway_keeps_the_earlier_rows_of_the_inputs_it_did_not_reach(
    tmp_path, astronaut_portrait, monkeypatch
):
    """Ctrl-C during a rerun: its report.csv listed only the inputs it finished, and the earlier run's rows of the
    others were gone, though their outputs (an earlier run's masked photo) stayed in OUT."""
    import os
    import time

    from m2u.masking import batch

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(src / name)
    Image.fromarray(astronaut_portrait).save(src / "c.png")
    config = batch.BatchConfig(workers=0, progress=False)
    batch.mask_files([str(src)], out, config)
    assert {Path(r["path"]).name: r["status"] for r in _report(out)} == {
        "a.png": "no_face",
        "b.png": "no_face",
        "c.png": "ok",
    }
    for path in out.glob("c_*"):  # written well before the rerun, whatever the clock's grain
        os.utime(path, (time.time() - 60, time.time() - 60))
    read = batch._read

    def ctrl_c_at_c(job, masks, file, problem):
        if file.name == "c.png":
            raise KeyboardInterrupt
        return read(job, masks, file, problem)

    monkeypatch.setattr(batch, "_read", ctrl_c_at_c)
    before = _report(out)
    # The files are read a group at a time: the stop at c.png came before a.png and b.png were finished.
    said = "lists the 0 of 3 outputs finished, and the earlier run's rows of 3 it did not reach"
    with pytest.raises(KeyboardInterrupt, match=said):
        batch.mask_files([str(src)], out, config)
    assert _report(out) == before  # the outputs are all the earlier run's, and so are the rows
    assert all(Path(row["output"]).exists() for row in before if row["status"] == "ok")


def test_a_photo_whose_faces_score_below_min_score_says_so(tmp_path, astronaut_portrait):
    """`--min-score 5` on a portrait gave "no face found", as if the photo held none: the row now names the floor the
    detector searched at, so a mistyped score is seen in the report."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(astronaut_portrait).save(src / "face.png")
    result = CliRunner().invoke(main, [str(src), "-o", str(out), "--quiet", "--min-score", "5"])
    (row,) = _report(out)
    assert row["status"] == "no_face", result.output
    assert row["reason"] == "no face found scoring at least --min-score 5 (the detector's own score)"
    assert CliRunner().invoke(main, [str(src), "-o", str(out), "--quiet"]).exit_code == 0
    (row,) = _report(out)
    assert row["status"] == "ok" and row["reason"] == ""


def test_an_image_over_max_pixels_is_told_the_option_that_raises_the_limit(tmp_path):
    """ "image too large: ... exceeds the limit of ..." said nothing of what to do: m2u-mask's row (and its stderr line)
    now names --max-pixels."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(src / "big.png")  # 400 pixels
    result = CliRunner().invoke(main, [str(src), "-o", str(out), "--quiet", "--max-pixels", "100"])
    (row,) = _report(out)
    assert result.exit_code == 1 and row["status"] == "error", result.output
    assert (
        row["reason"]
        == "image too large: 20x20 = 400 pixels exceeds the limit of 100 pixels (--max-pixels raises the limit)"
    )

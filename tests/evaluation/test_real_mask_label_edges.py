"""m2u-eval real-masks on odd labels and runs: transparent labels, index masks, no face against an empty label,
a label status beside the face outcome, and the contact sheet (paths, failed photos, a rerun, a stop midway)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from m2u.core.errors import SettingError
from m2u.evaluation.cli import real_masks_main
from m2u.evaluation.real_masks import RealMaskConfig, evaluate_real_masks, read_label
from m2u.inference.unmask import FaceRestoration

H, W = 40, 30  # every photo and label here: tiny


class _LowerHalf:
    """Restores one face per photo whose crop is the photo itself: its mask is the lower half."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls, self.stop_at = 0, stop_at

    def unmask_with_refusals(self, image):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        mask = np.zeros(image.shape[:2], np.uint8)
        mask[H // 2 :] = 255
        result = image.copy()
        result[H // 2 :] = 0
        matrix = np.array([[1.0, 0, 0], [0, 1.0, 0]])
        face = FaceRestoration(image, mask, result, matrix, 0.5, "fake", 0.9, (0, 0, W, H), "aligned-input")
        return result, [face], []


class _NoFace:
    def unmask_with_refusals(self, image):
        return image.copy(), [], []


def _photo(path: Path, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), value, np.uint8)).save(path)


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "real_masks.csv") as handle:
        return {Path(r["photo"]).name: r for r in csv.DictReader(handle)}


def _transparent_label(path: Path, background: tuple[int, int, int], mask_colour=(255, 255, 255)) -> None:
    """The lower half opaque `mask_colour`, the rest fully transparent `background`."""
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = background
    rgba[H // 2 :, :, :3] = mask_colour
    rgba[H // 2 :, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(path)


@pytest.mark.parametrize(
    "background", [(255, 255, 255), (0, 0, 0)], ids=["transparent-white", "transparent-black"]
)
def test_a_transparent_label_reads_its_opaque_mask_and_never_its_background(tmp_path, background):
    photos, labels = tmp_path / "photos", tmp_path / "labels"
    _photo(photos / "p.png")
    labels.mkdir()
    _transparent_label(labels / "p.png", background)
    read = read_label(labels / "p.png", (H, W))
    assert read[H // 2 :].all() and not read[: H // 2].any()
    summary = evaluate_real_masks(
        [str(photos)], tmp_path / "r", _LowerHalf(), labels, RealMaskConfig(thumb=16)
    )
    assert summary["statuses"] == {"ok": 1} and summary["dice_all_labelled"] == 1.0


def test_a_transparent_label_drawn_dark_is_a_bad_label_and_an_opaque_rgba_label_reads_as_before(tmp_path):
    photos, labels = tmp_path / "photos", tmp_path / "labels"
    for name in ("dark", "opaque"):
        _photo(photos / f"{name}.png")
    labels.mkdir()
    _transparent_label(labels / "dark.png", (255, 255, 255), mask_colour=(0, 0, 0))
    opaque = np.zeros((H, W, 4), np.uint8)
    opaque[..., 3] = 255
    opaque[H // 2 :, :, :3] = 255
    Image.fromarray(opaque, "RGBA").save(labels / "opaque.png")
    evaluate_real_masks([str(photos)], tmp_path / "r", _LowerHalf(), labels, RealMaskConfig(thumb=16))
    rows = _rows(tmp_path / "r")
    assert rows["dark.png"]["status"] == "bad_label" and "drawn dark" in rows["dark.png"]["reason"]
    assert rows["dark.png"]["dice"] == ""
    assert rows["opaque.png"]["status"] == "ok" and float(rows["opaque.png"]["dice"]) == 1.0


def test_an_index_mask_label_is_a_bad_label_and_threshold_0_is_refused(tmp_path):
    photos, labels = tmp_path / "photos", tmp_path / "labels"
    _photo(photos / "p.png")
    labels.mkdir()
    index = np.zeros((H, W), np.uint8)
    index[H // 2 :] = 1
    Image.fromarray(index).save(labels / "p.png")
    summary = evaluate_real_masks(
        [str(photos)], tmp_path / "r", _LowerHalf(), labels, RealMaskConfig(thumb=16)
    )
    row = _rows(tmp_path / "r")["p.png"]
    assert row["status"] == "bad_label" and "only 0 and 1" in row["reason"] and row["dice"] == ""
    assert summary["labelled_photos"] == 0 and summary["dice_all_labelled"] is None
    with pytest.raises(SettingError, match="label_threshold: must be >= 1, got 0"):
        RealMaskConfig(label_threshold=0)
    with pytest.raises(SettingError, match="near_levels: must be <= 254, got 300"):
        RealMaskConfig(near_levels=300)
    result = CliRunner().invoke(
        real_masks_main, [str(photos), "-o", str(tmp_path / "c"), "--label-threshold", "0"]
    )
    assert result.exit_code == 2 and not (tmp_path / "c").exists(), result.output
    assert "--label-threshold" in result.output


def test_no_face_scores_1_against_an_empty_label_and_0_with_remnant_1_against_a_mask(tmp_path):
    photos, labels = tmp_path / "photos", tmp_path / "labels"
    for name in ("empty", "masked"):
        _photo(photos / f"{name}.png")
    labels.mkdir()
    Image.fromarray(np.zeros((H, W), np.uint8)).save(labels / "empty.png")
    half = np.zeros((H, W), np.uint8)
    half[H // 2 :] = 255
    Image.fromarray(half).save(labels / "masked.png")
    evaluate_real_masks([str(photos)], tmp_path / "r", _NoFace(), labels, RealMaskConfig(thumb=16))
    rows = _rows(tmp_path / "r")
    empty, masked = rows["empty.png"], rows["masked.png"]
    assert empty["status"] == masked["status"] == "no_face"
    assert float(empty["dice"]) == 1.0 and float(empty["iou"]) == 1.0 and empty["remnant"] == ""
    assert float(masked["dice"]) == 0.0 and float(masked["iou"]) == 0.0 and float(masked["remnant"]) == 1.0


def test_a_label_status_keeps_the_face_outcome_in_the_reason(tmp_path):
    photos, labels = tmp_path / "photos", tmp_path / "labels"
    for name in ("unlabelled", "index"):
        _photo(photos / f"{name}.png")
    labels.mkdir()
    Image.fromarray(np.ones((H, W), np.uint8)).save(labels / "index.png")
    evaluate_real_masks([str(photos)], tmp_path / "r", _NoFace(), labels, RealMaskConfig(thumb=16))
    rows = _rows(tmp_path / "r")
    assert rows["unlabelled.png"]["status"] == "no_label"
    assert rows["unlabelled.png"]["reason"].startswith("no label ")
    assert rows["index.png"]["status"] == "bad_label" and "only 0 and 1" in rows["index.png"]["reason"]
    for row in rows.values():
        assert row["reason"].endswith("; no face found by the detector"), row


def test_the_sheet_names_photos_by_their_path_and_shows_failed_ones(tmp_path):
    photos = tmp_path / "photos"
    _photo(photos / "a" / "x.png")
    _photo(photos / "b" / "x.png", 120)
    (photos / "broken<1>.jpg").write_bytes(b"not an image")
    evaluate_real_masks([str(photos)], tmp_path / "r", _LowerHalf(), config=RealMaskConfig(thumb=16))
    page = (tmp_path / "r" / "index.html").read_text()
    assert "<small>a/x.png</small>" in page and "<small>b/x.png</small>" in page
    failed = next(row for row in page.split("<tr") if "broken" in row)
    assert "broken&lt;1&gt;.jpg" in failed and "unreadable" in failed and "not an image" in failed
    assert "<img" not in failed


def test_a_rerun_with_fewer_photos_removes_only_the_earlier_cells_m2u_wrote(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "r"
    for name in ("a", "b", "c"):
        _photo(photos / f"{name}.png")
    evaluate_real_masks([str(photos)], out, _LowerHalf(), config=RealMaskConfig(thumb=16))
    assert len(list((out / "sheet").glob("00002_*.png"))) == 3
    mine = [out / "sheet" / "00009_photo.png", out / "sheet" / "notes.txt"]
    for path in mine:
        path.write_text("the user's own file")
    (photos / "b.png").unlink()
    (photos / "c.png").unlink()
    evaluate_real_masks([str(photos)], out, _LowerHalf(), config=RealMaskConfig(thumb=16))
    left = sorted(p.name for p in (out / "sheet").iterdir() if not p.name.startswith("."))
    assert left == [
        "00000_photo.png",
        "00000_predicted.png",
        "00000_restored.png",
        "00009_photo.png",
        "notes.txt",
    ]
    assert all(path.read_text() == "the user's own file" for path in mine)


def test_a_run_stopped_midway_reports_the_photos_it_finished(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "r"
    for name in ("a", "b", "c"):
        _photo(photos / f"{name}.png")
    with pytest.raises(KeyboardInterrupt):
        evaluate_real_masks([str(photos)], out, _LowerHalf(stop_at=2), config=RealMaskConfig(thumb=16))
    assert list(_rows(out)) == ["a.png"]
    assert len((out / "faces.jsonl").read_text().splitlines()) == 1
    page = (out / "index.html").read_text()
    assert "a.png" in page and "stopped: after 1 of 3 photos" in page
    assert json.loads((out / "summary.json").read_text())["stopped"] == "after 1 of 3 photos"


def _report_files(out: Path) -> dict[str, bytes]:
    """Every file of a real-masks report folder (its hidden record and lock aside), by path, with its bytes."""
    return {
        str(path.relative_to(out)): path.read_bytes()
        for path in sorted(out.rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    }


@pytest.mark.parametrize("stop", ["ctrl-c", "full disk"])
def test_a_rerun_stopped_midway_leaves_the_earlier_report_whole(tmp_path, monkeypatch, stop):
    """Ctrl-C during a rerun into a folder holding a finished report replaced its rows, summary and page with the
    stopped run's, and its contact-sheet cells one by one as the rerun went; a full disk while the reports were
    written left some of them new and some old."""
    import errno

    import m2u.evaluation.real_masks as real_masks

    photos, out = tmp_path / "photos", tmp_path / "r"
    for name in ("a", "b", "c"):
        _photo(photos / f"{name}.png")
    evaluate_real_masks([str(photos)], out, _LowerHalf(), config=RealMaskConfig(thumb=16))
    before = _report_files(out)
    assert "sheet/00002_restored.png" in before and "index.html" in before
    _photo(photos / "a.png", 200)  # the rerun's first photo differs: its row and cells would too
    if stop == "ctrl-c":
        with pytest.raises(KeyboardInterrupt):
            evaluate_real_masks([str(photos)], out, _LowerHalf(stop_at=3), config=RealMaskConfig(thumb=16))
    else:

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(real_masks, "_sheet_html", full)  # the page, after the rows and summary
        with pytest.raises(OSError):
            evaluate_real_masks([str(photos)], out, _LowerHalf(), config=RealMaskConfig(thumb=16))
        monkeypatch.undo()
    assert _report_files(out) == before
    assert not list(out.rglob("*.tmp"))  # nothing staged is left
    # The next run replaces it whole.
    evaluate_real_masks([str(photos)], out, _LowerHalf(), config=RealMaskConfig(thumb=16))
    after = _report_files(out)
    assert after.keys() == before.keys() and after["sheet/00000_photo.png"] != before["sheet/00000_photo.png"]


def test_a_photo_failing_after_its_scores_keeps_none_of_them(tmp_path, monkeypatch):
    """A photo whose contact-sheet cell cannot be made (--thumb 30000: a MemoryError) after its Dice was scored
    kept that Dice and its face counts in an `error` row the summary counted as not read."""
    import m2u.evaluation.real_masks as real_masks

    photos, labels = tmp_path / "photos", tmp_path / "labels"
    _photo(photos / "p.png")
    labels.mkdir()
    _transparent_label(labels / "p.png", (0, 0, 0))

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 2.5 GiB")

    monkeypatch.setattr(real_masks, "encode_image", out_of_memory)
    summary = evaluate_real_masks(
        [str(photos)], tmp_path / "r", _LowerHalf(), labels, RealMaskConfig(thumb=16)
    )
    row = _rows(tmp_path / "r")["p.png"]
    assert row["status"] == "error" and row["reason"].startswith("MemoryError")
    figures = ("dice", "iou", "remnant", "remnant_near", "mask_fraction", "mask_probability")
    assert [row[name] for name in figures] == [""] * len(figures)
    assert (row["faces_found"], row["faces_restored"]) == ("0", "0")
    assert (
        summary["readable"] == 0 and summary["labelled_photos"] == 0 and summary["dice_all_labelled"] is None
    )


def test_a_sheet_cell_too_large_is_refused_before_any_work(tmp_path):
    from m2u.core.errors import SettingError

    with pytest.raises(SettingError, match=r"thumb: must be <= 1024, got 30000"):
        RealMaskConfig(thumb=30000)
    _photo(tmp_path / "photos" / "p.png")
    said = CliRunner().invoke(
        real_masks_main, [str(tmp_path / "photos"), "-o", str(tmp_path / "r"), "--thumb", "30000"]
    )
    assert said.exit_code == 2 and "30000 is not in the range 16<=x<=1024" in said.output
    assert not (tmp_path / "r").exists()


def test_files_passed_over_are_said_to_be_in_the_folder_they_are_in(tmp_path):
    """`real-masks IMG --labels IMG/labels -o OUT` said the labels were "inside the output folder"."""
    from m2u.evaluation.real_masks import plan_real_masks

    photos = tmp_path / "img"
    _photo(photos / "p.png")
    for name in ("p.png", "q.png"):
        _photo(photos / "labels" / name)
    _photo(photos / "out" / "old.png")  # an earlier report folder inside the photos' folder
    run = plan_real_masks([str(photos)], photos / "out", photos / "labels")
    assert run.passed_over == [
        "2 file(s) inside the labels folder were not read as inputs; "
        "1 file(s) inside the output folder were not read as inputs"
    ]
    _photo(tmp_path / "labels" / "shots" / "x.png")  # a photo folder inside the labels folder
    run = plan_real_masks([str(tmp_path / "labels" / "shots")], tmp_path / "r", tmp_path / "labels")
    assert run.passed_over == ["1 file(s) inside the photo folder were not read as inputs"]

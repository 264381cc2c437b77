"""m2u-mask takes its photos in groups (issue 28): read, then faces found together (FaceDetector.detect_many), then
masked and written. The faces, the outputs and the report do not depend on the grouping, and a failure of ours on
one photo of a group is that photo's error row alone. On scikit-image's astronaut (public domain, shipped with the
package): runs without ../shared."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from m2u.masking import DetectorConfig, FaceDetector, MaskConfig
from m2u.masking import batch as batch_module
from m2u.masking.batch import BatchConfig, group_size, mask_files


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    """Small portraits (BlazeFace's pass), a large one (the HOG ladder), a faceless one and a turned one."""
    import skimage.data

    image = skimage.data.astronaut()
    (face,) = FaceDetector(DetectorConfig(blazeface_first=False)).detect(image)
    left, top, right, bottom = face.box
    cx, cy, half = (left + right) // 2, (top + bottom) // 2, right - left
    crop = np.ascontiguousarray(image[max(cy - half, 0) : cy + half, max(cx - half, 0) : cx + half])
    small = cv2.resize(crop, (200, 200), interpolation=cv2.INTER_AREA)
    return {
        "a_small": small,
        "b_mirrored": np.ascontiguousarray(small[:, ::-1]),
        "c_faceless": np.full((120, 160, 3), 90, np.uint8),
        "d_large": cv2.resize(crop, (420, 420), interpolation=cv2.INTER_LINEAR),
        "e_turned": np.ascontiguousarray(small[::-1, ::-1]),
        "f_smaller": cv2.resize(crop, (150, 150), interpolation=cv2.INTER_AREA),
    }


def _same_faces(a, b) -> bool:
    return len(a) == len(b) and all(
        (f.box, f.score, f.detector, f.retry, f.problem) == (g.box, g.score, g.detector, g.retry, g.problem)
        and np.array_equal(f.landmarks, g.landmarks)
        for f, g in zip(a, b)
    )


def test_detect_many_finds_in_each_photo_what_it_finds_in_that_photo_alone(photos):
    detector = FaceDetector()
    images = list(photos.values())
    together = detector.detect_many(images)
    alone = [detector.detect_many([image])[0] for image in images]
    assert [len(faces) for faces in together] == [len(faces) for faces in alone]
    assert all(_same_faces(a, b) for a, b in zip(together, alone))
    # The set covers both passes and a photo without a face.
    detectors = {face.detector for faces in together for face in faces}
    assert {"blaze-short", "hog"} <= detectors and together[2] == []
    assert _same_faces(detector.detect(images[0]), together[0])


def _folder(tmp_path, photos) -> str:
    src = tmp_path / "in"
    src.mkdir()
    for name, image in photos.items():
        cv2.imwrite(str(src / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return str(src)


def _outputs(out) -> dict[str, bytes]:
    """Every file m2u-mask wrote in `out`, by name; report.csv's `output` column with `out` itself as OUT."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes().replace(str(out).encode(), b"OUT")
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != ".m2u-written"
    }


def _rows(result, out) -> list[dict]:
    return [{**row, "output": str(row.get("output", "")).replace(str(out), "OUT")} for row in result.rows]


def test_outputs_do_not_depend_on_the_grouping(photos, tmp_path, monkeypatch, detect_many_groups):
    src = _folder(tmp_path, photos)
    config = BatchConfig(mask=MaskConfig(mask_type="surgical"), workers=0, progress=False, seed=3)
    groups = detect_many_groups
    grouped = mask_files([src], tmp_path / "grouped", config)
    assert groups == [len(photos)]  # every readable photo of one task in one group
    groups.clear()
    monkeypatch.setattr(batch_module, "GROUP_PIXELS", 1)  # each photo a group of its own
    single = mask_files([src], tmp_path / "single", config)
    assert groups == [1] * len(photos)
    assert grouped.count("ok") >= 4 and grouped.count("no_face") >= 1 and grouped.count("error") == 0
    assert _rows(grouped, tmp_path / "grouped") == _rows(single, tmp_path / "single")
    assert _outputs(tmp_path / "grouped") == _outputs(tmp_path / "single")  # report.csv included


def test_a_failure_in_one_photo_of_a_group_is_its_error_row_alone(photos, tmp_path, monkeypatch):
    src = _folder(tmp_path, photos)
    detect_many = FaceDetector.detect_many

    def failing(self, images, *args, **kwargs):
        if any(np.array_equal(image, photos["b_mirrored"]) for image in images):
            raise RuntimeError("a bug of ours")
        return detect_many(self, images, *args, **kwargs)

    monkeypatch.setattr(FaceDetector, "detect_many", failing)
    config = BatchConfig(mask=MaskConfig(mask_type="surgical"), workers=0, progress=False)
    result = mask_files([src], tmp_path / "out", config)
    with open(result.report, newline="") as handle:
        rows = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(handle)}
    assert rows["b_mirrored.png"]["status"] == "error"
    assert rows["b_mirrored.png"]["reason"] == "unexpected RuntimeError: a bug of ours"
    assert {rows[f"{name}.png"]["status"] for name in ("a_small", "d_large", "f_smaller")} == {"ok"}
    assert rows["c_faceless.png"]["status"] == "no_face"
    assert (tmp_path / "out" / "a_small_surgical.jpg").is_file()
    assert not (tmp_path / "out" / "b_mirrored_surgical.jpg").exists()


def test_group_size_gives_every_worker_several_tasks():
    assert group_size(1000, 1) == group_size(3, 0) == batch_module.GROUP_FILES == 64
    assert group_size(1000, 2) == 64 and group_size(200, 2) == 25 and group_size(3, 2) == 1


def test_progress_steps_file_by_file_within_a_group(photos, tmp_path, monkeypatch):
    from pathlib import Path

    from m2u.core.parallel import InProcessPool

    src = Path(_folder(tmp_path, photos))
    files = sorted(src.iterdir())
    items = [(f, Path(f.stem), "") for f in files] + [(src / "missing.png", Path("missing"), "")]
    job = batch_module.Job(tmp_path / "out", MaskConfig(mask_type="surgical"), DetectorConfig(), 0, 10**8)
    messages: list[tuple] = []
    steps_before: list[int] = []
    mask_faces = batch_module._mask_faces

    def counting(*args):
        steps_before.append(len(messages))
        return mask_faces(*args)

    monkeypatch.setattr(batch_module, "_mask_faces", counting)
    task = (job, (job.mask_config,), items)
    (rows,) = InProcessPool().imap(batch_module._run_group, [task], on_message=messages.append)
    # One message per file as it is finished (the unreadable one included), with its rows: the progress bar's
    # step, and what a run stopped midway reports as finished.
    assert [m[0] for m in messages] == [batch_module.FILE_DONE] * len(items)
    assert sorted(m[1] for m in messages) == sorted(str(stem) for _, stem, _ in items)
    assert {m[1]: m[2] for m in messages} == {str(stem): row for (_, stem, _), row in zip(items, rows)}
    assert len(rows) == len(items) and rows[-1][0]["status"] == "error"
    assert steps_before == list(range(1, len(files) + 1))  # the unreadable file's, at its reading, then each
    messages.clear()
    steps_before.clear()
    list(
        InProcessPool().imap(
            batch_module._run_group, [(job, (job.mask_config,), items[:-1])], on_message=messages.append
        )
    )
    assert steps_before == list(
        range(len(files))
    )  # each file's step comes as it finishes, not with the group


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"seed": 7.0}, "seed"),  # other bytes than seed 7
        ({"seed": "7"}, "seed"),
        ({"limit": 2.5}, "limit"),  # failed in mask_files slicing the inputs
        ({"mask": {"mask_type": "cloth"}}, "mask"),  # 'dict' object has no attribute 'expand'
        ({"detector": None}, "detector"),
    ],
)
def test_a_batch_config_of_the_wrong_types_is_refused_naming_the_field(bad, field):
    from m2u.core.errors import SettingError
    from m2u.masking.batch import BatchConfig

    with pytest.raises(SettingError, match=f"^{field}: must be"):
        BatchConfig(**bad)


def test_a_contact_sheet_named_with_no_image_suffix_is_refused_before_rendering(tmp_path):
    from click.testing import CliRunner

    from m2u.masking.cli import main

    result = CliRunner().invoke(main, [str(tmp_path), "--contact-sheet", str(tmp_path / "sheet.txt")])
    assert result.exit_code == 2 and "no image format writes '.txt'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "sheet.txt").exists()


def test_outputs_of_an_earlier_run_that_the_report_does_not_list_are_kept_and_said(photos, tmp_path):
    """An input removed between two runs left its outputs in the folder, listed by no report.csv, without a word."""
    from pathlib import Path

    from click.testing import CliRunner

    from m2u.masking.cli import main as mask_main

    src = Path(_folder(tmp_path, {k: photos[k] for k in ("a_small", "b_mirrored")}))
    out = tmp_path / "out"
    config = BatchConfig(MaskConfig(mask_type="surgical"), workers=0, progress=False)
    first = mask_files([str(src)], out, config)
    assert first.count("ok") == 2 and first.earlier == ()
    (src / "b_mirrored.png").unlink()
    again = mask_files([str(src)], out, config)
    assert [p.name for p in again.earlier] == ["b_mirrored_surgical.json"]
    assert (out / "b_mirrored_surgical.jpg").exists()  # finished work: kept
    said = CliRunner().invoke(mask_main, [str(src), "-o", str(out), "-q", "--workers", "0"])
    assert (
        said.exit_code == 0
        and "note: 1 output(s) of an earlier run here are kept but not in this report" in said.output
    )

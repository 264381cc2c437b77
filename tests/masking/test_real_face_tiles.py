"""RealFaceDetector's tiles (RealFaceDetectorConfig.tiles): faces too small for BlazeFace on the whole photo, in a
strip or a crowd, are found on overlapping tiles and added; a portrait is never tiled. On crops of scikit-image's
astronaut (public domain, shipped with the package): runs without ../shared."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from m2u.core.boxes import inside_share
from m2u.core.errors import SettingError
from m2u.masking.masked_faces import RealFaceDetector, RealFaceDetectorConfig

WHOLE_PHOTO_ONLY = RealFaceDetectorConfig()  # tiles are off by default
TILED = RealFaceDetectorConfig(tiles=True)


@pytest.fixture(scope="module")
def portrait(astronaut_portrait) -> np.ndarray:
    return astronaut_portrait


@pytest.fixture
def blaze_calls(monkeypatch) -> list[tuple]:
    """(image shape, model, pad) of every BlazeFace run."""
    import m2u.masking.blazeface as blazeface

    calls, run = [], blazeface.blazeface_detect

    def counted(image, name="full", min_score=0.5, pad=0.0, **kwargs):
        calls.append((image.shape, name, pad))
        return run(image, name, min_score, pad=pad, **kwargs)

    monkeypatch.setattr(blazeface, "blazeface_detect", counted)
    return calls


def _summary(faces) -> list[tuple]:
    return [
        (f.box, f.score, f.detector, f.retry, None if f.keypoints is None else f.keypoints.tolist())
        for f in faces
    ]


def test_a_strip_of_faces_gets_the_faces_the_whole_photo_misses(portrait):
    strip = np.ascontiguousarray(np.hstack([portrait] * 8))  # 200x1600: each face ~6% of the longer side
    whole = RealFaceDetector(WHOLE_PHOTO_ONLY).detect(strip)
    tiled = RealFaceDetector(TILED).detect(strip)
    assert len(whole) < 6 <= len(tiled) <= 8
    # The whole photo's faces stay exactly as they were; the tiles add faces, one per portrait, labelled so.
    assert all(_summary([face])[0] in _summary(tiled) for face in whole)
    added = [f for f in tiled if f.detector.endswith("+tile")]
    assert len(added) == len(tiled) - len(whole) and all(f.detector.startswith("blaze-") for f in added)
    cells = sorted(int((f.box[0] + f.box[2]) / 2 // 200) for f in tiled)
    assert len(set(cells)) == len(cells)  # no face twice
    for face in added:
        assert all(inside_share(face.box, other.box) <= 0.3 for other in tiled if other is not face)
        assert face.retry == (face.score < RealFaceDetectorConfig().tile_sure_score)
        eyes_x = face.keypoints[:2, 0]
        assert face.box[0] <= eyes_x.min() and eyes_x.max() <= face.box[2]  # keypoints in photo coordinates


def test_the_dlib_fallback_waits_for_the_tiles(portrait):
    strip = np.ascontiguousarray(np.hstack([portrait] * 8))
    detector = RealFaceDetector(TILED)
    calls = []

    class _Fallback:
        def detect(self, image):
            calls.append(image.shape)
            return []

    detector._fallback = _Fallback()
    assert detector.detect(strip) and calls == []


@pytest.mark.parametrize("side", [200, 600])
def test_a_portrait_is_never_tiled(portrait, blaze_calls, side):
    image = cv2.resize(portrait, (side, side), interpolation=cv2.INTER_LINEAR)
    whole = RealFaceDetector(WHOLE_PHOTO_ONLY).detect(image)
    runs = len(blaze_calls)
    tiled = RealFaceDetector(TILED).detect(image)
    assert whole and _summary(tiled) == _summary(whole)
    assert len(blaze_calls) == 2 * runs and all(shape == image.shape for shape, _, _ in blaze_calls)


def test_tile_sides_follow_the_network_input_and_skip_small_photos():
    config = RealFaceDetectorConfig()
    assert config.tile_sides(218, 178) == []  # CelebA's crops
    assert config.tile_sides(200, 200) == []
    sides = config.tile_sides(300, 2400)
    # Largest first, each at least 2 * tile_face_share of the one before, the last showing tile_min_face at the
    # useful share, none whose smallest face is taller than the photo.
    assert sides[-1] == round(config.tile_min_face / config.tile_face_share)
    assert all(b >= 2 * config.tile_face_share * a - 1 for a, b in zip(sides, sides[1:]))
    assert all(side * config.tile_face_share <= 300 for side in sides)


@pytest.mark.parametrize(
    "setting, value",
    [
        ("tile_face_share", 0.5),
        ("tile_min_face", 4),
        ("tile_portrait_share", 0.0),
        ("tile_min_passes", 0),
        ("tile_sure_score", 0.5),
        ("tile_max_tiles", 0),
    ],
)
def test_tile_settings_are_checked(setting, value):
    with pytest.raises(SettingError, match=setting):
        RealFaceDetectorConfig(**{setting: value})


def test_m2u_unmask_says_where_tiles_could_find_more_and_takes_them_when_asked(
    portrait, tiny_checkpoints, tmp_path
):
    import csv
    import json

    from click.testing import CliRunner

    from m2u.inference.cli import unmask_main
    from m2u.inference.photos import SMALL_FACES_MAY_HIDE

    cv2.imwrite(str(tmp_path / "strip.png"), np.hstack([portrait] * 8)[..., ::-1])
    models = ["--mseg", str(tiny_checkpoints[0]), "--generator", str(tiny_checkpoints[1])]
    detectors = {}
    for run, extra in (("whole", []), ("tiled", ["--tiles"])):
        result = CliRunner().invoke(
            unmask_main, [str(tmp_path / "strip.png"), "-o", str(tmp_path / run), *models, *extra]
        )
        assert result.exit_code == 0, result.output
        with open(tmp_path / run / "report.csv") as handle:
            (row,) = csv.DictReader(handle)
        hinted = "may hold faces too small to find at once: --tiles" in result.output
        assert hinted == (SMALL_FACES_MAY_HIDE in row["reason"]) == (run == "whole")
        lines = (tmp_path / run / "faces.jsonl").read_text().splitlines()
        detectors[run] = [json.loads(line)["detector"] for line in lines]
    assert len(detectors["tiled"]) > len(detectors["whole"])
    assert any(d.endswith("+tile") for d in detectors["tiled"]) and not any(
        "+tile" in d for d in detectors["whole"]
    )


def test_tiles_are_blazefaces():
    from m2u.inference.unmask import UnmaskConfig

    with pytest.raises(SettingError, match="`detector_model` hog"):
        UnmaskConfig(tiles=True, detector_model="hog")


def test_the_tiles_benchmark_collage_fits_each_photo_in_its_cell(load_benchmark):
    tiles = load_benchmark("tiles")
    photos = [np.full((10, 20, 3), 10 * (k + 1), np.uint8) for k in range(5)]
    sheet = tiles.collage(photos, 2, 30, 40)
    assert sheet.shape == (120, 60, 3)  # 3 rows of 2 cells, the last cell grey
    assert (sheet[80:, 30:] == 128).all()
    # 10x20 fitted into 30x40 (aspect kept): 15 rows of 30 px, centred, grey above and below.
    first = sheet[:40, :30, 0]
    assert (first[12:27] == 10).all() and (first[:12] == 128).all() and (first[27:] == 128).all()

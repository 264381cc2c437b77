"""Where a mask goes: anchors from 68 landmarks, a mesh that follows the jaw, and degenerate-warp checks.

Geometry (all built in a face frame: origin at landmark 27 (top of the nose bridge), x along the line from the
left to the right eye centre, y perpendicular to it pointing towards the chin, unit = inter-ocular distance, so
roll and scale drop out):

- The jaw contour (landmarks 0-16) is pushed outward from the nose tip by `jaw_margin`, so the mask wraps the
  jaw instead of ending exactly on it.
- b (top centre) sits on the nose bridge, `bridge_fraction` of the way from landmark 27 to the nose tip 30.
- The top edge runs from b sideways under each eye, always at least `eye_clearance` below the lowest eyelid
  landmark (36-47), and meets the jaw contour at a (left) and c (right).
- d and f are the pushed-out jaw landmarks 4 and 12 (where the jaw turns towards the chin), e the pushed-out
  chin (landmark 8).

The mask's surface is a Coons patch bounded by four curves: top a→b→c, left side a→d and right side c→f along the
jaw contour, bottom d→e→f along the jaw. Each curve is resampled by arc length per half (so u = 0.5 always lies on
the face's midline: the mesh follows yaw), giving a grid of `rows × cols` points that maps texture space
(u, v) ∈ [0, 1]² to the image. a..f are the six anchors at u ∈ {0, 0.5, 1}, v ∈ {0, 1}, matching the a-f points
of MaskTheFace-style template packs.

A mesh is degenerate when a cell flips orientation (fold-over), collapses (area near zero), or the whole patch has
an implausible area or aspect for the face; `build_mesh` then retries with a smoothed, monotonic jaw contour and
finally raises MaskingError with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Landmark indices of the dlib 68-point scheme.
JAW = slice(0, 17)
LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)
EYES = slice(36, 48)
NOSE_BRIDGE_TOP = 27
NOSE_TIP = 30
NOSTRILS = slice(31, 36)
MOUTH = slice(48, 68)
CHIN = 8
JAW_CORNER_LEFT = 4
JAW_CORNER_RIGHT = 12


class MaskingError(Exception):
    """A face the mask cannot be placed on correctly; `.reason` says why."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class PlacementConfig:
    """Mesh geometry, in units of the inter-ocular distance unless stated."""

    jaw_margin: float = 0.07  # fraction by which the jaw contour is pushed out from the nose tip
    bridge_fraction: float = 0.42  # top centre between landmark 27 (0) and the nose tip 30 (1)
    eye_clearance: float = 0.16  # minimum gap between the lowest eyelid landmark and the mask's top edge
    top_drop: float = 0.06  # how much lower than the bridge the top edge meets the cheeks
    cols: int = 17  # mesh columns (odd: the middle column is the face's midline)
    rows: int = 9
    min_eye_distance_px: float = 6.0  # smaller faces cannot be masked meaningfully
    min_cell_area_ratio: float = 0.02  # a cell smaller than this fraction of the median cell has collapsed
    area_range: tuple[float, float] = (0.7, 4.5)  # patch area / iod², a frontal adult face is about 2
    aspect_range: tuple[float, float] = (0.6, 3.5)  # patch width / height in the face frame


@dataclass(frozen=True)
class Mesh:
    """Image-space grid (rows, cols, 2) for texture coordinates u = col/(cols-1), v = row/(rows-1)."""

    grid: np.ndarray
    anchors: dict[str, tuple[float, float]]
    yaw: float  # -1 (turned to its left, we see the right cheek) .. +1; 0 = frontal
    roll_degrees: float
    eye_distance: float
    fallback: str | None  # None, or the fallback that produced a valid mesh

    @property
    def pose(self) -> str:
        if self.yaw < -0.25:
            return "left"
        if self.yaw > 0.25:
            return "right"
        return "front"


@dataclass(frozen=True)
class FaceFrame:
    origin: np.ndarray
    ex: np.ndarray
    ey: np.ndarray
    scale: float

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        d = (np.asarray(points, dtype=np.float64) - self.origin) / self.scale
        return np.stack([d @ self.ex, d @ self.ey], axis=-1)

    def to_image(self, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64)
        return self.origin + self.scale * (p[..., :1] * self.ex + p[..., 1:2] * self.ey)


def face_frame(landmarks: np.ndarray) -> FaceFrame:
    left_eye = landmarks[LEFT_EYE].mean(axis=0)
    right_eye = landmarks[RIGHT_EYE].mean(axis=0)
    axis = right_eye - left_eye
    scale = float(np.hypot(*axis))
    if not np.isfinite(scale) or scale <= 1e-6:
        raise MaskingError("collapsed landmarks: the eyes coincide")
    ex = axis / scale
    ey = np.array([-ex[1], ex[0]])
    return FaceFrame(landmarks[NOSE_BRIDGE_TOP].astype(np.float64), ex, ey, scale)


def _resample(polyline: np.ndarray, n: int) -> np.ndarray:
    """n points spaced evenly by arc length along a polyline (first and last kept)."""
    seg = np.hypot(*np.diff(polyline, axis=0).T)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    if cum[-1] <= 1e-9:
        return np.repeat(polyline[:1], n, axis=0)
    t = np.linspace(0.0, cum[-1], n)
    return np.stack([np.interp(t, cum, polyline[:, k]) for k in range(2)], axis=-1)


def _crossing(polyline: np.ndarray, y: float) -> tuple[int, np.ndarray]:
    """First point where a polyline (going down the jaw) reaches height y: (segment index, point)."""
    for i in range(len(polyline) - 1):
        y0, y1 = polyline[i, 1], polyline[i + 1, 1]
        if y0 >= y:
            return i, polyline[i].copy()
        if y0 < y <= y1:
            t = (y - y0) / (y1 - y0)
            return i, polyline[i] + t * (polyline[i + 1] - polyline[i])
    return len(polyline) - 2, polyline[-1].copy()


def _side_curve(jaw_half: np.ndarray, top_y: float, corner_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one half of the jaw (ordered from the ear down to the chin): the point at top_y, and the curve from
    there to the corner landmark."""
    i, start = _crossing(jaw_half[: corner_index + 1], top_y)
    curve = np.vstack([start[None], jaw_half[i + 1 : corner_index + 1]])
    return start, curve


def _smooth_jaw(jaw: np.ndarray) -> np.ndarray:
    """Fallback contour: a moving average, then x forced monotonic from ear to ear (undoes crossings)."""
    padded = np.vstack([jaw[:1], jaw[:1], jaw, jaw[-1:], jaw[-1:]])
    kernel = np.array([1.0, 2.0, 3.0, 2.0, 1.0]) / 9.0
    smooth = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(2)], axis=-1)
    smooth[:, 0] = np.maximum.accumulate(smooth[:, 0])
    return smooth


def _coons(top: np.ndarray, bottom: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Coons patch from four boundary curves: top/bottom (cols, 2) left→right, left/right (rows, 2) top→bottom."""
    rows, cols = len(left), len(top)
    u = np.linspace(0.0, 1.0, cols)[None, :, None]
    v = np.linspace(0.0, 1.0, rows)[:, None, None]
    ruled_v = (1 - v) * top[None] + v * bottom[None]
    ruled_u = (1 - u) * left[:, None] + u * right[:, None]
    corners = (
        (1 - u) * (1 - v) * top[0] + u * (1 - v) * top[-1] + (1 - u) * v * bottom[0] + u * v * bottom[-1]
    )
    return ruled_v + ruled_u - corners


def cell_areas(grid: np.ndarray) -> np.ndarray:
    """Signed areas of the two triangles of every cell, shape (rows-1, cols-1, 2)."""
    p00, p01, p10, p11 = grid[:-1, :-1], grid[:-1, 1:], grid[1:, :-1], grid[1:, 1:]

    def tri(a, b, c):
        return 0.5 * ((b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0]))

    return np.stack([tri(p00, p01, p11), tri(p00, p11, p10)], axis=-1)


def check_mesh(frame_grid: np.ndarray, config: PlacementConfig) -> str | None:
    """The reason a face-frame mesh is degenerate, or None when it is fine."""
    if not np.all(np.isfinite(frame_grid)):
        return "non-finite mesh coordinates"
    areas = cell_areas(frame_grid)
    # In the face frame (y down, x left to right) a well-formed grid has positive triangle areas.
    if np.any(areas <= 0):
        return f"fold-over: {int(np.sum(areas <= 0))} mesh triangles flipped"
    median = float(np.median(areas))
    if float(areas.min()) < config.min_cell_area_ratio * median:
        return "collapsed anchors: mesh cells of near-zero area"
    total = float(areas.sum())
    lo, hi = config.area_range
    if not lo <= total <= hi:
        return f"implausible mask area {total:.2f} (expected {lo}..{hi} in eye-distance units squared)"
    width = float(frame_grid[..., 0].max() - frame_grid[..., 0].min())
    height = float(frame_grid[..., 1].max() - frame_grid[..., 1].min())
    aspect = width / max(height, 1e-9)
    lo, hi = config.aspect_range
    if not lo <= aspect <= hi:
        return f"implausible mask aspect {aspect:.2f} (expected {lo}..{hi})"
    return None


def _frame_mesh(lm: np.ndarray, jaw: np.ndarray, config: PlacementConfig) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The Coons-patch grid in face-frame coordinates for a (possibly smoothed) jaw contour."""
    nose_tip = lm[NOSE_TIP]
    jaw = nose_tip + (jaw - nose_tip) * (1.0 + config.jaw_margin)
    b = lm[NOSE_BRIDGE_TOP] + config.bridge_fraction * (nose_tip - lm[NOSE_BRIDGE_TOP])
    left_eye_low = float(lm[LEFT_EYE][:, 1].max()) + config.eye_clearance
    right_eye_low = float(lm[RIGHT_EYE][:, 1].max()) + config.eye_clearance
    b[1] = max(b[1], min(left_eye_low, right_eye_low))
    # Under each eye the top edge keeps its clearance; it meets the jaw a little lower still.
    q_left = np.array([lm[LEFT_EYE][:, 0].mean(), max(b[1] + config.top_drop, left_eye_low)])
    q_right = np.array([lm[RIGHT_EYE][:, 0].mean(), max(b[1] + config.top_drop, right_eye_low)])
    a, left_side = _side_curve(jaw[: CHIN + 1], q_left[1] + config.top_drop, JAW_CORNER_LEFT)
    c, right_side = _side_curve(jaw[::-1][: CHIN + 1], q_right[1] + config.top_drop, 16 - JAW_CORNER_RIGHT)
    half = config.cols // 2 + 1
    # Each half resampled separately, so column `cols // 2` lies on the bridge / the chin.
    top = np.vstack([_resample(np.array([a, q_left, b]), half), _resample(np.array([b, q_right, c]), half)[1:]])
    bottom_left = jaw[JAW_CORNER_LEFT : CHIN + 1]
    bottom_right = jaw[CHIN : JAW_CORNER_RIGHT + 1]
    bottom = np.vstack([_resample(bottom_left, half), _resample(bottom_right, half)[1:]])
    left = _resample(left_side, config.rows)
    right = _resample(right_side, config.rows)
    grid = _coons(top, bottom, left, right)
    anchors = {"a": a, "b": b, "c": c, "d": jaw[JAW_CORNER_LEFT], "e": jaw[CHIN], "f": jaw[JAW_CORNER_RIGHT]}
    return grid, anchors


def estimate_yaw(lm_frame: np.ndarray) -> float:
    """-1..1 from how far the nose tip sits from the middle of the jaw (0 frontal, sign = side it turned to)."""
    left = lm_frame[NOSE_TIP, 0] - lm_frame[2, 0]
    right = lm_frame[14, 0] - lm_frame[NOSE_TIP, 0]
    total = left + right
    if total <= 1e-9:
        return 0.0
    return float(np.clip((left - right) / total, -1.0, 1.0))


def build_mesh(landmarks: np.ndarray, config: PlacementConfig = PlacementConfig()) -> Mesh:
    """The image-space mesh for a face, or MaskingError with the reason it cannot be placed."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (68, 2):
        raise MaskingError(f"expected 68 landmarks of shape (68, 2), got {landmarks.shape}")
    if not np.all(np.isfinite(landmarks)):
        raise MaskingError("landmarks contain NaN or infinite values")
    frame = face_frame(landmarks)
    if frame.scale < config.min_eye_distance_px:
        raise MaskingError(f"face too small: eye distance {frame.scale:.1f} px < {config.min_eye_distance_px} px")
    lm = frame.to_frame(landmarks)
    reason = None
    for fallback, jaw in ((None, lm[JAW]), ("smoothed_jaw", _smooth_jaw(lm[JAW]))):
        grid, anchors = _frame_mesh(lm, jaw, config)
        reason = check_mesh(grid, config)
        if reason is None:
            break
    else:
        raise MaskingError(reason)
    roll = float(np.degrees(np.arctan2(frame.ex[1], frame.ex[0])))
    return Mesh(
        grid=frame.to_image(grid),
        anchors={k: tuple(float(x) for x in frame.to_image(v)) for k, v in anchors.items()},
        yaw=estimate_yaw(lm),
        roll_degrees=roll,
        eye_distance=frame.scale,
        fallback=fallback,
    )

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

Before that, jaw points 1-15 are pushed out until the contour clears the nostrils and mouth by
`feature_clearance` (on turned faces the far side's jaw landmarks sit on the mouth).

First of all the face's proportions must fit a template (`PLAUSIBLE_PROPORTIONS`: brows above the eyes, nose tip,
mouth and chin below them in that order, jaw and mouth corners left to right, ranges measured on 529 faces); an
implausible face (upside-down or mirrored labelling, landmarks fitted to something else) is refused with the
measure that failed.

A mesh is degenerate when a cell flips orientation (fold-over), collapses (area near zero), or the whole patch has
an implausible area (relative to the face outline) or aspect; `build_mesh` then retries with the corners d and f
where diagonal rays from the mouth centre meet the jaw, then also with a smoothed, monotonic jaw contour, and
finally raises MaskingError with the reason. The attempt used is recorded as `Mesh.fallback`.
"""

from __future__ import annotations

import functools
import math
import reprlib
from dataclasses import dataclass

import numpy as np

from m2u.core.checks import check_at_least, check_types
from m2u.core.errors import SettingError

# Landmark indices of the dlib 68-point scheme.
JAW = slice(0, 17)
LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)
EYES = slice(36, 48)
INNER_EYE_CORNERS = [39, 42]
NOSE_BRIDGE_TOP = 27
NOSE_TIP = 30
NOSTRILS = slice(31, 36)
MOUTH = slice(48, 68)
MOUTH_LEFT, MOUTH_RIGHT = 48, 54
BROWS = slice(17, 27)
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

    # The four below and height_spread put the mask where real masks sit: measured against the hand-drawn labels
    # of real masked faces by benchmarks/mask_placement.py, the earlier 0.07 / 0.42 / 0.16 / 0.06 (render version
    # 1) drew masks a tenth of an eye distance lower on the nose and cheeks than real ones, and narrower; version
    # 2's 0.11 / 0.2 / 0.06 / 0.03 met the real medians with half their spread; version 3 draws each face's
    # height (height_spread) around a middle set a little higher (bridge_fraction 0.14, eye_clearance 0.03), so
    # that the medians stay near the real ones (chosen on the benchmark's 600 CelebA faces).
    jaw_margin: float = 0.11  # fraction by which the jaw contour is pushed out from the nose tip
    bridge_fraction: float = 0.14  # top centre between landmark 27 (0) and the nose tip 30 (1)
    eye_clearance: float = 0.03  # minimum gap between the lowest eyelid landmark and the mask's top edge
    top_drop: float = 0.03  # how much lower than the bridge the top edge meets the cheeks
    # How much higher or lower than the above each face's mask is worn (render version 3): a shift of the top edge,
    # drawn per face (`draw_top_shift`) from a normal scaled by the first value above the middle and the second
    # below it, cut at 2.5 of them; worn higher only the middle rises (up the bridge), worn lower the whole top
    # edge drops. Real masks sit higher or lower on the nose from face to face: without it m2u's top edges spread
    # half as widely as the real labels (interquartile range at the nose 0.11 against 0.23 eye distances), and the
    # real ones reach further down than up.
    height_spread: tuple[float, float] = (0.08, 0.16)
    # Minimum distance from the jaw contour out past the nose and mouth (turned faces put far-side jaw landmarks
    # on top of the mouth; the contour is pushed out until the mask covers nose and mouth with this margin).
    feature_clearance: float = 0.15
    cols: int = 17  # mesh columns (odd: the middle column is the face's midline)
    rows: int = 9
    min_eye_distance_px: float = 6.0  # smaller faces cannot be masked meaningfully
    min_cell_area_ratio: float = 0.01  # a cell smaller than this fraction of the median cell has collapsed
    # Patch area over the area of the face outline (jaw + brows): 0.57..0.92 on CelebA-500 and the extras.
    area_range: tuple[float, float] = (0.4, 1.1)
    aspect_range: tuple[float, float] = (
        0.8,
        2.5,
    )  # patch width / height in the face frame: 1.11..1.80 measured

    def __post_init__(self) -> None:
        check_types(self)
        # Margins and clearances push the mask outwards (past the jaw, below the eyes, past nose and mouth):
        # negative ones would pull it onto the features they keep it clear of.
        check_at_least(
            self,
            {
                "jaw_margin": 0.0,
                "eye_clearance": 0.0,
                "top_drop": 0.0,
                "feature_clearance": 0.0,
                "cols": 3,
                "rows": 2,
                "min_eye_distance_px": 1.0,
                "min_cell_area_ratio": 0.0,
            },
        )
        # jaw_margin 1 already doubles the jaw's distance from the nose tip; bridge_fraction is a share of the
        # span from landmark 27 to the nose tip; a cell ratio of 1 would call every mesh but a uniform one collapsed.
        for name, high, closed in (
            ("jaw_margin", 1.0, True),
            ("bridge_fraction", 1.0, True),
            ("min_cell_area_ratio", 1.0, False),
        ):
            value = getattr(self, name)
            if not (0.0 <= value <= high if closed else 0.0 <= value < high):
                span = f"0..{high:g}" if closed else f"[0, {high:g})"
                raise SettingError(name, f"must be within {span}, got {value!r}")
        if self.cols % 2 == 0:
            raise SettingError(
                "cols", f"must be odd (the middle column is the face's midline), got {self.cols}"
            )
        spread = tuple(self.height_spread)
        if len(spread) != 2 or min(spread) < 0:
            raise SettingError(
                "height_spread", f"must be (above, below), each >= 0, got {self.height_spread!r}"
            )
        object.__setattr__(self, "height_spread", spread)  # a list from a config file: kept hashable
        for name in ("area_range", "aspect_range"):
            low, high = getattr(self, name)
            if not 0 < low < high:
                raise SettingError(name, f"must be (low, high) with 0 < low < high, got {(low, high)}")
            # A list from a config file becomes a tuple: the configuration stays hashable (render caches by it).
            object.__setattr__(self, name, (low, high))


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


@dataclass(frozen=True)
class Mesh:
    """Image-space grid (rows, cols, 2) for texture coordinates u = col/(cols-1), v = row/(rows-1)."""

    grid: np.ndarray
    anchors: dict[str, tuple[float, float]]
    # -1..1, 0 frontal; > 0 when the nose is nearer the image-right jaw edge (the face turned towards image right).
    yaw: float
    roll_degrees: float
    eye_distance: float
    fallback: str | None  # None, or the fallback that produced a valid mesh
    frame: FaceFrame
    top_shift: float = 0.0  # the top edge's shift the mesh was built with (eye distances, > 0 lower)

    @property
    def pose(self) -> str:
        if self.yaw < -0.25:
            return "left"
        if self.yaw > 0.25:
            return "right"
        return "front"


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
    cum = np.empty(len(polyline))
    cum[0] = 0.0
    np.cumsum(seg, out=cum[1:])
    length = cum[-1]
    if length <= 1e-9:
        return np.repeat(polyline[:1], n, axis=0)
    # np.linspace(0, length, n), without its per-call overhead (this runs six times per face).
    t = np.arange(n, dtype=np.float64) * (length / (n - 1))
    t[-1] = length
    out = np.empty((n, 2))
    out[:, 0] = np.interp(t, cum, polyline[:, 0])
    out[:, 1] = np.interp(t, cum, polyline[:, 1])
    return out


def _point_at(polyline: np.ndarray, s: float) -> np.ndarray:
    """The point at fractional index s along a polyline."""
    i = min(math.floor(s), len(polyline) - 2)
    return polyline[i] + (s - i) * (polyline[i + 1] - polyline[i])


def _between(polyline: np.ndarray, s0: float, s1: float) -> np.ndarray:
    """The part of a polyline from fractional index s0 to s1 (either direction), ends interpolated."""
    lo, hi = min(s0, s1), max(s0, s1)
    inner = polyline[math.floor(lo) + 1 : math.ceil(hi)]
    part = np.concatenate([_point_at(polyline, lo)[None], inner, _point_at(polyline, hi)[None]])
    return part if s0 <= s1 else part[::-1]


def _height_index(polyline: np.ndarray, y: float, s_from: float, s_to: float) -> float:
    """Fractional index where the polyline, walked from s_from towards s_to, first reaches height y (or s_from if it
    starts below y, s_to if it never gets there)."""
    step = 1 if s_to > s_from else -1
    s = s_from
    while (s_to - s) * step > 0:
        nxt = s + step
        y0, y1 = _point_at(polyline, s)[1], _point_at(polyline, nxt)[1]
        if y0 >= y:
            return s
        if y0 < y <= y1:
            return s + step * (y - y0) / (y1 - y0)
        s = nxt
    return s_to


def _ray_index(polyline: np.ndarray, origin: np.ndarray, direction: np.ndarray, fallback: float) -> float:
    """Fractional index where a ray from origin first meets the polyline (fallback if it misses)."""
    best_t, best_s = np.inf, fallback
    for i in range(len(polyline) - 1):
        p, q = polyline[i], polyline[i + 1]
        edge = q - p
        denom = direction[0] * (-edge[1]) + direction[1] * edge[0]
        if abs(denom) < 1e-12:
            continue
        rel = p - origin
        t = (rel[0] * (-edge[1]) + rel[1] * edge[0]) / denom
        w = (direction[0] * rel[1] - direction[1] * rel[0]) / denom
        if t > 0 and 0 <= w <= 1 and t < best_t:
            best_t, best_s = t, i + w
    return best_s


def _smooth_jaw(jaw: np.ndarray) -> np.ndarray:
    """Fallback contour: a moving average, then x forced monotonic from ear to ear (undoes crossings)."""
    padded = np.vstack([jaw[:1], jaw[:1], jaw, jaw[-1:], jaw[-1:]])
    kernel = np.array([1.0, 2.0, 3.0, 2.0, 1.0]) / 9.0
    smooth = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(2)], axis=-1)
    smooth[:, 0] = np.maximum.accumulate(smooth[:, 0])
    return smooth


def _clear_features(jaw: np.ndarray, features: np.ndarray, clearance: float) -> np.ndarray:
    """Push jaw points 1-15 outward (radially from the features' centre) until each lies at least `clearance`
    beyond the features' supporting line in its direction: the contour then encloses nose and mouth."""
    centre = features.mean(axis=0)
    offset = jaw[1:16] - centre
    radius = np.maximum(np.hypot(offset[:, 0], offset[:, 1]), 1e-9)
    direction = offset / radius[:, None]
    needed = ((features - centre) @ direction.T).max(axis=0) + clearance
    out = jaw.copy()
    out[1:16] = np.where((radius < needed)[:, None], centre + direction * needed[:, None], jaw[1:16])
    return out


@functools.cache
def _unit_ramps(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """u (1, cols, 1) and v (rows, 1, 1), each evenly spaced over 0..1 (shared, read-only)."""
    u, v = np.linspace(0.0, 1.0, cols)[None, :, None], np.linspace(0.0, 1.0, rows)[:, None, None]
    u.flags.writeable = v.flags.writeable = False
    return u, v


def _median(values: np.ndarray) -> float:
    """np.median of a small array without its per-call overhead (check_mesh runs for every face)."""
    ordered = np.sort(values, axis=None)
    middle = len(ordered) // 2
    return float(ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2)


def _coons(top: np.ndarray, bottom: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Coons patch from four boundary curves: top/bottom (cols, 2) left→right, left/right (rows, 2) top→bottom."""
    u, v = _unit_ramps(len(left), len(top))
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
        return 0.5 * (
            (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1])
            - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])
        )

    return np.stack([tri(p00, p01, p11), tri(p00, p11, p10)], axis=-1)


def face_outline_area(lm_frame: np.ndarray) -> float:
    """Area of the polygon jaw (0-16) plus the outer brow ends (26, 24, 19, 17), in face-frame units."""
    outline = np.vstack([lm_frame[JAW], lm_frame[[26, 24, 19, 17]]])
    x, y = outline[:, 0], outline[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def check_mesh(frame_grid: np.ndarray, face_area: float, config: PlacementConfig) -> str | None:
    """The reason a face-frame mesh is degenerate, or None when it is fine."""
    if not np.all(np.isfinite(frame_grid)):
        return "non-finite mesh coordinates"
    areas = cell_areas(frame_grid)
    median = _median(areas)
    # Where the jaw runs straight through a corner (d or f) the corner cell is a thin sliver; slivers far below a
    # pixel are harmless, a triangle flipped by a real fraction of a cell is a fold-over.
    flipped = areas < -config.min_cell_area_ratio * median
    if np.any(flipped):
        return f"fold-over: {int(np.sum(flipped))} mesh triangles flipped"
    cells = areas.sum(axis=-1)
    if float(cells.min()) < config.min_cell_area_ratio * 2 * median:
        return "collapsed anchors: mesh cells of near-zero area"
    ratio = float(areas.sum()) / max(face_area, 1e-9)
    lo, hi = config.area_range
    if not lo <= ratio <= hi:
        return f"implausible mask area: {ratio:.2f} of the face outline (expected {lo}..{hi})"
    width = float(frame_grid[..., 0].max() - frame_grid[..., 0].min())
    height = float(frame_grid[..., 1].max() - frame_grid[..., 1].min())
    aspect = width / max(height, 1e-9)
    lo, hi = config.aspect_range
    if not lo <= aspect <= hi:
        return f"implausible mask aspect {aspect:.2f} (expected {lo}..{hi})"
    return None


def draw_top_shift(rng: np.random.Generator, config: PlacementConfig) -> float:
    """A face's shift of the mask's top edge (eye distances, > 0 lower): see PlacementConfig.height_spread."""
    z = float(np.clip(rng.standard_normal(), -2.5, 2.5))
    above, below = config.height_spread
    return round(z * (above if z < 0 else below), 4)


def _frame_mesh(
    lm: np.ndarray,
    jaw: np.ndarray,
    config: PlacementConfig,
    ray_corners: bool = False,
    top_shift: float = 0.0,
) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
    """The Coons-patch grid in face-frame coordinates for a (possibly smoothed) jaw contour, its anchors and the
    shift used: `top_shift` moves the top edge down (as far as the nose allows); up (< 0) it moves the middle
    only, up the bridge."""
    nose_tip = lm[NOSE_TIP]
    jaw = nose_tip + (jaw - nose_tip) * (1.0 + config.jaw_margin)
    jaw = _clear_features(jaw, np.vstack([lm[NOSTRILS], lm[MOUTH]]), config.feature_clearance)
    b = lm[NOSE_BRIDGE_TOP] + config.bridge_fraction * (nose_tip - lm[NOSE_BRIDGE_TOP])
    lids = float(lm[LEFT_EYE][:, 1].max()), float(lm[RIGHT_EYE][:, 1].max())  # the lowest eyelid points
    unshifted = max(b[1], min(lids) + config.eye_clearance)  # the middle with no shift (version 2's)
    if top_shift > 0:
        # Worn lower, the top edge still clears the nose's wings by `feature_clearance`: the shift stops where the
        # middle would reach that (without this 4 of 12,000 CelebA faces had a nostril wing bare and were refused).
        nose_limit = float(lm[NOSTRILS][:, 1].min()) - config.feature_clearance
        top_shift = min(top_shift, max(0.0, nose_limit - unshifted))
    b[1] += top_shift
    clearance = config.eye_clearance + max(0.0, top_shift)  # under the eyes a mask only ever sits lower
    left_eye_low, right_eye_low = (lid + clearance for lid in lids)
    b[1] = max(b[1], min(left_eye_low, right_eye_low) + min(0.0, top_shift))
    if top_shift < 0:
        # Worn higher, the middle rides up the bridge between the eyes (a nose wire pinched there), never above
        # the eyes' centre line nor nearer the inner eye corners than the clearance (up to the centre line, 14 of
        # 12,000 CelebA faces had an inner corner covered and were refused).
        inner_corners = float(lm[INNER_EYE_CORNERS][:, 1].max()) + config.eye_clearance
        b[1] = max(b[1], float(lm[EYES][:, 1].mean()), min(inner_corners, unshifted))
    top_shift = float(b[1] - unshifted)  # what the middle moved: the shift used
    # Under each eye the top edge keeps its clearance; it meets the jaw a little lower still.
    q_left_y = max(b[1] + config.top_drop, left_eye_low)
    q_right_y = max(b[1] + config.top_drop, right_eye_low)
    s_a = _height_index(jaw, q_left_y + config.top_drop, 0.0, float(CHIN))
    s_c = _height_index(jaw, q_right_y + config.top_drop, 16.0, float(CHIN))
    s_d, s_f = float(JAW_CORNER_LEFT), float(JAW_CORNER_RIGHT)
    if ray_corners:
        # Corners where diagonal rays from the mouth centre meet the jaw: on a turned face the far side's jaw
        # landmarks bunch up, and the fixed landmark corners leave near-flat cells there.
        mouth = lm[MOUTH].mean(axis=0)
        s_d = _ray_index(jaw, mouth, np.array([-1.0, 1.0]), s_d)
        s_f = _ray_index(jaw, mouth, np.array([1.0, 1.0]), s_f)
    s_d = float(np.clip(s_d, s_a + 0.5, CHIN - 0.5))
    s_f = float(np.clip(s_f, CHIN + 0.5, s_c - 0.5))
    a, c, d, e, f = (_point_at(jaw, s) for s in (s_a, s_c, s_d, float(CHIN), s_f))
    # The points under the eyes stay between the jaw and the bridge, so the top edge never doubles back.
    q_left = np.array(
        [
            np.clip(lm[LEFT_EYE][:, 0].mean(), a[0] + 0.25 * (b[0] - a[0]), b[0] - 0.25 * (b[0] - a[0])),
            q_left_y,
        ]
    )
    q_right = np.array(
        [
            np.clip(lm[RIGHT_EYE][:, 0].mean(), b[0] + 0.25 * (c[0] - b[0]), c[0] - 0.25 * (c[0] - b[0])),
            q_right_y,
        ]
    )
    half = config.cols // 2 + 1
    # Each half resampled separately, so column `cols // 2` lies on the bridge / the chin.
    top = np.vstack(
        [_resample(np.array([a, q_left, b]), half), _resample(np.array([b, q_right, c]), half)[1:]]
    )
    bottom = np.vstack(
        [_resample(_between(jaw, s_d, CHIN), half), _resample(_between(jaw, CHIN, s_f), half)[1:]]
    )
    left = _resample(_between(jaw, s_a, s_d), config.rows)
    right = _resample(_between(jaw, s_c, s_f), config.rows)
    grid = _coons(top, bottom, left, right)
    return grid, {"a": a, "b": b, "c": c, "d": d, "e": e, "f": f}, top_shift


# Landmark proportions a template can be placed on, in the face frame (y towards the chin, unit = inter-ocular
# distance): (what, landmarks measured, lowest, highest). Measured on 529 faces (the first 400 CelebA photos and
# the extras): brows - eyes -0.56..-0.16, nose tip - eyes 0.04..0.96, mouth - nose tip 0.25..0.96, chin - mouth
# 0.41..1.25, jaw width 1.90..3.18, mouth width 0.63..1.23; the ranges leave a wide margin around those. A face
# outside them (features in the wrong order: upside-down or mirrored labelling, landmarks fitted to something
# else) would get a mask in the wrong place, so it is refused with the reason.
PLAUSIBLE_PROPORTIONS = (
    ("the brows above the eyes", "brows - eyes", -1.2, -0.05),
    ("the nose tip below the eyes", "nose tip - eyes", -0.1, 1.8),
    ("the mouth below the nose tip", "mouth - nose tip", 0.05, 1.8),
    ("the chin below the mouth", "chin - mouth", 0.15, 2.5),
    ("the jaw wider than the eyes, left to right", "jaw width", 1.0, 5.0),
    ("the mouth corners left to right", "mouth width", 0.25, 2.5),
)


def landmark_proportions(lm_frame: np.ndarray) -> dict[str, float]:
    """The measures PLAUSIBLE_PROPORTIONS bounds, from landmarks in the face frame."""
    eyes = lm_frame[EYES, 1].mean()
    mouth = lm_frame[MOUTH, 1].mean()
    return {
        "brows - eyes": float(lm_frame[BROWS, 1].mean() - eyes),
        "nose tip - eyes": float(lm_frame[NOSE_TIP, 1] - eyes),
        "mouth - nose tip": float(mouth - lm_frame[NOSE_TIP, 1]),
        "chin - mouth": float(lm_frame[CHIN, 1] - mouth),
        "jaw width": float(lm_frame[16, 0] - lm_frame[0, 0]),
        "mouth width": float(lm_frame[MOUTH_RIGHT, 0] - lm_frame[MOUTH_LEFT, 0]),
    }


def check_landmark_geometry(lm_frame: np.ndarray) -> str | None:
    """None when the face's proportions fit a mask template (see PLAUSIBLE_PROPORTIONS), else the reason."""
    measured = landmark_proportions(lm_frame)
    for expectation, name, low, high in PLAUSIBLE_PROPORTIONS:
        value = measured[name]
        if not low <= value <= high:
            return (
                f"implausible landmark geometry for the template: expected {expectation} ({name} = {value:.2f} "
                f"eye distances, plausible {low:g}..{high:g}); the face may be upside down or its landmarks wrong"
            )
    return None


def estimate_yaw(lm_frame: np.ndarray) -> float:
    """-1..1 from how far the nose tip sits from the middle of the jaw (0 frontal, sign = side it turned to)."""
    left = lm_frame[NOSE_TIP, 0] - lm_frame[2, 0]
    right = lm_frame[14, 0] - lm_frame[NOSE_TIP, 0]
    total = left + right
    if total <= 1e-9:
        return 0.0
    return float(np.clip((left - right) / total, -1.0, 1.0))


# Landmarks are image pixels, and no image m2u reads is this many pixels across (m2u.core.imageio's cap is 1e8
# pixels): beyond it the drawing's casts to integers overflowed (numpy's RuntimeWarning) before the face was refused.
MAX_LANDMARK_COORDINATE = 1e9


def check_landmarks(landmarks: object) -> np.ndarray:
    """`landmarks` as a (68, 2) float64 array of image pixels, or MaskingError saying in one line what they are
    not: numbers (a string failed with numpy's "could not convert string to float"), of that shape, finite, or
    within MAX_LANDMARK_COORDINATE of the origin."""
    try:
        raw = np.asarray(landmarks)  # ValueError for ragged lists
        if raw.dtype.kind not in "biufO":  # text, bytes, dates, complex numbers
            raise TypeError
        points = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        what = " ".join(reprlib.repr(landmarks).split())
        raise MaskingError(f"expected 68 landmarks of shape (68, 2) as numbers, got {what}") from None
    if points.shape != (68, 2):
        raise MaskingError(f"expected 68 landmarks of shape (68, 2), got {points.shape}")
    if not np.all(np.isfinite(points)):
        raise MaskingError("landmarks contain NaN or infinite values")
    if np.abs(points).max() > MAX_LANDMARK_COORDINATE:
        raise MaskingError(
            f"landmarks contain coordinates beyond {MAX_LANDMARK_COORDINATE:g} px from the origin (no image is that "
            "large)"
        )
    return points


def build_mesh(
    landmarks: np.ndarray, config: PlacementConfig = PlacementConfig(), top_shift: float = 0.0
) -> Mesh:
    """The image-space mesh for a face, or MaskingError with the reason it cannot be placed. `top_shift`: the
    face's shift of the top edge (`draw_top_shift`); a mesh that fails the checks with it is built again without it
    before the face is refused (fallback "unshifted")."""
    return build_checked_mesh(check_landmarks(landmarks), config, top_shift)


def build_checked_mesh(
    landmarks: np.ndarray, config: PlacementConfig = PlacementConfig(), top_shift: float = 0.0
) -> Mesh:
    """build_mesh for `landmarks` that check_landmarks has returned: apply_mask checks a face's 68 points once
    and builds up to four meshes from them (a shifted and an unshifted top edge, a pack's side view and its front
    template), which checked them again each time. Points not from check_landmarks are build_mesh's to take."""
    frame = face_frame(landmarks)
    if frame.scale < config.min_eye_distance_px:
        raise MaskingError(
            f"face too small: eye distance {frame.scale:.1f} px < {config.min_eye_distance_px} px"
        )
    lm = frame.to_frame(landmarks)
    implausible = check_landmark_geometry(lm)
    if implausible:
        raise MaskingError(implausible)
    face_area = face_outline_area(lm)
    # First the plain construction; then corners found by rays from the mouth (turned faces); then also a
    # smoothed, monotonic jaw (noisy landmarks). The first that passes the checks is used and recorded.
    attempts = [(None, False, False, top_shift), ("ray_corners", True, False, top_shift)]
    attempts.append(("smoothed_jaw", True, True, top_shift))
    if top_shift:
        attempts.append(("unshifted", True, True, 0.0))
    reasons = []
    for attempt, ray_corners, smoothed, shift in attempts:
        jaw = _smooth_jaw(lm[JAW]) if smoothed else lm[JAW]
        grid, anchors, shifted = _frame_mesh(lm, jaw, config, ray_corners, shift)
        reason = check_mesh(grid, face_area, config)
        if reason is None:
            fallback, used_shift = attempt, shifted
            break
        reasons.append(reason)
    else:
        raise MaskingError(reasons[0])
    roll = float(np.degrees(np.arctan2(frame.ex[1], frame.ex[0])))
    return Mesh(
        grid=frame.to_image(grid),
        anchors=dict(zip(anchors, map(tuple, frame.to_image(np.array(list(anchors.values()))).tolist()))),
        yaw=estimate_yaw(lm),
        roll_degrees=roll,
        eye_distance=frame.scale,
        fallback=fallback,
        frame=frame,
        top_shift=used_shift,
    )

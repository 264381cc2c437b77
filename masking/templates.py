"""Mask templates: our own procedurally drawn set (MaskTheFace-style `masks.cfg` packs: templates_pack).

A template lives in texture space (u, v) ∈ [0, 1]², u from the face's left jaw edge (image left) to the right,
v from the nose bridge to the chin; `geometry.build_mesh` maps that square onto the face. A template holds:

- `rgb`: its own colours (fabric, valve, cartridges...), linear 0..1,
- `shade`: multiplicative relief (pleats, seams, dome shading), about 1,
- `tint`: where a user colour / pattern applies (the fabric, not the valve),
- `alpha`: coverage with anti-aliased edges,
- `straps`: ear loops or head straps, drawn in image space from the mask's side edges to the ears.

Everything is drawn once per process (`get_template` caches) and kept as a mip pyramid so small faces sample
a pre-filtered level instead of aliasing the pleats. A drawn template is also kept in m2u's cache folder
(`m2u.core.fileio.cache_dir`, ~9 MB each), under a name that changes with this file's source and the numpy and OpenCV
versions: the surgical one takes ~55 ms to draw and all seven ~0.25 s, a fifth of a one-photo m2u-mask run; read
back, a few milliseconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from m2u.core.fileio import cache_dir, write_cache_file

TEXTURE_WIDTH = 768
TEXTURE_HEIGHT = 512
_SUPERSAMPLE = 2  # outlines are drawn at twice the size and area-downsampled: anti-aliased edges

# Our own mask types (what `random` picks among). Presets are types with a fixed colour.
MASK_TYPES: tuple[str, ...] = ("surgical", "surgical_blue", "surgical_green", "n95", "kn95", "cloth", "gas")
# Mask type meaning "every type, one output each per face" (MaskTheFace's `--mask_type all`).
ALL_TYPES = "all"
RANDOM = "random"  # a real mask type chosen with the seed (m2u.masking.render)


def canonical_mask_type(name: str) -> str:
    """One of MASK_TYPES (or "all", "random") for a name spelled in any case (MaskTheFace writes `N95`, `KN95`);
    other names as given."""
    lowered = name.lower()
    return lowered if lowered in (*MASK_TYPES, ALL_TYPES, RANDOM) else name


@dataclass(frozen=True)
class Strap:
    """A strap on each side: from the mask's side edge at height `v` to a point near the ear.

    `ear_offset` is (outward, down) in eye-distance units from jaw landmark `ear_landmark` (0-2 on the left side;
    mirrored on the right). `bow` bends the strap (fraction of its length, positive = downward).
    """

    v: float
    ear_landmark: int
    ear_offset: tuple[float, float]
    width: float  # in eye-distance units
    rgb: tuple[float, float, float]
    bow: float = 0.08


@dataclass
class Template:
    name: str
    rgb: np.ndarray  # (H, W, 3) float32
    shade: np.ndarray  # (H, W) float32
    tint: np.ndarray  # (H, W) float32
    alpha: np.ndarray  # (H, W) float32
    straps: tuple[Strap, ...] = ()
    # Images of a pack keep their own colours: no relief is added and the user colour tints the whole mask.
    source: str = "procedural"
    _levels: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=list, repr=False
    )

    @functools.cached_property
    def strap_ends(self) -> tuple[tuple[float, float] | None, ...]:
        """Per strap, the texture u where it starts on the left and on the right of the mask: well inside the
        mask's edge on the strap's row (the body hides the join, so a strap always joins the mask); None when the
        row is empty."""
        height, width = self.alpha.shape
        ends: list[tuple[float, float] | None] = []
        for strap in self.straps:
            covered = np.flatnonzero(self.alpha[min(int(strap.v * height), height - 1)] > 0.5)
            if covered.size == 0:
                ends.append(None)
                continue
            ends.append(((covered[0] + 0.5) / width + 0.05, (covered[-1] + 0.5) / width - 0.05))
        return tuple(ends)

    def level(self, width_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(rgb, shade, tint, alpha) at the smallest pyramid level still at least `width_px` wide."""
        levels = self._levels
        if not levels:
            # Built whole, then published: a thread that appended level by level let another thread calling
            # apply_mask meanwhile take a coarser level than it would have (other bytes for the same seed).
            level = (self.rgb, self.shade, self.tint, self.alpha)
            levels = [level]
            while level[0].shape[1] >= 64:
                rgb, shade, tint, alpha = (cv2.pyrDown(x) for x in level)
                level = (rgb, shade, tint, alpha)
                levels.append(level)
            self._levels = levels
        for level in reversed(levels):
            if level[0].shape[1] >= width_px:
                return level
        return levels[0]


def _uv(width: int = TEXTURE_WIDTH, height: int = TEXTURE_HEIGHT) -> tuple[np.ndarray, np.ndarray]:
    u = (np.arange(width, dtype=np.float32) + 0.5) / width
    v = (np.arange(height, dtype=np.float32) + 0.5) / height
    return np.meshgrid(u, v)


def _fill(polygons: list[np.ndarray], width: int = TEXTURE_WIDTH, height: int = TEXTURE_HEIGHT) -> np.ndarray:
    """Anti-aliased coverage (float32 0..1) of polygons given in (u, v) coordinates."""
    s = _SUPERSAMPLE
    canvas = np.zeros((height * s, width * s), np.uint8)
    pts = [np.round(np.asarray(p) * [width * s * 16, height * s * 16]).astype(np.int32) for p in polygons]
    cv2.fillPoly(canvas, pts, 255, lineType=cv2.LINE_AA, shift=4)
    return cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _stroke(polylines: list[np.ndarray], thickness_px: float, closed: bool = False) -> np.ndarray:
    s = _SUPERSAMPLE
    canvas = np.zeros((TEXTURE_HEIGHT * s, TEXTURE_WIDTH * s), np.uint8)
    pts = [
        np.round(np.asarray(p) * [TEXTURE_WIDTH * s * 16, TEXTURE_HEIGHT * s * 16]).astype(np.int32)
        for p in polylines
    ]
    cv2.polylines(canvas, pts, closed, 255, max(1, round(thickness_px * s)), lineType=cv2.LINE_AA, shift=4)
    return (
        cv2.resize(canvas, (TEXTURE_WIDTH, TEXTURE_HEIGHT), interpolation=cv2.INTER_AREA).astype(np.float32)
        / 255.0
    )


def _blur(x: np.ndarray, sigma_px: float) -> np.ndarray:
    return cv2.GaussianBlur(x, (0, 0), sigma_px)


def _grain(seed: int, sigma_px: float, amount: float) -> np.ndarray:
    """Fixed fabric grain (a template detail, identical in every process)."""
    noise = np.random.default_rng(seed).standard_normal((TEXTURE_HEIGHT, TEXTURE_WIDTH)).astype(np.float32)
    noise = _blur(noise, sigma_px)
    return 1.0 + amount * noise / (noise.std() + 1e-6)


def _rounded_rect(u0: float, v0: float, u1: float, v1: float, r: float, n: int = 12) -> np.ndarray:
    """Rounded rectangle outline; r in u units (v radius scaled by the texture aspect so corners stay round)."""
    rv = r * TEXTURE_WIDTH / TEXTURE_HEIGHT
    pts = []
    for cu, cv, a0 in (
        (u1 - r, v0 + rv, -90),
        (u1 - r, v1 - rv, 0),
        (u0 + r, v1 - rv, 90),
        (u0 + r, v0 + rv, 180),
    ):
        for t in np.linspace(np.radians(a0), np.radians(a0 + 90), n):
            pts.append((cu + r * np.cos(t), cv + rv * np.sin(t)))
    return np.array(pts)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _pleat_relief(v_rel: np.ndarray, fold_width: float) -> np.ndarray:
    """Relief of one pleat at signed distance v_rel (v units) from its fold line: a lit ridge above the fold, a sharp
    shadow just under it fading downward."""
    ridge = 0.10 * np.exp(-(((v_rel + 0.6 * fold_width) / (0.5 * fold_width)) ** 2))
    shadow = (
        -0.28
        * np.exp(-np.maximum(v_rel, 0.0) / (0.35 * fold_width))
        * _smoothstep(v_rel / (0.08 * fold_width) + 1)
    )
    return ridge + np.where(v_rel > -0.08 * fold_width, shadow, 0.0)


def _surgical(name: str, rgb: tuple[float, float, float]) -> Template:
    u, v = _uv()
    alpha = _fill([_rounded_rect(0.005, 0.01, 0.995, 0.985, 0.035)])
    shade = np.ones_like(u)
    bulge = 1.0 - (2.0 * u - 1.0) ** 2  # pleats open up in the middle where the mask covers nose and chin
    for k, v0 in enumerate((0.34, 0.52, 0.70)):
        fold = 0.5 + (v0 - 0.5) * (0.62 + 0.38 * bulge) + 0.012 * np.sin(7.0 * u + k)
        shade += _pleat_relief(v - fold, 0.07)
    # Bound edges: a slightly brighter hem with a stitched seam along its inner side.
    hem = 0.055
    inner = np.minimum.reduce([v - 0.01, 0.985 - v, (u - 0.005) * 1.5, (0.995 - u) * 1.5])
    shade += 0.05 * (inner < hem)
    seam = _stroke(
        [_rounded_rect(0.005 + hem / 1.5, 0.01 + hem, 0.995 - hem / 1.5, 0.985 - hem, 0.02)], 1.6, closed=True
    )
    shade -= 0.12 * seam
    # Nose wire under the top hem.
    wire = _fill([_rounded_rect(0.37, 0.022, 0.63, 0.048, 0.01)])
    shade += 0.05 * wire - 0.10 * _stroke([_rounded_rect(0.37, 0.022, 0.63, 0.048, 0.01)], 1.2, closed=True)
    shade *= _grain(1, 0.7, 0.018)
    base = np.broadcast_to(np.array(rgb, np.float32), (*u.shape, 3)).copy()
    loop = Strap(
        v=0.12, ear_landmark=0, ear_offset=(0.1, 0.02), width=0.035, rgb=tuple(0.96 * np.array(rgb) + 0.04)
    )
    loop_low = Strap(v=0.86, ear_landmark=2, ear_offset=(0.16, 0.0), width=0.035, rgb=loop.rgb, bow=-0.08)
    return Template(name, base, _blur(shade, 0.6), np.ones_like(u), alpha, (loop, loop_low))


def _n95() -> Template:
    u, v = _uv()
    cu, cv_ = 0.5, 0.52
    # A moulded cup: a superellipse outline, slightly narrower at the top (over the nose).
    t = np.linspace(0, 2 * np.pi, 240, endpoint=False)
    ru = 0.49 * (1 - 0.10 * np.clip(-np.sin(t), 0, 1))
    outline = np.stack(
        [
            cu + ru * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** 0.75,
            cv_ + 0.485 * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** 0.85,
        ],
        axis=-1,
    )
    alpha = _fill([outline])
    r = np.sqrt(((u - cu) / 0.49) ** 2 + ((v - cv_) / 0.485) ** 2)
    shade = 1.06 - 0.22 * r**2  # convex dome
    rim = _stroke([outline * [1, 1] + 0 * outline], 10.0, closed=True)
    shade -= 0.06 * rim
    inner = (outline - [cu, cv_]) * 0.93 + [cu, cv_]
    shade -= 0.10 * _stroke([inner], 1.6, closed=True)
    shade *= _grain(2, 1.2, 0.025)
    rgb = np.broadcast_to(np.array((0.95, 0.95, 0.93), np.float32), (*u.shape, 3)).copy()
    tint = np.ones_like(u)
    # Exhalation valve on the wearer's left: a grey disc with ribs, not tinted by the user colour.
    vu, vv, vr = 0.66, 0.62, 0.085
    valve_outline = np.stack([vu + vr * np.cos(t), vv + vr * 1.5 * np.sin(t)], axis=-1)
    valve = _fill([valve_outline])
    dist = np.sqrt(((u - vu) / vr) ** 2 + ((v - vv) / (1.5 * vr)) ** 2)
    ribs = 0.5 + 0.5 * np.cos(np.arctan2(v - vv, u - vu) * 12)
    valve_rgb = np.stack([0.55 + 0.1 * (1 - dist) - 0.08 * ribs * (dist > 0.45)] * 3, axis=-1)
    rgb = rgb * (1 - valve[..., None]) + valve_rgb * valve[..., None]
    tint *= 1 - valve
    shade = shade * (1 - valve) + (1.1 - 0.25 * dist) * valve
    shade -= 0.2 * _stroke([valve_outline], 1.8, closed=True)
    strap_rgb = (0.93, 0.92, 0.86)
    straps = (
        Strap(v=0.25, ear_landmark=0, ear_offset=(0.06, -0.12), width=0.05, rgb=strap_rgb, bow=0.06),
        Strap(v=0.75, ear_landmark=2, ear_offset=(0.12, 0.2), width=0.05, rgb=strap_rgb, bow=0.1),
    )
    return Template("n95", rgb, _blur(shade, 0.6), tint, alpha, straps)


def _kn95() -> Template:
    u, v = _uv()
    # Folded flat: two panels meeting in a vertical seam, a peak over the nose, a point under the chin.
    outline = np.array(
        [
            (0.01, 0.16),
            (0.25, 0.045),
            (0.5, 0.0),
            (0.75, 0.045),
            (0.99, 0.16),
            (0.99, 0.58),
            (0.85, 0.80),
            (0.62, 0.96),
            (0.5, 1.0),
            (0.38, 0.96),
            (0.15, 0.80),
            (0.01, 0.58),
        ]
    )
    alpha = _fill([outline])
    shade = np.where(
        u < 0.5, 0.93 + 0.1 * u, 1.05 - 0.06 * (u - 0.5)
    )  # two facets catch the light differently
    shade = shade - 0.12 * np.exp(-(((u - 0.5) / 0.012) ** 2)) + 0.06 * np.exp(-(((u - 0.52) / 0.01) ** 2))
    inset = (outline - [0.5, 0.5]) * 0.94 + [0.5, 0.5]
    band = alpha - _fill([inset])
    shade -= 0.05 * band
    # Heat-seal dots along the edge band.
    dots = np.zeros((TEXTURE_HEIGHT, TEXTURE_WIDTH), np.uint8)
    edge = np.vstack(
        [(outline - [0.5, 0.5]) * 0.97 + [0.5, 0.5], outline[:1] * 0 + ((outline[0] - 0.5) * 0.97 + 0.5)]
    )
    for p0, p1 in zip(edge[:-1], edge[1:]):
        n = max(2, int(np.hypot(*(p1 - p0) * [TEXTURE_WIDTH, TEXTURE_HEIGHT]) / 9))
        for q in np.linspace(p0, p1, n, endpoint=False):
            cv2.circle(dots, (int(q[0] * TEXTURE_WIDTH), int(q[1] * TEXTURE_HEIGHT)), 2, 255, -1, cv2.LINE_AA)
    shade -= 0.15 * dots.astype(np.float32) / 255.0
    seam = np.exp(-(((u - 0.5) / 0.006) ** 2))
    shade -= 0.05 * seam
    shade *= _grain(3, 0.8, 0.02)
    rgb = np.broadcast_to(np.array((0.96, 0.96, 0.95), np.float32), (*u.shape, 3)).copy()
    loop_rgb = (0.97, 0.97, 0.96)
    straps = (
        Strap(v=0.2, ear_landmark=1, ear_offset=(0.05, 0.0), width=0.03, rgb=loop_rgb),
        Strap(v=0.6, ear_landmark=2, ear_offset=(0.04, 0.05), width=0.03, rgb=loop_rgb, bow=-0.08),
    )
    return Template("kn95", rgb, _blur(shade, 0.6), np.ones_like(u), alpha, straps)


def _cloth() -> Template:
    u, v = _uv()
    # Contoured cloth mask: a curved centre seam, top edge rising over the nose, rounded under the chin.
    left = [
        (0.5, 0.0),
        (0.3, 0.05),
        (0.1, 0.12),
        (0.01, 0.18),
        (0.005, 0.55),
        (0.05, 0.78),
        (0.2, 0.92),
        (0.38, 0.98),
        (0.5, 1.0),
    ]
    outline = np.array(left + [(1 - x, y) for x, y in reversed(left[1:-1])])
    alpha = _fill([_chaikin(outline, 3)])
    weave = 1.0 + 0.035 * np.sin(2 * np.pi * u * TEXTURE_WIDTH / 5.0) * np.sin(
        2 * np.pi * v * TEXTURE_HEIGHT / 5.0
    )
    shade = weave * (1.04 - 0.16 * (2 * u - 1) ** 2)
    seam_curve = np.stack([0.5 + 0.012 * np.sin(np.linspace(0, np.pi, 40)), np.linspace(0, 1, 40)], axis=-1)
    shade -= 0.18 * _stroke([seam_curve], 2.0) - 0.05 * _stroke([seam_curve + [0.01, 0]], 2.0)
    inset = (_chaikin(outline, 3) - [0.5, 0.5]) * 0.955 + [0.5, 0.5]
    stitches = _stroke([inset], 1.4, closed=True)
    dashes = (np.sin(2 * np.pi * (u * TEXTURE_WIDTH + v * TEXTURE_HEIGHT) / 10.0) > 0).astype(np.float32)
    shade -= 0.12 * stitches * dashes
    # Soft folds where the fabric gathers towards the ear loops.
    shade -= 0.05 * np.exp(-(((v - 0.5) / 0.2) ** 2)) * (np.abs(2 * u - 1) > 0.75)
    shade *= _grain(4, 1.0, 0.03)
    rgb = np.broadcast_to(np.array((0.20, 0.24, 0.36), np.float32), (*u.shape, 3)).copy()
    loop_rgb = (0.17, 0.2, 0.3)
    straps = (
        Strap(v=0.22, ear_landmark=1, ear_offset=(0.05, 0.0), width=0.05, rgb=loop_rgb),
        Strap(v=0.7, ear_landmark=2, ear_offset=(0.04, 0.05), width=0.05, rgb=loop_rgb, bow=-0.08),
    )
    return Template("cloth", rgb, _blur(shade, 0.6), np.ones_like(u), alpha, straps)


def _chaikin(points: np.ndarray, iterations: int) -> np.ndarray:
    """Corner-cutting smoothing of a closed polygon."""
    p = np.asarray(points, dtype=np.float64)
    for _ in range(iterations):
        q = np.roll(p, -1, axis=0)
        p = np.stack([0.75 * p + 0.25 * q, 0.25 * p + 0.75 * q], axis=1).reshape(-1, 2)
    return p


def _gas() -> Template:
    u, v = _uv()
    # Half-face respirator: a rubber face piece with two round filter cartridges and a central exhalation valve.
    # Full down to the chin: the piece tapered from v 0.72 (u 0.14 -> 0.3 at v 0.92) left a mouth corner bare on 2
    # of 500 CelebA faces (one turned far, yaw -0.81) once render version 2 placed masks higher
    # (tests/masking/test_shared_data.py's slow geometry test; changed with render version 3).
    piece = np.array(
        [(0.5, 0.0), (0.3, 0.06), (0.14, 0.2), (0.08, 0.45), (0.09, 0.75), (0.17, 0.94), (0.5, 1.0)]
    )
    piece = np.vstack([piece, [(1 - x, y) for x, y in reversed(piece[1:-1])]])
    piece = _chaikin(piece, 3)
    body = _fill([piece])
    rubber = np.array((0.16, 0.16, 0.17), np.float32)
    rgb = np.broadcast_to(rubber, (*u.shape, 3)).copy()
    shade = 1.0 + 0.5 * np.exp(-(((u - 0.42) / 0.08) ** 2 + ((v - 0.3) / 0.12) ** 2))  # glossy highlight
    shade -= 0.25 * ((u - 0.5) ** 2 + (v - 0.5) ** 2)
    tint = body.copy()
    alpha = body.copy()
    t = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    aspect = TEXTURE_WIDTH / TEXTURE_HEIGHT
    for cu in (0.17, 0.83):
        cv_, r = 0.63, 0.16
        disc = _fill([np.stack([cu + r * np.cos(t), cv_ + r * aspect * np.sin(t)], axis=-1)])
        dist = np.sqrt(((u - cu) / r) ** 2 + ((v - cv_) / (r * aspect)) ** 2)
        rings = 0.5 + 0.5 * np.cos(dist * 9 * np.pi)
        filt = np.stack([0.78 + 0 * u, 0.52 + 0 * u, 0.60 + 0 * u], axis=-1)  # pink particulate filter
        face = np.where(dist[..., None] < 0.72, filt * (0.9 + 0.1 * rings[..., None]), np.float32(0.2))
        rgb = rgb * (1 - disc[..., None]) + face * disc[..., None]
        shade = shade * (1 - disc) + (1.15 - 0.35 * dist**2) * disc
        tint *= 1 - disc
        alpha = np.maximum(alpha, disc)
    valve = _fill([_rounded_rect(0.42, 0.64, 0.58, 0.88, 0.03)])
    slots = (np.sin(2 * np.pi * v * TEXTURE_HEIGHT / 14.0) > 0.4) * (np.abs(u - 0.5) < 0.05)
    rgb = rgb * (1 - valve[..., None]) + np.float32(0.24) * valve[..., None]
    shade -= 0.3 * valve * slots
    tint *= 1 - valve
    shade *= _grain(5, 1.0, 0.02)
    strap_rgb = (0.1, 0.1, 0.11)
    straps = (
        Strap(v=0.2, ear_landmark=0, ear_offset=(0.06, -0.12), width=0.08, rgb=strap_rgb, bow=0.06),
        Strap(v=0.6, ear_landmark=2, ear_offset=(0.12, 0.2), width=0.08, rgb=strap_rgb, bow=0.1),
    )
    return Template("gas", rgb.astype(np.float32), _blur(shade, 0.6).astype(np.float32), tint, alpha, straps)


# Preset colours (linear RGB 0..1 as displayed); also the named colours `--color` accepts.
COLORS: dict[str, tuple[float, float, float]] = {
    "white": (0.93, 0.94, 0.95),
    "blue": (0.56, 0.74, 0.88),
    "green": (0.55, 0.80, 0.72),
    "black": (0.10, 0.10, 0.11),
    "grey": (0.55, 0.56, 0.58),
    "navy": (0.16, 0.20, 0.34),
    "pink": (0.93, 0.66, 0.74),
    "red": (0.72, 0.12, 0.14),
    "yellow": (0.95, 0.84, 0.30),
    "purple": (0.45, 0.30, 0.60),
    "orange": (0.93, 0.52, 0.20),
    "beige": (0.85, 0.78, 0.66),
}

_BUILDERS = {
    "surgical": lambda: _surgical("surgical", COLORS["white"]),
    "surgical_blue": lambda: _surgical("surgical_blue", COLORS["blue"]),
    "surgical_green": lambda: _surgical("surgical_green", COLORS["green"]),
    "n95": _n95,
    "kn95": _kn95,
    "cloth": _cloth,
    "gas": _gas,
}
assert tuple(_BUILDERS) == MASK_TYPES


@functools.cache
def get_template(name: str) -> Template:
    """One of MASK_TYPES, drawn once per process (or read from m2u's cache folder, where a drawn one is kept)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown mask type {name!r}; choose one of {', '.join(MASK_TYPES)}")
    path = cached_template_path(name)
    template = _read_cached(path, name)
    if template is None:
        template = _BUILDERS[name]()
        for key in _ARRAYS:
            setattr(template, key, np.ascontiguousarray(getattr(template, key), dtype=np.float32))
        # Complete or absent: concurrent processes never read half a file.
        if write_cache_file(path, lambda temp: _write_cached(temp, template)):
            # Files drawn by an earlier version of this code or of numpy / OpenCV are never read again.
            for stale in path.parent.glob(f"template-{name}-*.npz"):
                if stale != path:
                    with contextlib.suppress(OSError):
                        stale.unlink()
    return template


_ARRAYS = ("rgb", "shade", "tint", "alpha")


def cached_template_path(name: str) -> Path:
    """The cache file of template `name`: its name changes with this file's source and the numpy and OpenCV
    versions (the random numbers and drawing that make its bytes)."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(f"|{name}|{np.__version__}|{cv2.__version__}".encode())
    return cache_dir() / f"template-{name}-{digest.hexdigest()[:16]}.npz"


def _write_cached(temp: str, template: Template) -> None:
    straps = json.dumps([dataclasses.asdict(strap) for strap in template.straps])
    with open(temp, "wb") as handle:
        np.savez(handle, **{key: getattr(template, key) for key in _ARRAYS}, straps=np.array(straps))


def _read_cached(path: Path, name: str) -> Template | None:
    """The template kept at `path`, or None when there is none or it is damaged (it is drawn and written again)."""
    shape = (TEXTURE_HEIGHT, TEXTURE_WIDTH)
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in _ARRAYS}
            straps = tuple(_strap(fields) for fields in json.loads(str(stored["straps"])))
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return None
    expected = {"rgb": (*shape, 3), "shade": shape, "tint": shape, "alpha": shape}
    if any(arrays[key].shape != expected[key] or arrays[key].dtype != np.float32 for key in _ARRAYS):
        return None
    rgb, shade, tint, alpha = (np.ascontiguousarray(arrays[key]) for key in _ARRAYS)
    return Template(name, rgb, shade, tint, alpha, straps)


def _strap(fields: dict) -> Strap:
    return Strap(
        v=float(fields["v"]),
        ear_landmark=int(fields["ear_landmark"]),
        ear_offset=(float(fields["ear_offset"][0]), float(fields["ear_offset"][1])),
        width=float(fields["width"]),
        rgb=(float(fields["rgb"][0]), float(fields["rgb"][1]), float(fields["rgb"][2])),
        bow=float(fields["bow"]),
    )

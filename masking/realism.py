"""What real masks show and clean templates do not, drawn per face from the seed (MaskConfig.realism).

Real masked photos (../shared/faces/real-masked) differ from plain templates in ways M-Seg must not be surprised by:
the colour mix (black and dark cloth is the most common), fabric grain and weave, creases and folds, nose wires,
exhalation valves, the nose's shadow on the fabric, light falling from one side, and ear loops that vanish under
hair. A `Finish` holds one face's draw of those; `finish_texture` applies it to the template's premultiplied
texture level (colour only: the alpha, and so the ground-truth mask, is untouched), `cut_strap` shortens a strap
hidden by hair (the shortened strap is still drawn into the coverage, so the mask stays exact).

Everything is a pure function of (rng draws, texture size): byte-reproducible like the rest of apply_mask.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

# The colour mix of `color="random"` with realism on, roughly as counted in real masked photos: dark masks first,
# then the templates' own colours (white/blue surgical, white N95), then the rest. None: the template's colour.
REAL_COLOR_MIX: tuple[tuple[str | None, float], ...] = (
    ("black", 0.30),
    (None, 0.28),
    ("navy", 0.07),
    ("grey", 0.08),
    ("white", 0.05),
    ("blue", 0.05),
    ("pink", 0.04),
    ("beige", 0.03),
    ("green", 0.02),
    ("red", 0.02),
    ("purple", 0.02),
    ("yellow", 0.02),
    ("orange", 0.02),
)
# The type mix of `mask_type="random"` with realism on (m2u's own templates): surgical and KN95/cloth masks are what
# real photos show; gas masks are rare.
REAL_TYPE_MIX: tuple[tuple[str, float], ...] = (
    ("surgical", 0.25),
    ("surgical_blue", 0.2),
    ("surgical_green", 0.03),
    ("n95", 0.1),
    ("kn95", 0.17),
    ("cloth", 0.22),
    ("gas", 0.03),
)
# With realism on, `pattern="random"` prints a pattern on this share of masks (real masks are mostly plain).
REAL_PATTERN_SHARE = 0.3
# Of those, this share is a bold multi-colour print (appearance.PRINT, drawn per face, at REAL_PRINT_WEIGHT); the
# rest one of the single-ink patterns. Raised from none after M-Seg missed the printed masks of real photos
# (patchwork, flags, paisley, camouflage; benchmarks/real_mask_seg.py).
REAL_PRINT_SHARE = 0.6
REAL_PRINT_WEIGHT = 0.95
# Types whose front may carry an exhalation valve, and types that may have a nose wire added (surgical has its own).
# Not n95: its template draws its own valve (m2u.masking.templates), and a second beside it looked like two.
VALVE_TYPES = ("kn95", "cloth")
WIRE_TYPES = ("kn95", "cloth")


@dataclass(frozen=True)
class Finish:
    """One face's draw of the real-mask effects (strengths already scaled by MaskConfig.realism)."""

    grain: float  # fabric grain: std of a fine multiplicative noise
    weave: float  # amplitude of the woven thread pattern
    weave_period: float  # thread spacing, in base-texture pixels (768 px across)
    weave_angle: float  # radians
    folds: tuple[tuple[float, float, float], ...]  # per crease: (v at centre, tilt, signed depth)
    side_light: float  # brightness slope across the mask (light from one side): gain 1 + side_light·(u − ½)
    nose_shadow: float  # darkness of the nose's shadow below the nose bridge
    nose_shadow_u: float  # where across the mask the shadow centres
    wire: bool  # a nose wire ridge under the top edge
    valve: tuple[float, float, float] | None  # (u, v, grey level) of an exhalation valve
    hair: tuple[float, float]  # per side (image left, right): share of each strap hidden by hair near the ear
    texture_seed: int  # grain and weave noise

    def record(self) -> dict[str, Any]:
        return {
            k: (np.round(v, 4).tolist() if isinstance(v, (tuple, float)) else v)
            for k, v in asdict(self).items()
        }


def draw_finish(rng: np.random.Generator, mask_type: str, strength: float, procedural: bool) -> Finish:
    """One face's finish from `rng` (always the same number of draws, so later draws never shift)."""
    u = rng.random(24)
    n_folds = int(u[0] * 4)  # 0..3 creases
    folds = tuple(
        (
            0.25 + 0.6 * u[1 + 3 * k],
            0.3 * (u[2 + 3 * k] - 0.5),
            strength * (0.05 + 0.10 * u[3 + 3 * k]) * (1 if k % 2 else -1),
        )
        for k in range(n_folds)
    )
    valve = None
    if procedural and mask_type in VALVE_TYPES and u[13] < 0.15 * strength:
        valve = (0.3 if u[14] < 0.5 else 0.7, 0.55 + 0.1 * u[15], (0.15, 0.55, 0.9)[int(u[16] * 3)])
    hair = tuple(float(0.3 + 0.6 * u[18 + k]) if u[20 + k] < 0.35 * strength else 0.0 for k in range(2))
    return Finish(
        grain=strength * (0.008 + 0.025 * float(u[10])),
        weave=strength * 0.025 * float(u[11]),
        weave_period=5.0 + 6.0 * float(u[12]),
        weave_angle=float(u[17]) * np.pi / 2,
        folds=folds,
        side_light=strength * 0.7 * (float(u[22]) - 0.5),
        nose_shadow=strength * 0.35 * float(u[23]),
        nose_shadow_u=0.5 + 0.16 * (float(u[14]) - 0.5),
        wire=bool(procedural and mask_type in WIRE_TYPES and u[16] < 0.6 * strength),
        valve=valve,
        hair=(hair[0], hair[1]),
        texture_seed=int(rng.integers(2**31)),
    )


@functools.lru_cache(maxsize=32)
def _uv(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    return (u + 0.5) / width, (v + 0.5) / height


def _gain(finish: Finish, height: int, width: int) -> np.ndarray:
    """The multiplicative relief of the finish at a texture level of height x width."""
    u, v = _uv(height, width)
    scale = width / 768.0  # base-texture pixels -> this level's pixels
    rng = np.random.default_rng(finish.texture_seed)
    gain = np.ones((height, width), np.float32)
    if finish.grain > 0:
        noise = rng.standard_normal((height, width)).astype(np.float32)
        gain += finish.grain * cv2.GaussianBlur(noise, (0, 0), 1.0) / 0.28  # unit std after the blur
    if finish.weave > 0:
        # Two thread directions; below about 2 px a period would alias into moiré, so it fades out there.
        period = finish.weave_period * scale
        visible = float(np.clip((period - 2.0) / 2.0, 0.0, 1.0))
        if visible > 0:
            c, s = np.cos(finish.weave_angle), np.sin(finish.weave_angle)
            x, y = u * width, v * height
            a = np.sin(2 * np.pi * (c * x + s * y) / period)
            b = np.sin(2 * np.pi * (-s * x + c * y) / period)
            gain += finish.weave * visible * 0.5 * (a + b)
    for v0, tilt, depth in finish.folds:
        line = v0 + tilt * (u - 0.5)
        # A crease: a darker trough with a lit edge above it.
        gain += depth * np.exp(-(((v - line) / 0.035) ** 2)) - 0.5 * depth * np.exp(
            -(((v - line + 0.05) / 0.03) ** 2)
        )
    if finish.side_light:
        gain *= 1.0 + finish.side_light * (u - 0.5)
    if finish.nose_shadow > 0:
        gain *= 1.0 - finish.nose_shadow * np.exp(
            -(((u - finish.nose_shadow_u) / 0.12) ** 2) - (((v - 0.08) / 0.12) ** 2)
        )
    if finish.wire:
        ridge = (np.abs(u - 0.5) < 0.12).astype(np.float32)
        ridge = cv2.GaussianBlur(ridge, (0, 0), max(0.5, 2.0 * scale))
        gain += ridge * (
            0.10 * np.exp(-(((v - 0.04) / 0.012) ** 2)) - 0.12 * np.exp(-(((v - 0.065) / 0.012) ** 2))
        )
    return np.clip(gain, 0.3, 1.6)


def finish_texture(texture: np.ndarray, finish: Finish) -> np.ndarray:
    """A premultiplied RGBA texture level with the finish applied (a new array; alpha unchanged, colour ≤ alpha)."""
    height, width = texture.shape[:2]
    alpha = texture[..., 3:4]
    rgb = texture[..., :3] * _gain(finish, height, width)[..., None]
    if finish.valve is not None:
        u, v = _uv(height, width)
        vu, vv, grey = finish.valve
        aspect = width / height
        radius = np.hypot((u - vu) * aspect, v - vv) * height  # in pixels of this level
        r = 0.07 * width
        disc = np.clip(r - radius + 0.5, 0.0, 1.0)[..., None]
        ring = np.clip(1.0 - np.abs(radius - 0.65 * r) / max(1.0, 0.08 * r), 0.0, 1.0)[..., None]
        valve_rgb = np.float32(grey) * (1.0 - 0.35 * ring)
        rgb = rgb * (1.0 - disc) + valve_rgb * alpha * disc
    out = np.empty_like(texture)
    out[..., :3] = np.minimum(np.maximum(rgb, 0.0), alpha)
    out[..., 3:] = alpha
    return out


def cut_strap(curve: np.ndarray, hidden: float) -> np.ndarray:
    """A strap polyline (points from the mask towards the ear) with its last `hidden` share removed (under hair)."""
    if hidden <= 0:
        return curve
    lengths = np.r_[0.0, np.cumsum(np.hypot(*np.diff(curve, axis=0).T))]
    keep = lengths[-1] * (1.0 - hidden)
    n = int(np.searchsorted(lengths, keep))
    if n >= len(curve):
        return curve
    t = (keep - lengths[n - 1]) / max(lengths[n] - lengths[n - 1], 1e-9)
    end = curve[n - 1] + t * (curve[n] - curve[n - 1])
    return np.vstack([curve[:n], end[None]])


def _weighted(rng: np.random.Generator, mix: tuple[tuple, ...]) -> Any:
    weights = np.array([w for _, w in mix])
    index = int(np.searchsorted(np.cumsum(weights) / weights.sum(), rng.random(), side="right"))
    return mix[min(index, len(mix) - 1)][0]


def real_type(rng: np.random.Generator) -> str:
    """A mask type from REAL_TYPE_MIX: one draw."""
    return str(_weighted(rng, REAL_TYPE_MIX))


def real_color(rng: np.random.Generator) -> tuple[str | None, float]:
    """(colour name or None for the template's own, colour weight) from REAL_COLOR_MIX: one draw pair."""
    return _weighted(rng, REAL_COLOR_MIX), float(0.85 + 0.15 * rng.random())

"""A mask's colouring and light: the template dyed and patterned (premultiplied), the cylinder and face lighting."""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import cv2
import numpy as np

from m2u.masking.appearance import pattern_texture
from m2u.masking.templates import Template


def premultiplied_texture(
    template: Template,
    width_px: float,
    color: tuple | None,
    color_weight: float,
    pattern: str | None,
    pattern_weight: float,
) -> np.ndarray:
    """The template coloured and patterned at the pyramid level for a mask `width_px` wide: premultiplied RGBA."""
    rgb, shade, tint, alpha = template.level(width_px)
    key = (id(template), rgb.shape, color, color_weight, pattern, pattern_weight)
    cached = _TEXTURES.get(key)
    # The entry holds its template: while it is cached, no other template can be given its id. Without that, a
    # template dropped by its process (two threads' first calls each drawing or loading one; a reloaded pack) left
    # its texture to whichever template Python next gave its id, another type's or pose's.
    if cached is not None and cached[0] is template:
        with contextlib.suppress(KeyError):  # another thread may have evicted it since
            _TEXTURES.move_to_end(key)
        return cached[1]
    fabric = rgb
    tint3 = tint[..., None]
    if color is not None:
        fabric = fabric * (1.0 - color_weight * tint3) + np.asarray(color, np.float32) * (
            color_weight * tint3
        )
    if pattern is not None:
        texture, multiply = pattern_texture(pattern, rgb.shape[1], rgb.shape[0])
        if multiply:
            fabric = fabric * (1.0 - pattern_weight * tint3 + pattern_weight * tint3 * texture)
        else:
            fabric = fabric * (1.0 - pattern_weight * tint3) + texture * (pattern_weight * tint3)
    shaded = np.clip(fabric * shade[..., None], 0.0, 1.0)
    texture = np.ascontiguousarray(np.dstack([shaded * alpha[..., None], alpha]), dtype=np.float32)
    _TEXTURES[key] = (template, texture)
    while len(_TEXTURES) > 64:
        with contextlib.suppress(KeyError):  # emptied by another thread meanwhile
            _TEXTURES.popitem(last=False)
    return texture


_TEXTURES: OrderedDict[tuple, tuple[Template, np.ndarray]] = OrderedDict()


def cylinder_gain(tex_w: int, yaw: float) -> np.ndarray:
    """Brightness per texture column of a mask wrapped round the face like a cylinder, seen under yaw: the far
    side darkens."""
    u = (np.arange(tex_w, dtype=np.float32) + 0.5) / tex_w
    theta = (u - 0.5) * 1.8 + 0.8 * yaw
    return (0.80 + 0.20 * np.cos(theta)).astype(np.float32)


def lighting_gain(
    region: np.ndarray, coverage: np.ndarray, strength: float, eye_distance: float
) -> np.ndarray:
    """Per-pixel gain carrying the face's brightness and its low-frequency gradient onto the mask."""
    h, w = region.shape[:2]
    # Heavy blur via a small image: only the light's direction matters, not the mouth or nostrils below (so
    # 8-bit luminance is precise enough).
    factor = max(1.0, eye_distance / 6.0)
    small = cv2.resize(
        cv2.cvtColor(np.ascontiguousarray(region), cv2.COLOR_RGB2GRAY),
        (max(1, round(w / factor)), max(1, round(h / factor))),
        interpolation=cv2.INTER_AREA,
    )
    small = cv2.GaussianBlur(small.astype(np.float32) * np.float32(1 / 255), (0, 0), 2.5)
    # The mean brightness under the mask, and the gain, are taken at the small scale too: the light is smooth.
    weights = cv2.resize(coverage, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA) > 0.5
    mean = float(small[weights].mean()) if weights.any() else float(small.mean())
    overall = float(np.clip((mean / 0.5) ** (0.5 * strength), 0.55, 1.1))
    gain = (np.clip(small / max(mean, 1e-3), 0.7, 1.3) ** strength * overall).astype(np.float32)
    return cv2.resize(gain, (w, h), interpolation=cv2.INTER_LINEAR)

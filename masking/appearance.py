"""Colours and patterns: parsing user choices and building pattern textures (cached per process)."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import cv2
import numpy as np

from m2u.core.errors import SettingError
from m2u.masking.templates import COLORS, TEXTURE_HEIGHT, TEXTURE_WIDTH

PATTERNS: tuple[str, ...] = ("stripes", "dots", "check", "camo", "floral")
_HEX = re.compile(r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})$")


def parse_color(text: str) -> tuple[float, float, float]:
    """A colour name from COLORS or #rrggbb / #rgb, as RGB in 0..1."""
    key = text.strip().lower()
    if key in COLORS:
        return COLORS[key]
    match = _HEX.match(key)
    if not match:
        raise ValueError(f"unknown colour {text!r}: use #rrggbb or one of {', '.join(COLORS)}")
    digits = match.group(1)
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    red, green, blue = (int(digits[i : i + 2], 16) / 255.0 for i in (0, 2, 4))
    return red, green, blue


def color_to_hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{int(round(min(max(c, 0.0), 1.0) * 255)):02x}" for c in rgb)


def _uv(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    # Pixel units of the base texture so patterns keep their scale on every pyramid level.
    x = (np.arange(width, dtype=np.float32) + 0.5) * (TEXTURE_WIDTH / width)
    y = (np.arange(height, dtype=np.float32) + 0.5) * (TEXTURE_HEIGHT / height)
    return np.meshgrid(x, y)


def _procedural(name: str, width: int, height: int) -> np.ndarray:
    """A multiplicative pattern (1 = no change, lower = ink) as (H, W, 3) float32."""
    x, y = _uv(width, height)
    if name == "stripes":
        ink = (np.sin(2 * np.pi * (x + 0.35 * y) / 48.0) > 0.35).astype(np.float32)
        colour = np.array((0.35, 0.4, 0.75), np.float32)
    elif name == "dots":
        cx, cy = (x % 40.0) - 20.0, ((y + 20.0 * ((x // 40.0) % 2)) % 40.0) - 20.0
        ink = np.clip(9.0 - np.hypot(cx, cy), 0.0, 1.0)
        colour = np.array((0.85, 0.3, 0.35), np.float32)
    elif name == "check":
        ink = 0.5 * ((x % 64.0 < 32.0).astype(np.float32) + (y % 64.0 < 32.0).astype(np.float32))
        colour = np.array((0.45, 0.55, 0.45), np.float32)
    elif name == "camo":
        rng = np.random.default_rng(11)  # fixed: a pattern is a template detail, not per-face randomness
        noise = cv2.resize(
            rng.standard_normal((12, 18)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC
        )
        ink = np.clip((noise - 0.2) * 4.0, 0.0, 1.0)
        colour = np.array((0.35, 0.42, 0.25), np.float32)
    elif name == "floral":
        cx, cy = (x % 80.0) - 40.0, (y % 80.0) - 40.0
        angle, radius = np.arctan2(cy, cx), np.hypot(cx, cy)
        petal = 16.0 + 8.0 * np.cos(5 * angle)
        ink = np.clip(petal - radius, 0.0, 1.0) * (radius > 5.0)
        colour = np.array((0.9, 0.45, 0.6), np.float32)
    else:
        raise ValueError(f"unknown pattern {name!r}: use an image file or one of {', '.join(PATTERNS)}")
    return (1.0 - ink[..., None] * (1.0 - colour)).astype(np.float32)


# A pattern image is tiled across the mask: a tile is a third of the mask's width and keeps the image's aspect,
# so an image of 1x100000 px would make one tile 100000 times as tall as wide (18 GiB per face).
PATTERN_MAX_SIDE = 4096
PATTERN_MAX_ASPECT = 8.0


def check_pattern_image(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of a pattern image file, read from its header; ValueError naming --pattern when it cannot
    be a pattern (not an image, a side over PATTERN_MAX_SIDE, or sides more than PATTERN_MAX_ASPECT apart)."""
    from PIL import Image, UnidentifiedImageError

    from m2u.core.imageio import ImageReadError, open_regular

    try:
        with open_regular(path) as handle, Image.open(handle) as image:
            width, height = image.size
    except ImageReadError as exc:
        raise SettingError("pattern", f"{path}: {exc.reason}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SettingError("pattern", f"{path} is not a readable image ({exc})") from None
    if max(width, height) > PATTERN_MAX_SIDE or max(width, height) > PATTERN_MAX_ASPECT * max(
        1, min(width, height)
    ):
        raise SettingError(
            "pattern",
            f"{path} is {width}x{height} px; a pattern image must be at most {PATTERN_MAX_SIDE} px per "
            f"side with sides within 1:{PATTERN_MAX_ASPECT:g} of each other",
        )
    return width, height


@functools.lru_cache(maxsize=64)
def pattern_texture(pattern: str, width: int, height: int) -> tuple[np.ndarray, bool]:
    """(texture, multiply) at the given size: procedural patterns multiply the fabric colour, image files (tiled
    to the texture's scale) replace it."""
    if pattern in PATTERNS:
        return _procedural(pattern, width, height), True
    path = Path(pattern)
    if not path.is_file():
        raise ValueError(f"pattern {pattern!r} is neither a file nor one of {', '.join(PATTERNS)}")
    from m2u.core.imageio import read_image  # local: keeps this module free of Pillow when unused

    check_pattern_image(path)
    image = read_image(path).astype(np.float32) / 255.0
    # Tile the image so one tile spans a third of the mask width, then crop to the texture; a tile is never
    # taller than the texture (the crop would throw the rest away).
    tile_w = max(1, width // 3)
    tile_h = min(max(1, height), max(1, round(image.shape[0] * tile_w / image.shape[1])))
    tile = cv2.resize(image, (tile_w, tile_h), interpolation=cv2.INTER_AREA)
    reps = (height // tile_h + 1, width // tile_w + 1, 1)
    return np.tile(tile, reps)[:height, :width].copy(), False

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

# "print": a bold multi-colour print drawn anew for every face (patchwork, blotches, motifs on a ground, bands),
# opaque as printed cloth is; the face's draw is kept in the pattern's name, "print-<seed>" (m2u.masking.render).
PRINT = "print"
PATTERNS: tuple[str, ...] = ("stripes", "dots", "check", "camo", "floral", PRINT)
_PRINT_NAME = re.compile(r"^print-(\d+)$")


def print_pattern(rng: np.random.Generator) -> str:
    """One face's multi-colour print, as the pattern name that redraws it."""
    return f"{PRINT}-{int(rng.integers(2**31))}"


def is_print(pattern: str | None) -> bool:
    return pattern is not None and _PRINT_NAME.match(pattern) is not None


def pattern_family(pattern: str) -> str:
    """The pattern a mask's recorded pattern belongs to: every face's own print ("print-<seed>") is a "print"."""
    return PRINT if is_print(pattern) else pattern


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
        with open_regular(path) as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                raise ImageReadError("empty file (0 bytes)", path)
            with Image.open(handle) as image:
                width, height = image.size
    except ImageReadError as exc:
        raise SettingError("pattern", f"{path}: {exc.reason}") from None
    except UnidentifiedImageError:
        # Pillow's own text names its file object ("<_io.BufferedReader name=3>"): said as the inputs' reader says it.
        raise SettingError("pattern", f"{path}: not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
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


def _palette(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` colours of a print: hues spread round the wheel from a random start, saturation and value drawn
    per colour (prints mix strong and pale inks on light or dark grounds)."""
    hues = (rng.uniform(0, 1) + np.arange(count) / count + rng.uniform(-0.08, 0.08, count)) % 1.0
    hsv = np.stack([hues * 180, rng.uniform(0.25, 1.0, count) * 255, rng.uniform(0.15, 1.0, count) * 255], 1)
    rgb = cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0]
    return rgb.astype(np.float32) / 255.0


def nearest_centre_cells(centres: np.ndarray, values: np.ndarray, width: int, height: int) -> np.ndarray:
    """(height, width) map of `values[k]` of the centre k nearest each pixel (centres in base-texture pixels,
    TEXTURE_WIDTH x TEXTURE_HEIGHT): a patchwork's cells, with straight edges at any size."""
    # OpenCV's distance transform labels every pixel by its nearest seed in one pass (a centre-by-pixel distance
    # table is hundreds of MB at 768 px). Until render version 5 the cells were found on a grid of 8-pixel steps
    # and enlarged, and their edges were staircases of 8-pixel blocks.
    seeds = np.ones((height, width), np.uint8)
    at = np.minimum(
        (centres * (width / TEXTURE_WIDTH, height / TEXTURE_HEIGHT)).astype(int), (width - 1, height - 1)
    )
    seeds[at[:, 1], at[:, 0]] = 0
    _, labels = cv2.distanceTransformWithLabels(
        seeds, cv2.DIST_L2, cv2.DIST_MASK_PRECISE, labelType=cv2.DIST_LABEL_PIXEL
    )
    value_of = np.zeros(int(labels.max()) + 1, np.int64)
    # In order: of two centres on one pixel, the later's value (as the nearest-centre search before it chose).
    for (x, y), value in zip(at, values, strict=True):
        value_of[labels[y, x]] = value
    return value_of[labels]


def _printed(seed: int, width: int, height: int) -> np.ndarray:
    """A bold multi-colour print (H, W, 3) in 0..1 drawn from `seed`: real masks in photos carry patchwork, camouflage
    and paisley blotches, scattered motifs (flags, dots, flowers) on a dark or light ground, and bands of colour,
    which the five single-ink patterns never show."""
    rng = np.random.default_rng(seed)
    palette = _palette(rng, int(rng.integers(2, 6)))
    x, y = _uv(width, height)
    scale = rng.uniform(25.0, 110.0)  # a print's feature size in base-texture pixels
    style = ("patchwork", "blotches", "motifs", "bands")[int(rng.integers(4))]
    if style == "patchwork":  # cells of colour round scattered centres (nearest centre wins)
        count = max(4, int(TEXTURE_WIDTH * TEXTURE_HEIGHT / scale**2 / 2))
        centres = rng.uniform(0, 1, (count, 2)) * (TEXTURE_WIDTH, TEXTURE_HEIGHT)
        colours = rng.integers(len(palette), size=count)
        out = palette[nearest_centre_cells(centres, colours, width, height)]
    elif style == "blotches":  # smooth noise cut into the palette's bands (camouflage, paisley-like blotches)
        cells = (max(2, int(TEXTURE_HEIGHT / scale)), max(2, int(TEXTURE_WIDTH / scale)))
        noise = cv2.resize(
            rng.standard_normal(cells).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC
        )
        cuts = np.quantile(noise, np.linspace(0, 1, len(palette) + 1)[1:-1])
        out = palette[np.digitize(noise, cuts)]
    elif style == "motifs":  # discs, rings and stars of the other colours scattered on the first (the ground)
        out = np.empty((height, width, 3), np.float32)
        out[:] = palette[0]
        sx, sy = width / TEXTURE_WIDTH, height / TEXTURE_HEIGHT
        for _ in range(int(rng.integers(6, 40))):
            colour = tuple(float(c) for c in palette[1 + int(rng.integers(len(palette) - 1))])
            centre = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
            radius = max(1, int(rng.uniform(0.3, 1.0) * scale * sx))
            kind = int(rng.integers(3))
            if kind == 0:
                cv2.circle(out, centre, radius, colour, -1, cv2.LINE_AA)
            elif kind == 1:
                cv2.circle(out, centre, radius, colour, max(1, radius // 3), cv2.LINE_AA)
            else:
                angles = np.linspace(0, 2 * np.pi, 11)[:-1] + rng.uniform(0, np.pi)
                radii = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
                star = np.stack(
                    [centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles) * sy / sx], 1
                )
                cv2.fillPoly(out, [np.round(star).astype(np.int32)], colour, cv2.LINE_AA)
    else:  # bands of colour at an angle, of varying widths
        angle = rng.uniform(0, np.pi)
        along = x * np.cos(angle) + y * np.sin(angle)
        widths = rng.uniform(0.3, 1.0, 64) * scale
        edges = np.cumsum(widths) - widths.sum() / 2
        bands = np.digitize(along - along.mean(), edges)
        out = palette[rng.integers(len(palette), size=len(edges) + 1)[bands]]
    return np.ascontiguousarray(out, dtype=np.float32)


@functools.lru_cache(maxsize=64)
def pattern_texture(pattern: str, width: int, height: int) -> tuple[np.ndarray, bool]:
    """(texture, multiply) at the given size: procedural patterns multiply the fabric colour, image files (tiled
    to the texture's scale) and prints ("print-<seed>") replace it."""
    match = _PRINT_NAME.match(pattern)
    if match:
        return _printed(int(match.group(1)), width, height), False
    if pattern == PRINT:
        raise ValueError('"print" is drawn per face: pass "print-<seed>" here (print_pattern gives one)')
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

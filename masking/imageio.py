"""Reading any common image file into uint8 RGB, with a clear reason when it cannot be read.

Policy for very large files: `read_image` refuses files over `max_pixels` (default 100 MP, so a 8000×8000 =
64 MP photo is read in full; the limit guards against decompression bombs). Detection on large images works on a
downscaled copy (see `DetectorConfig.max_side`), landmarks are then fitted on the full-resolution image.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 100_000_000

# File suffixes the CLI and dataset builders treat as images (lower case, with the dot).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


def is_image_entry(path: Path) -> bool:
    """Whether a folder scan takes `path` as an input: an image suffix and not a folder. Broken or looping
    symbolic links are taken too, so they get a row with a reason instead of vanishing from the counts."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir()


def is_hidden(path: Path, folder: Path) -> bool:
    """Whether `path` is hidden below `folder`: its name or a folder between starts with "." (the dataset builder's
    folder scan passes over these, e.g. .ipynb_checkpoints)."""
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def describe_ignored_files(inputs: Iterable[str | os.PathLike], skip_hidden: bool = False) -> str:
    """A sentence naming the files that folder scans of `inputs` pass over (no image suffix, counted by suffix;
    with `skip_hidden` also hidden image files, see is_hidden), so a user sees why fewer rows than files came out;
    "" when there are none."""
    by_suffix: dict[str, int] = {}
    hidden = 0
    for item in inputs:
        folder = Path(item)
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            if path.is_dir():
                continue
            if not is_image_entry(path):
                suffix = path.suffix.lower() or "(none)"
                by_suffix[suffix] = by_suffix.get(suffix, 0) + 1
            elif skip_hidden and is_hidden(path, folder):
                hidden += 1
    sentences = []
    if by_suffix:
        total = sum(by_suffix.values())
        listed = ", ".join(
            f"{suffix} {n}" for suffix, n in sorted(by_suffix.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        sentences.append(
            f"{total} file(s) in the input folders have no image suffix and were not read ({listed})"
        )
    if hidden:
        sentences.append(
            f"{hidden} image file(s) in the input folders are hidden (a name or folder starting with '.') and "
            "were not read"
        )
    return "; ".join(sentences)


class ImageReadError(Exception):
    """An input file that cannot be turned into an RGB image; `.reason` says why in plain words."""

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(reason if path is None else f"{path}: {reason}")


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to uint8 RGB (H, W, 3)."""
    mode = img.mode
    if mode == "RGB":
        return np.array(img)  # one copy, straight from Pillow's buffer
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale: Pillow's convert("L") clips at 255 instead of scaling, so scale ourselves.
        grey = np.asarray(img).astype(np.uint32)
        if mode == "I" and grey.max(initial=0) > 65535:
            grey = grey >> 16
        grey8 = (grey >> 8).astype(np.uint8) if grey.max(initial=0) > 255 else grey.astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.asarray(img, dtype=np.float32)
        hi = 1.0 if grey.max(initial=0.0) <= 1.0 else 255.0
        grey8 = np.clip(grey / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        # Transparent areas become white, as image viewers usually show them, instead of arbitrary colour.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    rgb = img.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8).copy()


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3) with its EXIF orientation applied.

    Raises ImageReadError for zero-byte, truncated, non-image or over-limit (`max_pixels`) files.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(f"cannot open file ({exc.strerror or exc})", path) from exc
    if not path.is_file():
        raise ImageReadError("not a regular file", path)
    if size == 0:
        raise ImageReadError("empty file (0 bytes)", path)
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check replaces Pillow's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageReadError(
                        f"image too large: {width}x{height} = {width * height / 1e6:.1f} MP "
                        f"exceeds the limit of {max_pixels / 1e6:.1f} MP",
                        path,
                    )
                img.load()
                # A JPEG keeps its EXIF (orientation included) in info["exif"]: without it there is nothing to
                # rotate, and looking for it costs about half as much as decoding a small photo.
                if img.format not in ("JPEG", "MPO") or "exif" in img.info:
                    img = ImageOps.exif_transpose(img)
                array = _to_rgb_array(img)
    except ImageReadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageReadError("not an image (unrecognised format)", path) from exc
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"image too large: {exc}", path) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated or corrupt data as OSError ("image file is truncated", "broken data stream").
        raise ImageReadError(f"corrupt or truncated image ({exc})", path) from exc
    except MemoryError as exc:
        raise ImageReadError("not enough memory to decode the image", path) from exc
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageReadError(f"unexpected decoded shape {array.shape}", path)
    return array

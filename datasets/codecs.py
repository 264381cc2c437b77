"""Image encoding for shard members and decoding in the loader.

OpenCV encodes and decodes PNG and WebP (faster than PIL for both). JPEG is decoded by simplejpeg (libjpeg-turbo,
as OpenCV's, with the same accurate DCT and upsampling: the same pixels) when it is installed: straight into the
caller's buffer in the channel order asked for, ×1.9 OpenCV's rate at 256x256 in benchmarks/loader.py, mostly
from not allocating a fresh image per decode.
"""

from __future__ import annotations

import enum

import cv2
import numpy as np

try:  # an optional speed-up: every format decodes through OpenCV without it
    import simplejpeg
except ImportError:  # pragma: no cover - installed with m2u
    simplejpeg = None


class ImageFormat(enum.StrEnum):
    """How the masked/unmasked members are stored; the mask is always PNG (exact 0/255)."""

    PNG = "png"  # lossless
    WEBP = "webp"  # lossless WebP
    JPG = "jpg"  # lossy; `quality` applies

    @property
    def lossless(self) -> bool:
        return self is not ImageFormat.JPG


DEFAULT_JPEG_QUALITY = 95
# OpenCV's PNG default (level 1) favours speed; decode speed barely depends on the level.
PNG_COMPRESSION = 3
# OpenCV switches WebP to lossless mode for quality values above 100.
_WEBP_LOSSLESS_QUALITY = 101


def _check_rgb(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")


def encode_image(image: np.ndarray, fmt: ImageFormat | str, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """Encode a uint8 RGB image as ``fmt``; deterministic for a given OpenCV build."""
    _check_rgb(image)
    fmt = ImageFormat(fmt)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if fmt is ImageFormat.PNG:
        params = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]
    elif fmt is ImageFormat.WEBP:
        params = [cv2.IMWRITE_WEBP_QUALITY, _WEBP_LOSSLESS_QUALITY]
    else:
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    ok, buf = cv2.imencode(f".{fmt.value}", bgr, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image.shape} image as {fmt.value}")
    return buf.tobytes()


def encode_mask(mask: np.ndarray) -> bytes:
    """Encode a single-channel uint8 mask (0/255) as PNG."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"expected a uint8 (H, W) mask, got {mask.dtype} {mask.shape}")
    ok, buf = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise RuntimeError("OpenCV could not encode the mask")
    return buf.tobytes()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's or PNG's header without Pillow (None: let Pillow read the header). Opening
    every member with Pillow just for its size cost 29 % of a loader worker's time at 256x256 JPEG."""
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":  # the PNG spec puts IHDR first, size big-endian
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if simplejpeg is not None and data[:2] == _JPEG_START:
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        except (ValueError, RuntimeError):
            return None  # damaged: Pillow's reading says why
        return width, height
    return None


def _check_header(data: bytes) -> None:
    """A shard member's size is read from its header and capped before it is decoded: an aligned pair is never
    larger than the largest --size (a crafted member declaring 60000x60000 would take 10 GB)."""
    from m2u.core.imageio import header_problem
    from m2u.datasets.layout import MAX_IMAGE_SIZE

    size = _declared_size(data)
    if size is not None:
        if max(size) > MAX_IMAGE_SIZE:
            raise ValueError(
                f"image member: {size[0]}x{size[1]} pixels exceeds the limit of {MAX_IMAGE_SIZE} pixels per side"
            )
        return
    problem = header_problem(bytes(data), MAX_IMAGE_SIZE)
    if problem:
        raise ValueError(f"image member: {problem}")


_JPEG_START = b"\xff\xd8"


def decode_image(data: bytes, rgb: bool = True, buffer: np.ndarray | None = None) -> np.ndarray:
    """Decode PNG/JPEG/WebP bytes to a uint8 RGB array (BGR, OpenCV's order, with ``rgb=False``).

    ``buffer`` (a writable uint8 array of at least H*W*3 bytes): where a JPEG is decoded to, when it fits; the
    result is then a view of it, valid until the buffer is reused."""
    _check_header(data)
    if simplejpeg is not None and data[:2] == _JPEG_START:
        try:
            return simplejpeg.decode_jpeg(data, "RGB" if rgb else "BGR", buffer=buffer)
        except (ValueError, RuntimeError):
            pass  # CMYK, a buffer too small, damaged bytes: OpenCV decodes it or says it cannot
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("could not decode image bytes")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if rgb else bgr


def decode_mask(data: bytes) -> np.ndarray:
    """Decode a mask PNG to uint8 (H, W)."""
    _check_header(data)
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError("could not decode mask bytes")
    return mask

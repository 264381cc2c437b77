"""Reading any common image file into uint8 RGB, with a clear reason when it cannot be read.

Policy for very large files: `read_image` refuses files over `max_pixels` (default 100 MP, so a 8000×8000 =
64 MP photo is read in full; the limit guards against decompression bombs). Detection on large images works on a
downscaled copy (see `DetectorConfig.max_side`), landmarks are then fitted on the full-resolution image.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import struct
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 100_000_000
# Files larger than this are refused before they are read into memory (a 100 MP 16-bit TIFF is ~600 MB).
DEFAULT_MAX_FILE_BYTES = 2**30

# File suffixes the CLI and dataset builders treat as images (lower case, with the dot).
# .jfif and .jpe: JPEG files under the names browsers and old cameras save them with (a folder scan passed them
# over while the same file named on the command line was read).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


def is_image_entry(path: Path) -> bool:
    """Whether a folder scan takes `path` as an input: an image suffix and not a folder. Broken or looping
    symbolic links are taken too, so they get a row with a reason instead of vanishing from the counts."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir()


def is_hidden(path: Path, folder: Path) -> bool:
    """Whether `path` is hidden below `folder`: its name or a folder between starts with "." (folder scans pass
    over these, e.g. .ipynb_checkpoints; see m2u.core.inputs)."""
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


class ImageReadError(Exception):
    """An input file that cannot be turned into an RGB image; `.reason` says why in plain words."""

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(reason if path is None else f"{path}: {reason}")


class ImageTooLargeError(ImageReadError):
    """An image over the `max_pixels` asked for (or Pillow's own ceiling): each command says what to do of it (where
    it has --max-pixels, that option; else to scale the photo down)."""


def probe(path: str | os.PathLike[str]) -> str:
    """Why `path` cannot be read as an input file, from `stat` alone (nothing is opened); "" when it is a
    readable regular file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "broken symbolic link (its target does not exist)" if os.path.islink(path) else "no such file"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"cannot open file ({exc.strerror or exc})"
    return _mode_problem(info.st_mode) or ("" if os.access(path, os.R_OK) else "permission denied")


def _mode_problem(mode: int) -> str:
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISDIR(mode):
        return "not a regular file (a folder)"
    if stat.S_ISFIFO(mode):
        return "not a regular file (a named pipe, FIFO): not read"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "not a regular file (a device file): not read"
    if stat.S_ISSOCK(mode):
        return "not a regular file (a socket): not read"
    return "not a regular file"


def open_regular(path: str | os.PathLike[str], max_bytes: int | None = None):
    """Open `path` for binary reading only if it is a regular file (checked on the open descriptor, which a
    FIFO or device cannot block: O_NONBLOCK); raises ImageReadError with the reason otherwise."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ImageReadError(f"cannot open file ({probe(path) or exc.strerror or exc})", path) from exc
    try:
        info = os.fstat(fd)
        problem = _mode_problem(info.st_mode)
        if problem:
            raise ImageReadError(problem, path)
        if max_bytes is not None and info.st_size > max_bytes:
            raise ImageReadError(
                f"file too large: {info.st_size / 1e6:.1f} MB exceeds the limit of {max_bytes / 1e6:.1f} MB",
                path,
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_status(info: os.stat_result) -> str:
    """A file's size, modification and change times and inode as one text: the same while the file is unchanged
    (what git's index compares; an edit that restores the modification time still changes the change time)."""
    return f"{info.st_size}\t{info.st_mtime_ns}\t{info.st_ctime_ns}\t{info.st_ino}"


class DigestCache:
    """SHA-256s of regular files, each kept with the file status it was taken at (`file_status`), so a file is
    read again only once it changed. `entries` (key -> (sha256, status)) is what a caller saves and gives back
    next time; `used` holds the entries of this run's calls (what to save when the files seen are all that
    matter). One mechanism for every cache of file digests (m2u-pipeline's faces, a URL dataset's local copy)."""

    def __init__(self, entries: dict[str, tuple[str, str]] | None = None) -> None:
        self.entries: dict[str, tuple[str, str]] = dict(entries or {})
        self.used: dict[str, tuple[str, str]] = {}

    def sha256(self, path: str | os.PathLike[str], key: str | None = None) -> str:
        """The SHA-256 of the regular file at `path` (kept under `key`, default its absolute path); OSError or
        ImageReadError when it cannot be read (never through a FIFO or a device: open_regular)."""
        import hashlib

        key = key if key is not None else os.path.abspath(path)
        status = file_status(os.stat(path))
        memo = self.entries.get(key)
        if memo is None or memo[1] != status:
            with open_regular(path) as handle:
                memo = (hashlib.file_digest(handle, "sha256").hexdigest(), status)
            self.entries[key] = memo
        self.used[key] = memo
        return memo[0]

    def forget(self, key: str) -> None:
        self.entries.pop(key, None)
        self.used.pop(key, None)


def read_input_bytes(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular input file (see open_regular): never blocks on a FIFO, never reads a device."""
    with open_regular(path, max_bytes) as handle:
        try:
            return handle.read()
        except OSError as exc:
            raise ImageReadError(f"cannot read file ({exc.strerror or exc})", path) from exc


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to uint8 RGB (H, W, 3)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return np.array(img)  # one copy, straight from Pillow's buffer
    if mode in _WIDE_GREY:
        # 16-bit greyscale: Pillow's convert("L") clips at 255 instead of scaling, so scale ourselves. A 16-bit file
        # (I;16*) is scaled from 16 bits whatever its values: guessing 8 bits when none exceeded 255 made a dark
        # 16-bit photo 256 times brighter, and one pixel of 256 turned it black. Mode I (32-bit integers, e.g. a
        # TIFF) declares no range, so there its values still decide.
        grey: np.ndarray = np.asarray(img).astype(np.uint32)
        if mode == "I":
            if grey.max(initial=0) > 65535:
                grey = grey >> 16
            grey8 = (grey >> 8).astype(np.uint8) if grey.max(initial=0) > 255 else grey.astype(np.uint8)
        else:
            grey8 = (grey >> 8).astype(np.uint8)
        alpha = _keyed_alpha(img)
        if alpha is not None:
            grey8[alpha == 0] = 255  # its transparent grey level shown on white, as the other modes' alpha
        return np.repeat(grey8[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.asarray(img, dtype=np.float32)
        hi = 1.0 if grey.max(initial=0.0) <= 1.0 else 255.0
        grey8 = np.clip(grey / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    if _has_alpha(img):
        # Transparent areas become white, as image viewers usually show them, instead of arbitrary colour.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    rgb = img.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8).copy()


def as_rgb_image(image: Any, what: str = "image") -> np.ndarray:
    """`image` as a C-contiguous uint8 RGB array (H, W, 3) with at least one pixel, or ValueError: the one check
    of every library call that takes a photo or a crop (detection, masking, unmasking)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{what} must be a uint8 RGB array of shape (H, W, 3), got {got}")
    if not image.shape[0] or not image.shape[1]:
        raise ValueError(f"{what} is empty: shape {image.shape}")
    return np.ascontiguousarray(image)


_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _keyed_alpha(img: Image.Image) -> np.ndarray | None:
    """The alpha of a 16-bit grey image whose one grey level is marked transparent (PNG tRNS), which Pillow's
    convert("RGBA") ignores (it clips the levels); None for any other image."""
    key = img.info.get("transparency")
    if img.mode not in _WIDE_GREY or not isinstance(key, int):
        return None
    return np.where(np.asarray(img) == key, 0, 255).astype(np.uint8)


def _has_alpha(img: Image.Image) -> bool:
    # "transparency": a palette's transparent entries, or the one colour a grey or RGB PNG marks transparent (tRNS)
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


@dataclass(frozen=True)
class Photo:
    """A photo as read for a copy of it to be written back (m2u-unmask): its upright pixels and what the copy keeps."""

    # uint8 (H, W, 3), EXIF orientation applied; a transparent photo shown on white (as `read_image` gives it)
    rgb: np.ndarray
    alpha: np.ndarray | None = None  # uint8 (H, W), upright as `rgb`; None for a photo without transparency
    # Its colour profile: without it a wide-gamut photo (a phone's Display P3) is shown with dull, shifted colours.
    icc_profile: bytes | None = None
    # Its EXIF (date, camera, place) without the orientation (the pixels are upright now) and without the embedded
    # thumbnail (it shows the photo as it was, the mask on).
    exif: bytes | None = None
    # A transparent photo's own colours under its alpha (uint8 (H, W, 3)), which its copy keeps wherever `rgb` was
    # not changed: `rgb` shown on white and given the alpha again would be blended twice (lighter edges).
    colour: np.ndarray | None = None
    # Stored in a grey mode (L, 1, 16-bit or float grey): its copy is written grey too.
    grey: bool = False
    # What its copy cannot keep, each said in the copy's report row: more than 8 bits a channel, frames after the first.
    # What a copy in another format loses besides (transparency, losslessness) is `copy_losses`'.
    losses: tuple[str, ...] = ()
    # The format its data is in (Pillow's name: "PNG", "JPEG"), whatever its file's name says, and that name's suffix.
    format: str | None = None
    suffix: str = ""


# Pillow's grey modes: a photo stored so is written back grey.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "F", *("I;16", "I;16L", "I;16B", "I;16N", "I")})


def _copy_losses(img: Image.Image) -> tuple[str, ...]:
    """What a copy of `img` (opened, not yet loaded) written by m2u loses: m2u works in 8 bits a channel and
    writes one frame."""
    losses = []
    raw_modes = []
    for tile in getattr(img, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        raw_modes.append(
            args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else ""
        )
    if img.mode in ("F", "I", "I;16", "I;16L", "I;16B", "I;16N") or any(
        isinstance(raw, str) and ";16" in raw for raw in raw_modes
    ):
        losses.append("a 16-bit image, written with 8 bits a channel")
    frames = int(getattr(img, "n_frames", 1) or 1)
    if frames > 1:
        losses.append(f"frame 1 of {frames} only: the other frames are not in the copy")
    return tuple(losses)


def read_photo(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo:
    """`read_image`, with the alpha channel, colour profile and EXIF that `write_photo` gives a copy back."""
    path = Path(path)
    with open_regular(path) as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise ImageReadError("empty file (0 bytes)", path)
        photo: Photo = _decode(handle, path, max_pixels, whole_photo=True)
        return replace(photo, suffix=path.suffix)


# Formats whose files keep every pixel as it was written: one of these written as JPEG is no longer lossless.
_LOSSLESS = frozenset({"PNG", "BMP", "GIF", "TIFF", "PPM", "TGA"})


def copy_losses(photo: Photo, path: str | os.PathLike[str]) -> tuple[str, ...]:
    """What the copy of `photo` that `write_photo` writes at `path` cannot keep, each a phrase for its report row:
    the photo's own (`Photo.losses`: 16 bits, frames), its transparency where the copy's format has none, and its
    losslessness where lossless data is written as JPEG because its file's name says JPEG (a PNG named x.jpg). By
    the data's own format, not its name."""
    written = photo_format(Path(path).suffix)
    losses = list(photo.losses)
    if photo.alpha is not None and (photo.alpha < 255).any() and written not in _KEEP_ALPHA:
        losses.append(f"transparency: {written} has none, so transparent areas are written as shown on white")
    if written == "JPEG" and photo.format in _LOSSLESS and photo_format(photo.suffix) == written:
        losses.append(
            f"{photo.format} data in a file named {photo.suffix}: written as JPEG, as its name says, so no longer "
            "lossless (output format png keeps it so)"
        )
    return tuple(losses)


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3) with its EXIF orientation applied.

    Raises ImageReadError for missing, non-regular (FIFO, device: never read), zero-byte, truncated, non-image or
    over-limit (`max_pixels`) files. A JPEG lacking only its end marker is whole, and read
    (`jpeg_lacking_only_its_end`).
    """
    path = Path(path)
    with open_regular(path) as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise ImageReadError("empty file (0 bytes)", path)
        return _decode(handle, path, max_pixels)


def decode_image(data: bytes, path: str | os.PathLike | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
    """`read_image` for bytes already read (e.g. by `read_input_bytes`, to hash and decode the same bytes)."""
    if not data:
        raise ImageReadError("empty file (0 bytes)", path)
    return _decode(io.BytesIO(data), path, max_pixels)


def _pixels(count: int) -> str:
    """A pixel count as people say it: megapixels, or pixels where that would read 0.0 MP."""
    return f"{count / 1e6:.1f} MP" if count >= 50_000 else f"{count} pixels"


def _rgb_profile(icc: bytes | None) -> bytes | None:
    """`icc` where it describes RGB pixels: a CMYK or greyscale photo's profile would mislabel the RGB copy (its
    pixels were converted without it), and a profile that cannot be read is not passed on."""
    if not icc:
        return None
    from PIL import ImageCms

    try:
        space = ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space
    except (OSError, ValueError, TypeError):
        return None
    return icc if space.strip() == "RGB" else None


# What Pillow raises on EXIF it cannot parse or write back (a tag of the wrong type, a broken header).
_EXIF_FAILURES = (
    SyntaxError,
    TypeError,
    ValueError,
    AttributeError,
    KeyError,
    IndexError,
    struct.error,
    OSError,
)


# The turn that shows a photo upright, by its EXIF orientation (the EXIF specification's table). Applied here, not
# by Pillow's ImageOps.exif_transpose: that also writes the EXIF back, and fails on a tag it cannot write (an
# XResolution stored as text), which left such a photo lying on its side.
_ORIENTATION_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright(img: Image.Image) -> Image.Image:
    """`img` turned as its EXIF (or XMP) orientation says; as stored where that cannot be read (a viewer shows
    it as stored too)."""
    # A JPEG keeps its orientation in info["exif"] or ["xmp"]: without either there is nothing to rotate, and
    # looking costs about half as much as decoding a small photo.
    if img.format in ("JPEG", "MPO") and "exif" not in img.info and "xmp" not in img.info:
        return img
    try:
        turn = _ORIENTATION_TURNS.get(img.getexif().get(ExifTags.Base.Orientation, 1))
    except _EXIF_FAILURES:
        return img
    return img.transpose(turn) if turn is not None else img


def _exif_of_upright(img: Image.Image, width: int, height: int) -> bytes | None:
    """The EXIF a copy of the upright photo keeps (see Photo.exif); None where the photo's cannot be written back."""
    # Only an EXIF block of its own (JPEG, PNG, WebP; ImageMagick writes a PNG's as hex text): a TIFF's tags are its
    # image structure (strips, compression).
    if "exif" not in img.info and _PNG_TEXT_EXIF not in img.info:
        return None
    try:
        exif = img.getexif()
        if not exif:
            return None
        exif.pop(ExifTags.Base.Orientation, None)
        # The sizes some cameras record, as the upright pixels have them (a photo turned on reading swaps them).
        for ifd, tags in ((exif, _IFD0_SIZE_TAGS), (exif.get_ifd(ExifTags.IFD.Exif), _EXIF_SIZE_TAGS)):
            for tag, value in zip(tags, (width, height), strict=True):
                if tag in ifd:
                    ifd[tag] = value
        return exif.tobytes()  # Pillow writes IFD0 and its sub-IFDs, not IFD1 (the thumbnail)
    except _EXIF_FAILURES:
        return None  # a tag of the wrong type: the pixels are what matters, the copy goes without


_PNG_TEXT_EXIF = "Raw profile type exif"  # the text chunk ImageMagick keeps a PNG's EXIF in (Pillow reads it)
_IFD0_SIZE_TAGS = (ExifTags.Base.ImageWidth, ExifTags.Base.ImageLength)
_EXIF_SIZE_TAGS = (ExifTags.Base.ExifImageWidth, ExifTags.Base.ExifImageHeight)


JPEG_END = b"\xff\xd9"  # a JPEG's end marker (EOI)
# The frame markers of Huffman-coded JPEGs (baseline, extended sequential, progressive): libjpeg-turbo warns when
# such a scan's data ends early. An arithmetic-coded scan cut short is padded with zeros without a warning.
_HUFFMAN_FRAMES = frozenset({0xC0, 0xC1, 0xC2})


def _jpeg_scans(data: bytes) -> tuple[int, list[int], list[tuple[list[int], int, int, int]]] | None:
    """A JPEG's frame marker, its component ids and its scans (each: the component ids, first and last coefficient,
    the successive-approximation low bit Al), read from the marker segments of a JPEG that ends inside the
    entropy-coded data of its last scan; None for any other (an end marker before its end: an MPO's first image, a
    file cut inside a marker segment), or where they cannot be read."""
    frame, components, scans, i, size = 0, [], [], 2, len(data)
    while i + 4 <= size:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # a fill byte
            i += 1
            continue
        if marker == 0xD9:
            return None
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a segment
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        segment = data[i + 4 : i + 2 + length]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header (SOFn)
            if len(segment) < 6 or len(segment) < 6 + 3 * segment[5]:
                return None
            frame, components = marker, [segment[6 + 3 * k] for k in range(segment[5])]
        elif marker == 0xDA:  # a scan: its header, then entropy-coded data up to the next marker
            count = segment[0] if segment else 0
            if len(segment) < 4 + 2 * count:
                return None
            ids = [segment[1 + 2 * k] for k in range(count)]
            scans.append((ids, segment[1 + 2 * count], segment[2 + 2 * count], segment[3 + 2 * count] & 15))
            i += 2 + length
            while True:  # to the first FF that is neither a stuffed data byte (FF 00) nor a restart marker
                i = data.find(b"\xff", i)
                if i < 0 or i + 1 >= size:  # the data ends in this scan (a last lone FF: EOI's first byte)
                    return (frame, components, scans) if frame else None
                if data[i + 1] != 0x00 and not 0xD0 <= data[i + 1] <= 0xD7:
                    break
                i += 2
            continue
        i += 2 + length
    return None


def _with_end(data: bytes) -> bytes:
    """`data` with the JPEG end marker appended (its last byte only, where it ends in the first)."""
    return data + (JPEG_END[1:] if data.endswith(JPEG_END[:1]) else JPEG_END)


def jpeg_lacking_only_its_end(data: bytes) -> bool:
    """Whether `data` is a whole JPEG but for its end marker (EOI, FF D9; or its last byte), as some cameras,
    scanners and scripts leave them: it ends in its last scan's data, its scans hold every coefficient of every
    component to full precision (so no later scan of a progressive JPEG is missing), and libjpeg-turbo decodes it,
    the marker appended, without the warning it gives where a scan's data ends early. Pillow cannot tell such a
    file from one cut anywhere: with the marker appended it decodes a cut file too, the missing part grey. A file
    cut anywhere else, at a progressive scan's end included, is not one (every cut of baseline, progressive,
    restart-marker, greyscale and 4:4:4 JPEGs checked); nor is an arithmetic-coded JPEG, whose cut scans libjpeg
    pads without a warning."""
    if not data.startswith(b"\xff\xd8") or data.endswith(JPEG_END):
        return False
    parsed = _jpeg_scans(data)
    if parsed is None or parsed[0] not in _HUFFMAN_FRAMES:
        return False
    _, components, scans = parsed
    for component in components:
        for k in range(64):
            if not any(
                component in ids and first <= k <= last and low == 0 for ids, first, last, low in scans
            ):
                return False
    try:
        import simplejpeg
    except ImportError:  # an install without it (a device kit's): refused as cut, as before this check
        return False
    try:  # CMYK and YCCK (4 components) decode as CMYK: libjpeg-turbo gives no RGB of them
        simplejpeg.decode_jpeg(_with_end(data), "CMYK" if len(components) == 4 else "RGB", strict=True)
    except ValueError:  # "Corrupt JPEG data: premature end of data segment", "... must resync ..."
        return False
    return True


def _decode(handle, path, max_pixels: int, whole_photo: bool = False) -> Any:
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check replaces Pillow's decompression-bomb warning; EXIF it cannot parse leaves the
            # photo as stored (`_upright`), without its file-less "Corrupt EXIF data" warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", message=".*EXIF", category=UserWarning)
            with Image.open(handle) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageTooLargeError(
                        f"image too large: {width}x{height} = {_pixels(width * height)} "
                        f"exceeds the limit of {_pixels(max_pixels)}",
                        path,
                    )
                losses = _copy_losses(img) if whole_photo else ()
                img.load()
                upright = _upright(img)
                array = _to_rgb_array(upright)
                if whole_photo:
                    alpha = colour = None
                    if _has_alpha(upright):
                        alpha = _keyed_alpha(upright)
                        if alpha is None:
                            rgba = np.asarray(upright.convert("RGBA"))
                            alpha, colour = rgba[..., 3].copy(), rgba[..., :3].copy()
                    photo = Photo(
                        array,
                        alpha,
                        _rgb_profile(img.info.get("icc_profile")),
                        _exif_of_upright(img, *upright.size),
                        colour,
                        grey=upright.mode in _GREY_MODES,
                        losses=losses,
                        format=img.format,
                    )
    except ImageReadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageReadError("not an image (unrecognised format)", path) from exc
    except Image.DecompressionBombError as exc:
        # Pillow refuses twice its own limit while opening, before our check sees the size: said in our words,
        # with Pillow's ceiling where a limit above it was asked for.
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = _pixels(int(declared.group(1))) if declared else "its size"
        ceiling = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        limit = (
            f"the limit of {_pixels(max_pixels)}"
            if max_pixels <= ceiling
            else f"Pillow's ceiling of {_pixels(ceiling)} (the limit asked for: {_pixels(max_pixels)})"
        )
        raise ImageTooLargeError(f"image too large: {size} exceeds {limit}", path) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated or corrupt data as OSError ("image file is truncated", "broken data stream").
        # A JPEG whole but for its end marker is read as the whole file it is (Pillow refuses it as cut).
        if str(exc).startswith("image file is truncated"):
            handle.seek(0)
            data = handle.read()
            if jpeg_lacking_only_its_end(data):
                return _decode(io.BytesIO(_with_end(data)), path, max_pixels, whole_photo)
        raise ImageReadError(f"corrupt or truncated image ({exc})", path) from exc
    except MemoryError as exc:
        raise ImageReadError("not enough memory to decode the image", path) from exc
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageReadError(f"unexpected decoded shape {array.shape}", path)
    return photo if whole_photo else array


def image_suffix_problem(path: str | os.PathLike[str]) -> str:
    """Why `write_image` cannot write an image at `path` by its suffix ("" when it can): checked before the work
    that makes the image (a contact sheet named .txt failed in OpenCV's encoder after rendering)."""
    import cv2

    suffix = Path(path).suffix
    if suffix and not cv2.haveImageWriter(f"x{suffix}"):
        return f"{path}: no image format writes {suffix!r} (give .png, .jpg, .webp, .tif or .bmp)"
    return ""


def write_image(
    path: str | os.PathLike[str], image: np.ndarray, rgb: bool = True, params: list[int] | None = None
) -> Path:
    """Encode `image` (RGB, RGBA, or single-channel) in the format of `path`'s suffix and write it through
    m2u.core.fileio.atomic_write: complete or not at all (cv2.imwrite alone returns False on a full disk and
    leaves a truncated file), never through a link, never over a file m2u did not write."""
    from m2u.core.fileio import atomic_write_bytes

    return atomic_write_bytes(path, encode_image(path, image, rgb, params))


def encode_image(
    path: str | os.PathLike[str], image: np.ndarray, rgb: bool = True, params: list[int] | None = None
) -> bytes:
    """The bytes `write_image` writes at `path` for `image` (a caller can compare them with a file already there)."""
    import cv2

    path = Path(path)
    problem = image_suffix_problem(path)
    if problem:
        raise ValueError(problem)
    if rgb and image.ndim == 3:
        pixels = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    else:
        pixels = image
    ok, encoded = cv2.imencode(path.suffix or ".png", pixels, params or [])
    if not ok:
        raise OSError(f"cannot encode {path} as {path.suffix or '.png'}")
    return encoded.tobytes()


# How `write_photo` saves each format it writes, by Pillow's format name. JPEG: quality 95, colour not subsampled
# (4:2:0 moved pixels away from any restored face by up to 90 levels at colour edges; 4:4:4 by a few, files ~20 %
# larger; the bytes OpenCV wrote with the same settings). WebP lossless. PNG at zlib level 1 (a 12 MP photo: 0.65 s;
# Pillow's default level 6 took 2.4 s for a file 19 % smaller). TIFF uncompressed: Pillow's compressed TIFF writer
# (libtiff) fails on EXIF's sub-IFDs.
_PHOTO_SAVE_OPTIONS: dict[str, dict[str, Any]] = {
    "JPEG": {"quality": 95, "subsampling": 0},
    "PNG": {"compress_level": 1},
    "WEBP": {"lossless": True},
    "TIFF": {},
    "BMP": {},
}
_KEEP_ALPHA = frozenset({"PNG", "WEBP", "TIFF"})
_KEEP_METADATA = frozenset({"JPEG", "PNG", "WEBP", "TIFF"})  # BMP holds neither a profile nor EXIF


def photo_format(suffix: str) -> str | None:
    """The format `write_photo` writes for a file suffix (any case), or None when it writes none for it."""
    found = Image.registered_extensions().get(suffix.lower())
    return found if found in _PHOTO_SAVE_OPTIONS else None


def write_photo(path: str | os.PathLike[str], rgb: np.ndarray, like: Photo | None = None) -> Path:
    """Write `rgb` (uint8 (H, W, 3)) in the format of `path`'s suffix as a copy of `like`: its alpha channel where
    the format has one, its colour profile and EXIF where the format holds them. Through
    m2u.core.fileio.atomic_write: complete or not at all, never through a link or over a file m2u did not write.

    Pillow writes these rather than OpenCV (`write_image`): OpenCV's encoders take no colour profile or EXIF."""
    from m2u.core.fileio import atomic_write_bytes

    path = Path(path)
    format_name = photo_format(path.suffix)
    if format_name is None:
        raise ValueError(f"{path}: cannot write a photo as {path.suffix or 'a file without a suffix'}")
    rgb = as_rgb_image(rgb, "the photo")
    if like is not None and like.rgb.shape != rgb.shape:
        raise ValueError(
            f"the photo is {rgb.shape[1]}x{rgb.shape[0]}, the one it copies {like.rgb.shape[1]}x"
            f"{like.rgb.shape[0]}: a copy keeps its photo's size"
        )
    options = dict(_PHOTO_SAVE_OPTIONS[format_name])
    if like is not None and like.alpha is not None and format_name in _KEEP_ALPHA:
        # Its own colours under its alpha where nothing was restored (see Photo.colour), then the alpha.
        colour = like.colour if like.colour is not None else like.rgb
        kept = np.all(rgb == like.rgb, axis=2, keepdims=True)
        image = Image.fromarray(np.dstack([np.where(kept, colour, rgb), like.alpha]), "RGBA")
    else:
        image = Image.fromarray(rgb)
    if like is not None and like.grey and not np.any(rgb[..., :1] != rgb[..., 1:]):
        # A grey photo's copy is grey too (its restored pixels were made grey: m2u.inference.paste).
        image = image.convert("LA" if image.mode == "RGBA" else "L")
    if like is not None and format_name in _KEEP_METADATA:
        options.update(
            {key: value for key, value in (("icc_profile", like.icc_profile), ("exif", like.exif)) if value}
        )
    encoded = io.BytesIO()
    try:
        image.save(encoded, format=format_name, **options)
    except ValueError:
        if "exif" not in options:
            raise
        # An EXIF block the format cannot hold (JPEG's is at most 64 KB; a PNG's can be larger): the copy goes
        # without it rather than not at all.
        options.pop("exif")
        encoded = io.BytesIO()
        image.save(encoded, format=format_name, **options)
    return atomic_write_bytes(path, encoded.getvalue())


def header_problem(source: str | os.PathLike[str] | bytes, max_side: int) -> str:
    """Why the image in `source` (a path or the encoded bytes) must not be decoded, read from its header alone
    ("" when it may): a side over `max_side` pixels, or no image header Pillow knows. A size read from a file is
    capped before anything is allocated from it (a 581 kB PNG can declare 12000x12000 RGBA: 576 MB decoded)."""
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes | bytearray) else open_regular(source)
        with handle, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle) as img:  # lazy: reads the header only
                width, height = img.size
    except ImageReadError as exc:
        return exc.reason
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as exc:
        return f"not a readable image ({type(exc).__name__})"
    if width > max_side or height > max_side:
        return f"{width}x{height} pixels exceeds the limit of {max_side} pixels per side"
    return ""

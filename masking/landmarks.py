"""dlib's 68-point shape predictor, run in numpy from a converted copy of its model: the same points as dlib's own.

Why by hand: dlib parses its 100 MB model file on every start (0.45-0.7 CPU-seconds, a quarter of m2u-mask's CPU on
200 photos), and no library reads dlib's format. The model (an ensemble of regression trees, Kazemi & Sullivan
2014: 15 cascade levels of 500 trees of depth 4, 500 pixel features per level, leaves of 136 floats) is converted
once into a cache file in m2u's cache folder (`LandmarkModel.convert`: ~6 s and a peak of ~0.65 GB once; 66 MB)
that loads in ~0.05 s; where that folder cannot be written, dlib's own predictor is used. Each step follows dlib's
shape_predictor so that the floats come out the same: the similarity transform to the mean shape, the feature
pixels rounded the way dlib rounds (intensity (r+g+b)//3), the split tests, and the leaves added in tree order in
float32 (OpenCV's row reduction adds rows in order). A conversion is checked against dlib itself on a fixed set of
boxes before its cache is written; where it disagrees, dlib's own predictor is used
(`m2u.masking.detect.landmark_fit`, which also says when each one is used: the converted model is cheaper to load,
dlib's own cheaper per face).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
from array import array
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from m2u.core.fileio import write_cache_file

FORMAT = 2  # of the cache file; a new one is converted when this changes
FIT_BATCH = 16  # faces fitted together (LandmarkModel.fit_many)
_ARRAYS = ("initial", "anchors", "deltas", "idx1", "idx2", "thresholds", "leaves")
_DECODE_CHUNK = 1 << 22  # tokens decoded at a time: the conversion's temporaries stay a few tens of MB


def _tokens(data: bytes) -> np.ndarray:
    """Every integer of a dlib serialization, in order: dlib writes each integer as one byte (its size in bytes,
    its sign in bit 7) and that many little-endian bytes, and a float as two of them (mantissa, exponent). Where each
    one starts is a chain through the sizes (a plain loop: ~3 s for the 100 MB model, once); decoding is vectorised,
    a chunk of tokens at a time (the model has ~33 million)."""
    if len(data) >= 2**31:
        raise ValueError("dlib file too large")
    starts = array("i")  # offsets fit in 32 bits (checked above): half the memory of 64-bit ones
    append, position, end = starts.append, 0, len(data)
    while position < end:
        append(position)
        position += 1 + (data[position] & 0x0F)
    if position != end:
        raise ValueError("truncated dlib file")
    first = np.frombuffer(starts, np.int32)
    raw = np.frombuffer(data, np.uint8)
    values = np.empty(len(first), np.int64)
    for chunk in range(0, len(first), _DECODE_CHUNK):
        at = first[chunk : chunk + _DECODE_CHUNK].astype(np.int64)
        heads = raw[at]
        sizes = heads & 0x0F
        part = np.zeros(len(at), np.int64)
        for k in range(int(sizes.max(initial=0))):
            has = sizes > k
            part[has] |= raw[at[has] + 1 + k].astype(np.int64) << (8 * k)
        np.negative(part, out=part, where=(heads & 0x80) != 0)
        values[chunk : chunk + _DECODE_CHUNK] = part
    return values


class _Cursor:
    def __init__(self, tokens: np.ndarray):
        self.tokens, self.at = tokens, 0

    def take(self, count: int) -> np.ndarray:
        part = self.tokens[self.at : self.at + count]
        if len(part) != count:
            raise ValueError("truncated dlib shape predictor")
        self.at += count
        return part

    def integer(self) -> int:
        return int(self.take(1)[0])

    def floats(self, count: int) -> np.ndarray:
        pairs = self.take(2 * count).reshape(count, 2)
        return np.ldexp(pairs[:, 0].astype(np.float64), pairs[:, 1]).astype(np.float32)

    def column_matrices(self, count: int, size: int) -> np.ndarray:
        """`count` (size x 1) float matrices (dlib writes each one's sizes negated, then its values)."""
        block = self.take(count * (2 + 2 * size)).reshape(count, 2 + 2 * size)
        if np.any(block[:, 0] != -size) or np.any(block[:, 1] != -1):
            raise ValueError("unexpected matrix sizes in the dlib shape predictor")
        pairs = block[:, 2:].reshape(count, size, 2)
        return np.ldexp(pairs[..., 0].astype(np.float64), pairs[..., 1]).astype(np.float32)


def _parse(path: Path) -> dict[str, np.ndarray]:
    """dlib's shape_predictor serialization (version 1): the mean shape, the forests (per tree its splits (two
    feature indexes and a threshold) and its leaves), then per level the features' anchor landmarks and offsets."""
    cursor = _Cursor(_tokens(path.read_bytes()))
    if cursor.integer() != 1:
        raise ValueError(f"{path}: not a dlib shape predictor of version 1")
    size = -cursor.integer()
    cursor.integer()  # the mean shape's column count, 1 (negated)
    initial = cursor.floats(size)
    idx1: list[np.ndarray] = []
    idx2: list[np.ndarray] = []
    thresholds: list[np.ndarray] = []
    leaves: list[np.ndarray] = []
    for _ in range(cursor.integer()):
        level: list[list] = [[], [], [], []]
        for _ in range(cursor.integer()):
            splits = cursor.take(4 * cursor.integer()).reshape(-1, 4)
            level[0].append(splits[:, 0])
            level[1].append(splits[:, 1])
            level[2].append(np.ldexp(splits[:, 2].astype(np.float64), splits[:, 3]).astype(np.float32))
            level[3].append(cursor.column_matrices(cursor.integer(), size))
        for store, part in zip((idx1, idx2, thresholds, leaves), level, strict=True):
            store.append(np.stack(part))
    anchors = [cursor.take(cursor.integer()) for _ in range(cursor.integer())]
    deltas = [cursor.floats(2 * cursor.integer()).reshape(-1, 2) for _ in range(cursor.integer())]
    if cursor.at != len(cursor.tokens):
        raise ValueError(f"{path}: data left after the shape predictor")
    return {
        "initial": initial,
        "anchors": np.stack(anchors).astype(np.int32),
        "deltas": np.stack(deltas),
        "idx1": np.stack(idx1).astype(np.int32),
        "idx2": np.stack(idx2).astype(np.int32),
        "thresholds": np.stack(thresholds),
        "leaves": np.stack(leaves),
    }


class LandmarkModel:
    """The converted predictor: `fit(grey, box)` gives dlib's 68 points for a box (left, top, right, bottom)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.initial = arrays["initial"]
        reference = self.initial.reshape(-1, 2).astype(np.float64)
        self._reference = reference - reference.mean(axis=0)
        self._reference_power = float((self._reference**2).sum())
        levels, trees, splits = arrays["idx1"].shape
        self._trees, self._splits = trees, splits
        self._depth = int(round(math.log2(splits + 1)))
        self._leaf_count = arrays["leaves"].shape[2]
        self._split_rows = np.arange(trees) * splits
        self._leaf_rows = np.arange(trees) * self._leaf_count - splits
        self._levels = [
            (
                arrays["anchors"][k],
                arrays["deltas"][k, :, 0].copy(),
                arrays["deltas"][k, :, 1].copy(),
                arrays["idx1"][k].ravel(),
                arrays["idx2"][k].ravel(),
                arrays["thresholds"][k].ravel(),
                arrays["leaves"][k].reshape(trees * self._leaf_count, -1),
            )
            for k in range(levels)
        ]

    @staticmethod
    def convert(dat: Path) -> dict[str, np.ndarray]:
        return _parse(dat)

    def _similarity(self, shapes: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per face of `shapes` (faces, 68, 2), the scale-rotation of dlib's find_tform_between_shapes (mean shape ->
        the face's shape), in closed form for 2-D points (Umeyama's least squares: [[a, -b], [b, a]]), cast to
        float32 as dlib casts it: (m00, m01, m10, m11), each (faces, 1)."""
        centred = shapes.astype(np.float64)
        centred -= centred.mean(axis=1, keepdims=True)
        ref = self._reference
        a = (ref[:, 0] * centred[..., 0] + ref[:, 1] * centred[..., 1]).sum(axis=1) / self._reference_power
        b = (ref[:, 0] * centred[..., 1] - ref[:, 1] * centred[..., 0]).sum(axis=1) / self._reference_power
        a, b = a.astype(np.float32)[:, None], b.astype(np.float32)[:, None]
        return a, -b, b, a

    def fit(self, grey: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """dlib's 68 points (float32 pixels, integral as dlib gives them) for `box` in a uint8 intensity image."""
        return self.fit_many([(grey, box)])[0]

    def fit_many(self, faces: Sequence[tuple[np.ndarray, tuple[int, int, int, int]]]) -> list[np.ndarray]:
        """`fit` of every (intensity image, box) pair, FIT_BATCH faces at a time, each batch one step at a time:
        numpy's per-call cost (~20 operations in each of 15 levels) is paid once per batch, not once per face.
        Measured on 256 CelebA and extras faces: 1.07 ms per face in batches of 16, 1.33 in batches of 64 (the
        leaves gathered per level outgrow the CPU caches), 2.4 one face at a time."""
        return [
            points
            for k in range(0, len(faces), FIT_BATCH)
            for points in self._fit_batch(faces[k : k + FIT_BATCH])
        ]

    def _fit_batch(self, faces: Sequence[tuple[np.ndarray, tuple[int, int, int, int]]]) -> list[np.ndarray]:
        if not faces:
            return []
        count = len(faces)
        # One pixel buffer for every image (an image with several faces once), each face's start in it.
        starts: dict[int, int] = {}
        buffers = []
        total = 0
        for grey, _ in faces:
            if id(grey) not in starts:
                starts[id(grey)] = total
                buffers.append(grey.ravel())
                total += grey.size
        pixels = np.concatenate(buffers) if len(buffers) > 1 else buffers[0]
        start = np.array([starts[id(grey)] for grey, _ in faces], np.int64)[:, None]
        rows = np.array([grey.shape[0] for grey, _ in faces], np.int64)[:, None]
        cols = np.array([grey.shape[1] for grey, _ in faces], np.int64)[:, None]
        boxes = np.array([[int(v) for v in box] for _, box in faces], np.int64)
        left, top = boxes[:, :1], boxes[:, 1:2]
        width = (boxes[:, 2:3] - left).astype(np.float64)
        height = (boxes[:, 3:4] - top).astype(np.float64)
        shapes = np.tile(self.initial, (count, 1))
        stack = np.empty((self._trees + 1, count, shapes.shape[1]), np.float32)
        for anchors, dx, dy, idx1, idx2, thresholds, leaves in self._levels:
            current = shapes.reshape(count, -1, 2)
            m00, m01, m10, m11 = self._similarity(current)
            anchor = current[:, anchors]
            # float32 as dlib multiplies its float matrix by each delta, then the anchor point; the box mapping
            # and the rounding to a pixel (floor(v + 0.5)) in double.
            x = m00 * dx
            x += m01 * dy
            x += anchor[..., 0]
            y = m10 * dx
            y += m11 * dy
            y += anchor[..., 1]
            px = np.floor(width * x.astype(np.float64) + (left + 0.5)).astype(np.int64)
            py = np.floor(height * y.astype(np.float64) + (top + 0.5)).astype(np.int64)
            inside = (px >= 0) & (px < cols) & (py >= 0) & (py < rows)
            features = np.where(inside, pixels.take(np.where(inside, start + py * cols + px, 0)), 0).astype(
                np.float32
            )
            goes_left = (features.take(idx1, axis=1) - features.take(idx2, axis=1)) > thresholds
            node = np.zeros((count, self._trees), np.int64)
            for _ in range(self._depth):
                node = 2 * node + 2 - np.take_along_axis(goes_left, self._split_rows + node, axis=1)
            stack[0] = shapes
            stack[1:] = leaves.take((self._leaf_rows + node).T, axis=0)
            # Each face's leaves added in tree order, in float32, as dlib adds them (OpenCV sums rows in order).
            shapes = cv2.reduce(stack.reshape(self._trees + 1, -1), 0, cv2.REDUCE_SUM, dtype=cv2.CV_32F)[0]
            shapes = shapes.reshape(count, -1)
        points = shapes.reshape(count, -1, 2).astype(np.float64)
        x = np.floor(width * points[..., 0] + (left + 0.5))
        y = np.floor(height * points[..., 1] + (top + 0.5))
        return list(np.stack([x, y], axis=2).astype(np.float32))


def intensity(image: np.ndarray) -> np.ndarray:
    """dlib's pixel intensity of an RGB uint8 image, (r + g + b) // 3 (a 2-D image is returned as it is)."""
    if image.ndim == 2:
        return image
    return (image.astype(np.uint16).sum(axis=2) // 3).astype(np.uint8)


def check_boxes(rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """Boxes the conversion is checked on: sizes from 30 px to the whole image, some partly outside it."""
    boxes = []
    for k, side in enumerate((30, 55, 80, 120, 160, 200, 240)):
        x0 = (k * 37) % max(1, cols - side // 2) - side // 4
        y0 = (k * 53) % max(1, rows - side // 2) - side // 4
        boxes.append((x0, y0, x0 + side, y0 + side))
    return boxes


def check_image(seed: int = 0) -> np.ndarray:
    """A fixed textured RGB image (smoothed seeded noise with gradients): any content exercises every step."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (240, 200, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(noise, (0, 0), 2.5)
    ramp = np.linspace(0, 90, 200, dtype=np.float32)[None, :, None]
    return np.clip(image.astype(np.float32) + ramp, 0, 255).astype(np.uint8)


def _source_digest(source: Path, cache: Path) -> str:
    """The first 16 hex digits of the sha256 of dlib's model file, remembered in a small file of the cache named
    after the model file's size and modification time: hashing its 100 MB costs ~0.12 CPU-seconds, reading the
    remembered digest next to nothing. Copies of one model in several environments (each installed at its own time)
    then share one conversion."""
    info = source.stat()
    note = cache / f"dlib-landmarks-source-{info.st_size}-{info.st_mtime_ns}.txt"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        remembered = note.read_text().strip()
        if len(remembered) == 16 and all(c in "0123456789abcdef" for c in remembered):
            return remembered
    with source.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()[:16]
    write_cache_file(note, lambda temp: Path(temp).write_text(digest + "\n"))
    return digest


@functools.cache
def cached_model(dat: str, cache: str, dlib_predictor_factory) -> LandmarkModel | None:
    """The converted model for the dlib file `dat`, from the cache folder `cache` (converted and checked against
    dlib's own predictor on first use), or None where the conversion does not give dlib's points."""
    source, folder = Path(dat), Path(cache)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK) and not any(folder.glob(f"dlib-landmarks-{FORMAT}-*.npz")):
        return None  # converting on every start would cost more than dlib's own load
    target = folder / f"dlib-landmarks-{FORMAT}-{_source_digest(source, folder)}.npz"
    refused = target.with_suffix(".differs")
    if refused.exists():
        return None
    if target.is_file():
        try:
            with np.load(target) as stored:
                return LandmarkModel({name: stored[name] for name in _ARRAYS})
        except (OSError, ValueError, KeyError):
            pass  # damaged: converted again below
    if not os.access(folder, os.W_OK):
        return None
    try:
        arrays = LandmarkModel.convert(source)
        model = LandmarkModel(arrays)
    except (ValueError, IndexError, KeyError):
        # A file this parser does not read (another serialization version): dlib's own predictor, every time.
        write_cache_file(refused, lambda temp: Path(temp).write_text("not converted\n"))
        return None
    if not _agrees_with_dlib(model, dlib_predictor_factory()):
        write_cache_file(refused, lambda temp: Path(temp).write_text("differs from dlib\n"))
        return None
    if write_cache_file(target, lambda temp: _save(temp, arrays)):
        # Conversions in an older format are never read again (66 MB each).
        for stale in folder.glob("dlib-landmarks-*.npz"):
            if not stale.name.startswith(f"dlib-landmarks-{FORMAT}-"):
                with contextlib.suppress(OSError):
                    stale.unlink()
    return model


def _save(temp: str, arrays: dict[str, np.ndarray]) -> None:
    with open(temp, "wb") as handle:  # np.savez would add ".npz" to a name
        np.savez(handle, **arrays)  # type: ignore[arg-type]


def _agrees_with_dlib(model: LandmarkModel, predictor) -> bool:
    import dlib

    image = check_image()
    grey = intensity(image)
    for box in check_boxes(*grey.shape):
        shape = predictor(image, dlib.rectangle(*box))
        theirs = np.array([(p.x, p.y) for p in shape.parts()], np.float32)
        if not np.array_equal(theirs, model.fit(grey, box)):
            return False
    return True


def dlib_forced_by_environment() -> bool:
    """M2U_DLIB_LANDMARKS=1 runs dlib's own predictor (for comparisons)."""
    return os.environ.get("M2U_DLIB_LANDMARKS", "") == "1"

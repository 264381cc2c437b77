"""Refining M-Seg's mask on a photo's aligned crop by the crop's own colours (OpenCV's GrabCut).

On real photos M-Seg (trained on synthetic masks) marks too much more often than too little: the neck or a hand below
the mask, a rim of cheek around it (benchmarks/real_mask_seg.py on real-mask-seg, M-Seg's mask as it is: precision
0.90 and recall 0.95 per photo). GrabCut re-labels the uncertain rim from colour models of what is surely mask
(M-Seg's mask shrunk by `sure_core`) and surely not (what lies farther than `sure_outside` from it), with a smoothness
term along the crop's edges; what M-Seg does not mark can be added only within that `sure_outside` band. The decision
whether a face wears a mask (MaskedFaceRule) reads M-Seg's own mask; this refines only the region that is restored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from m2u.core.checks import check_types

__all__ = ["MaskRefineConfig", "refine_mask"]

# Below this many mask pixels there is no core to learn the mask's colours from: the mask is kept as it is.
_MIN_PIXELS = 50


@dataclass(frozen=True)
class MaskRefineConfig:
    """GrabCut's seeds, as fractions of the crop side. Chosen on real-mask-seg's labels (the only labelled real masks
    m2u has) from the grid of benchmarks/real_mask_seg.py --refine-grid (its JSON's "refine_grid"), which also scores
    the two halves of the crops (alternate names): with `sure_core` 0.03-0.08 and `sure_outside` 0.04-0.06 every
    setting raised Dice on both halves; a core or outer seed of 0.12 lowered it on one. 0.03 / 0.04 is the best over
    all and on one half, within 0.002 of the best on the other."""

    enabled: bool = True
    sure_core: float = 0.03  # M-Seg's mask eroded by this much is surely mask
    sure_outside: float = 0.04  # farther than this from M-Seg's mask is surely not mask
    iterations: int = 4

    def __post_init__(self) -> None:
        check_types(self)  # NaN, infinity, 2.5 for a count: refused naming the field
        if not (0.0 <= self.sure_core < 0.5 and 0.0 < self.sure_outside < 0.5):
            raise ValueError(
                f"sure_core must be within [0, 0.5) and sure_outside within (0, 0.5), got "
                f"{self.sure_core} and {self.sure_outside}"
            )
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")


def _square_kernel(fraction: float, size: int) -> np.ndarray:
    radius = max(1, round(fraction * size))
    return np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)


@contextlib.contextmanager
def _own_opencv_rng() -> Iterator[None]:
    """OpenCV's random generator of this thread (GrabCut's k-means start draws from it) seeded with 0 for the
    duration, and then seeded from a draw of the caller's generator taken before: OpenCV gives Python no way to read
    or restore its state, and the seed alone left every caller's later cv2.randu / kmeans draws on the sequence m2u
    chose, whatever they had seeded. The caller's generator moves on by one draw instead: a program that seeds
    OpenCV still gets the same draws on every run, and different seeds keep different draws."""
    caller = np.empty(2, np.uint16)
    cv2.randu(caller, 0, 1 << 16)
    try:
        cv2.setRNGSeed(0)
        yield
    finally:
        # setRNGSeed takes a C int: the two 16-bit draws as one signed 32-bit seed.
        cv2.setRNGSeed((int(caller[0]) << 16 | int(caller[1])) - (1 << 31))


def refine_mask(crop: np.ndarray, mask: np.ndarray, config: MaskRefineConfig | None = None) -> np.ndarray:
    """M-Seg's `mask` (uint8 0/255, (S, S)) on the aligned uint8 RGB `crop`, re-labelled by the crop's colours:
    uint8 0/255. Unchanged when refinement is off, the mask is too small to learn from, or nothing lies surely
    outside it. Deterministic: OpenCV's random generator (GrabCut's k-means start) is seeded per call, and seeded
    again from the caller's own draw afterwards (`_own_opencv_rng`)."""
    config = config or MaskRefineConfig()
    marked = mask > 0
    if not config.enabled or marked.sum() < _MIN_PIXELS:
        return mask
    size = mask.shape[0]
    seeds = np.where(marked, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    core = cv2.erode(marked.astype(np.uint8), _square_kernel(config.sure_core, size)) > 0
    near = cv2.dilate(marked.astype(np.uint8), _square_kernel(config.sure_outside, size)) > 0
    seeds[core] = cv2.GC_FGD
    seeds[~near] = cv2.GC_BGD
    if not core.any() or near.all():
        return mask
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    with _own_opencv_rng():
        # Channel order does not matter to GrabCut (colour distances and per-channel mixtures): the RGB crop as is.
        cv2.grabCut(
            np.ascontiguousarray(crop),
            seeds,
            None,
            background,
            foreground,
            config.iterations,
            cv2.GC_INIT_WITH_MASK,
        )
    return np.where((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)

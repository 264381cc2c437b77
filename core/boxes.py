"""How two boxes overlap: boxes are (left, top, right, bottom) in pixels, as every m2u detector gives them.

The one place these measures live: the detectors' merges (BlazeFace's suppression, the merge of several passes),
m2u-unmask's second-box check and the benchmarks that match detections to faces all read them from here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["box_iou", "box_ious", "covered_share", "inside_share"]


def box_ious(box: Sequence[float] | np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of `box` with each row of `boxes` (N, 4), in the dtype of the inputs (0 where the
    union is empty)."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    # An empty union has an empty intersection: 0 / tiny is 0.
    return inter / np.maximum(area - inter, 1e-12)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (0 where the union is empty): `box_ious` for one pair."""
    return float(box_ious(np.asarray(a), np.asarray([b]))[0])


def inside_share(a: Sequence[float], b: Sequence[float]) -> float:
    """The share of the smaller of two boxes that lies inside the other (0 where the smaller is empty): one box
    inside another has share 1 whatever their IoU."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(max(0, width) * max(0, height) / smaller) if smaller > 0 else 0.0


def covered_share(box: Sequence[float], by: Sequence[float]) -> float:
    """The share of `box` that `by` covers (0 where `box` is empty): unlike `inside_share`, a small `by` inside a
    large `box` covers little of it."""
    width = min(box[2], by[2]) - max(box[0], by[0])
    height = min(box[3], by[3]) - max(box[1], by[1])
    area = (box[2] - box[0]) * (box[3] - box[1])
    return float(max(0, width) * max(0, height) / area) if area > 0 else 0.0

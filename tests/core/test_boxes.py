"""m2u.core.boxes: the overlap measures every detector merge and box match reads."""

from __future__ import annotations

import numpy as np
import pytest

from m2u.core.boxes import box_iou, box_ious, covered_share, inside_share


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges share no area
        ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
        ((0, 0, 10, 10), (2, 2, 4, 4), 4 / 100),
        ((3, 3, 3, 3), (3, 3, 3, 3), 0.0),  # empty boxes: no union, no overlap
    ],
)
def test_box_iou(a, b, expected):
    assert box_iou(a, b) == pytest.approx(expected)
    assert box_iou(b, a) == pytest.approx(expected)


def test_box_ious_agrees_with_box_iou_and_keeps_the_dtype():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 100, (50, 2, 2)).astype(np.float32)
    boxes = np.concatenate([corners.min(1), corners.max(1)], 1)  # (left, top, right, bottom)
    ious = box_ious(boxes[0], boxes)
    assert ious.dtype == np.float32  # BlazeFace's suppression runs in float32 and must stay so
    assert ious[0] == pytest.approx(1.0)
    expected = [box_iou(boxes[0].tolist(), b.tolist()) for b in boxes]
    np.testing.assert_allclose(ious, expected, rtol=1e-5, atol=1e-7)
    assert box_ious((0, 0, 0, 0), np.zeros((1, 4))).tolist() == [0.0]


def test_inside_share_measures_the_smaller_box():
    face, eyes = (0, 0, 100, 100), (20, 20, 80, 50)
    assert box_iou(face, eyes) < 0.2  # the IoU calls them two faces ...
    assert inside_share(face, eyes) == 1.0  # ... though the eyes' box lies wholly inside the face's
    assert inside_share(eyes, face) == 1.0
    assert inside_share(face, (50, 0, 150, 100)) == pytest.approx(0.5)
    assert inside_share(face, (200, 200, 300, 300)) == 0.0
    assert inside_share(face, (10, 10, 10, 40)) == 0.0  # an empty box lies in nothing


def test_covered_share_measures_the_first_box():
    face, eyes = (0, 0, 100, 100), (20, 20, 80, 50)
    assert covered_share(eyes, face) == pytest.approx(1.0)  # the eyes' box lies wholly in the face's
    assert covered_share(face, eyes) == pytest.approx(60 * 30 / 100**2)  # the eyes cover little of the face
    assert covered_share(face, (50, 0, 150, 100)) == pytest.approx(0.5)
    assert covered_share((3, 3, 3, 3), face) == 0.0  # an empty box is covered by nothing

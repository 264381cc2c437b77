"""benchmarks/real_mask_seg.py's measures: the mask mapped back to the photo, Dice, and the summary."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("real_mask_seg", REPO / "benchmarks" / "real_mask_seg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_crop_mask_goes_back_to_the_photo_through_the_inverse_alignment():
    from m2u.evaluation.real_masks import photo_mask  # the benchmark's, shared with m2u-eval real-masks

    crop = np.zeros((16, 16), np.uint8)
    crop[8:, :] = 255  # the lower half of the crop
    # The crop is the photo's 32x32 box at (10, 20), scaled by 1/2.
    matrix = np.array([[0.5, 0.0, -5.0], [0.0, 0.5, -10.0]])
    mask = photo_mask((64, 64), [SimpleNamespace(mask=crop, matrix=matrix)])
    ys, xs = np.nonzero(mask)
    # Photo rows 36..51 and columns 10..41 (crop rows 8..15, columns 0..15), up to the half pixel at each edge.
    assert abs(ys.min() - 36) <= 1 and ys.max() == 51 and abs(xs.min() - 10) <= 1 and abs(xs.max() - 41) <= 1
    assert mask[40:50, 15:35].all() and not mask[:30].any()
    assert not photo_mask((64, 64), []).any()


def test_summary_counts_unfound_photos_as_zero():
    bench = _module()
    rows = [
        {
            "found": True,
            "dice": 0.9,
            "precision": 0.8,
            "recall": 1.0,
            "label_pixels": 100,
            "remnant_pixels": 10,
            "near_remnant_pixels": 30,
        },
        {
            "found": False,
            "dice": 0.0,
            "precision": 0.0,
            "recall": 0.0,
            "label_pixels": 100,
            "remnant_pixels": 100,
            "near_remnant_pixels": 100,
        },
    ]
    summary = bench.summarize(rows)
    assert summary["faces_found"] == 1 and summary["dice_where_found"] == pytest.approx(0.9)
    assert summary["dice_all"] == pytest.approx(0.45)
    assert summary["remnants_where_found"] == pytest.approx(0.1) and summary["remnants_all"] == pytest.approx(
        0.55
    )
    near = "remnants_within_12_levels"
    assert summary[f"{near}_where_found"] == pytest.approx(0.3) and summary[f"{near}_all"] == pytest.approx(
        0.65
    )
    # Precision and recall are averaged where a face was found only.
    assert summary["precision_where_found"] == pytest.approx(0.8) and summary["recall_where_found"] == 1.0


def test_cached_detections_keep_blazefaces_keypoints():
    """The detection cache (a JSON file with --detections) carries each face's keypoints, so a cached run aligns
    and takes the second look as m2u-unmask does; a cache written without them gives faces with none."""
    import json

    from m2u.datasets.synthetic import make_synthetic_sample
    from m2u.masking import Face

    bench = _module()
    landmarks = make_synthetic_sample(64, seed=0).landmarks.astype(np.float32)
    keypoints = np.arange(12, dtype=np.float32).reshape(6, 2)
    found = Face((1, 2, 40, 41), landmarks, 0.9, "blaze-short", keypoints=keypoints)
    unmasker = SimpleNamespace(detect=lambda image: [found])
    cache: dict = {}
    (first,) = bench._detections(unmasker, np.zeros((8, 8, 3), np.uint8), "a.jpg", cache)
    cache = json.loads(json.dumps(cache))  # as --detections stores it
    (again,) = bench._detections(None, None, "a.jpg", cache)
    for face in (first, again):
        assert (
            np.array_equal(face.keypoints, keypoints) and face.box == found.box and face.score == found.score
        )
    del cache["a.jpg"][0]["keypoints"]
    (old,) = bench._detections(None, None, "a.jpg", cache)
    assert old.keypoints is None and np.array_equal(old.landmarks, landmarks)

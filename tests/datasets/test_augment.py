"""Pair augmentation for real photos (m2u.datasets.augment) and its training source (AugmentedSource)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2u.datasets.augment import AugmentConfig, augment_pair
from m2u.training.data import AugmentedSource, TensorDataSource


def _pair(size=32, seed=0):
    rng = np.random.default_rng(seed)
    unmasked = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    unmasked = np.ascontiguousarray(np.sort(unmasked, axis=0))  # some structure
    mask = np.zeros((size, size), np.uint8)
    mask[size // 2 :, size // 4 : 3 * size // 4] = 1
    masked = unmasked.copy()
    masked[mask > 0] = (20, 20, 24)
    return masked, unmasked, mask


ONLY = {
    name: 0.0 for name in ("crop", "color", "low_light", "blur", "noise", "jpeg", "photo_edge", "low_res")
}


@pytest.mark.parametrize("name", ["color", "low_light", "blur", "noise", "low_res"])
def test_each_photometric_change_is_identical_on_both_images_outside_the_mask(name):
    masked, unmasked, mask = _pair()
    config = AugmentConfig(
        enabled=True, **{**ONLY, name: 1.0}, scale=(1.0, 1.0), shift=0.0, rotate=0.0, blur_sigma=(4.0, 5.0)
    )  # blur sigma 1.0-1.25 px at this 32 px size
    a = augment_pair(masked, unmasked, mask, np.random.default_rng(1), config)
    b = augment_pair(masked, unmasked, mask, np.random.default_rng(1), config)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))  # seeded
    out_masked, out_unmasked, out_mask = a
    assert np.array_equal(out_mask, mask)  # no warp drawn: the mask as it was
    assert not np.array_equal(out_unmasked, unmasked)  # the change happened
    # Blur spreads the mask's colour by its radius; elsewhere the two images stay equal pixel for pixel.
    import cv2

    spread = name in ("blur", "low_res")
    near = cv2.dilate(mask, np.ones((15, 15), np.uint8)) > 0 if spread else mask > 0
    assert np.array_equal(out_masked[~near], out_unmasked[~near])


def test_a_small_face_is_seen_at_few_pixels_with_its_exact_mask_and_costs_no_draw_when_off():
    masked, unmasked, mask = _pair(128)
    config = AugmentConfig(enabled=True, **{**ONLY, "low_res": 1.0}, scale=(1.0, 1.0), shift=0.0, rotate=0.0)
    out_masked, out_unmasked, out_mask = augment_pair(
        masked, unmasked, mask, np.random.default_rng(5), config
    )
    assert np.array_equal(out_mask, mask)  # the ground truth stays the exact mask

    def detail(image):  # mean absolute difference between neighbouring rows and columns
        image = image.astype(np.float32)
        return np.abs(np.diff(image, axis=0)).mean() + np.abs(np.diff(image, axis=1)).mean()

    assert detail(out_unmasked) < 0.8 * detail(unmasked) and detail(out_masked) < 0.8 * detail(masked)
    # At 0 the step takes no draw, so runs without it keep their batches; on, a fixed two per sample.
    off, on = np.random.default_rng(7), np.random.default_rng(7)
    augment_pair(masked, unmasked, mask, off, AugmentConfig(enabled=True, **ONLY))
    augment_pair(masked, unmasked, mask, on, AugmentConfig(enabled=True, **{**ONLY, "low_res": 0.5}))
    off.random(2)
    assert off.random() == on.random()
    with pytest.raises(ValueError, match="low_res"):
        AugmentConfig(low_res=1.5)
    with pytest.raises(ValueError, match="low_res_side"):
        AugmentConfig(low_res_side=(2, 8))


def test_jpeg_and_warps_keep_shapes_and_move_the_mask_with_the_images():
    masked, unmasked, mask = _pair(48)
    config = AugmentConfig(enabled=True, **{**ONLY, "crop": 1.0, "jpeg": 1.0})
    out_masked, out_unmasked, out_mask = augment_pair(
        masked, unmasked, mask, np.random.default_rng(3), config
    )
    assert out_masked.shape == masked.shape and out_mask.shape == mask.shape and out_mask.dtype == np.uint8
    assert set(np.unique(out_mask)) <= {0, 1}
    assert not np.array_equal(out_mask, mask)  # a crop moved it
    # Where the warped mask says "mask", the masked image shows the mask's dark colour (up to JPEG and edges).
    import cv2

    core = cv2.erode(out_mask, np.ones((5, 5), np.uint8)) > 0
    assert core.any() and out_masked[core].mean() < 60 and out_unmasked[core].mean() > 60


def test_forehead_and_chin_crops_both_happen():
    masked, unmasked, mask = _pair(64)
    config = AugmentConfig(enabled=True, **{**ONLY, "crop": 1.0}, scale=(1.0, 1.0), shift=0.0, rotate=0.0)
    tops = set()
    for seed in range(20):
        _, _, out_mask = augment_pair(masked, unmasked, mask, np.random.default_rng(seed), config)
        # The mask fills the bottom half: a forehead cut pushes it off the bottom (more mask rows), a chin cut keeps
        # its top row but zooms about the top.
        tops.add(int(np.flatnonzero(out_mask.any(axis=1))[0]) < 32)
    assert tops == {True, False}


def test_the_photo_edge_replicates_the_border_of_a_window_in_all_three_images_alike():
    masked, unmasked, mask = _pair(64)
    config = AugmentConfig(
        enabled=True, **{**ONLY, "photo_edge": 1.0}, scale=(1.0, 1.0), shift=0.0, rotate=0.0
    )
    changed = 0
    for seed in range(6):
        out = augment_pair(masked, unmasked, mask, np.random.default_rng(seed), config)
        again = augment_pair(masked, unmasked, mask, np.random.default_rng(seed), config)
        assert all(x.tobytes() == y.tobytes() for x, y in zip(out, again, strict=True))  # seeded
        out_masked, out_unmasked, out_mask = out
        # Outside the window each row (or column) repeats its edge pixel; inside, the pixels are the originals'.
        rows = [r for r in range(64) if not np.array_equal(out_unmasked[r], unmasked[r])]
        if not rows and np.array_equal(out_unmasked, unmasked):
            continue
        changed += 1
        same = np.all(out_unmasked == unmasked, axis=2)
        inner = np.argwhere(same)
        top, left = inner.min(0)
        bottom, right = inner.max(0)
        assert np.array_equal(out_unmasked[:top], np.repeat(out_unmasked[top : top + 1], top, axis=0))
        assert np.array_equal(
            out_mask[bottom + 1 :], np.repeat(out_mask[bottom : bottom + 1], 63 - bottom, axis=0)
        )
        assert np.array_equal(out_masked[:, :left], np.repeat(out_masked[:, left : left + 1], left, axis=1))
        # The pair still differs only where the (replicated) mask is.
        assert np.array_equal(out_masked[out_mask == 0], out_unmasked[out_mask == 0])
    assert changed >= 4


def test_bad_ranges_are_clear_errors():
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(noise=1.5)
    with pytest.raises(ValueError, match="range"):
        AugmentConfig(jpeg_quality=(90, 20))


def test_augmented_source_changes_only_training_batches_and_is_seeded():
    samples = [_pair(16, seed) for seed in range(8)]

    def tensor(i):
        return torch.from_numpy(np.stack([s[i] for s in samples])).float()

    splits = {
        split: {
            "masked": tensor(0).permute(0, 3, 1, 2) / 255,
            "unmasked": tensor(1).permute(0, 3, 1, 2) / 255,
            "mask": tensor(2)[:, None],
        }
        for split in ("train", "val")
    }
    source = TensorDataSource(splits, batch_size=4)
    config = AugmentConfig(enabled=True, **{**ONLY, "noise": 1.0, "crop": 1.0})
    augmented = AugmentedSource(source, config, seed=0)
    first = list(augmented.batches("train", 0))
    again = list(augmented.batches("train", 0))
    plain = list(source.batches("train", 0))
    assert len(first) == len(plain) == 2
    for a, b, p in zip(first, again, plain, strict=True):
        assert torch.equal(a["masked"], b["masked"]) and torch.equal(a["mask"], b["mask"])
        assert a["key"] == p["key"] and not torch.equal(a["masked"], p["masked"])
        assert a["masked"].dtype == torch.float32 and a["masked"].min() >= 0 and a["masked"].max() <= 1
        assert set(torch.unique(a["mask"]).tolist()) <= {0.0, 1.0}
    other_epoch = list(augmented.batches("train", 1))
    assert not torch.equal(other_epoch[0]["masked"], first[0]["masked"])
    for a, p in zip(augmented.batches("val", 0), source.batches("val", 0), strict=True):
        assert torch.equal(a["masked"], p["masked"])

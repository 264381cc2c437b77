"""GrabCut refinement of M-Seg's mask (m2u.inference.mask_refine): it trims what M-Seg over-marks in another colour,
is deterministic, leaves masks it cannot learn from as they are, and the masked-face decision never reads it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from m2u.inference.mask_refine import MaskRefineConfig, refine_mask
from m2u.inference.masked_rule import NOTHING_TO_RESTORE

SIZE = 128


def _face_with_mask(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A skin-toned crop with a dark grey mask over its lower middle (noisy, as a photo is), and the mask's pixels."""
    rng = np.random.default_rng(seed)
    crop = np.empty((SIZE, SIZE, 3), np.float32)
    crop[:] = (205, 160, 135)
    truth = np.zeros((SIZE, SIZE), np.uint8)
    polygon = np.array([[24, 62], [104, 62], [96, 100], [64, 110], [32, 100]], np.int32)
    cv2.fillPoly(truth, [polygon], 255)
    crop[truth > 0] = (45, 48, 55)
    crop += rng.normal(0, 6, crop.shape)
    return np.clip(crop, 0, 255).astype(np.uint8), truth


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a > 0) & (b > 0)).sum() / ((a > 0) | (b > 0)).sum())


def test_skin_marked_beyond_the_mask_is_trimmed_and_the_mask_kept():
    crop, truth = _face_with_mask()
    # M-Seg's typical error on real photos: a rim of cheek and a band of neck below the mask marked too (narrower
    # than the core's margin: skin inside M-Seg's shrunk mask would be taken for sure mask).
    over = cv2.dilate(truth, np.ones((9, 9), np.uint8))
    over[100:116, 40:88] = 255
    refined = refine_mask(crop, over)
    assert _iou(over, truth) < 0.75
    assert _iou(refined, truth) > 0.93
    assert ((refined > 0) & (truth > 0)).sum() >= 0.97 * (truth > 0).sum()  # the mask itself stays marked


def test_refinement_is_deterministic_whatever_opencvs_random_state():
    crop, truth = _face_with_mask(seed=3)
    over = cv2.dilate(truth, np.ones((11, 11), np.uint8))
    first = refine_mask(crop, over)
    cv2.setRNGSeed(12345)
    cv2.randu(np.empty((64, 64), np.float32), 0, 1)  # move OpenCV's generator on
    assert np.array_equal(refine_mask(crop, over), first)


def _opencv_draws() -> bytes:
    draws = np.empty((4, 4), np.float32)
    cv2.randu(draws, 0, 1)
    return draws.tobytes()


def test_refinement_leaves_the_callers_opencv_generator_on_a_sequence_of_its_own_seed():
    """refine_mask seeded OpenCV's generator with 0 and left it there: whatever a caller had seeded, its cv2.randu
    or kmeans draws afterwards were one fixed sequence. Now they follow from the caller's own state: the same seed
    gives the same draws (a seeded program stays reproducible), another seed other draws, neither m2u's."""
    crop, truth = _face_with_mask(seed=3)
    over = cv2.dilate(truth, np.ones((11, 11), np.uint8))
    after = {}
    for seed in (12345, 777, 12345):
        cv2.setRNGSeed(seed)
        refined = refine_mask(crop, over)
        after.setdefault(seed, []).append(_opencv_draws())
    assert after[12345][0] == after[12345][1]  # reproducible for the caller
    assert after[12345][0] != after[777][0]  # not one sequence whatever the caller seeded
    cv2.setRNGSeed(0)
    assert _opencv_draws() not in (after[12345][0], after[777][0])  # not the seed refine_mask uses
    cv2.setRNGSeed(12345)
    assert np.array_equal(refine_mask(crop, over), refined)  # and the refinement itself is unchanged
    # A mask it returns unchanged does not touch the generator at all.
    cv2.setRNGSeed(99)
    untouched = _opencv_draws()
    cv2.setRNGSeed(99)
    refine_mask(crop, over, MaskRefineConfig(enabled=False))
    assert _opencv_draws() == untouched


def test_masks_it_cannot_learn_from_are_returned_unchanged():
    crop, truth = _face_with_mask()
    off = refine_mask(crop, truth, MaskRefineConfig(enabled=False))
    assert off is truth
    speck = np.zeros_like(truth)
    speck[60:64, 60:64] = 255  # 16 pixels: no core to learn the mask's colours from
    assert refine_mask(crop, speck) is speck
    whole = np.full_like(truth, 255)  # nothing lies surely outside it
    assert refine_mask(crop, whole) is whole


@pytest.mark.parametrize(
    "bad", [{"sure_core": -0.1}, {"sure_core": 0.5}, {"sure_outside": 0.0}, {"iterations": 0}]
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        MaskRefineConfig(**bad)


def test_the_photo_changes_only_under_the_refined_mask_and_the_evidence_is_msegs_own(
    tiny_checkpoints, monkeypatch
):
    import m2u.inference.unmask as unmask
    from m2u.datasets.synthetic import make_synthetic_sample
    from m2u.inference.unmask import UnmaskConfig, Unmasker
    from m2u.masking.detect import Face

    seen = []

    def refine_to_nothing(crop, mask, config):
        seen.append((mask > 0).mean())
        return np.zeros_like(mask)

    mseg_path, gen_path = tiny_checkpoints
    sample = make_synthetic_sample(160, seed=0)
    config = UnmaskConfig(crop_size=32, device="cpu", progress=False, masked_only=False)
    unmasker = Unmasker.from_files(mseg_path, gen_path, config)
    face = Face.from_landmarks(sample.landmarks, score=1.0)
    restored_before, faces = unmasker.unmask_faces(sample.masked, [face])
    assert (restored_before != sample.masked).any()  # the tiny M-Seg marks something on it

    monkeypatch.setattr(unmask, "refine_mask", refine_to_nothing)
    result, restored, left = unmasker._unmask_faces(sample.masked, [face])
    assert seen and seen[0] > 0
    assert np.array_equal(result, sample.masked)  # an empty refined mask: not one pixel changes
    # ... and the face is not counted restored, even with every face asked for (masked_only=False)
    assert not restored and NOTHING_TO_RESTORE in left[0].problem
    assert left[0].mask_fraction == 0.0
    assert left[0].record()["mask_fraction"] == pytest.approx(seen[0], abs=1e-4)  # M-Seg's own mask


@pytest.mark.parametrize(
    "flag, enabled, whole_frame, turn, grow",
    [
        ([], True, True, True, 0.008),
        (["--no-refine-mask"], False, True, True, 0.008),
        (["--no-whole-frame"], True, False, True, 0.008),
        (["--no-try-turned"], True, True, False, 0.008),
        (["--grow", "0.02"], True, True, True, 0.02),
    ],
)
def test_unmask_cli_passes_the_refine_whole_frame_turn_and_grow_options(
    tmp_path, monkeypatch, flag, enabled, whole_frame, turn, grow
):
    from click.testing import CliRunner

    import m2u.inference.photos as photos
    from m2u.inference.cli import unmask_main

    seen = {}

    def fake_unmask_files(found, mseg, generator, out_dir, config):
        seen["refine"], seen["whole_frame"] = config.refine, config.whole_frame
        seen["turn"], seen["grow"] = config.try_turned, config.dilate
        return []

    monkeypatch.setattr(photos, "unmask_files", fake_unmask_files)
    photo = tmp_path / "in.png"
    cv2.imwrite(str(photo), np.zeros((8, 8, 3), np.uint8))
    result = CliRunner().invoke(unmask_main, [str(photo), "-o", str(tmp_path / "out"), *flag])
    assert result.exit_code == 0, result.output
    assert seen["refine"].enabled is enabled and seen["whole_frame"] is whole_frame and seen["turn"] is turn
    assert seen["grow"] == grow

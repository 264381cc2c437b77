"""The alignment fit is scikit-image's SimilarityTransform: the same transform, hence the same crops, as the
linear least-squares fit m2u used before (kept here as the reference), and one error for degenerate points."""

from __future__ import annotations

import numpy as np
import pytest

from m2u.datasets import align
from m2u.datasets.align import ALIGN_TEMPLATE, align_face, similarity_matrix


def _linear_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The previous hand-written fit: x' = a x - b y + tx, y' = b x + a y + ty by linear least squares."""
    design, target = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        design += [[x, -y, 1.0, 0.0], [y, x, 0.0, 1.0]]
        target += [u, v]
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(design), np.array(target), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def _face_landmarks(rng: np.random.Generator, centre: np.ndarray, scale: float, angle: float) -> np.ndarray:
    """68 points whose eye and mouth groups sit where a face's would, rotated, scaled and jittered."""
    base = np.zeros((68, 2))
    base[36:42] = (-0.5, -0.4)
    base[42:48] = (0.5, -0.4)
    base[48:68] = (0.0, 0.6)
    base[:36] = rng.uniform(-1, 1, (36, 2))
    base += rng.normal(0, 0.03, base.shape)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (base @ rotation.T) * scale + centre


def test_the_fit_is_the_linear_least_squares_one():
    rng = np.random.default_rng(0)
    for _ in range(500):
        src = rng.uniform(0, 1000, (3, 2))
        dst = ALIGN_TEMPLATE * rng.choice([64, 128, 256])
        assert np.abs(similarity_matrix(src, dst) - _linear_fit(src, dst)).max() < 1e-7


def test_crops_are_byte_identical_to_the_linear_fit(monkeypatch):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (400, 500, 3), dtype=np.uint8)
    faces = [
        _face_landmarks(rng, rng.uniform(100, 400, 2), rng.uniform(15, 160), rng.uniform(-0.6, 0.6))
        for _ in range(40)
    ]  # scales from well under the crop (pre-shrunk) to far above it
    new = [align_face(image, landmarks, 128) for landmarks in faces]
    monkeypatch.setattr(align, "similarity_matrix", _linear_fit)
    old = [align_face(image, landmarks, 128) for landmarks in faces]
    for a, b in zip(new, old, strict=True):
        assert np.array_equal(a.image, b.image)
        assert np.abs(a.matrix - b.matrix).max() < 1e-7


@pytest.mark.parametrize("points", [np.zeros((3, 2)), np.full((3, 2), 7.0)])
def test_degenerate_points_are_one_value_error(points):
    with pytest.raises(ValueError, match="degenerate landmarks"):
        similarity_matrix(points, ALIGN_TEMPLATE * 128)


_PASTE_MATRIX = np.array([[0.5, 0.0, 4.0], [0.0, 0.5, 4.0]])


@pytest.mark.parametrize(
    "make, said",
    [
        # floats in [0, 1] came back as a near-black uint8 photo, without a word
        (
            lambda o, c: (o / 255.0, c, _PASTE_MATRIX, None),
            r"`original` must be a uint8 RGB .* got float64 \(48, 48, 3\)",
        ),
        (
            lambda o, c: (o, c / 255.0, _PASTE_MATRIX, None),
            r"`crop` must be a uint8 RGB .* got float64 \(32, 32, 3\)",
        ),
        (
            lambda o, c: (o[..., 0], c, _PASTE_MATRIX, None),
            r"`original` must be a uint8 RGB .* got uint8 \(48, 48\)",
        ),
        (lambda o, c: (o, c[:, :16], _PASTE_MATRIX, None), r"`crop` must be square"),
        (lambda o, c: (o, c, np.eye(3), None), r"`matrix` must be a finite 2x3 affine matrix"),
        # a region of another size than the crop was warped to the wrong place, without a word
        (
            lambda o, c: (o, c, _PASTE_MATRIX, np.ones((16, 16), np.uint8)),
            r"`region` must be crop-sized \(32, 32\)",
        ),
    ],
    ids=["float-original", "float-crop", "grey-original", "oblong-crop", "3x3-matrix", "small-region"],
)
def test_paste_face_refuses_what_it_would_paste_wrongly_naming_the_argument(make, said):
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    crop = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=said):
        align.paste_face(*make(original, crop))
    # what align_face takes and gives is pasted as before: photo pixel (20, 20) is crop pixel (14, 14)
    pasted = align.paste_face(original, crop, _PASTE_MATRIX, np.ones((32, 32), bool))
    assert pasted.dtype == np.uint8 and np.array_equal(pasted[20, 20], crop[14, 14])

"""Fixtures for the masking tests: a synthetic 68-point face, so most tests need no shared data."""

from __future__ import annotations

import numpy as np
import pytest


def _canonical_face() -> np.ndarray:
    """dlib-ordered 68 landmarks of a plausible frontal face; unit = eye distance, origin between the eyes."""
    pts = np.zeros((68, 2))
    theta = np.radians(
        190.0 - np.arange(17) * 200.0 / 16.0
    )  # ear (image left) round the chin to the other ear
    pts[0:17] = np.stack([1.0 * np.cos(theta), 0.2 + 1.5 * np.sin(theta)], axis=-1)
    brow = np.stack([np.linspace(-0.85, -0.2, 5), -0.35 - 0.05 * np.sin(np.linspace(0, np.pi, 5))], axis=-1)
    pts[17:22] = brow
    pts[22:27] = (brow * [-1, 1])[::-1]
    pts[27:31] = [(0, 0), (0, 0.2), (0, 0.4), (0, 0.6)]
    pts[31:36] = [(-0.2, 0.7), (-0.1, 0.73), (0, 0.75), (0.1, 0.73), (0.2, 0.7)]
    left_eye = [(-0.75, 0), (-0.6, -0.08), (-0.4, -0.08), (-0.25, 0), (-0.4, 0.07), (-0.6, 0.07)]
    pts[36:42] = left_eye
    pts[42:48] = [(0.25, 0), (0.4, -0.08), (0.6, -0.08), (0.75, 0), (0.6, 0.07), (0.4, 0.07)]
    pts[48:60] = [
        (-0.4, 1.05),
        (-0.25, 0.97),
        (-0.1, 0.94),
        (0, 0.95),
        (0.1, 0.94),
        (0.25, 0.97),
        (0.4, 1.05),
        (0.25, 1.15),
        (0.1, 1.19),
        (0, 1.2),
        (-0.1, 1.19),
        (-0.25, 1.15),
    ]
    pts[60:68] = [
        (-0.32, 1.05),
        (-0.1, 1.01),
        (0, 1.01),
        (0.1, 1.01),
        (0.32, 1.05),
        (0.1, 1.09),
        (0, 1.09),
        (-0.1, 1.09),
    ]
    return pts


@pytest.fixture(scope="session")
def synthetic_landmarks():
    """make(center=(128, 110), eye_distance=60, roll_degrees=0, yaw=0) -> float32 (68, 2) landmarks."""
    base = _canonical_face()
    # Rough depth: the middle of the face (and the nose most) is nearer the camera than the jaw's sides.
    depth = 0.5 * (1 - np.clip(base[:, 0], -1, 1) ** 2)
    depth[27:36] += 0.35

    def make(center=(128.0, 110.0), eye_distance=60.0, roll_degrees=0.0, yaw=0.0) -> np.ndarray:
        x = base[:, 0] * np.cos(yaw) + depth * np.sin(yaw)
        pts = np.stack([x, base[:, 1]], axis=-1)
        a = np.radians(roll_degrees)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        return (pts @ rot.T * eye_distance + np.asarray(center)).astype(np.float32)

    return make


@pytest.fixture()
def skin_image():
    """A 256x256 warm-grey image with a left-to-right light gradient (a stand-in for a face photo)."""
    ramp = np.linspace(0.6, 1.0, 256)[None, :, None]
    return np.clip(np.array([190, 150, 130]) * ramp, 0, 255).astype(np.uint8).repeat(256, axis=0)


@pytest.fixture(scope="session")
def astronaut_portrait() -> np.ndarray:
    """A 200x200 head-and-shoulders crop around the face of scikit-image's astronaut (public domain, shipped with
    the package): BlazeFace's size range, no shared data needed."""
    import cv2
    import skimage.data

    from m2u.masking import DetectorConfig, FaceDetector

    image = skimage.data.astronaut()
    (face,) = FaceDetector(DetectorConfig(blazeface_first=False)).detect(image)
    left, top, right, bottom = face.box
    cx, cy, half = (left + right) // 2, (top + bottom) // 2, right - left
    crop = image[max(cy - half, 0) : cy + half, max(cx - half, 0) : cx + half]
    return np.ascontiguousarray(cv2.resize(crop, (200, 200), interpolation=cv2.INTER_AREA))

"""Face alignment: one similarity transform per face, shared by every member of a pair and by inference.

Template (in units of the crop side ``size``; image x to the right, y down):

    left eye centre  (0.375, 0.38)    mean of landmarks 36-41 (the eye on the image's left)
    right eye centre (0.625, 0.38)    mean of landmarks 42-47
    mouth centre     (0.500, 0.635)   mean of landmarks 48-67

so the inter-ocular distance is a quarter of the crop. The proportions come from dlib landmarks measured on 60
CelebA photos (eye-to-mouth ≈ 1.02 × inter-ocular distance, eyes-to-chin ≈ 1.79 ×, jaw width ≈ 2.27 ×): the chin
lands near 0.83 of the crop and the jaw spans about 0.22–0.78, leaving forehead and a margin around the jaw,
close to CelebA's own framing. The transform (rotation, uniform scale, translation; no shear, no reflection) is
the least-squares fit of those three points to the template. Pixels outside the source image are filled by
replicating its border.

``align_face`` returns the crop and the 2×3 matrix mapping source pixels to crop pixels; ``paste_face`` uses its
inverse to put an (edited) crop back into the source image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from m2u.core.imageio import as_rgb_image
from m2u.masking.geometry import LEFT_EYE, MOUTH, RIGHT_EYE

# Template points as fractions of the crop side: left eye, right eye, mouth centre.
ALIGN_TEMPLATE = np.array([[0.375, 0.38], [0.625, 0.38], [0.5, 0.635]], dtype=np.float64)
# Below this scale the source is first shrunk with area averaging: warpAffine alone would alias.
_PRESHRINK_BELOW = 0.5
# Bumped whenever the crop a face gets changes (template, anchors, fill): model files record it (alignment()),
# so a model is used on crops aligned the way it was trained.
ALIGNMENT_VERSION = 1


def alignment() -> dict:
    """The alignment's version and parameters, as recorded in model files and compared at inference."""
    return {
        "version": ALIGNMENT_VERSION,
        "template": ALIGN_TEMPLATE.round(6).tolist(),
        "anchors": "left eye 36-41, right eye 42-47, mouth 48-67 (dlib 68-point means)",
        "transform": "similarity (least squares), border replicated",
    }


@dataclass(frozen=True)
class AlignedFace:
    image: np.ndarray  # uint8 (size, size, 3)
    matrix: np.ndarray  # float64 (2, 3): source pixel (x, y, 1) -> crop pixel
    landmarks: np.ndarray  # float32 (68, 2) in crop pixels


def anchor_points(landmarks: np.ndarray) -> np.ndarray:
    """The three points the transform is fitted on: eye centres and mouth centre, (3, 2) float64."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (68, 2) or not np.isfinite(points).all():
        raise ValueError(f"expected finite 68-point landmarks of shape (68, 2), got {points.shape}")
    return np.stack([points[LEFT_EYE].mean(0), points[RIGHT_EYE].mean(0), points[MOUTH].mean(0)])


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (x' = a x - b y + tx, y' = b x + a y + ty) mapping src points onto dst, as a
    2x3 matrix: scikit-image's SimilarityTransform estimate (Umeyama), the same least-squares solution as the
    linear fit m2u used before (tests/datasets/test_align.py checks that the crops are unchanged)."""
    from skimage.transform import SimilarityTransform

    transform = SimilarityTransform.from_estimate(np.asarray(src, np.float64), np.asarray(dst, np.float64))
    if not transform or transform.scale < 1e-6:
        raise ValueError("degenerate landmarks: the alignment transform has zero scale")
    return np.asarray(transform.params[:2], dtype=np.float64)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def alignment_matrix(landmarks: np.ndarray, size: int, anchors: np.ndarray | None = None) -> np.ndarray:
    """The 2×3 matrix taking source pixels to the ``size``×``size`` aligned crop. ``anchors`` (3, 2) replaces the
    three points ``anchor_points`` takes from the landmarks (e.g. a mouth centre estimated from visible points)."""
    if size < 8:
        raise ValueError(f"crop size must be >= 8, got {size}")
    points = anchor_points(landmarks) if anchors is None else np.asarray(anchors, np.float64)
    if points.shape != (3, 2) or not np.isfinite(points).all():
        raise ValueError(f"anchors must be 3 finite points (3, 2), got {points.shape}")
    return similarity_matrix(points, ALIGN_TEMPLATE * size)


def source_region(matrix: np.ndarray, size: int, shape: tuple[int, ...], margin: int = 2) -> tuple[int, ...]:
    """(x0, y0, x1, y1): the part of a source image of ``shape`` that the ``size``×``size`` crop of ``matrix``
    covers, grown by ``margin`` pixels and clipped to the image (empty when the crop lies outside it)."""
    inverse = cv2.invertAffineTransform(np.asarray(matrix, np.float64))
    corners = transform_points(inverse, np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64))
    height, width = shape[:2]
    x0, y0 = np.floor(corners.min(0)).astype(int) - margin
    x1, y1 = np.ceil(corners.max(0)).astype(int) + margin + 1
    x0, x1 = int(np.clip(x0, 0, width)), int(np.clip(x1, 0, width))
    y0, y1 = int(np.clip(y0, 0, height)), int(np.clip(y1, 0, height))
    return x0, y0, max(x0, x1), max(y0, y1)


def photo_outline(matrix: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Where a source image of ``shape`` lies in the crop of ``matrix``: its outline (pixel centres at integers),
    (4, 2) crop pixels; the crop's other pixels are border fill (replicated edge pixels)."""
    height, width = shape[:2]
    corners = np.array([[-0.5, -0.5], [width - 0.5, -0.5], [width - 0.5, height - 0.5], [-0.5, height - 0.5]])
    return transform_points(np.asarray(matrix, np.float64), corners)


def align_face(
    image: np.ndarray, landmarks: np.ndarray, size: int, anchors: np.ndarray | None = None
) -> AlignedFace:
    """Crop ``image`` (uint8 H×W×3) to an aligned ``size``×``size`` face; see the module docstring. ``anchors``:
    as in ``alignment_matrix``."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
    matrix = alignment_matrix(landmarks, size, anchors)
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    source, warp = image, matrix
    if scale < _PRESHRINK_BELOW:
        # Only the region the crop covers is shrunk (not the whole photo once per face: a large group photo would
        # cost a full-image resize per face). The crop's border pixels still replicate the image's own border.
        x0, y0, x1, y1 = source_region(matrix, size, image.shape, margin=max(2, round(2 / scale)))
        if x1 - x0 < 1 or y1 - y0 < 1:  # the crop lies wholly outside the image: border pixels only
            x0, y0, x1, y1 = 0, 0, image.shape[1], image.shape[0]
        region = image[y0:y1, x0:x1]
        height, width = region.shape[:2]
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        source = cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA)
        # Shrunk pixel (x', y') came from (x0 + x' * width/new_w, y0 + y' * height/new_h): fold that into the warp.
        warp = matrix @ np.array([[width / new_w, 0.0, x0], [0.0, height / new_h, y0], [0.0, 0.0, 1.0]])
    crop = cv2.warpAffine(source, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    aligned_landmarks = transform_points(matrix, landmarks).astype(np.float32)
    return AlignedFace(image=crop, matrix=matrix, landmarks=aligned_landmarks)


def paste_face(
    original: np.ndarray, crop: np.ndarray, matrix: np.ndarray, region: np.ndarray | None = None
) -> np.ndarray:
    """Put ``crop`` (from ``align_face`` with ``matrix``) back into a copy of ``original``: both uint8 RGB
    (H, W, 3), as ``align_face`` takes and gives them, and so is the result.

    ``region`` (uint8 or bool, crop-sized) limits the pasted pixels, e.g. to the mask; by default the whole crop
    is pasted. Edges are blended over one pixel by the warped coverage, so no seam of border pixels appears.
    """
    # Refused here: floats in [0, 1] came back as a near-black uint8 photo, a wrong-sized region was warped to the
    # wrong place, and a grey or RGBA image failed in numpy's broadcasting words.
    original = as_rgb_image(original, "`original`")
    crop = as_rgb_image(crop, "`crop`")
    height, width = original.shape[:2]
    size = crop.shape[0]
    if crop.shape[:2] != (size, size):
        raise ValueError(f"`crop` must be square, got {crop.shape}")
    matrix = np.asarray(matrix, np.float64)
    if matrix.shape != (2, 3) or not np.isfinite(matrix).all():
        raise ValueError(
            f"`matrix` must be a finite 2x3 affine matrix (align_face's), got shape {matrix.shape}"
        )
    if region is not None and np.shape(region) != (size, size):
        raise ValueError(f"`region` must be crop-sized ({size}, {size}), got {np.shape(region)}")
    inverse = cv2.invertAffineTransform(matrix)
    warped = cv2.warpAffine(
        crop, inverse, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    coverage = (
        np.ones((size, size), np.float32) if region is None else (np.asarray(region) > 0).astype(np.float32)
    )
    # Zero the border so the warped coverage fades out at the crop's edge instead of replicating outwards.
    weight = cv2.warpAffine(coverage, inverse, (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0)
    weight = np.clip(weight, 0.0, 1.0)[..., None]
    blended = original.astype(np.float32) * (1.0 - weight) + warped.astype(np.float32) * weight
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)

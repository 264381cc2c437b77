"""Pasting a restored aligned crop back into its photo: the feathered crop-space weight and the inverse warp of
only the region it touches (every other pixel keeps its exact input value)."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "GREY_SPREAD",
    "feather_weight",
    "grow_region",
    "is_black_and_white",
    "keep_black_and_white",
    "paste_feathered",
    "paste_region",
    "resize_matrix",
]

# A photo whose three channels lie at most this many levels apart at every pixel is black and white: a greyscale
# file is read with equal channels, and a black-and-white photo saved as RGB comes within a few levels (4 such
# photos in ../shared/faces/real-masked: 0-3 apart; colour photos there reach 100 and more).
GREY_SPREAD = 4


def feather_weight(region: np.ndarray, feather_px: int) -> np.ndarray:
    """Crop-space paste weight in [0, 1]: 1 on the `region` (> 0) the generator filled, fading to 0 over about
    `feather_px` outside it, and faded to 0 at the crop border so no crop edge shows in the photo. The fade lies
    outside the region: inside it every pixel is the generator's, so no pixel of what was restored (a mask's edge)
    is blended back in."""
    size = region.shape[0]
    inside = (region > 0).astype(np.float32)
    weight = inside
    if feather_px > 0:
        k = 2 * feather_px + 1
        grown = grow_region(region, feather_px).astype(np.float32)
        weight = np.maximum(cv2.GaussianBlur(grown, (k, k), sigmaX=feather_px / 2.0), inside)
        # The border fade: 0 at the edge, 1 from `feather_px` inwards.
        ramp = np.clip(np.minimum(np.arange(size), np.arange(size)[::-1]) / float(feather_px), 0.0, 1.0)
        weight *= np.minimum.outer(ramp, ramp).astype(np.float32)
    return np.clip(weight, 0.0, 1.0)


def grow_region(mask: np.ndarray, dilate_px: int) -> np.ndarray:
    """The mask (> 0) grown by `dilate_px` pixels every way (a square neighbourhood): uint8 0/1."""
    region = (mask > 0).astype(np.uint8)
    if dilate_px > 0:
        region = cv2.dilate(region, np.ones((2 * dilate_px + 1,) * 2, np.uint8))
    return region


def paste_region(
    photo: np.ndarray, crop: np.ndarray, matrix: np.ndarray, weight: np.ndarray
) -> tuple[int, int, int, int]:
    """Blend `crop` into `photo` IN PLACE through the inverse of the alignment `matrix`, by `weight` (crop-space).

    Only the photo's bounding region of the weight's support is warped (bicubic for the image, so a crop smaller
    than the face is upsampled smoothly; bilinear for the weight), and only pixels whose warped weight is above
    zero change: every other pixel keeps its exact input value. Returns the region (x0, y0, x1, y1) touched."""
    ys, xs = np.nonzero(weight > 0)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    inverse = cv2.invertAffineTransform(np.asarray(matrix, np.float64))
    corners = np.array(
        [
            [xs.min(), ys.min()],
            [xs.max() + 1, ys.min()],
            [xs.min(), ys.max() + 1],
            [xs.max() + 1, ys.max() + 1],
        ],
        np.float64,
    )
    corners = corners @ inverse[:, :2].T + inverse[:, 2]
    height, width = photo.shape[:2]
    x0, y0 = (int(np.clip(v, 0, lim)) for v, lim in zip(np.floor(corners.min(0)) - 2, (width, height)))
    x1, y1 = (int(np.clip(v, 0, lim)) for v, lim in zip(np.ceil(corners.max(0)) + 3, (width, height)))
    if x1 <= x0 or y1 <= y0:
        return (0, 0, 0, 0)
    # The same inverse warp, expressed for the region's own pixel grid.
    local = inverse.copy()
    local[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(crop, local, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(weight.astype(np.float32), local, size, flags=cv2.INTER_LINEAR, borderValue=0.0)
    alpha = np.clip(alpha, 0.0, 1.0)
    region = photo[y0:y1, x0:x1]
    a = alpha[..., None]
    blended = np.clip(np.rint(region.astype(np.float32) * (1.0 - a) + warped.astype(np.float32) * a), 0, 255)
    inside = alpha > 0
    region[inside] = blended.astype(np.uint8)[inside]
    return (x0, y0, x1, y1)


def paste_feathered(
    photo: np.ndarray, crop: np.ndarray, matrix: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """A copy of `photo` with `crop` blended in by `weight` (see `paste_region`)."""
    out = photo.copy()
    paste_region(out, crop, matrix, weight)
    return out


def resize_matrix(width: int, height: int, size: int) -> np.ndarray:
    """The 2x3 matrix that maps an input of width x height onto the size x size crop (a plain resize)."""
    return np.array([[size / width, 0.0, 0.0], [0.0, size / height, 0.0]])


def is_black_and_white(image: np.ndarray) -> bool:
    """Whether `image` (uint8 RGB) is a black-and-white photo (`GREY_SPREAD`): checked on a sparse grid first, so a
    colour photo is told in a fraction of the whole check."""
    for view in (image[::16, ::16], image):
        spread = view.max(axis=2).astype(np.int16) - view.min(axis=2)
        if int(spread.max(initial=0)) > GREY_SPREAD:
            return False
    return True


def keep_black_and_white(original: np.ndarray, result: np.ndarray) -> np.ndarray:
    """`result` with every pixel that differs from `original` turned grey (its luma), where `original` is a
    black-and-white photo: the generator learnt colour faces and paints a skin-coloured lower face into a
    black-and-white one. Pixels equal to `original` keep their exact values."""
    if result is original or not is_black_and_white(original):
        return result
    changed = np.any(result != original, axis=2)
    if not changed.any():
        return result
    grey = cv2.cvtColor(result, cv2.COLOR_RGB2GRAY)
    kept = result.copy()
    kept[changed] = grey[changed][:, None]
    return kept

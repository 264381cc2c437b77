"""Augmentation of training pairs for real photos: geometry (tight crops, scale jitter) and photometry.

Real masked faces arrive cut at the forehead or the chin, a little off the dataset's alignment (the detector sees
only the eyes), and through real cameras: noise, blur, JPEG, colour casts, low light, few pixels (small faces).
`augment_pair` gives a (masked, unmasked, mask) triple one draw of those. Every operation is applied *identically*
to the two images of the pair (the same warp, the same colour transform, the same noise field, the same blur and
JPEG quality) and the warp to the mask too (nearest neighbour): M-Seg learns to find the mask through the camera,
and the generator learns to restore a face in the photo's own look, not a clean face pasted into a noisy photo (the
composite keeps the photo's pixels outside the mask, so a clean restoration would show as a patch).

Pure function of the generator's draws: seeded per (seed, epoch, batch, rank) by the training source
(m2u.training.data.AugmentedSource), so a resumed run sees the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges; `enabled=False` (the default) leaves training exactly as before."""

    enabled: bool = False
    crop: float = 0.35  # share of samples cut tight at the forehead or the chin (half each)
    crop_cut: tuple[float, float] = (0.08, 0.28)  # share of the side cut away
    scale: tuple[float, float] = (0.85, 1.2)  # zoom about the centre (after the crop)
    shift: float = 0.06  # translation, share of the side
    rotate: float = 8.0  # degrees
    color: float = 0.6  # share with a colour cast and brightness/contrast change
    low_light: float = 0.2  # share darkened (gain and gamma)
    blur: float = 0.3
    blur_sigma: tuple[float, float] = (0.4, 1.4)  # pixels at the crop size
    noise: float = 0.35
    noise_sigma: tuple[float, float] = (2.0, 9.0)  # 8-bit levels
    jpeg: float = 0.4
    jpeg_quality: tuple[int, int] = (25, 90)
    # A photo that ends close round the face (the tight crops of real photos): aligned, the crop continues past the
    # photo's edge in replicated border pixels (m2u.datasets.align). Share of samples, and per side the share of the
    # crop's side beyond the photo's edge (each side cut with probability 3/4).
    photo_edge: float = 0.35
    photo_edge_cut: tuple[float, float] = (0.05, 0.3)
    # A small face in the photo (real-masked has faces 15-50 px wide): the aligned crop is an enlargement of a few
    # dozen photo pixels. Share of samples seen at a side drawn from `low_res_side` (pixels, at a 128 crop) and
    # enlarged back bilinearly, as the alignment's warp does; the mask stays the exact one. Off by default: at 0 no
    # draw is taken, so augmented runs before it keep their batches.
    low_res: float = 0.0
    low_res_side: tuple[int, int] = (24, 96)

    def __post_init__(self) -> None:
        for name in ("crop", "color", "low_light", "blur", "noise", "jpeg", "photo_edge", "low_res"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} is a probability within 0..1, got {getattr(self, name)}")
        for name in (
            "crop_cut",
            "scale",
            "blur_sigma",
            "noise_sigma",
            "jpeg_quality",
            "photo_edge_cut",
            "low_res_side",
        ):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"augment.{name} must be a range (low, high) with 0 <= low <= high")
            object.__setattr__(self, name, (type(low)(low), type(high)(high)))
        if self.scale[0] <= 0 or self.crop_cut[1] >= 0.5 or self.photo_edge_cut[1] >= 0.5:
            raise ValueError(
                "augment.scale must be > 0, augment.crop_cut and augment.photo_edge_cut below 0.5"
            )
        if self.low_res_side[0] < 4:
            raise ValueError("augment.low_res_side must be at least 4 pixels")


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(bounds[0] + (bounds[1] - bounds[0]) * rng.random())


def _warp_matrix(rng: np.random.Generator, size: int, config: AugmentConfig) -> np.ndarray | None:
    """The 2x3 map from the aligned crop to the augmented one, or None (identity)."""
    draws = rng.random(7)  # a fixed number of draws per sample
    # A tight crop: a square window cut at the top (forehead) or the bottom (chin), centred across.
    cut = config.crop_cut[0] + (config.crop_cut[1] - config.crop_cut[0]) * draws[1]
    window = np.array([0.0, 0.0, float(size)])  # x0, y0, side
    if draws[0] < config.crop:
        side = size * (1.0 - cut)
        top = size * cut if draws[0] < config.crop / 2 else 0.0
        window = np.array([0.5 * (size - side), top, side])
    scale = config.scale[0] + (config.scale[1] - config.scale[0]) * draws[2]
    shift = config.shift * size * (2 * draws[3:5] - 1)
    angle = config.rotate * (2 * draws[5] - 1)
    if window[2] == size and abs(scale - 1) < 1e-3 and not shift.any() and abs(angle) < 1e-3:
        return None
    # Window -> full crop, then rotation and zoom about the centre, then the shift.
    zoom = size / window[2]
    crop = np.array([[zoom, 0, -window[0] * zoom], [0, zoom, -window[1] * zoom], [0, 0, 1]])
    centre = (size - 1) / 2
    jitter = np.vstack([cv2.getRotationMatrix2D((centre, centre), angle, scale), [0, 0, 1]])
    jitter[:2, 2] += shift
    return (jitter @ crop)[:2]


def _photo_edge(
    images: list[np.ndarray], rng: np.random.Generator, config: AugmentConfig
) -> list[np.ndarray]:
    """The photo's edge drawn into the crop: outside a window, every image of the list continues in its window's
    replicated border pixels, as an aligned crop of a tight photo does."""
    draws = rng.random(9)  # a fixed number of draws per sample
    size = images[0].shape[0]
    low, high = config.photo_edge_cut
    cuts = [
        round(size * (low + (high - low) * draws[1 + side])) if draws[5 + side] < 0.75 else 0
        for side in range(4)
    ]
    if draws[0] >= config.photo_edge or not any(cuts):
        return images
    top, bottom, left, right = cuts
    return [
        cv2.copyMakeBorder(
            image[top : size - bottom, left : size - right], top, bottom, left, right, cv2.BORDER_REPLICATE
        )
        for image in images
    ]


def _photometric(
    images: list[np.ndarray], rng: np.random.Generator, config: AugmentConfig
) -> list[np.ndarray]:
    """One colour/light/blur/noise/JPEG draw applied to every image of the list (pixels equal in all of them stay
    equal, up to JPEG blocks that touch pixels that differ)."""
    draws = rng.random(12)
    size = images[0].shape[0]
    out = [image.astype(np.float32) for image in images]
    if draws[0] < config.color:
        cast = 1.0 + 0.12 * (2 * rng.random(3) - 1)  # per channel
        contrast = 0.8 + 0.4 * draws[1]
        brightness = 25.0 * (2 * draws[2] - 1)
        pivot = out[-1].mean()  # one pivot for the pair (the last image's): outside the mask they stay equal
        for image in out:
            image[...] = ((image - pivot) * contrast + pivot + brightness) * cast
    else:
        rng.random(3)  # keep the number of draws fixed
    if draws[3] < config.low_light:
        gain, gamma = 0.35 + 0.45 * draws[4], 1.0 + 1.2 * draws[5]
        for image in out:
            image[...] = 255.0 * (np.clip(image, 0, 255) / 255.0) ** gamma * gain
    if draws[6] < config.blur:
        sigma = _uniform(rng, config.blur_sigma) * size / 128.0
        out = [cv2.GaussianBlur(image, (0, 0), sigma) for image in out]
    else:
        rng.random()
    noise_sigma = _uniform(rng, config.noise_sigma)
    noise = rng.standard_normal(images[0].shape).astype(np.float32) * noise_sigma
    if draws[7] < config.noise:
        # Sensor noise is partly colour (chroma) and partly shared by the channels (luma).
        noise = 0.6 * noise + 0.4 * noise.mean(axis=2, keepdims=True) * np.sqrt(3)
        out = [image + noise for image in out]
    result = [np.clip(np.rint(image), 0, 255).astype(np.uint8) for image in out]
    quality = int(round(_uniform(rng, (float(config.jpeg_quality[0]), float(config.jpeg_quality[1])))))
    if draws[8] < config.jpeg:
        result = [_jpeg(image, quality) for image in result]
    return result


def _low_res(images: list[np.ndarray], rng: np.random.Generator, config: AugmentConfig) -> list[np.ndarray]:
    """Every image of the list seen at a few dozen pixels and enlarged back (one draw for all of them)."""
    if config.low_res <= 0:
        return images  # no draw: the batches of runs without it stay as they were
    draws = rng.random(2)  # a fixed number of draws per sample
    if draws[0] >= config.low_res:
        return images
    size = images[0].shape[0]
    low, high = config.low_res_side
    side = max(4, round((low + (high - low) * draws[1]) * size / 128.0))
    if side >= size:
        return images
    # Area averaging down (a camera's pixels integrate the light), bilinear up (the alignment's warp).
    return [
        cv2.resize(cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA), (size, size))
        for image in images
    ]


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok, "OpenCV failed to encode a JPEG in memory"
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    assert decoded is not None, "OpenCV failed to decode its own JPEG"
    return np.ascontiguousarray(decoded[..., ::-1])


def augment_pair(
    masked: np.ndarray,
    unmasked: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masked, unmasked, mask) after one draw: uint8 (S, S, 3), (S, S, 3) and (S, S) (any two values), the same
    shapes and dtypes back. Identical transforms on both images; the warp also on the mask."""
    size = masked.shape[0]
    matrix = _warp_matrix(rng, size, config)
    if matrix is not None:

        def warp(image: np.ndarray, interpolation: int) -> np.ndarray:
            # Replicated borders on images and mask alike: a mask touching the edge continues in both.
            return cv2.warpAffine(
                image, matrix, (size, size), flags=interpolation, borderMode=cv2.BORDER_REPLICATE
            )

        masked, unmasked = warp(masked, cv2.INTER_LINEAR), warp(unmasked, cv2.INTER_LINEAR)
        mask = warp(mask, cv2.INTER_NEAREST)
    masked, unmasked, mask = _photo_edge([masked, unmasked, mask], rng, config)
    masked, unmasked = _photometric([masked, unmasked], rng, config)
    masked, unmasked = _low_res([masked, unmasked], rng, config)
    return masked, unmasked, mask

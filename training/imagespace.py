"""The one place for image-range facts: the loader gives [0, 1], the models take and give [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch

# What model files record as their input normalisation (the inverse of from_model_range).
INPUT_NORMALISATION = "RGB in [0, 1] -> [-1, 1] (x * 2 - 1); outputs tanh [-1, 1]"


def to_model_range(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] (loader) -> [-1, 1] (model input / tanh output)."""
    return x01 * 2.0 - 1.0


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped: a tanh output never leaves the range, other tensors might."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


def composite(output: torch.Tensor, masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep the visible pixels of the input and take the generator's pixels only under the mask.

    `output` and `masked` must be in the same range; `mask` is (B, 1, H, W) with 1 where the face mask is.
    """
    if mask.shape[1] != 1 or mask.shape[-2:] != output.shape[-2:]:
        raise ValueError(f"mask must be (B, 1, H, W) matching the image, got {tuple(mask.shape)}")
    return output * mask + masked * (1.0 - mask)


def to_uint8_images(x01: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8 RGB (rounded, clipped)."""
    if x01.dim() != 4 or x01.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got shape {tuple(x01.shape)}")
    arr = (x01.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def checked_images01(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`images` as floats of `dtype`, refused (ValueError) unless they are floating-point images in [0, 1]: uint8
    or 0..255 values ran through the networks and came back as a wrong mask and a composite of mixed ranges."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        kind = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(
            f"images must be a floating-point tensor in [0, 1] (divide uint8 by 255), got {kind}"
        )
    if images.numel() and (float(images.min()) < -1e-3 or float(images.max()) > 1 + 1e-3):
        raise ValueError(
            f"images must lie in [0, 1], got values from {float(images.min()):.3g} to {float(images.max()):.3g}"
        )
    return images.to(dtype)

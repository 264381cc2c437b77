"""Pixel metrics: PSNR, SSIM and L1 per image, on the whole image and on the masked region alone.

Images are float (B, 3, H, W) in [0, 1]; masks (B, 1, H, W) in {0, 1}. PSNR is computed per image and averaged
over images (the convention of the face-inpainting literature; torchmetrics' default pools the MSE instead).
"""

from __future__ import annotations

import torch

from m2u.training.ssim import SSIM_WINDOW_SIZE, psnr, ssim, ssim_map

__all__ = [
    "check_pair",
    "check_mask",
    "l1_error",
    "psnr_per_image",
    "ssim_per_image",
    "masked_l1",
    "masked_psnr",
    "masked_ssim",
]


def check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(x.shape)}")


def check_mask(mask: torch.Tensor, x: torch.Tensor) -> None:
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"mask must be (B, 1, H, W) matching images {tuple(x.shape)}, got {tuple(mask.shape)}"
        )


def l1_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image, (B,), on the [0, 1] scale."""
    check_pair(x, y)
    return (x - y).abs().flatten(1).mean(dim=1)


def psnr_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image, (B,) (`m2u.training.ssim.psnr`)."""
    check_pair(x, y)
    return psnr(x, y, data_range=data_range, reduction="none")


def ssim_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM per image, (B,) (`m2u.training.ssim.ssim`: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03)."""
    check_pair(x, y)
    return ssim(x, y, data_range=data_range, reduction="none")


def _mask_pixel_count(mask: torch.Tensor) -> torch.Tensor:
    return mask.flatten(1).sum(dim=1)


def masked_l1(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the masked pixels per image, (B,); NaN where the mask is empty."""
    check_pair(x, y)
    check_mask(mask, x)
    err = ((x - y).abs() * mask).flatten(1).sum(dim=1)
    count = _mask_pixel_count(mask) * x.shape[1]
    return torch.where(count > 0, err / count.clamp_min(1), torch.full_like(err, float("nan")))


def masked_psnr(
    x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, data_range: float = 1.0
) -> torch.Tensor:
    """PSNR of the masked pixels per image, (B,); NaN where the mask is empty, inf where they are identical."""
    check_pair(x, y)
    check_mask(mask, x)
    sq = (((x - y) ** 2) * mask).flatten(1).sum(dim=1)
    count = _mask_pixel_count(mask) * x.shape[1]
    mse = sq / count.clamp_min(1)
    out = 10.0 * torch.log10(data_range**2 / mse)
    return torch.where(count > 0, out, torch.full_like(out, float("nan")))


def masked_ssim(
    x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, data_range: float = 1.0
) -> torch.Tensor:
    """The SSIM map averaged over the masked pixels per image, (B,); NaN where the mask is empty.

    The map covers the positions where the 11x11 window fits (as the whole-image SSIM), so the mask is cropped
    by half a window on each side to line up with it."""
    check_pair(x, y)
    check_mask(mask, x)
    per_pixel = ssim_map(x, y, data_range=data_range).mean(dim=1, keepdim=True)  # channels averaged
    border = (SSIM_WINDOW_SIZE - 1) // 2
    weight = mask[..., border : border + per_pixel.shape[-2], border : border + per_pixel.shape[-1]]
    count = weight.flatten(1).sum(dim=1)
    val = (per_pixel * weight).flatten(1).sum(dim=1) / count.clamp_min(1)
    return torch.where(count > 0, val, torch.full_like(val, float("nan")))

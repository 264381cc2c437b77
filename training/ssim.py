"""Differentiable SSIM and PSNR in torch.

SSIM follows Wang et al. (2004) as scikit-image computes it with
`structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=...)`:
an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, statistics over 'valid' positions only (skimage
crops (win_size - 1) // 2 pixels from each border before averaging), channels averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


_KERNELS: dict[tuple[int, float, torch.dtype, torch.device], torch.Tensor] = {}


def _gaussian_kernel_1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The normalised 1-D Gaussian window, built once per (size, sigma, dtype, device): no CPU build and
    host-to-device copy at every call."""
    key = (size, float(sigma), dtype, torch.device(device))
    kernel = _KERNELS.get(key)
    if kernel is None:
        coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
        weights = torch.exp(-(coords**2) / (2.0 * sigma**2))
        kernel = (weights / weights.sum()).to(dtype=dtype, device=device)
        _KERNELS[key] = kernel
    return kernel


def _filter(x: torch.Tensor, kernel_1d: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter per channel, 'valid' (no padding): border values are dropped anyway."""
    channels = x.shape[1]
    size = kernel_1d.numel()
    kh = kernel_1d.view(1, 1, size, 1).expand(channels, 1, size, 1)
    kw = kernel_1d.view(1, 1, 1, size).expand(channels, 1, 1, size)
    return F.conv2d(F.conv2d(x, kh, groups=channels), kw, groups=channels)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(
            f"SSIM/PSNR need tensors of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) tensors, got {x.dim()} dimensions")


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM, (B, C, H - 10, W - 10): the positions where the 11x11 window fits."""
    _check_pair(x, y)
    if min(x.shape[-2:]) < SSIM_WINDOW_SIZE:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW_SIZE}x{SSIM_WINDOW_SIZE}")
    # float64 would be exact but slow; float32 agrees with skimage to ~1e-6 on [0, 1] images.
    compute_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    x = x.to(compute_dtype)
    y = y.to(compute_dtype)
    kernel = _gaussian_kernel_1d(SSIM_WINDOW_SIZE, SSIM_SIGMA, compute_dtype, x.device)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x = _filter(x, kernel)
    mu_y = _filter(y, kernel)
    # (Co)variances from images centred on their own means: the same values, without the float32
    # cancellation of E[x^2] - E[x]^2 on bright flat regions.
    xc = x - x.mean(dim=(2, 3), keepdim=True)
    yc = y - y.mean(dim=(2, 3), keepdim=True)
    mu_xc = _filter(xc, kernel)
    mu_yc = _filter(yc, kernel)
    var_x = _filter(xc * xc, kernel) - mu_xc * mu_xc
    var_y = _filter(yc * yc, kernel) - mu_yc * mu_yc
    cov_xy = _filter(xc * yc, kernel) - mu_xc * mu_yc
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return numerator / denominator


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Mean SSIM. reduction='mean' -> scalar over the batch; 'none' -> one value per image (B,)."""
    per_image = ssim_map(x, y, data_range).mean(dim=(1, 2, 3))
    if reduction == "none":
        return per_image
    if reduction == "mean":
        return per_image.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """PSNR in dB, computed per image then averaged (reduction='mean') or returned per image ('none')."""
    _check_pair(x, y)
    mse = (x.float() - y.float()).pow(2).mean(dim=(1, 2, 3))
    # Identical images give +inf, as skimage does.
    per_image = 10.0 * torch.log10(data_range**2 / mse)
    if reduction == "none":
        return per_image
    if reduction == "mean":
        return per_image.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")

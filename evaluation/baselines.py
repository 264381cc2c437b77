"""Classical baselines for face unmasking, run on the same samples and masks as the model.

- `masked_input`: the masked photo itself (the "do nothing" floor every method must beat);
- `telea`: OpenCV's fast-marching inpainting (Telea 2004);
- `navier_stokes`: OpenCV's fluid-dynamics inpainting (Bertalmio et al. 2001).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from m2u.core.checks import check_types
from m2u.core.errors import SettingError
from m2u.training.imagespace import checked_images01, to_uint8_images

__all__ = ["BaselineConfig", "BASELINES", "inpaint_opencv", "run_baseline"]


@dataclass
class BaselineConfig:
    """OpenCV inpainting settings."""

    radius: float = 3.0  # neighbourhood radius in pixels (OpenCV's documented example value)
    dilate_px: int = 0  # grow the mask before inpainting (0: exactly the mask the model gets)

    def __post_init__(self) -> None:
        check_types(self)
        if self.radius <= 0:
            raise SettingError("radius", f"must be > 0 pixels, got {self.radius}")
        if self.dilate_px < 0:
            raise SettingError("dilate_px", f"must be >= 0 pixels, got {self.dilate_px}")


_OPENCV_FLAGS = {"telea": cv2.INPAINT_TELEA, "navier_stokes": cv2.INPAINT_NS}


def inpaint_opencv(
    image: np.ndarray, mask: np.ndarray, method: str, config: BaselineConfig | None = None
) -> np.ndarray:
    """Inpaint one uint8 RGB image (H, W, 3) where `mask` (H, W) is non-zero, with 'telea' or 'navier_stokes'."""
    config = config or BaselineConfig()
    if method not in _OPENCV_FLAGS:
        raise ValueError(f"unknown OpenCV inpainting method {method!r}: use one of {sorted(_OPENCV_FLAGS)}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {image.shape[:2]}")
    mask_u8 = (mask > 0).astype(np.uint8) * 255
    if config.dilate_px > 0:
        kernel = np.ones((2 * config.dilate_px + 1,) * 2, np.uint8)
        mask_u8 = cv2.dilate(mask_u8, kernel)
    return cv2.inpaint(np.ascontiguousarray(image), mask_u8, config.radius, _OPENCV_FLAGS[method])


def _batch_opencv(method: str) -> Callable[[torch.Tensor, torch.Tensor, BaselineConfig], torch.Tensor]:
    def run(masked01: torch.Tensor, mask: torch.Tensor, config: BaselineConfig) -> torch.Tensor:
        images = to_uint8_images(masked01)
        masks = (mask[:, 0] > 0.5).cpu().numpy()
        out = np.stack([inpaint_opencv(img, m, method, config) for img, m in zip(images, masks, strict=True)])
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div(255.0)

    return run


def _masked_input(masked01: torch.Tensor, mask: torch.Tensor, config: BaselineConfig) -> torch.Tensor:
    return masked01.detach().float().cpu().clone()


# name -> function(masked (B,3,H,W) in [0,1], mask (B,1,H,W) in {0,1}, config) -> (B,3,H,W) in [0,1]
BASELINES: dict[str, Callable[[torch.Tensor, torch.Tensor, BaselineConfig], torch.Tensor]] = {
    "masked_input": _masked_input,
    "telea": _batch_opencv("telea"),
    "navier_stokes": _batch_opencv("navier_stokes"),
}


def run_baseline(
    name: str, masked01: torch.Tensor, mask: torch.Tensor, config: BaselineConfig | None = None
) -> torch.Tensor:
    """Apply baseline `name` to a batch; returns (B, 3, H, W) float in [0, 1] on the CPU."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}: use one of {sorted(BASELINES)}")
    if masked01.dim() != 4 or masked01.shape[1] != 3:
        raise ValueError(f"masked images must be (B, 3, H, W), got {tuple(masked01.shape)}")
    if (
        mask.dim() != 4
        or mask.shape[1] != 1
        or mask.shape[0] != masked01.shape[0]
        or mask.shape[2:] != masked01.shape[2:]
    ):
        raise ValueError(
            f"mask must be (B, 1, H, W) matching {tuple(masked01.shape)}, got {tuple(mask.shape)}"
        )
    masked01 = checked_images01(masked01)  # uint8 or 0..255 values gave an all-white "restoration"
    return BASELINES[name](masked01, mask, config or BaselineConfig())

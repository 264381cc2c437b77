"""The two-stage restorer: M-Seg predicts the mask, CARU2-Net fills it, the composite keeps every visible pixel."""

from __future__ import annotations

from pathlib import Path

import torch

from m2u.training.checkpoint import load_model
from m2u.training.imagespace import composite, from_model_range, to_model_range
from m2u.training.models import CARU2Net, MSeg

__all__ = ["load_two_stage", "restore_batch"]


def load_two_stage(
    mseg_path: str | Path, generator_path: str | Path, device: torch.device
) -> tuple[MSeg, CARU2Net]:
    """Load and type-check the two checkpoints (a swapped pair gets a clear error)."""
    mseg = load_model(mseg_path, map_location=device)
    generator = load_model(generator_path, map_location=device)
    if not isinstance(mseg, MSeg):
        raise ValueError(f"--mseg {mseg_path} holds a {type(mseg).__name__}, not an M-Seg model")
    if not isinstance(generator, CARU2Net):
        raise ValueError(
            f"--generator {generator_path} holds a {type(generator).__name__}, not a CARU2-Net generator"
        )
    return mseg.eval(), generator.eval()


@torch.no_grad()
def restore_batch(
    mseg: MSeg, generator: CARU2Net, masked01: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two-stage model on (B, 3, H, W) images in [0, 1]: (predicted mask, raw output, composite), the
    images in [0, 1]."""
    x = to_model_range(masked01)
    mask = mseg.predict_mask(x, threshold=threshold)
    raw = from_model_range(generator(x, mask))
    return mask, raw, composite(raw, masked01, mask)

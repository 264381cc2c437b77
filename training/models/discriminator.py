"""The M2UNet discriminator (paper section 3.2 B): five 4x4 spectral-normalised convolutions, strides
2, 2, 2, 1, 1, channels 3 -> 64 -> 128 -> 256 -> 512 -> 1, LeakyReLU 0.2 between them (none after the last:
LSGAN wants raw scores). Padding 1 (a choice): 256x256 -> 30x30 patch scores."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from m2u.core.checks import check_types


@dataclass
class DiscriminatorConfig:
    channels: tuple[int, ...] = (3, 64, 128, 256, 512, 1)
    strides: tuple[int, ...] = (2, 2, 2, 1, 1)
    kernel_size: int = 4
    padding: int = 1
    negative_slope: float = 0.2
    spectral_norm: bool = True

    def __post_init__(self) -> None:
        check_types(self)  # NaN, infinity, 2.5 for a count: refused naming the field
        self.channels = tuple(int(c) for c in self.channels)
        self.strides = tuple(int(s) for s in self.strides)
        if len(self.channels) != len(self.strides) + 1:
            raise ValueError("DiscriminatorConfig needs one more channel count than strides")

    def to_dict(self) -> dict:
        return asdict(self)


class PatchDiscriminator(nn.Module):
    """forward(image in [-1, 1], (B, 3, H, W)) -> patch scores (B, 1, h, w)."""

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DiscriminatorConfig()
        layers: list[nn.Module] = []
        last = len(config.strides) - 1
        for index, stride in enumerate(config.strides):
            conv = nn.Conv2d(
                config.channels[index], config.channels[index + 1], config.kernel_size, stride, config.padding
            )
            layers.append(spectral_norm(conv) if config.spectral_norm else conv)
            if index != last:
                layers.append(nn.LeakyReLU(config.negative_slope))
        self.layers = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.layers(image)

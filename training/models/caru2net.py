"""CARU2-Net: the M2UNet generator (paper section 3.2 A), a U2-Net-style nest of CARU blocks.

Five stages (default): E1 = CARU-7, max-pool, E2 = CARU-6, max-pool, bottleneck = CARU-4 (dilated, no pooling),
upsample, D2 = CARU-6 on [up, E2], upsample, D1 = CARU-7 on [up, E1], 3x3 conv, tanh.
Three stages (ablation, section 4.3): E1, max-pool, bottleneck, upsample, D1.

The paper does not give the widths. The defaults (mid, out) below are ordinary U2-Net-like widths that give
3.164 M parameters (paper: 3.17 M) and 42.5 G multiply-accumulates at 1x4x256x256 (paper: 42.53 "GFLOPs",
which therefore counts MACs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from m2u.core.checks import check_types
from m2u.training.models.blocks import CARU, CARUDilated, upsample_like

Widths = tuple[int, int]


@dataclass
class GeneratorConfig:
    stages: int = 5  # 5 (paper) or 3 (ablation: E1, bottleneck, D1)
    segmentation_guidance: bool = True  # input = masked image + mask (4 channels); off: image only (3)
    channel_attention: bool = True
    attention_reduction: int = 8
    width_multiplier: float = 1.0  # scales every width (tests and CPU runs use < 1)
    encoder1: Widths = (32, 96)  # (mid, out)
    encoder2: Widths = (32, 192)
    bottleneck: Widths = (96, 192)
    decoder2: Widths = (32, 96)
    decoder1: Widths = (16, 96)
    encoder1_depth: int = 7  # CARU-7
    encoder2_depth: int = 6  # CARU-6
    out_channels: int = 3

    def __post_init__(self) -> None:
        check_types(self)  # NaN, infinity, 2.5 for a count: refused naming the field
        # JSON round trips give lists: store tuples so configs compare equal.
        for name in ("encoder1", "encoder2", "bottleneck", "decoder2", "decoder1"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 2 or min(value) < 1:
                raise ValueError(f"GeneratorConfig.{name} must be (mid, out) positive ints, got {value}")
            setattr(self, name, value)
        if self.stages not in (3, 5):
            raise ValueError(f"GeneratorConfig.stages must be 3 or 5, got {self.stages}")
        if self.width_multiplier <= 0:
            raise ValueError("GeneratorConfig.width_multiplier must be > 0")

    @property
    def in_channels(self) -> int:
        return 4 if self.segmentation_guidance else 3

    def scaled(self, widths: Widths) -> Widths:
        return tuple(max(1, round(w * self.width_multiplier)) for w in widths)  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return asdict(self)


class CARU2Net(nn.Module):
    """forward(masked, mask) -> (B, 3, H, W) in [-1, 1]. `masked` in [-1, 1], `mask` (B, 1, H, W) in {0, 1}."""

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GeneratorConfig()
        attention, reduction = config.channel_attention, config.attention_reduction
        e1_mid, e1_out = config.scaled(config.encoder1)
        b_mid, b_out = config.scaled(config.bottleneck)
        d1_mid, d1_out = config.scaled(config.decoder1)
        self.encoder1 = CARU(config.encoder1_depth, config.in_channels, e1_mid, e1_out, attention, reduction)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        if config.stages == 5:
            e2_mid, e2_out = config.scaled(config.encoder2)
            d2_mid, d2_out = config.scaled(config.decoder2)
            self.encoder2: nn.Module | None = CARU(
                config.encoder2_depth, e1_out, e2_mid, e2_out, attention, reduction
            )
            self.bottleneck = CARUDilated(e2_out, b_mid, b_out, attention, reduction)
            self.decoder2: nn.Module | None = CARU(
                config.encoder2_depth, b_out + e2_out, d2_mid, d2_out, attention, reduction
            )
            decoder1_in = d2_out + e1_out
        else:
            self.encoder2 = None
            self.decoder2 = None
            self.bottleneck = CARUDilated(e1_out, b_mid, b_out, attention, reduction)
            decoder1_in = b_out + e1_out
        self.decoder1 = CARU(config.encoder1_depth, decoder1_in, d1_mid, d1_out, attention, reduction)
        self.output_conv = nn.Conv2d(d1_out, config.out_channels, 3, padding=1)

    def forward(self, masked: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if masked.dim() != 4 or masked.shape[1] != 3:
            raise ValueError(f"masked must be (B, 3, H, W), got {tuple(masked.shape)}")
        if self.config.segmentation_guidance:
            if mask is None:
                raise ValueError("this generator is segmentation-guided: pass the (B, 1, H, W) mask")
            if mask.shape[0] != masked.shape[0] or mask.shape[1] != 1 or mask.shape[-2:] != masked.shape[-2:]:
                raise ValueError(f"mask must be (B, 1, H, W) matching masked, got {tuple(mask.shape)}")
            x = torch.cat([masked, mask.to(masked.dtype)], dim=1)
        else:
            x = masked  # ablation: the mask is not an input
        e1 = self.encoder1(x)
        h = self.pool(e1)
        if self.encoder2 is not None and self.decoder2 is not None:
            e2 = self.encoder2(h)
            b = self.bottleneck(self.pool(e2))
            h = self.decoder2(torch.cat([upsample_like(b, e2), e2], dim=1))
        else:
            h = self.bottleneck(h)
        d1 = self.decoder1(torch.cat([upsample_like(h, e1), e1], dim=1))
        return torch.tanh(self.output_conv(d1))

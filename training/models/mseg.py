"""M-Seg: the mask segmenter (paper section 3.1), a U-Net with CBAM attention.

The paper takes it pretrained from GANMasker and describes it only as "a modified 5 x 5 autoencoder inspired
by U-Net, enhanced with CBAM". We read "5 x 5" as five resolution levels (four poolings) and choose: each level
is two 3x3 conv-BN-ReLU layers followed by CBAM (channel then spatial attention); bilinear upsampling in the
decoder; a 1x1 convolution to one logit channel. Widths double per level from `base_channels`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from m2u.core.checks import check_types
from m2u.training.models.blocks import encode_pyramid

# The one default of M-Seg's threshold (mask = sigmoid(logits) >= threshold). A trained M-Seg file records the
# threshold it was trained and validated with (checkpoint.ModelInfo); everything that binarises reads that.
DEFAULT_MASK_THRESHOLD = 0.5


def check_mask_threshold(value: float | None) -> None:
    """The one check of a mask threshold (None: "the file's"): a probability strictly between 0 and 1."""
    if value is not None and not 0.0 < value < 1.0:
        raise ValueError(f"mask_threshold must be in (0, 1), got {value}")


@dataclass
class MSegConfig:
    in_channels: int = 3
    base_channels: int = 16
    levels: int = 5
    cbam_reduction: int = 8
    cbam_spatial_kernel: int = 7

    def __post_init__(self) -> None:
        check_types(self)  # NaN, infinity, 2.5 for a count: refused naming the field
        if self.levels < 2:
            raise ValueError(f"MSegConfig.levels must be >= 2, got {self.levels}")
        if self.base_channels < 1:
            raise ValueError("MSegConfig.base_channels must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel attention from average- and max-pooled
    descriptors through a shared MLP, then spatial attention from channel-wise average and max maps."""

    def __init__(self, channels: int, reduction: int, spatial_kernel: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel_gate = torch.sigmoid(
            self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        )
        x = x * channel_gate
        spatial_in = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(spatial_in))


class ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, config: MSegConfig) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.attention = CBAM(out_channels, config.cbam_reduction, config.cbam_spatial_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.body(x))


class MSeg(nn.Module):
    """forward(masked in [-1, 1], (B, 3, H, W)) -> mask logits (B, 1, H, W)."""

    def __init__(self, config: MSegConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MSegConfig()
        widths = [config.base_channels * 2**level for level in range(config.levels)]
        self.encoders = nn.ModuleList()
        previous = config.in_channels
        for width in widths:
            self.encoders.append(ConvBlock(previous, width, config))
            previous = width
        self.decoders = nn.ModuleList(
            ConvBlock(widths[level + 1] + widths[level], widths[level], config)
            for level in reversed(range(config.levels - 1))
        )
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"M-Seg expects (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        skips = encode_pyramid(x, self.encoders)
        h = skips[-1]
        for index, decoder in enumerate(self.decoders):
            skip = skips[-2 - index]
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = decoder(torch.cat([h, skip], dim=1))
        return self.head(h)

    @torch.no_grad()
    def predict_mask(self, x: torch.Tensor, mask_threshold: float, mirror: bool = False) -> torch.Tensor:
        """Binary mask, float {0, 1}, (B, 1, H, W): sigmoid(logits) >= mask_threshold (a model file records its
        own: `LoadedModel.info.mask_threshold_or_default()`). `mirror`: the probability is the mean of the image's
        and its mirror image's (mirrored back), as a face and its mirror image wear the same mask; twice the cost."""
        return (self.mask_probability(x, mirror) >= mask_threshold).to(x.dtype)

    @torch.no_grad()
    def mask_probability(self, x: torch.Tensor, mirror: bool = False) -> torch.Tensor:
        """Per-pixel P(mask), (B, 1, H, W): sigmoid(logits), with `mirror` the mean of the image's and its mirror
        image's (mirrored back)."""
        probability = torch.sigmoid(self.forward(x))
        if mirror:
            probability = (probability + torch.sigmoid(self.forward(x.flip(3))).flip(3)) / 2
        return probability

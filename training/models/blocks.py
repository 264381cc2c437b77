"""Building blocks of CARU2-Net: the CAR layer and the CARU U-blocks (after U2-Net's RSU blocks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def encode_pyramid(h: torch.Tensor, encoders: nn.ModuleList) -> list[torch.Tensor]:
    """The U-Net encoder path: each encoder on the previous level, 2x max-pooled (ceil) from the second level on;
    returns every level's output (the skips, the deepest last)."""
    skips = []
    for index, encoder in enumerate(encoders):
        if index > 0:
            h = F.max_pool2d(h, 2, stride=2, ceil_mode=True)
        h = encoder(h)
        skips.append(h)
    return skips


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention: global average pool -> bottleneck MLP -> sigmoid gate."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * gate


class CAR(nn.Module):
    """Conv-Attention Residual layer: conv3x3 (dilated) -> BN -> ReLU -> channel attention, plus a skip.

    The skip is the identity when the channel counts match, else a 1x1 projection (a choice: the paper's
    Figure 2 shows a residual connection without saying how channel changes are handled).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilation: int = 1,
        attention: bool = True,
        reduction: int = 8,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation)
        self.bn = nn.BatchNorm2d(out_channels)
        self.attention = ChannelAttention(out_channels, reduction) if attention else nn.Identity()
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(F.relu(self.bn(self.conv(x)))) + self.skip(x)


def upsample_like(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling to the reference's spatial size (handles sizes that are not powers of two)."""
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


class CARU(nn.Module):
    """CARU-L (L = 5, 6, 7, ...): a U-block with pooling inside.

    input CAR (in -> out); L-1 encoder CARs (out -> mid, then mid -> mid) with max-pooling between them;
    a dilation-2 CAR at the centre; L-1 decoder CARs taking [upsampled, encoder skip] concatenations
    (the last one mid*2 -> out); the input CAR's output is added to the block output.
    """

    def __init__(
        self,
        depth: int,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        attention: bool = True,
        reduction: int = 8,
    ) -> None:
        super().__init__()
        if depth < 3:
            raise ValueError(f"CARU depth must be >= 3, got {depth}")
        self.depth = depth

        def car(cin: int, cout: int, dilation: int = 1) -> CAR:
            return CAR(cin, cout, dilation, attention, reduction)

        self.input_layer = car(in_channels, out_channels)
        encoders = [car(out_channels, mid_channels)]
        encoders += [car(mid_channels, mid_channels) for _ in range(depth - 2)]
        self.encoders = nn.ModuleList(encoders)
        self.centre = car(mid_channels, mid_channels, dilation=2)
        decoders = [car(mid_channels * 2, mid_channels) for _ in range(depth - 2)]
        decoders.append(car(mid_channels * 2, out_channels))
        self.decoders = nn.ModuleList(decoders)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = self.input_layer(x)
        skips = encode_pyramid(x_in, self.encoders)
        h = self.centre(skips[-1])
        for index, decoder in enumerate(self.decoders):
            skip = skips[-1 - index]
            if h.shape[-2:] != skip.shape[-2:]:
                h = upsample_like(h, skip)
            h = decoder(torch.cat([h, skip], dim=1))
        return h + x_in


class CARUDilated(nn.Module):
    """CARU-4 ("F" variant, no pooling): input CAR, encoder CARs with dilations 1, 2, 4, a dilation-8 centre,
    decoder CARs with dilations 4, 2, 1 on [decoder, encoder skip] concatenations, input added to the output."""

    DILATIONS = (1, 2, 4)
    CENTRE_DILATION = 8

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        attention: bool = True,
        reduction: int = 8,
    ) -> None:
        super().__init__()

        def car(cin: int, cout: int, dilation: int = 1) -> CAR:
            return CAR(cin, cout, dilation, attention, reduction)

        self.input_layer = car(in_channels, out_channels)
        self.encoders = nn.ModuleList(
            [
                car(out_channels if i == 0 else mid_channels, mid_channels, d)
                for i, d in enumerate(self.DILATIONS)
            ]
        )
        self.centre = car(mid_channels, mid_channels, self.CENTRE_DILATION)
        reversed_dilations = tuple(reversed(self.DILATIONS))
        self.decoders = nn.ModuleList(
            [
                car(mid_channels * 2, out_channels if i == len(reversed_dilations) - 1 else mid_channels, d)
                for i, d in enumerate(reversed_dilations)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = self.input_layer(x)
        skips = []
        h = x_in
        for encoder in self.encoders:
            h = encoder(h)
            skips.append(h)
        h = self.centre(h)
        for index, decoder in enumerate(self.decoders):
            h = decoder(torch.cat([h, skips[-1 - index]], dim=1))
        return h + x_in

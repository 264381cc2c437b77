"""LPIPS v0.1 (Zhang et al. 2018): AlexNet or VGG16 trunk with the published linear heads."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from m2u.evaluation.pixel import check_mask, check_pair
from m2u.evaluation.weights import MetricUnavailable, hub_state_dict, load_state_dict_file

__all__ = ["LPIPSConfig", "LPIPS", "LPIPSTrunk", "build_lpips_trunk", "load_lpips"]


# Facts of the published LPIPS v0.1 metric (Zhang et al. 2018): the input normalisation applied to [-1, 1]
# images, and where the trunk's activations are tapped (indices into torchvision's `features` Sequential).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
_ALEX_TAPS = (1, 4, 7, 9, 11)  # relu1 .. relu5
_VGG16_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)

# Where the standard weights live: torchvision's ImageNet trunks and the LPIPS linear heads.
TORCHVISION_TRUNK_URLS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
}
LPIPS_HEAD_URLS = {
    "alex": "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",
    "vgg16": "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
}


@dataclass
class LPIPSConfig:
    """Which LPIPS network to use and where its weights come from."""

    net: str = "alex"  # "alex" (the LPIPS default) or "vgg16"
    trunk_weights: str | None = None  # torchvision state dict (.pth); None: torch.hub cache / download
    head_weights: str | None = None  # LPIPS v0.1 linear heads (.pth); None: the `lpips` package, then the hub


class LPIPSTrunk(nn.Module):
    """A feature trunk whose `features` Sequential has torchvision's layout (so its state-dict keys match)."""

    def __init__(self, features: nn.Sequential, taps: Sequence[int], channels: Sequence[int]):
        super().__init__()
        if len(taps) != len(channels):
            raise ValueError("taps and channels must have the same length")
        if max(taps) >= len(features):
            raise ValueError(f"tap index {max(taps)} is outside a trunk of {len(features)} layers")
        self.features = features
        self.taps = tuple(taps)
        self.channels = tuple(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outs.append(x)
            if index >= self.taps[-1]:
                break
        return outs


def build_lpips_trunk(net: str = "alex", width_divisor: int = 1) -> LPIPSTrunk:
    """AlexNet or VGG16 `features` with torchvision's layer indices; `width_divisor` > 1 makes a thin copy
    (for tests: same topology and key names, fewer channels)."""
    if width_divisor < 1:
        raise ValueError("width_divisor must be >= 1")

    def w(c: int) -> int:
        return max(1, c // width_divisor)

    if net == "alex":
        widths = [w(64), w(192), w(384), w(256), w(256)]
        features = nn.Sequential(
            nn.Conv2d(3, widths[0], 11, stride=4, padding=2),
            nn.ReLU(inplace=False),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(widths[0], widths[1], 5, padding=2),
            nn.ReLU(inplace=False),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(widths[1], widths[2], 3, padding=1),
            nn.ReLU(inplace=False),
            nn.Conv2d(widths[2], widths[3], 3, padding=1),
            nn.ReLU(inplace=False),
            nn.Conv2d(widths[3], widths[4], 3, padding=1),
            nn.ReLU(inplace=False),
            nn.MaxPool2d(3, stride=2),
        )
        return LPIPSTrunk(features, _ALEX_TAPS, widths)
    if net == "vgg16":
        layers: list[nn.Module] = []
        in_ch = 3
        for item in _VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, w(int(item)), 3, padding=1), nn.ReLU(inplace=False)]
                in_ch = w(int(item))
        channels = [w(64), w(128), w(256), w(512), w(512)]
        return LPIPSTrunk(nn.Sequential(*layers), _VGG16_TAPS, channels)
    raise ValueError(f"unknown LPIPS network {net!r}: use 'alex' or 'vgg16'")


class _LinearHead(nn.Module):
    # Named `model` with the 1x1 conv at index 1 so keys read `lin{k}.model.1.weight`, as in the LPIPS files.
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(p=0.0), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS distance: unit-normalised trunk activations, squared difference, learned 1x1 weights, averaged."""

    def __init__(self, trunk: LPIPSTrunk):
        super().__init__()
        self.trunk = trunk
        self.shift: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        for k, channels in enumerate(trunk.channels):
            self.add_module(f"lin{k}", _LinearHead(channels))
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def heads(self) -> list[_LinearHead]:
        return [getattr(self, f"lin{k}") for k in range(len(self.trunk.channels))]

    @staticmethod
    def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
        return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)

    def forward(self, x01: torch.Tensor, y01: torch.Tensor, spatial: bool = False) -> torch.Tensor:
        """Distance per image, (B,); with `spatial=True` a (B, 1, H, W) map at the input resolution whose
        mean is the distance."""
        check_pair(x01, y01)
        fx = self.trunk(((x01 * 2 - 1) - self.shift) / self.scale)
        fy = self.trunk(((y01 * 2 - 1) - self.shift) / self.scale)
        total: torch.Tensor | None = None
        for head, a, b in zip(self.heads(), fx, fy, strict=True):
            d = head((self._unit(a) - self._unit(b)) ** 2)
            if spatial:
                d = F.interpolate(d, size=x01.shape[-2:], mode="bilinear", align_corners=False)
            else:
                d = d.mean(dim=(2, 3), keepdim=True)
            total = d if total is None else total + d
        assert total is not None
        return total if spatial else total.flatten()

    def masked(self, x01: torch.Tensor, y01: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The spatial LPIPS map averaged over the masked pixels, (B,); NaN where the mask is empty."""
        check_mask(mask, x01)
        dmap = self.forward(x01, y01, spatial=True)
        count = mask.flatten(1).sum(dim=1)
        val = (dmap * mask).flatten(1).sum(dim=1) / count.clamp_min(1)
        return torch.where(count > 0, val, torch.full_like(val, float("nan")))


def _lpips_package_heads(net: str) -> Path | None:
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    name = {"alex": "alex", "vgg16": "vgg"}[net]
    path = Path(spec.submodule_search_locations[0]) / "weights" / "v0.1" / f"{name}.pth"
    return path if path.is_file() else None


def load_lpips(config: LPIPSConfig | None = None, *, allow_download: bool = True) -> LPIPS:
    """The standard LPIPS network with its published weights; raises `MetricUnavailable` when they cannot be
    had (never returns a network with random weights). `allow_download=False`: only files named in `config`,
    the `lpips` package's and the torch.hub cache's."""
    config = config or LPIPSConfig()
    if config.net not in TORCHVISION_TRUNK_URLS:
        raise ValueError(f"unknown LPIPS network {config.net!r}: use 'alex' or 'vgg16'")
    model = LPIPS(build_lpips_trunk(config.net))
    if config.trunk_weights:
        trunk_sd = load_state_dict_file(config.trunk_weights)
    else:
        trunk_sd = hub_state_dict(TORCHVISION_TRUNK_URLS[config.net], allow_download)
    features = {k: v for k, v in trunk_sd.items() if k.startswith("features.")}
    head_path = config.head_weights or _lpips_package_heads(config.net)
    if head_path is not None:
        head_sd = load_state_dict_file(head_path)
    else:
        head_sd = hub_state_dict(LPIPS_HEAD_URLS[config.net], allow_download)
    heads = {k: v for k, v in head_sd.items() if k.startswith("lin")}
    state = {**{f"trunk.{k}": v for k, v in features.items()}, **heads}
    from m2u.training.checkpoint import shape_differences, tensor_shapes

    # torch's own refusal lists every tensor (kilobytes on one line): one phrase naming the first few instead.
    misfit = shape_differences(tensor_shapes(model.state_dict()), tensor_shapes(state), other="network")
    if misfit:
        raise MetricUnavailable(f"LPIPS weights do not fit the {config.net} network: {misfit}")
    model.load_state_dict(state, strict=True)
    return model.eval()

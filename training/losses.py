"""Losses of M2UNet (paper section 3.2, equations 1-5) and of M-Seg training.

The weights of every term live in one place each: `GanLossConfig` (the paper's eq. 1 weights and eq. 3's
SmoothL1/SSIM split) and `SegmentationLossConfig`; the training configs inherit them, the losses read them.

Choices where the paper is vague (documented here, configurable through those configs):
- Reconstruction (eq. 3): SmoothL1 (beta 1) on the model range [-1, 1]; SSIM on [0, 1] with data_range 1.
- Perceptual (eq. 4): VGG19 `features` activations relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (torchvision
  indices 1, 6, 11, 20, 29), unweighted sum of SmoothL1 distances; images mapped to [0, 1] then ImageNet-normalised.
- Discriminator (eq. 5): 0.5 * (E[(D(x) - 0.9)^2] + E[(D(G(z)) - 0.1)^2]), i.e. the 1/2 applies to both terms.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from m2u.training.checkpoint import shape_differences, tensor_shapes
from m2u.training.imagespace import from_model_range
from m2u.training.ssim import ssim

REAL_LABEL = 0.9  # one-sided smoothing, paper eq. 2 and 5 (alpha)
FAKE_LABEL = 0.1  # (beta)

# torchvision's vgg19 `features` configuration: channel counts, "M" = 2x2 max-pool.
VGG19_FEATURES_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip
VGG19_LAYER_INDICES = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}
DEFAULT_PERCEPTUAL_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
VGG19_IMAGENET_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_BACKBONE = "random"
IMAGENET_BACKBONE = "imagenet"


@dataclass
class GanLossConfig:
    """The generator's objective (paper eq. 1, 3, 4): the weights the losses read, and the perceptual backbone."""

    adversarial_weight: float = 1.0  # paper eq. 1
    reconstruction_weight: float = 100.0  # paper eq. 1
    perceptual_weight: float = 10.0  # paper eq. 1; 0 skips the VGG backbone entirely
    ssim_share: float = 0.5  # paper eq. 3: (1 - share) * SmoothL1 + share * (1 - SSIM)
    perceptual_layers: tuple[str, ...] = DEFAULT_PERCEPTUAL_LAYERS
    # "imagenet" (torch hub cache), a file path, or "random" (tests only)
    vgg_weights: str = IMAGENET_BACKBONE

    def __post_init__(self) -> None:
        self.perceptual_layers = tuple(self.perceptual_layers)
        for name in ("adversarial_weight", "reconstruction_weight", "perceptual_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0.0 <= self.ssim_share <= 1.0:
            raise ValueError("ssim_share must be within [0, 1]")
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # type: ignore[misc]


@dataclass
class SegmentationLossConfig:
    """M-Seg's objective: BCE-with-logits + soft Dice, each with its weight."""

    bce_weight: float = 1.0
    dice_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.bce_weight < 0 or self.dice_weight < 0:
            raise ValueError("bce_weight and dice_weight must be >= 0")
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # type: ignore[misc]


class VGGWeightsUnavailable(RuntimeError):
    """The ImageNet VGG19 weights are neither cached nor downloadable nor given as a file."""


def build_vgg19_features(num_layers: int | None = None) -> nn.Sequential:
    """VGG19 `features` laid out as torchvision does (so its state-dict keys `features.N.*` load), truncated
    to the first `num_layers` modules."""
    layers: list[nn.Module] = []
    in_channels = 3
    for item in VGG19_FEATURES_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = int(item)
    return nn.Sequential(*layers[: num_layers or len(layers)])


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_vgg19_state_dict(weights: str) -> dict[str, torch.Tensor]:
    """`weights` = "imagenet" (torchvision's file through torch.hub's cache, downloaded once if reachable) or
    a path to a .pth / .safetensors file holding torchvision's vgg19 state dict (or just its `features`)."""
    if weights == IMAGENET_BACKBONE:
        try:
            return torch.hub.load_state_dict_from_url(
                VGG19_IMAGENET_URL, map_location="cpu", progress=False, weights_only=True
            )
        except Exception as error:
            cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG19_IMAGENET_URL).name
            raise VGGWeightsUnavailable(
                "the perceptual loss needs ImageNet VGG19 weights, which are not in the torch hub cache "
                f"({cache}) and could not be downloaded ({type(error).__name__}: {error}). Put torchvision's "
                "vgg19-dcbb9e9d.pth there, pass its path with `vgg_weights` PATH, or set `perceptual_weight` 0."
            ) from error
    path = Path(os.path.expanduser(weights))
    if not path.is_file():
        raise VGGWeightsUnavailable(f"VGG19 weights file not found: {path}")
    try:
        state = _read_state_dict(path)
    except Exception as error:  # noqa: BLE001 - a text file, a JPEG, a truncated file: each its own error type
        kind = (
            error.strerror or str(error) if isinstance(error, OSError) else "not a torch or safetensors file"
        )
        raise VGGWeightsUnavailable(
            f"VGG19 weights {path} cannot be read ({kind}): not a torchvision vgg19"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise VGGWeightsUnavailable(
            f"VGG19 weights {path} hold no state dict of tensors: not a torchvision vgg19"
        )
    return state


class VGGPerceptualLoss(nn.Module):
    """Sum over the chosen VGG19 layers of SmoothL1 between the features of output and target ([-1, 1] images).

    `weights`: "imagenet", a file path, or "random" (an untrained backbone: only for tests, must be asked for).
    The backbone is frozen and kept in eval mode.
    """

    def __init__(
        self, weights: str = IMAGENET_BACKBONE, layers: Sequence[str] = DEFAULT_PERCEPTUAL_LAYERS
    ) -> None:
        super().__init__()
        unknown = [name for name in layers if name not in VGG19_LAYER_INDICES]
        if unknown or not layers:
            raise ValueError(f"unknown VGG19 layers {unknown}; choose from {list(VGG19_LAYER_INDICES)}")
        self.layer_names = tuple(layers)
        self.indices = tuple(VGG19_LAYER_INDICES[name] for name in layers)
        self.features = build_vgg19_features(max(self.indices) + 1)
        if weights != RANDOM_BACKBONE:
            state = load_vgg19_state_dict(weights)
            prefix = "features." if any(key.startswith("features.") for key in state) else ""
            wanted = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
            own = self.features.state_dict()
            missing = [key for key in own if key not in wanted]
            if missing:
                raise VGGWeightsUnavailable(
                    f"VGG19 weights {weights} lack {missing[:4]}: not a torchvision vgg19"
                )
            chosen = {key: wanted[key] for key in own}
            misfit = shape_differences(tensor_shapes(own), tensor_shapes(chosen), other="VGG19")
            if misfit:  # torch's own refusal would list every tensor
                raise VGGWeightsUnavailable(
                    f"VGG19 weights {weights} are not a torchvision vgg19's: {misfit}"
                )
            self.features.load_state_dict(chosen)
        self.features.requires_grad_(False)
        self.features.eval()
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        super().train(mode)
        self.features.eval()  # a fixed feature extractor
        return self

    def extract(self, image: torch.Tensor) -> list[torch.Tensor]:
        h = (from_model_range(image) - self.mean) / self.std
        outputs = []
        wanted = set(self.indices)
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in wanted:
                outputs.append(h)
        return outputs

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target_features = self.extract(target)
        output_features = self.extract(output)
        return sum(F.smooth_l1_loss(o, t) for o, t in zip(output_features, target_features))  # type: ignore[return-value]


def lsgan_discriminator_loss(
    real_scores: torch.Tensor,
    fake_scores: torch.Tensor,
    real_label: float = REAL_LABEL,
    fake_label: float = FAKE_LABEL,
) -> torch.Tensor:
    """Paper eq. 5: 0.5 * (mean((D(x) - alpha)^2) + mean((D(G(z)) - beta)^2))."""
    return 0.5 * ((real_scores - real_label).pow(2).mean() + (fake_scores - fake_label).pow(2).mean())


def lsgan_generator_loss(fake_scores: torch.Tensor, real_label: float = REAL_LABEL) -> torch.Tensor:
    """Paper eq. 2: mean((D(G(x)) - alpha)^2)."""
    return (fake_scores - real_label).pow(2).mean()


def reconstruction_loss(
    output: torch.Tensor, target: torch.Tensor, ssim_share: float = GanLossConfig.ssim_share
) -> torch.Tensor:
    """Paper eq. 3: (1 - s) * SmoothL1(output, target) + s * (1 - SSIM(output, target)), s = ssim_share (0.5 in
    the paper, `GanLossConfig.ssim_share`); [-1, 1] inputs."""
    smooth_l1 = F.smooth_l1_loss(output, target)
    structural = 1.0 - ssim(from_model_range(output), from_model_range(target), data_range=1.0)
    return (1.0 - ssim_share) * smooth_l1 + ssim_share * structural


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per image, averaged: 1 - (2 |P.T| + eps) / (|P| + |T| + eps), P = sigmoid(logits).

    Images whose target is empty (bare faces: MSegTrainConfig.bare_face_share) are left out: their ratio only
    reaches 0 when every probability is exactly 0, which would swamp the term; the BCE term covers them."""
    probabilities = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    intersection = (probabilities * target).sum(dim=1)
    total = probabilities.sum(dim=1) + target.sum(dim=1)
    per_image = 1.0 - (2.0 * intersection + eps) / (total + eps)
    has_mask = target.sum(dim=1) > 0
    if bool(has_mask.all()):
        return per_image.mean()
    return (per_image * has_mask).sum() / has_mask.sum().clamp(min=1)


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, config: SegmentationLossConfig | None = None
) -> dict[str, torch.Tensor]:
    """M-Seg objective: bce_weight * BCE-with-logits + dice_weight * soft Dice.

    Returns the weighted total (`loss`) and its two unweighted terms (`bce`, `dice_loss`)."""
    config = config or SegmentationLossConfig()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    soft_dice = dice_loss(logits, target)
    return {
        "loss": config.bce_weight * bce + config.dice_weight * soft_dice,
        "bce": bce,
        "dice_loss": soft_dice,
    }


def generator_loss(terms: Mapping[str, torch.Tensor], config: GanLossConfig) -> torch.Tensor:
    """Paper eq. 1: the weighted sum of the generator's `adversarial`, `reconstruction` and `perceptual` terms."""
    return (
        config.adversarial_weight * terms["adversarial"]
        + config.reconstruction_weight * terms["reconstruction"]
        + config.perceptual_weight * terms["perceptual"]
    )


@torch.no_grad()
def dice_score(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice per image (binary {0, 1} inputs); 1 when both are empty."""
    predicted = predicted.flatten(1).float()
    target = target.flatten(1).float()
    intersection = (predicted * target).sum(dim=1)
    total = predicted.sum(dim=1) + target.sum(dim=1)
    return torch.where(total > 0, 2.0 * intersection / total.clamp_min(1e-12), torch.ones_like(total))


@torch.no_grad()
def pixel_accuracy(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of pixels where the binary prediction equals the target, per image."""
    return (predicted.flatten(1) == target.flatten(1)).float().mean(dim=1)

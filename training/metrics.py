"""Image-quality metrics for face unmasking: PSNR, SSIM, L1, LPIPS, FID and identity similarity.

Every metric compares two batches of images, float (B, 3, H, W) in [0, 1], and exists in two variants: on the
whole image and on the masked region alone (the pixels where the ground-truth mask is 1).

Networks with pretrained weights (LPIPS, FID's Inception, dlib's face embedding) are loaded through the standard
channels: the torch.hub cache (downloaded on first use) or an explicit local path. When the weights cannot be
had, the loader raises `MetricUnavailable` with the reason and the report says "unavailable: <reason>": a metric
is never computed with random or substitute weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from m2u.training.ssim import SSIM_WINDOW_SIZE, psnr, ssim, ssim_map

__all__ = [
    "MetricUnavailable",
    "LPIPSConfig",
    "FIDConfig",
    "IdentityConfig",
    "MetricsConfig",
    "l1_error",
    "psnr_per_image",
    "ssim_per_image",
    "masked_l1",
    "masked_psnr",
    "masked_ssim",
    "LPIPS",
    "build_lpips_trunk",
    "load_lpips",
    "frechet_distance",
    "FeatureStatistics",
    "load_fid_inception",
    "IdentityEmbedder",
    "IdentityResult",
    "MetricSuite",
    "to_uint8_images",
]


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (missing weights or library); `.reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------------- helpers


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(x.shape)}")


def _check_mask(mask: torch.Tensor, x: torch.Tensor) -> None:
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"mask must be (B, 1, H, W) matching images {tuple(x.shape)}, got {tuple(mask.shape)}"
        )


def to_uint8_images(x01: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8 RGB (rounded, clipped)."""
    if x01.dim() != 4 or x01.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got shape {tuple(x01.shape)}")
    arr = (x01.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


# ------------------------------------------------------------------------------------ PSNR / SSIM / L1


def l1_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image, (B,), on the [0, 1] scale."""
    _check_pair(x, y)
    return (x - y).abs().flatten(1).mean(dim=1)


def psnr_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image, (B,) (`m2u.training.ssim.psnr`)."""
    _check_pair(x, y)
    return psnr(x, y, data_range=data_range, reduction="none")


def ssim_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM per image, (B,) (`m2u.training.ssim.ssim`: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03)."""
    _check_pair(x, y)
    return ssim(x, y, data_range=data_range, reduction="none")


def _mask_fraction(mask: torch.Tensor) -> torch.Tensor:
    return mask.flatten(1).sum(dim=1)


def masked_l1(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the masked pixels per image, (B,); NaN where the mask is empty."""
    _check_pair(x, y)
    _check_mask(mask, x)
    err = ((x - y).abs() * mask).flatten(1).sum(dim=1)
    count = _mask_fraction(mask) * x.shape[1]
    return torch.where(count > 0, err / count.clamp_min(1), torch.full_like(err, float("nan")))


def masked_psnr(
    x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, data_range: float = 1.0
) -> torch.Tensor:
    """PSNR of the masked pixels per image, (B,); NaN where the mask is empty, inf where they are identical."""
    _check_pair(x, y)
    _check_mask(mask, x)
    sq = (((x - y) ** 2) * mask).flatten(1).sum(dim=1)
    count = _mask_fraction(mask) * x.shape[1]
    mse = sq / count.clamp_min(1)
    out = 10.0 * torch.log10(data_range**2 / mse)
    return torch.where(count > 0, out, torch.full_like(out, float("nan")))


def masked_ssim(
    x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, data_range: float = 1.0
) -> torch.Tensor:
    """The SSIM map averaged over the masked pixels per image, (B,); NaN where the mask is empty.

    The map covers the positions where the 11x11 window fits (as the whole-image SSIM), so the mask is cropped
    by half a window on each side to line up with it."""
    _check_pair(x, y)
    _check_mask(mask, x)
    per_pixel = ssim_map(x, y, data_range=data_range).mean(dim=1, keepdim=True)  # channels averaged
    border = (SSIM_WINDOW_SIZE - 1) // 2
    weight = mask[..., border : border + per_pixel.shape[-2], border : border + per_pixel.shape[-1]]
    count = weight.flatten(1).sum(dim=1)
    val = (per_pixel * weight).flatten(1).sum(dim=1) / count.clamp_min(1)
    return torch.where(count > 0, val, torch.full_like(val, float("nan")))


# ---------------------------------------------------------------------------------------------------- LPIPS

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
    allow_download: bool = True


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
        _check_pair(x01, y01)
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
        _check_mask(mask, x01)
        dmap = self.forward(x01, y01, spatial=True)
        count = mask.flatten(1).sum(dim=1)
        val = (dmap * mask).flatten(1).sum(dim=1) / count.clamp_min(1)
        return torch.where(count > 0, val, torch.full_like(val, float("nan")))


def _load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise MetricUnavailable(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: say which and why
        raise MetricUnavailable(f"cannot read weights {path}: {exc}") from exc


def _hub_state_dict(url: str, allow_download: bool) -> dict[str, torch.Tensor]:
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if cached.is_file():
        return _load_state_dict_file(cached)
    if not allow_download:
        raise MetricUnavailable(f"weights not in the torch.hub cache ({cached}) and downloads are disabled")
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, weights_only=True)
    except Exception as exc:
        raise MetricUnavailable(f"cannot download {url}: {type(exc).__name__}: {exc}") from exc


def _lpips_package_heads(net: str) -> Path | None:
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    name = {"alex": "alex", "vgg16": "vgg"}[net]
    path = Path(spec.submodule_search_locations[0]) / "weights" / "v0.1" / f"{name}.pth"
    return path if path.is_file() else None


def load_lpips(config: LPIPSConfig | None = None) -> LPIPS:
    """The standard LPIPS network with its published weights; raises `MetricUnavailable` when they cannot be
    had (never returns a network with random weights)."""
    config = config or LPIPSConfig()
    if config.net not in TORCHVISION_TRUNK_URLS:
        raise ValueError(f"unknown LPIPS network {config.net!r}: use 'alex' or 'vgg16'")
    model = LPIPS(build_lpips_trunk(config.net))
    if config.trunk_weights:
        trunk_sd = _load_state_dict_file(config.trunk_weights)
    else:
        trunk_sd = _hub_state_dict(TORCHVISION_TRUNK_URLS[config.net], config.allow_download)
    features = {k: v for k, v in trunk_sd.items() if k.startswith("features.")}
    head_path = config.head_weights or _lpips_package_heads(config.net)
    if head_path is not None:
        head_sd = _load_state_dict_file(head_path)
    else:
        head_sd = _hub_state_dict(LPIPS_HEAD_URLS[config.net], config.allow_download)
    heads = {k: v for k, v in head_sd.items() if k.startswith("lin")}
    state = {**{f"trunk.{k}": v for k, v in features.items()}, **heads}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise MetricUnavailable(f"LPIPS weights do not fit the {config.net} network: {exc}") from exc
    return model.eval()


# ------------------------------------------------------------------------------------------------------ FID


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) for two Gaussians fitted to feature sets."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError("means and covariances have mismatched shapes")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # Singular products are expected with few samples; they are checked for and handled below.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            # A singular product (fewer samples than feature dimensions): regularise both covariances slightly.
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # Numerical noise gives tiny imaginary parts; a large one means the result cannot be trusted.
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag)):.3g} in the covariance root")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


class FeatureStatistics:
    """Running mean and covariance of feature vectors (float64), for FID."""

    def __init__(self) -> None:
        self.n = 0
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        f = np.asarray(
            features.detach().cpu() if isinstance(features, torch.Tensor) else features, np.float64
        )
        if f.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {f.shape}")
        if self._sum is None:
            self._sum = np.zeros(f.shape[1])
            self._outer = np.zeros((f.shape[1], f.shape[1]))
        self._sum += f.sum(axis=0)
        self._outer += f.T @ f
        self.n += f.shape[0]

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2 or self._sum is None or self._outer is None:
            raise ValueError(f"FID needs at least 2 images per set, got {self.n}")
        mu = self._sum / self.n
        cov = (self._outer - self.n * np.outer(mu, mu)) / (self.n - 1)  # unbiased, as numpy.cov
        return mu, cov


@dataclass
class FIDConfig:
    """Where FID's Inception network comes from."""

    weights_path: str | None = None  # FID Inception weights (pt_inception-2015-12-05); None: torch.hub cache
    feature_dim: int = 2048  # pool3 features, the standard FID


class _UInt8Inception(nn.Module):
    # torchmetrics' FID Inception takes uint8 images, as the original TF implementation did.
    def __init__(self, inception: nn.Module):
        super().__init__()
        self.inception = inception

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.inception((x01.clamp(0, 1) * 255).round().to(torch.uint8)).flatten(1)


def load_fid_inception(config: FIDConfig | None = None) -> nn.Module:
    """FID's Inception-v3 feature extractor (via torchmetrics / torch-fidelity, which fetch the standard
    weights through the torch.hub cache, or from `weights_path`). Takes (B, 3, H, W) in [0, 1], gives (B, D).
    Raises `MetricUnavailable` when the library or the weights are missing."""
    config = config or FIDConfig()
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except Exception as exc:
        raise MetricUnavailable(
            f"FID needs torchmetrics[image] (torch-fidelity): {type(exc).__name__}: {exc}"
        ) from exc
    if config.weights_path and not Path(config.weights_path).is_file():
        raise MetricUnavailable(f"FID Inception weights not found: {config.weights_path}")
    try:
        net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[str(config.feature_dim)],
            feature_extractor_weights_path=config.weights_path,
        )
    except Exception as exc:
        raise MetricUnavailable(
            f"cannot load the FID Inception weights: {type(exc).__name__}: {exc}"
        ) from exc
    return _UInt8Inception(net).eval()


# ----------------------------------------------------------------------------------------- identity (dlib)


@dataclass
class IdentityConfig:
    """dlib's face embedding (the ResNet of face_recognition_models) for identity similarity."""

    models_dir: str | None = None  # None: the installed face_recognition_models package
    box: str = "detect"  # "detect": HOG face box on the ground truth; "frame": the whole (aligned) crop
    upsample: int = 1  # HOG detector upsampling (small crops need it)
    match_distance: float = 0.6  # dlib's same-person threshold on the Euclidean distance


@dataclass
class IdentityResult:
    """Per-pair identity scores; entries are NaN where no face or landmarks could be found."""

    cosine: np.ndarray
    distance: np.ndarray
    no_face: int


def _face_models_dir(models_dir: str | None) -> Path:
    if models_dir:
        return Path(models_dir)
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MetricUnavailable("identity similarity needs the face-recognition-models package")
    # Importing the package itself fails (it imports pkg_resources): locate its files without importing it.
    return Path(spec.submodule_search_locations[0]) / "models"


class IdentityEmbedder:
    """128-D dlib face descriptors of aligned face images, compared pairwise."""

    def __init__(self, config: IdentityConfig | None = None):
        self.config = config or IdentityConfig()
        if self.config.box not in ("detect", "frame"):
            raise ValueError(f"IdentityConfig.box must be 'detect' or 'frame', got {self.config.box!r}")
        try:
            import dlib
        except Exception as exc:
            raise MetricUnavailable(f"identity similarity needs dlib: {exc}") from exc
        root = _face_models_dir(self.config.models_dir)
        predictor = root / "shape_predictor_5_face_landmarks.dat"
        encoder = root / "dlib_face_recognition_resnet_model_v1.dat"
        for path in (predictor, encoder):
            if not path.is_file():
                raise MetricUnavailable(f"dlib model not found: {path}")
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(predictor))
        self._encoder = dlib.face_recognition_model_v1(str(encoder))
        self._detector = dlib.get_frontal_face_detector() if self.config.box == "detect" else None

    def face_box(self, image: np.ndarray):
        """The dlib rectangle of the largest face, or None when there is none."""
        h, w = image.shape[:2]
        if self._detector is None:
            return self._dlib.rectangle(0, 0, w - 1, h - 1)
        boxes = list(self._detector(image, self.config.upsample))
        if not boxes:
            return None
        return max(boxes, key=lambda r: r.width() * r.height())

    def embed(self, image: np.ndarray, box) -> np.ndarray | None:
        """Descriptor of the face in `box`, or None when its landmarks fall outside the image."""
        shape = self._predictor(image, box)
        h, w = image.shape[:2]
        points = [(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)]
        if any(not (0 <= x < w and 0 <= y < h) for x, y in points):
            return None
        return np.asarray(
            self._encoder.compute_face_descriptor(np.ascontiguousarray(image), shape), np.float64
        )

    def reference(self, targets: np.ndarray) -> list[tuple[object, np.ndarray] | None]:
        """Face box and descriptor of each ground-truth image (None where no face or landmarks are found);
        computed once and shared by every method compared against the same images."""
        refs: list[tuple[object, np.ndarray] | None] = []
        for gt in targets:
            box = self.face_box(gt)
            embedding = self.embed(gt, box) if box is not None else None
            refs.append((box, embedding) if embedding is not None else None)
        return refs

    def compare(
        self,
        outputs: np.ndarray,
        targets: np.ndarray,
        reference: list[tuple[object, np.ndarray] | None] | None = None,
    ) -> IdentityResult:
        """outputs, targets: (B, H, W, 3) uint8 RGB. The face box is found on the ground truth and reused for
        the output, so both are embedded from the same region."""
        refs = reference if reference is not None else self.reference(targets)
        if len(refs) != len(outputs):
            raise ValueError(f"{len(outputs)} outputs but {len(refs)} reference faces")
        cos = np.full(len(outputs), np.nan)
        dist = np.full(len(outputs), np.nan)
        no_face = 0
        for i, (out, ref) in enumerate(zip(outputs, refs, strict=True)):
            e_out = self.embed(out, ref[0]) if ref is not None else None
            if ref is None or e_out is None:
                no_face += 1
                continue
            e_gt = ref[1]
            cos[i] = float(e_gt @ e_out / (np.linalg.norm(e_gt) * np.linalg.norm(e_out) + 1e-12))
            dist[i] = float(np.linalg.norm(e_gt - e_out))
        return IdentityResult(cosine=cos, distance=dist, no_face=no_face)


# ------------------------------------------------------------------------------------------- the suite


@dataclass
class MetricsConfig:
    """Which metrics to compute and where their networks come from."""

    lpips: LPIPSConfig = field(default_factory=LPIPSConfig)
    fid: FIDConfig = field(default_factory=FIDConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    enable_lpips: bool = True
    enable_fid: bool = True
    enable_identity: bool = True


class _MethodAccumulator:
    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.counts: dict[str, int] = {"images": 0, "empty_mask": 0, "identity_no_face": 0}
        self.fid_real = FeatureStatistics()
        self.fid_fake = FeatureStatistics()
        self.fid_real_masked = FeatureStatistics()
        self.fid_fake_masked = FeatureStatistics()

    def add(self, name: str, values: torch.Tensor | np.ndarray) -> None:
        arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, np.float64)
        self.values.setdefault(name, []).extend(arr.ravel().tolist())


class MetricSuite:
    """Accumulates every metric for several methods (rows) over batches, then summarises them.

    `lpips`, `fid_features` and `identity` may be given directly (tests pass small networks); otherwise they
    are loaded from `config`, and a metric that cannot be loaded is listed in `unavailable` with its reason.
    """

    def __init__(
        self,
        config: MetricsConfig | None = None,
        *,
        lpips: LPIPS | None = None,
        fid_features: nn.Module | None = None,
        identity: IdentityEmbedder | None = None,
        device: torch.device | str = "cpu",
    ):
        self.config = config or MetricsConfig()
        self.device = torch.device(device)
        self.unavailable: dict[str, str] = {}
        self.lpips = self._network(
            "lpips", lpips, self.config.enable_lpips, lambda: load_lpips(self.config.lpips)
        )
        self.fid_features = self._network(
            "fid", fid_features, self.config.enable_fid, lambda: load_fid_inception(self.config.fid)
        )
        self.identity = self._network(
            "identity", identity, self.config.enable_identity, lambda: IdentityEmbedder(self.config.identity)
        )
        if self.lpips is not None:
            self.lpips.to(self.device)
        if self.fid_features is not None:
            self.fid_features.to(self.device).eval()
        self._methods: dict[str, _MethodAccumulator] = {}
        self._reference_cache: tuple[str, list] | None = None
        self._feature_cache: tuple[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def _network(self, name: str, given, enabled: bool, load: Callable[[], Any]):
        """A network passed in, else loaded when enabled; when it cannot be had, the reason is recorded."""
        if given is not None:
            return given
        if not enabled:
            self.unavailable[name] = "disabled"
            return None
        try:
            return load()
        except MetricUnavailable as exc:
            self.unavailable[name] = exc.reason
            return None

    @torch.no_grad()
    def update(self, method: str, pred01: torch.Tensor, target01: torch.Tensor, mask: torch.Tensor) -> None:
        """Add a batch for one method: prediction and ground truth (B, 3, H, W) in [0, 1], and the region
        mask (B, 1, H, W) in {0, 1} for the masked-region variants."""
        _check_pair(pred01, target01)
        _check_mask(mask, pred01)
        pred = pred01.detach().float().clamp(0, 1).cpu()
        target = target01.detach().float().clamp(0, 1).cpu()
        mask = (mask.detach().float().cpu() > 0.5).float()
        acc = self._methods.setdefault(method, _MethodAccumulator())
        acc.counts["images"] += len(pred)
        acc.counts["empty_mask"] += int((mask.flatten(1).sum(dim=1) == 0).sum())
        acc.add("psnr", psnr_per_image(pred, target))
        acc.add("ssim", ssim_per_image(pred, target))
        acc.add("l1", l1_error(pred, target))
        acc.add("psnr_masked", masked_psnr(pred, target, mask))
        acc.add("ssim_masked", masked_ssim(pred, target, mask))
        acc.add("l1_masked", masked_l1(pred, target, mask))
        if self.lpips is not None:
            p, t, m = pred.to(self.device), target.to(self.device), mask.to(self.device)
            acc.add("lpips", self.lpips(p, t))
            acc.add("lpips_masked", self.lpips.masked(p, t, m))
        if self.fid_features is not None:
            p, t, m = pred.to(self.device), target.to(self.device), mask.to(self.device)
            real, real_masked = self._real_features(t, m)
            acc.fid_fake.update(self.fid_features(p))
            acc.fid_real.update(real)
            # Masked-region FID: everything outside the mask blanked, so only the region's content differs.
            acc.fid_fake_masked.update(self.fid_features(p * m))
            acc.fid_real_masked.update(real_masked)
        if self.identity is not None:
            out_u8, gt_u8 = to_uint8_images(pred), to_uint8_images(target)
            refs = self._identity_reference(gt_u8)
            whole = self.identity.compare(out_u8, gt_u8, refs)
            # Masked-region identity: the ground truth with only the masked region taken from the prediction.
            region = self.identity.compare(to_uint8_images(target * (1 - mask) + pred * mask), gt_u8, refs)
            acc.add("identity_cosine", whole.cosine)
            acc.add("identity_distance", whole.distance)
            acc.add("identity_cosine_masked", region.cosine)
            acc.add("identity_distance_masked", region.distance)
            acc.counts["identity_no_face"] += whole.no_face

    def _real_features(self, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The ground truth's features are the same for every method of a batch: compute them once.
        digest = hashlib.sha1(target.cpu().numpy().tobytes() + mask.cpu().numpy().tobytes()).hexdigest()
        if self._feature_cache is None or self._feature_cache[0] != digest:
            assert self.fid_features is not None
            self._feature_cache = (digest, (self.fid_features(target), self.fid_features(target * mask)))
        return self._feature_cache[1]

    def _identity_reference(self, gt_u8: np.ndarray) -> list:
        # Every method of a batch is compared with the same ground truth: embed it once.
        digest = hashlib.sha1(gt_u8.tobytes()).hexdigest()
        if self._reference_cache is None or self._reference_cache[0] != digest:
            assert self.identity is not None
            self._reference_cache = (digest, self.identity.reference(gt_u8))
        return self._reference_cache[1]

    def methods(self) -> list[str]:
        return list(self._methods)

    def per_image(self, method: str) -> dict[str, list[float]]:
        """Every per-image value of one method, in update order (NaN where not computable)."""
        return {name: list(values) for name, values in self._methods[method].values.items()}

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        """Per method: the mean of every per-image metric (NaN entries such as empty masks or faces not found
        are left out and counted), FID over the whole set, and the counts."""
        out: dict[str, dict[str, float | int | None]] = {}
        for method, acc in self._methods.items():
            row: dict[str, float | int | None] = {}
            for name, values in acc.values.items():
                arr = np.asarray(values, np.float64)
                finite = arr[np.isfinite(arr)]
                if name.startswith("psnr"):
                    # Identical images give inf dB: keep them in the mean only if every image is finite.
                    finite = arr[~np.isnan(arr)]
                row[name] = float(finite.mean()) if finite.size else None
            if self.fid_features is not None:
                for key, real, fake in (
                    ("fid", acc.fid_real, acc.fid_fake),
                    ("fid_masked", acc.fid_real_masked, acc.fid_fake_masked),
                ):
                    try:
                        row[key] = frechet_distance(*fake.mean_cov(), *real.mean_cov())
                    except ValueError as exc:
                        row[key] = None
                        self.unavailable.setdefault("fid", str(exc))
            row.update({f"n_{k}": v for k, v in acc.counts.items()})
            if self.identity is not None:
                matches = np.asarray(acc.values.get("identity_distance", []), np.float64)
                matches = matches[np.isfinite(matches)]
                row["identity_match_rate"] = (
                    float((matches < self.config.identity.match_distance).mean()) if matches.size else None
                )
            out[method] = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        return out

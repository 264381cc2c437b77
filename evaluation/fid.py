"""FID: Frechet distance between Inception pool-feature Gaussians of two image sets."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch import nn

from m2u.evaluation.weights import MetricUnavailable, hub_cached_path

__all__ = ["FIDConfig", "FeatureStatistics", "frechet_distance", "load_fid_inception"]


# torch-fidelity's release of the FID Inception (pt_inception-2015-12-05), which it downloads through the torch.hub
# cache when no file is given: written here so that a run without downloads can look for it before asking.
FID_INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"


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
        if self._sum is None or self._outer is None:
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


def load_fid_inception(config: FIDConfig | None = None, *, allow_download: bool = True) -> nn.Module:
    """FID's Inception-v3 feature extractor (via torchmetrics / torch-fidelity, which fetch the standard
    weights through the torch.hub cache, or from `weights_path`). Takes (B, 3, H, W) in [0, 1], gives (B, D).
    Raises `MetricUnavailable` when the library or the weights are missing; with `allow_download=False` also
    when neither `weights_path` nor the torch.hub cache holds them (torch-fidelity would download them)."""
    config = config or FIDConfig()
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except Exception as exc:
        raise MetricUnavailable(
            f"FID needs torchmetrics[image] (torch-fidelity): {type(exc).__name__}: {exc}"
        ) from exc
    weights_path = config.weights_path
    if weights_path and not Path(weights_path).is_file():
        raise MetricUnavailable(f"FID Inception weights not found: {weights_path}")
    if not weights_path and not allow_download:
        cached = hub_cached_path(FID_INCEPTION_URL)
        if not cached.is_file():
            raise MetricUnavailable(
                f"weights not in the torch.hub cache ({cached}) and downloads are disabled"
            )
        weights_path = str(cached)  # read from there: torch-fidelity is never asked to fetch it
    try:
        net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[str(config.feature_dim)],
            feature_extractor_weights_path=weights_path,
        )
    except Exception as exc:
        raise MetricUnavailable(
            f"cannot load the FID Inception weights: {type(exc).__name__}: {exc}"
        ) from exc
    return _UInt8Inception(net).eval()

"""MetricSuite: every metric for several methods (rows of the report), accumulated over batches."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from m2u.evaluation.fid import FeatureStatistics, FIDConfig, frechet_distance, load_fid_inception
from m2u.evaluation.identity import IdentityConfig, IdentityEmbedder
from m2u.evaluation.lpips import LPIPS, LPIPSConfig, load_lpips
from m2u.evaluation.pixel import (
    check_mask,
    check_pair,
    l1_error,
    masked_l1,
    masked_psnr,
    masked_ssim,
    psnr_per_image,
    ssim_per_image,
)
from m2u.evaluation.weights import MetricUnavailable
from m2u.training.imagespace import to_uint8_images

__all__ = ["MetricsConfig", "MetricSuite"]


@dataclass
class MetricsConfig:
    """Which metrics to compute and where their networks come from."""

    lpips: LPIPSConfig = field(default_factory=LPIPSConfig)
    fid: FIDConfig = field(default_factory=FIDConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    enable_lpips: bool = True
    enable_fid: bool = True
    enable_identity: bool = True
    # Whether a metric network whose weights are not here (LPIPS's, FID's Inception) may be downloaded; False:
    # only the files named above and the torch.hub cache.
    allow_download: bool = True


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
        lpips_files = (
            "metrics.lpips.trunk_weights"
            if self.config.lpips.trunk_weights
            else "metrics.lpips.head_weights"
            if self.config.lpips.head_weights
            else None
        )
        self.lpips = self._network(
            "lpips",
            lpips,
            self.config.enable_lpips,
            lambda: load_lpips(self.config.lpips, allow_download=self.config.allow_download),
            named=lpips_files,
        )
        self.fid_features = self._network(
            "fid",
            fid_features,
            self.config.enable_fid,
            lambda: load_fid_inception(self.config.fid, allow_download=self.config.allow_download),
            named="metrics.fid.weights_path" if self.config.fid.weights_path else None,
        )
        self.identity = self._network(
            "identity",
            identity,
            self.config.enable_identity,
            lambda: IdentityEmbedder(self.config.identity),
            named="metrics.identity.models_dir" if self.config.identity.models_dir else None,
        )
        if self.lpips is not None:
            self.lpips.to(self.device)
        if self.fid_features is not None:
            self.fid_features.to(self.device).eval()
        self._methods: dict[str, _MethodAccumulator] = {}
        self._reference_cache: tuple[str, list] | None = None
        self._identity_queue: list[tuple[_MethodAccumulator, np.ndarray, np.ndarray]] = []
        self._feature_cache: tuple[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def _network(self, name: str, given, enabled: bool, load: Callable[[], Any], named: str | None = None):
        """A network passed in, else loaded when enabled; when it cannot be had, the reason is recorded. `named`:
        the setting through which the user named its weights: a file they named that cannot be used is refused
        (ValueError, one line) before any scoring, not reported as a metric merely unavailable after it."""
        if given is not None:
            return given
        if not enabled:
            self.unavailable[name] = "disabled"
            return None
        try:
            return load()
        except MetricUnavailable as exc:
            reason = exc.reason.strip().splitlines()[0] if exc.reason.strip() else exc.reason
            if named:
                raise ValueError(f"`{named}`: {reason}") from None
            self.unavailable[name] = reason
            return None

    @torch.no_grad()
    def update(self, method: str, pred01: torch.Tensor, target01: torch.Tensor, mask: torch.Tensor) -> None:
        """Add a batch for one method: prediction and ground truth (B, 3, H, W) in [0, 1], and the region
        mask (B, 1, H, W) in {0, 1} for the masked-region variants."""
        check_pair(pred01, target01)
        check_mask(mask, pred01)
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
            gt_u8 = to_uint8_images(target)
            # Masked-region identity: the ground truth with only the masked region taken from the prediction.
            region = to_uint8_images(target * (1 - mask) + pred * mask)
            self._queue_identity(acc, to_uint8_images(pred), region, gt_u8)

    def _real_features(self, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The ground truth's features are the same for every method of a batch: compute them once.
        digest = hashlib.sha1(target.cpu().numpy().tobytes() + mask.cpu().numpy().tobytes()).hexdigest()
        if self._feature_cache is None or self._feature_cache[0] != digest:
            assert self.fid_features is not None
            self._feature_cache = (digest, (self.fid_features(target), self.fid_features(target * mask)))
        return self._feature_cache[1]

    def _queue_identity(self, acc: _MethodAccumulator, whole: np.ndarray, region: np.ndarray, gt_u8) -> None:
        # Every method of a batch is compared with the same ground truth: its faces are detected and embedded
        # once, and the outputs of all the methods and both variants wait here to be embedded in one batch
        # (`_flush_identity`: when the ground truth changes, or before the values are read).
        digest = hashlib.sha1(gt_u8.tobytes()).hexdigest()
        if self._reference_cache is None or self._reference_cache[0] != digest:
            self._flush_identity()
            assert self.identity is not None
            self._reference_cache = (digest, self.identity.reference(gt_u8))
        self._identity_queue.append((acc, whole, region))

    def _flush_identity(self) -> None:
        if not self._identity_queue:
            return
        assert self.identity is not None and self._reference_cache is not None
        queue, self._identity_queue = self._identity_queue, []
        sets = [images for _, whole, region in queue for images in (whole, region)]
        results = self.identity.compare_many(sets, self._reference_cache[1])
        for k, (acc, _, _) in enumerate(queue):
            whole, region = results[2 * k], results[2 * k + 1]
            acc.add("identity_cosine", whole.cosine)
            acc.add("identity_distance", whole.distance)
            acc.add("identity_cosine_masked", region.cosine)
            acc.add("identity_distance_masked", region.distance)
            acc.counts["identity_no_face"] += whole.no_face

    def methods(self) -> list[str]:
        return list(self._methods)

    def per_image(self, method: str) -> dict[str, list[float]]:
        """Every per-image value of one method, in update order (NaN where not computable)."""
        self._flush_identity()
        return {name: list(values) for name, values in self._methods[method].values.items()}

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        """Per method: the mean of every per-image metric (NaN entries such as empty masks or faces not found
        are left out and counted), FID over the whole set, and the counts."""
        self._flush_identity()
        out: dict[str, dict[str, float | int | None]] = {}
        for method, acc in self._methods.items():
            row: dict[str, float | int | None] = {}
            for name, values in acc.values.items():
                arr = np.asarray(values, np.float64)
                finite = arr[np.isfinite(arr)]
                identical = int(np.isposinf(arr).sum()) if name.startswith("psnr") else 0
                if identical:
                    # Identical images give inf dB (a sample whose mask is empty, for the masked input): left out
                    # of the mean and counted, as NaN entries are; an inf mean said nothing of the other images.
                    row[f"n_{name}_identical"] = identical
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

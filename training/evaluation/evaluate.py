"""`m2u-eval`: the two-stage model (M-Seg -> CARU2-Net) on a dataset split, with baselines, cost and a report.

Rows of the report, all on the same samples:
- `m2u_raw`: the generator's output G(x, m) as is;
- `m2u_composite`: G(x, m)·m + x·(1 − m) with M-Seg's predicted mask m (what `m2u-unmask` shows);
- baselines (`m2u.training.evaluation.baselines`): OpenCV Telea and Navier–Stokes inpainting of the same masked input
  under the same predicted mask, and by default also under the ground-truth mask (rows `<name>_gt_mask`: what
  a classical method achieves with a perfect mask, which separates its weakness from M-Seg's), and the masked
  input itself.
Metrics are computed against the unmasked ground truth, on the whole image and on the ground-truth mask region.
Outputs in REPORT/: metrics.json, metrics.md, grid.png (masked | predicted mask | output | ground truth),
index.html (the grid and the table), per_sample.csv (every per-image value, by sample key).
"""

from __future__ import annotations

import platform
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from m2u.training.device import resolve_device
from m2u.training.evaluation.baselines import BASELINES, BaselineConfig, run_baseline
from m2u.training.evaluation.report import (
    GT_MASK_SUFFIX,
    PAPER_RESOLUTION,
    PAPER_TABLE1,
    sample_grid,
    write_per_sample,
    write_report,
)
from m2u.training.evaluation.suite import MetricsConfig, MetricSuite
from m2u.training.flops import count_macs, count_params
from m2u.training.imagespace import to_uint8_images
from m2u.training.inference.restore import ModelUsageWarning, load_two_stage, model_usage, restore_batch

__all__ = [
    "EvaluateConfig",
    "PAPER_TABLE1",
    "measure_latency",
    "model_complexity",
    "evaluate",
    "write_report",
]

MODEL_ROWS = ("m2u_raw", "m2u_composite")
BASELINE_MASKS = ("predicted", "ground_truth", "both")


@dataclass
class EvaluateConfig:
    """What `m2u-eval` runs and measures."""

    split: str = "test"
    batch_size: int = 8  # the paper's batch size
    num_workers: int = 0
    max_samples: int | None = None  # None: the whole split (exactly once)
    mask_threshold: float | None = None  # None: the threshold the M-Seg file records
    baselines: tuple[str, ...] = ("masked_input", "telea", "navier_stokes")
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    # Masks the inpainting baselines get: "predicted" (what our model sees), "ground_truth", or "both".
    baseline_mask: str = "both"
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    grid_rows: int = 8
    latency_warmup: int = 2
    latency_repeats: int = 10
    paper_size_cost: bool = True  # also count MACs at 256x256, the paper's size (one forward pass each)
    device: str = "auto"  # "auto": CUDA when present, else CPU
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baselines {unknown}: choose from {sorted(BASELINES)}")
        if self.baseline_mask not in BASELINE_MASKS:
            raise ValueError(f"baseline_mask must be one of {BASELINE_MASKS}, got {self.baseline_mask!r}")
        if self.batch_size < 1 or (self.max_samples is not None and self.max_samples < 1):
            raise ValueError("batch_size and max_samples must be >= 1")
        if self.mask_threshold is not None and not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_latency(
    mseg: nn.Module, generator: nn.Module, size: int, device: torch.device, warmup: int = 2, repeats: int = 10
) -> dict[str, Any]:
    """Seconds per image (batch 1) for M-Seg + generator + composite on `device`: median and spread."""
    mseg, generator = mseg.to(device).eval(), generator.to(device).eval()
    image = torch.rand(1, 3, size, size, device=device)
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        start = time.perf_counter()
        restore_batch(mseg, generator, image)  # type: ignore[arg-type]
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "image_size": size,
        "batch": 1,
        "repeats": repeats,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
    }


def model_complexity(mseg: nn.Module, generator: nn.Module, sizes: tuple[int, ...]) -> dict[str, Any]:
    """Parameters and multiply-accumulates (`m2u.training.flops`: MACs; FLOPs = 2 × MACs) per model."""
    out: dict[str, Any] = {
        "mseg_params": count_params(mseg),
        "generator_params": count_params(generator),
        "macs_note": "multiply-accumulates (thop/fvcore convention, the paper's 'GFLOPs'); FLOPs = 2 x MACs",
    }
    for size in sorted(set(sizes)):
        out[f"mseg_gmacs_{size}"] = count_macs(mseg, [(1, 3, size, size)]) / 1e9
        out[f"generator_gmacs_{size}"] = count_macs(generator, [(1, 3, size, size), (1, 1, size, size)]) / 1e9
    return out


def _baseline_runs(
    name: str, which: str, predicted: torch.Tensor, truth: torch.Tensor
) -> list[tuple[str, torch.Tensor]]:
    """(row name, mask) pairs for one baseline: the masked input does not use a mask, so it runs once."""
    if name == "masked_input" or which == "predicted":
        return [(name, predicted)]
    if which == "ground_truth":
        return [(name + GT_MASK_SUFFIX, truth)]
    return [(name, predicted), (name + GT_MASK_SUFFIX, truth)]


class _MaskQuality:
    """M-Seg's predicted mask against the ground truth: IoU, Dice and pixel accuracy, averaged per image."""

    def __init__(self) -> None:
        self.iou: list[float] = []
        self.dice: list[float] = []
        self.accuracy: list[float] = []

    def update(self, pred: torch.Tensor, truth: torch.Tensor) -> None:
        p, t = pred.flatten(1).bool().cpu(), truth.flatten(1).bool().cpu()
        inter = (p & t).sum(1).double()
        union = (p | t).sum(1).double()
        total = p.sum(1).double() + t.sum(1).double()
        # Both empty counts as a perfect match.
        self.iou += torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).tolist()
        self.dice += torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total)).tolist()
        self.accuracy += (p == t).double().mean(1).tolist()

    def summary(self) -> dict[str, float | None]:
        mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
        return {"iou": mean(self.iou), "dice": mean(self.dice), "pixel_accuracy": mean(self.accuracy)}


def _resize_batch(
    masked: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Members of another size brought to the model's: images by area (shrinking) or bilinear, masks nearest."""
    import torch.nn.functional as F

    mode = "area" if masked.shape[-1] > size else "bilinear"
    extra = {} if mode == "area" else {"align_corners": False}
    resize = lambda x: F.interpolate(x, size=(size, size), mode=mode, **extra).clamp(0, 1)  # noqa: E731
    return resize(masked), resize(truth), F.interpolate(mask, size=(size, size), mode="nearest")


def evaluate(
    data: str | Path,
    mseg_path: str | Path | None,
    generator_path: str | Path | None,
    out_dir: str | Path,
    config: EvaluateConfig | None = None,
    *,
    metric_suite: MetricSuite | None = None,
) -> dict[str, Any]:
    """Run the evaluation and write the report; returns what metrics.json holds.

    `metric_suite` lets callers (tests) pass a suite built with their own small networks. With neither model
    path, the model shipped with m2u. The models run at the size their files record: a dataset of another
    size is resized to it (with a warning)."""
    from m2u.datasets.loader import LoaderConfig, count_samples, make_loader

    config = config or EvaluateConfig()
    device = resolve_device(config.device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mseg, generator = load_two_stage(mseg_path, generator_path, device)
    usage = model_usage(mseg, generator, None, config.mask_threshold)
    resized_from: int | None = None
    suite = metric_suite or MetricSuite(config.metrics, device=device)
    loader = make_loader(
        data,
        config.split,
        LoaderConfig.for_evaluation(batch_size=config.batch_size, num_workers=config.num_workers),
    )
    try:
        expected = count_samples(data, config.split)
    except Exception:  # a glob or URL source has no manifest: the bar runs without a total
        expected = None
    if config.max_samples is not None:
        expected = min(expected, config.max_samples) if expected is not None else config.max_samples

    mask_quality = _MaskQuality()
    keys: list[str] = []
    grid_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    seen = 0
    image_size: int | None = None
    bar = tqdm(total=expected, unit="img", desc=f"eval {config.split}", disable=not config.progress)
    with torch.no_grad():
        for batch in loader:
            if config.max_samples is not None and seen >= config.max_samples:
                break
            take = (
                len(batch["key"])
                if config.max_samples is None
                else min(len(batch["key"]), config.max_samples - seen)
            )
            masked = batch["masked"][:take]
            truth = batch["unmasked"][:take]
            true_mask = batch["mask"][:take]
            if usage.trained_size is not None and masked.shape[-1] != usage.trained_size:
                if resized_from is None:
                    resized_from = int(masked.shape[-1])
                    warnings.warn(
                        f"{data} holds {resized_from}x{resized_from} samples, the models were trained at "
                        f"{usage.trained_size}x{usage.trained_size}: the samples are resized to the models' "
                        "size, and every figure is at that size",
                        ModelUsageWarning,
                        stacklevel=2,
                    )
                masked, truth, true_mask = _resize_batch(masked, truth, true_mask, usage.trained_size)
            image_size = int(masked.shape[-1])
            keys += list(batch["key"][:take])
            pred_mask, raw, comp = restore_batch(mseg, generator, masked.to(device), usage.threshold)
            pred_mask, raw, comp = pred_mask.cpu(), raw.cpu(), comp.cpu()
            mask_quality.update(pred_mask, true_mask)
            suite.update("m2u_raw", raw, truth, true_mask)
            suite.update("m2u_composite", comp, truth, true_mask)
            for name in config.baselines:
                for row_name, region in _baseline_runs(name, config.baseline_mask, pred_mask, true_mask):
                    output = run_baseline(name, masked, region, config.baseline)
                    suite.update(row_name, output, truth, true_mask)
            if len(grid_rows) < config.grid_rows:
                need = config.grid_rows - len(grid_rows)
                mask_rgb = pred_mask[:need].repeat(1, 3, 1, 1)
                for row in zip(
                    to_uint8_images(masked[:need]),
                    to_uint8_images(mask_rgb),
                    to_uint8_images(comp[:need]),
                    to_uint8_images(truth[:need]),
                    strict=True,
                ):
                    grid_rows.append(row)
            seen += take
            bar.update(take)
    bar.close()
    if seen == 0:
        raise ValueError(f"split {config.split!r} of {data} has no samples to evaluate")
    assert image_size is not None

    cost_sizes = (image_size, PAPER_RESOLUTION) if config.paper_size_cost else (image_size,)
    complexity = model_complexity(mseg, generator, cost_sizes)
    latency = {
        "cpu": measure_latency(
            mseg, generator, image_size, torch.device("cpu"), config.latency_warmup, config.latency_repeats
        )
    }
    if torch.cuda.is_available():
        latency["cuda"] = measure_latency(
            mseg, generator, image_size, torch.device("cuda"), config.latency_warmup, config.latency_repeats
        )
    report: dict[str, Any] = {
        "data": str(data),
        "split": config.split,
        "n_samples": seen,
        "image_size": image_size,
        "checkpoints": {
            "mseg": str(mseg_path) if mseg_path else "shipped",
            "generator": str(generator_path) if generator_path else "shipped",
        },
        "resized_from": resized_from,
        "model_info": {"mseg": asdict(mseg.info), "generator": asdict(generator.info)},
        "mask_threshold": usage.threshold,
        "baseline_mask": config.baseline_mask,
        "rows": suite.summary(),
        "unavailable": dict(suite.unavailable),
        "mask_quality": mask_quality.summary(),
        "complexity": complexity,
        "latency": latency,
        "paper_table1": PAPER_TABLE1,
        "config": {
            "generator": generator.config.to_dict(),
            "mseg": mseg.config.to_dict(),
            "baseline": asdict(config.baseline),
        },
        "torch": torch.__version__,
    }
    if grid_rows:
        grid = sample_grid(grid_rows)
        cv2.imwrite(str(out_dir / "grid.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    write_report(report, out_dir)
    write_per_sample(out_dir / "per_sample.csv", keys, suite)
    return report

"""`m2u-eval`: the two-stage model (M-Seg -> CARU2-Net) on a dataset split, with baselines, cost and a report.

Rows of the report, all on the same samples:
- `m2u_raw`: the generator's output G(x, m) as is;
- `m2u_composite`: G(x, m)·m + x·(1 − m) with M-Seg's predicted mask m (what `m2u-unmask` shows);
- baselines (`m2u.evaluation.baselines`): OpenCV Telea and Navier–Stokes inpainting of the same masked input
  under the same predicted mask, and by default also under the ground-truth mask (rows `<name>_gt_mask`: what
  a classical method achieves with a perfect mask, which separates its weakness from M-Seg's), and the masked
  input itself.
Metrics are computed against the unmasked ground truth, on the whole image and on the ground-truth mask region.
Outputs in REPORT/: metrics.json, metrics.md, grid.png (masked | predicted mask | output | ground truth),
index.html (the grid and the table), per_sample.csv (every per-image value, by sample key).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from m2u.core.checks import check_at_least, check_types
from m2u.core.fileio import check_writable, staged_files
from m2u.core.imageio import encode_image
from m2u.core.inputs import OutputFolderError, output_lock, report_clash
from m2u.core.runtime import runtime_field
from m2u.evaluation.baselines import BASELINES, BaselineConfig, run_baseline
from m2u.evaluation.groups import group_means, sample_mask_attributes
from m2u.evaluation.report import (
    GT_MASK_SUFFIX,
    PAPER_RESOLUTION,
    PAPER_TABLE1,
    REPORT_FILES,
    sample_grid,
    write_per_sample,
    write_report,
)
from m2u.evaluation.suite import MetricsConfig, MetricSuite
from m2u.inference.restore import (
    IMPLAUSIBLE_MASK_SHARE,
    ModelUsageWarning,
    TwoStageModel,
    load_two_stage,
    model_usage,
    restore_batch,
)
from m2u.training.device import cpu_model_name, resolve_device
from m2u.training.flops import count_macs, count_params, ptflops_macs
from m2u.training.imagespace import to_uint8_images
from m2u.training.models.mseg import DEFAULT_MASK_THRESHOLD, check_mask_threshold

__all__ = [
    "EvaluateConfig",
    "PAPER_TABLE1",
    "measure_latency",
    "model_complexity",
    "evaluate",
    "write_report",
]

GROUPED_ROW = "m2u_composite"  # the row the per-mask-type tables break down (what m2u-unmask shows)
BASELINE_MASKS = ("predicted", "ground_truth", "both")

EVAL_TOOL = "m2u-eval"  # its output lock's name (OUT/.m2u-eval.lock), which records its report names


@dataclass
class EvaluateConfig:
    """What `m2u-eval` runs and measures."""

    split: str = "test"
    batch_size: int = 8  # the paper's batch size
    num_workers: int = runtime_field(default=0)
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
    progress: bool = runtime_field(default=True)

    def __post_init__(self) -> None:
        check_types(self)  # NaN, infinity, 2.5 for a count: refused naming the field
        from m2u.datasets.layout import SPLITS

        if self.split not in SPLITS:  # found only after the models and the metric networks had loaded
            raise ValueError(f"`split` must be one of {', '.join(SPLITS)}, got {self.split!r}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baselines {unknown}: choose from {sorted(BASELINES)}")
        twice = sorted({b for b in self.baselines if self.baselines.count(b) > 1})
        if twice:  # one row per baseline: a second scoring under its name mixed two samples' values per row
            raise ValueError(f"`baselines` names {', '.join(twice)} more than once; name each once")
        if self.baseline_mask not in BASELINE_MASKS:
            raise ValueError(f"baseline_mask must be one of {BASELINE_MASKS}, got {self.baseline_mask!r}")
        # latency_repeats 0 failed only after every sample was scored (the median of no timings)
        check_at_least(
            self,
            {"batch_size": 1, "max_samples": 1, "grid_rows": 0, "latency_warmup": 0, "latency_repeats": 1},
        )
        check_mask_threshold(self.mask_threshold)


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
        # Any threshold: the latency does not depend on it.
        restore_batch(mseg, generator, image, DEFAULT_MASK_THRESHOLD)  # type: ignore[arg-type]
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name(),
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
        "macs_note": "multiply-accumulates (thop/fvcore convention, the paper's 'GFLOPs'); FLOPs = 2 x MACs; "
        "ptflops (pytorch backend) also counts bias, normalisation and activation operations",
    }
    for size in sorted(set(sizes)):
        shapes = {"mseg": [(1, 3, size, size)], "generator": [(1, 3, size, size), (1, 1, size, size)]}
        for name, model in (("mseg", mseg), ("generator", generator)):
            out[f"{name}_gmacs_{size}"] = count_macs(model, shapes[name]) / 1e9
            # The same pass through ptflops (None when it is not installed): a common counter beside ours.
            common = ptflops_macs(model, shapes[name])
            out[f"{name}_ptflops_gmacs_{size}"] = None if common is None else common / 1e9
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


# M-Seg's predicted mask covering more than this fraction of the image on average, or less than the low one, is
# almost surely broken (a constant output), whatever its Dice says: the report shows a warning.
COVERAGE_WARNING = (0.02, IMPLAUSIBLE_MASK_SHARE)


class _MaskQuality:
    """M-Seg's predicted mask against the ground truth: IoU, Dice and pixel accuracy averaged per image, and how
    much of the image each covers."""

    def __init__(self) -> None:
        self.iou: list[float] = []
        self.dice: list[float] = []
        self.accuracy: list[float] = []
        self.coverage: list[float] = []
        self.true_coverage: list[float] = []

    def update(self, pred: torch.Tensor, truth: torch.Tensor) -> None:
        p, t = pred.flatten(1).bool().cpu(), truth.flatten(1).bool().cpu()
        inter = (p & t).sum(1).double()
        union = (p | t).sum(1).double()
        total = p.sum(1).double() + t.sum(1).double()
        # Both empty counts as a perfect match.
        self.iou += torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).tolist()
        self.dice += torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total)).tolist()
        self.accuracy += (p == t).double().mean(1).tolist()
        self.coverage += p.double().mean(1).tolist()
        self.true_coverage += t.double().mean(1).tolist()

    def summary(self) -> dict[str, float | str | None]:
        mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
        out: dict[str, float | str | None] = {
            "iou": mean(self.iou),
            "dice": mean(self.dice),
            "pixel_accuracy": mean(self.accuracy),
            "predicted_coverage": mean(self.coverage),
            "true_coverage": mean(self.true_coverage),
            "warning": "",
        }
        coverage = out["predicted_coverage"]
        low, high = COVERAGE_WARNING
        if isinstance(coverage, float) and not low <= coverage <= high:
            what = "nearly everything" if coverage > high else "nearly nothing"
            out["warning"] = (
                f"M-Seg's mask covers {what} ({coverage:.1%} of each image on average; the ground truth "
                f"{out['true_coverage']:.1%}): the restored images are not trustworthy"
            )
        return out


@dataclass
class _Samples:
    """What the pass over the split collects besides the metric suite."""

    mask_quality: _MaskQuality = field(default_factory=_MaskQuality)
    keys: list[str] = field(default_factory=list)
    grid_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    image_size: int | None = None
    usage: Any = None  # ModelUsage: the models' size and threshold
    resized_from: int | None = None  # the dataset's size when it differs from the models'

    @property
    def seen(self) -> int:
        return len(self.keys)


def _say(config: EvaluateConfig, message: str) -> None:
    """What a long phase is doing (stderr, when progress is on): set-up and cost measuring print nothing else."""
    if config.progress:
        print(f"m2u-eval: {message}", file=sys.stderr, flush=True)


def _expected_count(data: str | Path, config: EvaluateConfig) -> int | None:
    from m2u.datasets.loader import count_samples

    try:
        expected: int | None = count_samples(data, config.split)
    except Exception:  # noqa: BLE001 - a glob or URL source has no manifest: the bar runs without a total
        expected = None
    if config.max_samples is not None:
        expected = min(expected, config.max_samples) if expected is not None else config.max_samples
    return expected


def _update_batch(
    state: _Samples, batch: dict, take: int, models: TwoStageModel, suite: MetricSuite, config
) -> None:
    """One batch: restore it, score the model rows and baselines, keep grid rows."""
    mseg, generator = models.mseg, models.generator
    device = next(mseg.parameters()).device
    masked, truth, true_mask = batch["masked"][:take], batch["unmasked"][:take], batch["mask"][:take]
    size = state.usage.trained_size
    if size is not None and masked.shape[-1] != size:
        if state.resized_from is None:
            state.resized_from = int(masked.shape[-1])
            warnings.warn(
                f"the dataset holds {state.resized_from}x{state.resized_from} samples, the models were trained at "
                f"{size}x{size}: the samples are resized to the models' size, and every figure is at that size",
                ModelUsageWarning,
                stacklevel=2,
            )
        masked, truth, true_mask = _resize_batch(masked, truth, true_mask, size)
    state.image_size = int(masked.shape[-1])
    state.keys += list(batch["key"][:take])
    pred_mask, raw, comp = restore_batch(mseg, generator, masked.to(device), state.usage.mask_threshold)
    pred_mask, raw, comp = pred_mask.cpu(), raw.cpu(), comp.cpu()
    state.mask_quality.update(pred_mask, true_mask)
    suite.update("m2u_raw", raw, truth, true_mask)
    suite.update("m2u_composite", comp, truth, true_mask)
    for name in config.baselines:
        for row_name, region in _baseline_runs(name, config.baseline_mask, pred_mask, true_mask):
            suite.update(row_name, run_baseline(name, masked, region, config.baseline), truth, true_mask)
    need = config.grid_rows - len(state.grid_rows)
    if need > 0:
        columns = (masked[:need], pred_mask[:need].repeat(1, 3, 1, 1), comp[:need], truth[:need])
        state.grid_rows += list(zip(*(to_uint8_images(c) for c in columns), strict=True))


@torch.no_grad()
def _score_split(data, models, usage, suite: MetricSuite, config: EvaluateConfig) -> _Samples:
    """One pass over the split (exactly once, up to max_samples: the first ones stored, as the loader yields the
    stored order for any number of workers)."""
    from m2u.datasets.loader import LoaderConfig, make_loader

    loader = make_loader(
        data,
        config.split,
        LoaderConfig.for_evaluation(batch_size=config.batch_size, num_workers=config.num_workers),
    )
    state = _Samples(usage=usage)
    bar = tqdm(
        total=_expected_count(data, config),
        unit="img",
        desc=f"eval {config.split}",
        disable=not config.progress,
    )
    for batch in loader:
        left = len(batch["key"]) if config.max_samples is None else config.max_samples - state.seen
        if left <= 0:
            break
        take = min(len(batch["key"]), left)
        _update_batch(state, batch, take, models, suite, config)
        bar.update(take)
    bar.close()
    if state.seen == 0:
        raise ValueError(f"split {config.split!r} of {data} has no samples to evaluate")
    return state


def _cost(models: TwoStageModel, image_size: int, config: EvaluateConfig) -> dict[str, Any]:
    """Parameters, MACs (ours and, when installed, a common counter's) and latency on CPU (and CUDA)."""
    mseg, generator = models.mseg, models.generator
    cost_sizes = (image_size, PAPER_RESOLUTION) if config.paper_size_cost else (image_size,)
    _say(
        config,
        f"counting MACs at {', '.join(f'{s}x{s}' for s in sorted(set(cost_sizes)))} and timing latency",
    )
    complexity = model_complexity(mseg, generator, cost_sizes)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    latency = {
        d.type: measure_latency(mseg, generator, image_size, d, config.latency_warmup, config.latency_repeats)
        for d in devices
    }
    return {"complexity": complexity, "latency": latency}


# A resized mask's weight above which a pixel counts as reached by the mask (float rounding stays below it).
MASK_REACH = 1e-4


def _resize_batch(
    masked: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Members of another size brought to the model's: images by area (shrinking) or bilinear, and the mask by
    the same filter, kept wherever it is above 0: every pixel the mask's colour reaches in the resized masked
    image. A nearest-neighbour mask left a rim of blended mask colour outside it, which the ground-truth-mask
    baselines kept (and the masked-region figures did not count)."""
    import torch.nn.functional as F

    mode = "area" if masked.shape[-1] > size else "bilinear"
    extra = {} if mode == "area" else {"align_corners": False}
    resize = lambda x: F.interpolate(x, size=(size, size), mode=mode, **extra)  # noqa: E731
    reached = (resize(mask.float()) > MASK_REACH).to(mask.dtype)
    return resize(masked).clamp(0, 1), resize(truth).clamp(0, 1), reached


def evaluate(
    data: str | Path,
    mseg_path: str | Path | None,
    generator_path: str | Path | None,
    out_dir: str | Path,
    config: EvaluateConfig | None = None,
    *,
    metric_suite: MetricSuite | None = None,
    links: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the evaluation and write the report; returns what metrics.json holds.

    `metric_suite` lets callers (tests) pass a suite built with their own small networks; `links` (title: path
    relative to `out_dir`, e.g. the training curves) are listed in index.html. With neither model path, the
    model shipped with m2u. The models run at the size their files record: a dataset of another size is
    resized to it (with a warning)."""
    from m2u.datasets.storage import local_dataset

    config = config or EvaluateConfig()
    data = local_dataset(data)  # a dataset URL (s3://...): its local copy, fetched before any model loads
    device = resolve_device(config.device)
    out_dir = Path(out_dir)
    # `data` is a local folder here (a URL's local copy). A report inside it (a split folder, say) would land
    # among the shards and in the dataset's own record of what it wrote, as much as one in the folder itself.
    out_real, data_real = Path(os.path.realpath(out_dir)), Path(os.path.realpath(data))
    if out_real == data_real:
        raise OutputFolderError(
            f"`out_dir` {out_dir} is the dataset folder; the report would mix with the dataset"
        )
    if data_real in out_real.parents:
        raise OutputFolderError(
            f"`out_dir` {out_dir} is inside the dataset folder {data}; the report would mix with the dataset: "
            "choose a folder outside it"
        )
    for name in REPORT_FILES:  # refused now, not after the scoring (m2u.core.fileio: never a person's file)
        check_writable(out_dir / name)
    if _expected_count(data, replace(config, max_samples=None)) == 0:
        # Said before the models and metric networks load, and before the report folder is made.
        raise ValueError(f"split {config.split!r} of {data} has no samples to evaluate")
    clash = report_clash(out_dir, EVAL_TOOL, REPORT_FILES)  # another command's metrics.json, index.html...
    if clash:
        raise OutputFolderError(clash)
    _say(config, f"loading the models on {device}")
    models = load_two_stage(mseg_path, generator_path, device)
    out_dir.mkdir(parents=True, exist_ok=True)  # after the models load: a refused model leaves no folder
    # Held from before the scoring: a second evaluation into this folder is refused at once, not after its own
    # scoring (the two then replaced each other's reports). It records the report names (other commands refuse
    # this folder then).
    with output_lock(out_dir, EVAL_TOOL, reports=REPORT_FILES):
        usage = model_usage(models, None, config.mask_threshold)
        if metric_suite is None:
            _say(config, "loading the metric networks (LPIPS, FID Inception, dlib face embeddings)")
        suite = metric_suite or MetricSuite(config.metrics, device=device)
        state = _score_split(data, models, usage, suite, config)
        assert state.image_size is not None
        report = _report(data, (mseg_path, generator_path), models, suite, state, config)
        report.update(_cost(models, state.image_size, config))
        report["links"] = dict(links or {})
        report["grid"] = "grid.png" if state.grid_rows else None
        _write_all(out_dir, report, state, suite)
    return report


def _write_all(out_dir: Path, report: dict[str, Any], state: Any, suite: MetricSuite) -> None:
    """The report's files staged whole, then published together (m2u.core.fileio.StagedFiles): a rerun stopped or
    failing while it writes them (Ctrl-C, a full disk) leaves the earlier report as it was, never a mix of two runs
    nor a report half deleted. An earlier grid this report has not goes when it is published."""
    with staged_files() as staged:
        grid = out_dir / "grid.png"
        if state.grid_rows:
            staged.write_bytes(grid, encode_image(grid, sample_grid(state.grid_rows)))
        else:
            staged.remove_at_publish(out_dir, [grid.name])  # m2u's own (checked before the scoring)
        write_per_sample(out_dir / "per_sample.csv", state.keys, suite, staged)
        write_report(
            report, out_dir, staged
        )  # metrics.md, then metrics.json and index.html (the entry, last)
        staged.publish()


def _report(
    data, paths, models, suite: MetricSuite, state: _Samples, config: EvaluateConfig
) -> dict[str, Any]:
    """metrics.json's content but cost: rows, mask quality, the per-mask tables, provenance."""
    mseg, generator = models.mseg, models.generator
    attributes = sample_mask_attributes(data, config.split, state.keys)
    by_mask = {
        "method": GROUPED_ROW,
        "source": "per-sample JSON (mask.type, mask.color, mask.pattern)" if attributes else "unavailable",
        **group_means(state.keys, suite.per_image(GROUPED_ROW), attributes),
    }
    return {
        "data": str(data),
        "split": config.split,
        "n_samples": state.seen,
        "image_size": state.image_size,
        "checkpoints": {
            "mseg": str(paths[0]) if paths[0] else "shipped",
            "generator": str(paths[1]) if paths[1] else "shipped",
        },
        "resized_from": state.resized_from,
        "model_info": {"mseg": asdict(models.mseg_info), "generator": asdict(models.generator_info)},
        "mask_threshold": state.usage.mask_threshold,
        "baseline_mask": config.baseline_mask,
        "rows": suite.summary(),
        "unavailable": dict(suite.unavailable),
        "mask_quality": state.mask_quality.summary(),
        "by_mask": by_mask,
        "paper_table1": PAPER_TABLE1,
        "config": {
            "generator": generator.config.to_dict(),
            "mseg": mseg.config.to_dict(),
            "baseline": asdict(config.baseline),
        },
        "torch": torch.__version__,
    }

"""`m2u-eval`: the two-stage model (M-Seg -> CARU2-Net) on a dataset split, with baselines, cost and a report.

Rows of the report, all on the same samples:
- `m2u_raw`: the generator's output G(x, m) as is;
- `m2u_composite`: G(x, m)·m + x·(1 − m) with M-Seg's predicted mask m (what `m2u-unmask` shows);
- baselines (`m2u.training.baselines`): OpenCV Telea and Navier–Stokes inpainting of the same masked input
  under the same predicted mask, and by default also under the ground-truth mask (rows `<name>_gt_mask`: what
  a classical method achieves with a perfect mask, which separates its weakness from M-Seg's), and the masked
  input itself.
Metrics are computed against the unmasked ground truth, on the whole image and on the ground-truth mask region.
Outputs in REPORT/: metrics.json, metrics.md, grid.png (masked | predicted mask | output | ground truth),
index.html (the grid and the table), per_sample.csv (every per-image value, by sample key).
"""

from __future__ import annotations

import csv
import html
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from m2u.masking.runtime import runtime_field
from m2u.training.baselines import BASELINES, BaselineConfig, run_baseline
from m2u.training.checkpoint import load_model
from m2u.training.flops import count_macs, count_params
from m2u.training.imagespace import composite, from_model_range, to_model_range
from m2u.training.metrics import MetricsConfig, MetricSuite, to_uint8_images
from m2u.training.models import CARU2Net, MSeg

__all__ = [
    "EvaluateConfig",
    "PAPER_TABLE1",
    "resolve_device",
    "load_two_stage",
    "restore_batch",
    "measure_latency",
    "model_complexity",
    "evaluate",
    "write_report",
]

# The paper's Table 1 row for M2UNet (CelebA, 256x256): the figures users compare their runs with.
PAPER_TABLE1 = {
    "psnr": 31.34,
    "ssim": 0.9576,
    "generator_params_m": 3.17,
    "generator_gmacs_256": 42.53,  # reported as "GFLOPs"; the count matches multiply-accumulates
    "inference_s": 0.12,  # RTX 3090
}
PAPER_RESOLUTION = 256
MODEL_ROWS = ("m2u_raw", "m2u_composite")
BASELINE_MASKS = ("predicted", "ground_truth", "both")
GT_MASK_SUFFIX = "_gt_mask"


@dataclass
class EvaluateConfig:
    """What `m2u-eval` runs and measures."""

    split: str = "test"
    batch_size: int = 8  # the paper's batch size
    num_workers: int = runtime_field(default=0)
    max_samples: int | None = None  # None: the whole split (exactly once)
    mask_threshold: float = 0.5
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
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baselines {unknown}: choose from {sorted(BASELINES)}")
        if self.baseline_mask not in BASELINE_MASKS:
            raise ValueError(f"baseline_mask must be one of {BASELINE_MASKS}, got {self.baseline_mask!r}")
        if self.batch_size < 1 or (self.max_samples is not None and self.max_samples < 1):
            raise ValueError("batch_size and max_samples must be >= 1")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; an explicit CUDA device that is not there is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    return resolved


def load_two_stage(
    mseg_path: str | Path, generator_path: str | Path, device: torch.device
) -> tuple[MSeg, CARU2Net]:
    """Load and type-check the two checkpoints (a swapped pair gets a clear error)."""
    mseg = load_model(mseg_path, map_location=device)
    generator = load_model(generator_path, map_location=device)
    if not isinstance(mseg, MSeg):
        raise ValueError(f"--mseg {mseg_path} holds a {type(mseg).__name__}, not an M-Seg model")
    if not isinstance(generator, CARU2Net):
        raise ValueError(
            f"--generator {generator_path} holds a {type(generator).__name__}, not a CARU2-Net generator"
        )
    return mseg.eval(), generator.eval()


@torch.no_grad()
def restore_batch(
    mseg: MSeg, generator: CARU2Net, masked01: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two-stage model on (B, 3, H, W) images in [0, 1]: (predicted mask, raw output, composite), the
    images in [0, 1]."""
    x = to_model_range(masked01)
    mask = mseg.predict_mask(x, threshold=threshold)
    raw = from_model_range(generator(x, mask))
    return mask, raw, composite(raw, masked01, mask)


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


def _fit_label(label: str, width: int) -> tuple[str, float]:
    """The largest font scale (0.3-0.5) at which `label` fits `width` pixels, shortening it if needed."""
    for scale in (0.5, 0.45, 0.4, 0.35, 0.3):
        if cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= width:
            return label, scale
    while len(label) > 1 and cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.3, 1)[0][0] > width:
        label = label[:-1]
    return label, 0.3


def _grid(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """One row per sample: masked | predicted mask | output | ground truth, under a header (RGB uint8).
    A dark background so that a white (all-mask) prediction still shows its extent."""
    size = rows[0][0].shape[0]
    pad = 2
    header_h = 18
    width = 4 * size + 5 * pad
    canvas = np.full((header_h + len(rows) * (size + pad) + pad, width, 3), 48, np.uint8)
    labels = [_fit_label(label, size) for label in ("masked", "predicted mask", "output", "ground truth")]
    scale = min(s for _, s in labels)  # one font size for the whole header
    for c, (text, _) in enumerate(labels):
        x0 = pad + c * (size + pad)
        cv2.putText(
            canvas, text, (x0, header_h - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA
        )
    for r, images in enumerate(rows):
        y0 = header_h + pad + r * (size + pad)
        for c, img in enumerate(images):
            x0 = pad + c * (size + pad)
            canvas[y0 : y0 + size, x0 : x0 + size] = img
    return canvas


def evaluate(
    data: str | Path,
    mseg_path: str | Path,
    generator_path: str | Path,
    out_dir: str | Path,
    config: EvaluateConfig | None = None,
    *,
    metric_suite: MetricSuite | None = None,
) -> dict[str, Any]:
    """Run the evaluation and write the report; returns what metrics.json holds.

    `metric_suite` lets callers (tests) pass a suite built with their own small networks."""
    from m2u.datasets.loader import LoaderConfig, count_samples, make_loader

    config = config or EvaluateConfig()
    device = resolve_device(config.device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mseg, generator = load_two_stage(mseg_path, generator_path, device)
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
            image_size = int(masked.shape[-1])
            keys += list(batch["key"][:take])
            pred_mask, raw, comp = restore_batch(mseg, generator, masked.to(device), config.mask_threshold)
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
        "checkpoints": {"mseg": str(mseg_path), "generator": str(generator_path)},
        "mask_threshold": config.mask_threshold,
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
        grid = _grid(grid_rows)
        cv2.imwrite(str(out_dir / "grid.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    write_report(report, out_dir)
    _write_per_sample(out_dir / "per_sample.csv", keys, suite)
    return report


def _write_per_sample(path: Path, keys: list[str], suite: MetricSuite) -> None:
    """One row per sample: every per-image metric of every method (to find the failures behind a mean)."""
    columns: list[tuple[str, str]] = []
    for method in suite.methods():
        columns += [(method, name) for name in suite.per_image(method)]
    values = {method: suite.per_image(method) for method in suite.methods()}
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key"] + [f"{method}.{name}" for method, name in columns])
        for i, key in enumerate(keys):
            writer.writerow([key] + [f"{values[m][n][i]:.6g}" for m, n in columns])


# ----------------------------------------------------------------------------------------------- writing

# (key in a row, column title, format) — the table's columns, whole image first, then the mask region.
_COLUMNS = (
    ("psnr", "PSNR ↑", "{:.2f}"),
    ("ssim", "SSIM ↑", "{:.4f}"),
    ("l1", "L1 ↓", "{:.4f}"),
    ("lpips", "LPIPS ↓", "{:.4f}"),
    ("fid", "FID ↓", "{:.2f}"),
    ("identity_cosine", "ID cos ↑", "{:.3f}"),
    ("psnr_masked", "PSNR▣ ↑", "{:.2f}"),
    ("ssim_masked", "SSIM▣ ↑", "{:.4f}"),
    ("l1_masked", "L1▣ ↓", "{:.4f}"),
    ("lpips_masked", "LPIPS▣ ↓", "{:.4f}"),
    ("fid_masked", "FID▣ ↓", "{:.2f}"),
    ("identity_cosine_masked", "ID cos▣ ↑", "{:.3f}"),
)
_METRIC_OF_COLUMN = {"lpips": "lpips", "fid": "fid", "identity": "identity"}


def _cell(row: dict[str, Any], key: str, fmt: str, unavailable: dict[str, str]) -> str:
    value = row.get(key)
    if value is None:
        family = key.split("_")[0]
        return "n/a" if family in unavailable or key not in row else "–"
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return fmt.format(value)


def _table_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for method, row in report["rows"].items():
        rows.append([method] + [_cell(row, k, f, report["unavailable"]) for k, _, f in _COLUMNS])
    return rows


_DEFINITIONS = """Definitions: images in [0, 1]; PSNR in dB and SSIM (Gaussian window 11, σ 1.5) and L1 averaged per image;
LPIPS v0.1; FID on Inception pool features over the whole split; ID cos = cosine similarity of dlib face
embeddings of output and ground truth (faces found on the ground truth; the others are counted, not averaged).
Mask-region variants (▣): PSNR / L1 over the masked pixels, SSIM and LPIPS maps averaged over them, FID of the
images with everything outside the mask set to 0, identity of the ground truth with only the masked region
replaced by the output."""


def _gmacs(complexity: dict[str, Any], model: str, size: int) -> str:
    value = complexity.get(f"{model}_gmacs_{size}")
    return "not measured" if value is None else f"{value:.3f}"


def write_report(report: dict[str, Any], out_dir: str | Path) -> None:
    """metrics.json, metrics.md and index.html from a report dict."""
    out_dir = Path(out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    header = ["method"] + [title for _, title, _ in _COLUMNS]
    rows = _table_rows(report)
    comp = report["complexity"]
    size = report["image_size"]
    lines = [
        f"# m2u-eval: {report['data']} ({report['split']}, {report['n_samples']} images, {size}×{size})",
        "",
        "▣ = on the ground-truth mask region only. Baselines inpaint under M-Seg's predicted mask, "
        f"rows ending in `{GT_MASK_SUFFIX}` under the ground-truth mask (--baseline-mask {report['baseline_mask']}).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [
        "",
        f"Paper (Table 1, CelebA 256×256): PSNR {PAPER_TABLE1['psnr']}, SSIM {PAPER_TABLE1['ssim']}.",
        "",
        _DEFINITIONS,
    ]
    if report["unavailable"]:
        lines += ["", "## Unavailable metrics", ""]
        lines += [f"- **{name}**: {reason}" for name, reason in report["unavailable"].items()]
    counts = {m: {k: v for k, v in r.items() if k.startswith("n_")} for m, r in report["rows"].items()}
    first = next(iter(counts.values()), {})
    if first.get("n_identity_no_face"):
        lines += [
            "",
            f"Identity: no face found on {first['n_identity_no_face']} of {first['n_images']} ground-truth images (left out of the mean).",
        ]
    mq = report["mask_quality"]
    lines += [
        "",
        "## M-Seg mask vs ground truth",
        "",
        f"IoU {mq['iou']:.4f}, Dice {mq['dice']:.4f}, pixel accuracy {mq['pixel_accuracy']:.4f}.",
        "",
        "## Cost",
        "",
        "| model | params | GMACs @ " + f"{size}² | GMACs @ {PAPER_RESOLUTION}² |",
        "|---|---|---|---|",
        f"| M-Seg | {comp['mseg_params'] / 1e6:.3f} M | {_gmacs(comp, 'mseg', size)} | {_gmacs(comp, 'mseg', PAPER_RESOLUTION)} |",
        f"| CARU2-Net | {comp['generator_params'] / 1e6:.3f} M | {_gmacs(comp, 'generator', size)} | "
        f"{_gmacs(comp, 'generator', PAPER_RESOLUTION)} |",
        f"| paper | {PAPER_TABLE1['generator_params_m']} M | | {PAPER_TABLE1['generator_gmacs_256']} |",
        "",
        comp["macs_note"] + ".",
        "",
    ]
    for name, lat in report["latency"].items():
        lines.append(
            f"- Latency ({name}, {lat['device_name']}, {lat['torch_threads']} threads, batch 1, {lat['image_size']}²): "
            f"median {lat['median_s'] * 1000:.1f} ms over {lat['repeats']} runs (M-Seg + generator + composite); "
            f"paper: {PAPER_TABLE1['inference_s']} s on an RTX 3090 at 256²."
        )
    (out_dir / "metrics.md").write_text("\n".join(lines) + "\n")

    esc = html.escape
    table = "<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>"
    table += (
        "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
        + "</tbody></table>"
    )
    unavailable = "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in report["unavailable"].items())
    grid = (
        '<img src="grid.png" alt="masked | predicted mask | output | ground truth">'
        if (out_dir / "grid.png").exists()
        else ""
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>m2u-eval report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}img{{image-rendering:pixelated;max-width:100%}}</style>
</head><body>
<h1>m2u-eval: {esc(str(report["data"]))} ({esc(report["split"])}, {report["n_samples"]} images)</h1>
<p>&#9635; = on the ground-truth mask region only. Full numbers: <a href="metrics.json">metrics.json</a>, <a href="metrics.md">metrics.md</a>.</p>
{table}
{"<h2>Unavailable metrics</h2><ul>" + unavailable + "</ul>" if unavailable else ""}
<h2>Samples</h2>
<p>masked | predicted mask | output (composited) | ground truth</p>
{grid}
</body></html>
"""
    (out_dir / "index.html").write_text(page)

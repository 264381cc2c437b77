"""The evaluation report: metrics.json, metrics.md, index.html, grid.png and per_sample.csv."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from m2u.training.evaluation.suite import MetricSuite

__all__ = [
    "PAPER_TABLE1",
    "PAPER_RESOLUTION",
    "GT_MASK_SUFFIX",
    "sample_grid",
    "write_per_sample",
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
GT_MASK_SUFFIX = "_gt_mask"


def _fit_label(label: str, width: int) -> tuple[str, float]:
    """The largest font scale (0.3-0.5) at which `label` fits `width` pixels, shortening it if needed."""
    for scale in (0.5, 0.45, 0.4, 0.35, 0.3):
        if cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= width:
            return label, scale
    while len(label) > 1 and cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.3, 1)[0][0] > width:
        label = label[:-1]
    return label, 0.3


def sample_grid(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
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


def write_per_sample(path: Path, keys: list[str], suite: MetricSuite) -> None:
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

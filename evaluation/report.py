"""The evaluation report: metrics.json, metrics.md, index.html, grid.png and per_sample.csv."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from m2u.core.drawing import HEADER_HEIGHT, column_header, draw_labels
from m2u.core.fileio import StagedFiles, atomic_write_text, staged_files
from m2u.evaluation.suite import MetricSuite

__all__ = [
    "column_header",
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


MIN_TILE = 128  # grid tiles are at least this many pixels wide (small images are enlarged, nearest neighbour)


def _enlarged(
    row: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], factor: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    masked, mask, output, truth = (np.repeat(np.repeat(img, factor, 0), factor, 1) for img in row)
    return masked, mask, output, truth


def sample_grid(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """One row per sample: masked | predicted mask | output | ground truth, under a header (RGB uint8).
    A dark background so that a white (all-mask) prediction still shows its extent. Tiles are at least MIN_TILE
    pixels (an integer enlargement of smaller images, so their pixels stay visible as they are)."""
    factor = max(1, -(-MIN_TILE // rows[0][0].shape[0]))
    if factor > 1:
        rows = [_enlarged(row, factor) for row in rows]
    size = rows[0][0].shape[0]
    pad = 2
    header_h = HEADER_HEIGHT
    width = 4 * size + 5 * pad
    canvas = np.full((header_h + len(rows) * (size + pad) + pad, width, 3), 48, np.uint8)
    draw_labels(canvas, ("masked", "predicted mask", "output", "ground truth"), size, pad)
    for r, images in enumerate(rows):
        y0 = header_h + pad + r * (size + pad)
        for c, img in enumerate(images):
            x0 = pad + c * (size + pad)
            canvas[y0 : y0 + size, x0 : x0 + size] = img
    return canvas


def write_per_sample(
    path: Path, keys: list[str], suite: MetricSuite, staged: StagedFiles | None = None
) -> None:
    """One row per sample: every per-image metric of every method (to find the failures behind a mean); staged in
    `staged` (published with the rest of the report) where given, else written at once."""
    columns: list[tuple[str, str]] = []
    for method in suite.methods():
        columns += [(method, name) for name in suite.per_image(method)]
    values = {method: suite.per_image(method) for method in suite.methods()}
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["key"] + [f"{method}.{name}" for method, name in columns])
    for i, key in enumerate(keys):
        writer.writerow([key] + [f"{values[m][n][i]:.6g}" for m, n in columns])
    (staged.write_text if staged is not None else atomic_write_text)(path, buffer.getvalue())


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


def _gmacs(complexity: dict[str, Any], model: str, size: int, counter: str = "") -> str:
    value = complexity.get(f"{model}{counter}_gmacs_{size}")
    return "not measured" if value is None else f"{value:.3f}"


def _fmt(value: Any, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def _group_tables(by_mask: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) per grouping of the per-mask-type breakdown."""
    tables = []
    for field, title in (("type", "mask type"), ("color", "colour"), ("pattern", "pattern")):
        groups = by_mask.get(field) or {}
        if not groups:
            continue
        header = [title, "n", "PSNR ↑", "SSIM ↑", "PSNR▣ ↑", "SSIM▣ ↑"]
        rows = [
            [value, str(row["n"])]
            + [
                _fmt(row.get(k), f)
                for k, f in (
                    ("psnr", "{:.2f}"),
                    ("ssim", "{:.4f}"),
                    ("psnr_masked", "{:.2f}"),
                    ("ssim_masked", "{:.4f}"),
                )
            ]
            for value, row in groups.items()
        ]
        tables.append((title, header, rows))
    return tables


def _cost_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    comp, size = report["complexity"], report["image_size"]
    sizes = sorted({size, PAPER_RESOLUTION})
    header = ["model", "params"]
    header += [f"{counter} GMACs @ {s}²" for s in sizes for counter in ("m2u", "ptflops")]
    rows = []
    for label, key in (("M-Seg", "mseg"), ("CARU2-Net", "generator")):
        values = [_gmacs(comp, key, s, counter) for s in sizes for counter in ("", "_ptflops")]
        rows.append([label, f"{comp[f'{key}_params'] / 1e6:.3f} M", *values])
    paper = [str(PAPER_TABLE1["generator_gmacs_256"]) if s == PAPER_RESOLUTION else "" for s in sizes]
    rows.append(["paper", f"{PAPER_TABLE1['generator_params_m']} M", *(v for p in paper for v in (p, ""))])
    return header, rows


def _latency_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for name, lat in report["latency"].items():
        device = name if lat["device_name"] in (name, "") else f"{name}: {lat['device_name']}"
        runs = "1 run" if lat["repeats"] == 1 else f"{lat['repeats']} runs"
        lines.append(
            f"Latency ({device}, {lat['torch_threads']} threads, batch 1, {lat['image_size']}²): median "
            f"{lat['median_s'] * 1000:.1f} ms over {runs} (M-Seg + generator + composite); paper: "
            f"{PAPER_TABLE1['inference_s']} s on an RTX 3090 at 256²."
        )
    return lines


def _baseline_note(which: str) -> str:
    """Which mask the baselines' rows inpaint under (EvaluateConfig.baseline_mask)."""
    return {
        "predicted": "Baselines inpaint under M-Seg's predicted mask",
        "ground_truth": f"Baselines inpaint under the ground-truth mask, their rows ending in `{GT_MASK_SUFFIX}`",
        "both": f"Baselines inpaint under M-Seg's predicted mask, rows ending in `{GT_MASK_SUFFIX}` under the "
        "ground-truth mask",
    }.get(which, "Baselines inpaint under M-Seg's predicted mask") + f" (--baseline-mask {which})."


def _identity_note(report: dict[str, Any]) -> str:
    """How many ground-truth images the identity metric found no face on ("" when none)."""
    first: dict[str, Any] = next(iter(report["rows"].values()), {})
    if not first.get("n_identity_no_face"):
        return ""
    return (
        f"Identity: no face found on {first['n_identity_no_face']} of {first['n_images']} ground-truth images "
        "(left out of the mean)."
    )


def _mask_quality_line(mq: dict[str, Any]) -> str:
    coverage = mq.get("predicted_coverage")
    line = f"IoU {_fmt(mq['iou'], '{:.4f}')}, Dice {_fmt(mq['dice'], '{:.4f}')}, pixel accuracy {_fmt(mq['pixel_accuracy'], '{:.4f}')}"
    if coverage is not None:
        line += f"; the predicted mask covers {coverage:.1%} of an image on average (ground truth {mq['true_coverage']:.1%})"
    return line + "."


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def _markdown(report: dict[str, Any]) -> str:
    size = report["image_size"]
    header = ["method"] + [title for _, title, _ in _COLUMNS]
    lines = [
        f"# m2u-eval: {report['data']} ({report['split']}, {report['n_samples']} images, {size}×{size})",
        "",
        f"▣ = on the ground-truth mask region only. {_baseline_note(report['baseline_mask'])}",
        "",
        *_md_table(header, _table_rows(report)),
        "",
        f"Paper (Table 1, CelebA 256×256): PSNR {PAPER_TABLE1['psnr']}, SSIM {PAPER_TABLE1['ssim']}.",
        "",
        _DEFINITIONS,
    ]
    if report["unavailable"]:
        lines += ["", "## Unavailable metrics", ""]
        lines += [f"- **{name}**: {reason}" for name, reason in report["unavailable"].items()]
    if _identity_note(report):
        lines += ["", _identity_note(report)]
    mq = report["mask_quality"]
    lines += ["", "## M-Seg mask vs ground truth", "", _mask_quality_line(mq)]
    if mq.get("warning"):
        lines += ["", f"**Warning: {mq['warning']}.**"]
    by_mask = report.get("by_mask", {})
    for title, head, rows in _group_tables(by_mask):
        lines += ["", f"## By {title} ({by_mask.get('method')})", "", *_md_table(head, rows)]
    cost_header, cost_rows = _cost_rows(report)
    lines += [
        "",
        "## Cost",
        "",
        *_md_table(cost_header, cost_rows),
        "",
        report["complexity"]["macs_note"] + ".",
        "",
    ]
    lines += [f"- {line}" for line in _latency_lines(report)]
    return "\n".join(lines) + "\n"


_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:0.5em 0 1em}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
    "img{image-rendering:pixelated;max-width:100%}.warning{background:#fde2e1;border:2px solid #c0392b;"
    "color:#7b241c;padding:0.8em;font-weight:bold}.tables{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}"
)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_text(text: str) -> str:
    """Markdown-lite prose as HTML: escaped, `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _html(report: dict[str, Any]) -> str:
    esc = html.escape
    mq = report["mask_quality"]
    parts = [
        f"<h1>m2u-eval: {esc(str(report['data']))} ({esc(report['split'])}, {report['n_samples']} images, "
        f"{report['image_size']}×{report['image_size']})</h1>",
        f'<p class="warning">Warning: {esc(mq["warning"])}.</p>' if mq.get("warning") else "",
        f"<p>&#9635; = on the ground-truth mask region only. {_html_text(_baseline_note(report['baseline_mask']))} "
        'Full numbers: <a href="metrics.json">metrics.json</a>, <a href="metrics.md">metrics.md</a>, '
        '<a href="per_sample.csv">per_sample.csv</a>.</p>',
        _html_table(["method"] + [t for _, t, _ in _COLUMNS], _table_rows(report)),
        f"<p>Paper (Table 1, CelebA 256×256): PSNR {PAPER_TABLE1['psnr']}, SSIM {PAPER_TABLE1['ssim']}.</p>",
        f"<p>{_html_text(_DEFINITIONS)}</p>",
    ]
    # The same notes as metrics.md, in its order (the page left out the identity count and the definitions).
    if report["unavailable"]:
        items = "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in report["unavailable"].items())
        parts.append(f"<h2>Unavailable metrics</h2><ul>{items}</ul>")
    if _identity_note(report):
        parts.append(f"<p>{esc(_identity_note(report))}</p>")
    parts += ["<h2>M-Seg mask vs ground truth</h2>", f"<p>{esc(_mask_quality_line(mq))}</p>"]
    groups = _group_tables(report.get("by_mask", {}))
    if groups:
        parts.append(f'<h2>By mask ({esc(str(report["by_mask"].get("method")))})</h2><div class="tables">')
        parts += [_html_table(head, rows) for _, head, rows in groups]
        parts.append("</div>")
    cost_header, cost_rows = _cost_rows(report)
    parts += ["<h2>Cost and latency</h2>", _html_table(cost_header, cost_rows)]
    parts += [f"<p>{esc(report['complexity']['macs_note'])}.</p>"]
    parts += [f"<p>{esc(line)}</p>" for line in _latency_lines(report)]
    links = report.get("links") or {}
    if links:
        items = "".join(f'<li><a href="{esc(path)}">{esc(title)}</a></li>' for title, path in links.items())
        parts.append(f"<h2>Training curves</h2><ul>{items}</ul>")
    if report.get("grid"):  # this run's grid (one left by an earlier run in the folder is not this run's)
        parts += [
            "<h2>Samples</h2><p>masked | predicted mask | output (composited) | ground truth</p>",
            '<img src="grid.png" alt="masked | predicted mask | output | ground truth">',
        ]
    body = "\n".join(p for p in parts if p)
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>m2u-eval report</title>'
        f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


# Every file m2u-eval writes into its report folder (write_report, the grid and per-sample rows): checked before
# any work (m2u.evaluation.evaluator.evaluate), so a person's own file there is refused before the models run.
REPORT_FILES = ("metrics.json", "metrics.md", "index.html", "per_sample.csv", "grid.png")


def write_report(report: dict[str, Any], out_dir: str | Path, staged: StagedFiles | None = None) -> None:
    """metrics.json, metrics.md and index.html from a report dict, published together (an earlier report there
    stays whole until then); staged in `staged` where given, for its caller to publish with its other files."""
    out_dir = Path(out_dir)
    if staged is None:
        with staged_files() as own:
            write_report(report, out_dir, own)
            own.publish()
        return
    staged.write_text(out_dir / "metrics.md", _markdown(report))
    staged.write_text(
        out_dir / "metrics.json", json.dumps(report, indent=2, sort_keys=False, default=str) + "\n"
    )
    staged.write_text(out_dir / "index.html", _html(report))  # last: the report's entry

"""`make demo`: the shipped model on the embedded default faces, as a side-by-side page.

    python -m m2u.pipelines.demo -o runs/demo            # writes runs/demo/index.html
    python -m m2u.pipelines.demo --check                 # exit 0 when a shipped model is there, else 1

The embedded faces (`m2u.pipelines.demo_faces`, variants of a public-domain portrait inside scikit-image) are
aligned at the model's crop size, masked with m2u's engine, and restored by the shipped model; OpenCV's Telea
fills the same predicted mask for comparison. The page shows, per face, masked | predicted mask | restored |
original, and a table of PSNR / SSIM / L1 against the original for the model, Telea and the masked input.
Nothing is downloaded. When no model ships yet, `--check` says so and `make demo` runs the smoke pipeline.
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from m2u.core.fileio import StagedFiles, staged_files
from m2u.core.imageio import encode_image

__all__ = ["run_demo"]


def _faces(count: int, size: int, folder: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(original crop, masked crop, mask) for up to `count` embedded faces, aligned at `size`."""
    from m2u.datasets.align import align_face
    from m2u.masking import MaskingError, apply_mask, read_image
    from m2u.masking.masked_faces import RealFaceDetector, RealFaceDetectorConfig
    from m2u.pipelines.demo_faces import write_demo_faces

    # BlazeFace alone, its most confident face: dlib's HOG with its low-threshold retry took the astronaut's
    # shoulder patch for the largest "face" on some variants, and the page showed that patch "restored".
    detector = RealFaceDetector(RealFaceDetectorConfig(fallback=None))
    samples = []
    for index, path in enumerate(write_demo_faces(folder, count=count)):
        image = read_image(path)
        faces = [f for f in detector.detect(image) if not f.problem]
        if not faces:
            continue
        face = max(faces, key=lambda f: f.score)
        aligned = align_face(image, face.landmarks, size)
        try:
            result = apply_mask(aligned.image, aligned.landmarks, seed=index)
        except MaskingError:
            continue
        samples.append((aligned.image, result.image, (result.mask > 0).astype(np.uint8)))
    return samples


def _scores(images: Any, original: Any) -> dict[str, float]:
    """PSNR, SSIM and L1 of (B, 3, H, W) images in [0, 1] against the originals."""
    from m2u.training.ssim import psnr, ssim

    return {
        "psnr": float(psnr(images, original)),
        "ssim": float(ssim(images, original)),
        "l1": float((images - original).abs().mean()),
    }


def _write_grid(path: Path, columns: list[Any], staged: StagedFiles) -> None:
    """(B, 3, H, W) tensors in [0, 1] side by side, one sample per row, as a PNG (staged, published with the
    report: m2u.core.fileio, whole or not at all, never through a link)."""
    tiles = [(x.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8) for x in columns]
    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in zip(*tiles)], axis=0)
    staged.write_bytes(path, encode_image(path, grid))


def run_demo(out_dir: str | Path, count: int = 8, model: str | None = None) -> dict[str, Any]:
    """Write OUT/index.html, OUT/demo.png and OUT/demo.json; returns the metrics. Raises
    PretrainedUnavailable when no model ships."""
    import torch

    from m2u.datasets.layout import DEFAULT_IMAGE_SIZE
    from m2u.evaluation.baselines import run_baseline
    from m2u.inference.pretrained import DEFAULT_MODEL
    from m2u.inference.restore import load_pretrained, model_usage, restore_batch

    name = model or DEFAULT_MODEL
    models = load_pretrained(name)
    mseg, generator = models.mseg, models.generator
    usage = model_usage(models, fallback_size=DEFAULT_IMAGE_SIZE)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = _faces(count, usage.require_crop_size(), out / "faces")
    if not samples:
        raise RuntimeError("no embedded face could be detected and masked")
    to01 = lambda arrays: torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    original, masked = to01([s[0] for s in samples]), to01([s[1] for s in samples])
    with torch.no_grad():
        predicted, _, restored = restore_batch(mseg, generator, masked, usage.mask_threshold)
    rows = {
        label: _scores(images, original)
        for label, images in (
            ("m2unet", restored),
            ("telea", run_baseline("telea", masked, predicted)),
            ("masked_input", masked),
        )
    }
    truth = torch.from_numpy(np.stack([s[2] for s in samples])).float()[:, None]
    intersection = (predicted * truth).sum(dim=(1, 2, 3))
    dice = (2 * intersection / (predicted.sum(dim=(1, 2, 3)) + truth.sum(dim=(1, 2, 3))).clamp_min(1)).mean()
    # The grid, demo.json and index.html are published together: a stop leaves an earlier demo's whole.
    with staged_files() as staged:
        _write_grid(out / "demo.png", [masked, predicted.repeat(1, 3, 1, 1), restored, original], staged)
        _write_report(out, name, usage.crop_size, samples, float(dice), rows, models.generator_info, staged)
        staged.publish()
    return {
        "model": name,
        "crop_size": usage.crop_size,
        "faces": len(samples),
        "mseg_dice": float(dice),
        "rows": rows,
        "provenance": models.generator_info.provenance,
    }


def _write_report(
    out: Path,
    name: str,
    crop_size: int | None,
    samples: list,
    dice: float,
    rows: dict[str, dict[str, float]],
    info: Any,
    staged: StagedFiles,
) -> None:
    """demo.json and index.html, staged in `staged`."""
    report = {
        "model": name,
        "crop_size": crop_size,
        "faces": len(samples),
        "mseg_dice": dice,
        "rows": rows,
        "provenance": info.provenance,
    }
    staged.write_text(out / "demo.json", json.dumps(report, indent=2) + "\n")
    table = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['psnr']:.2f}</td><td>{v['ssim']:.3f}</td><td>{v['l1']:.4f}</td></tr>"
        for k, v in rows.items()
    )
    page = f"""<!doctype html><meta charset="utf-8"><title>m2u demo: {html.escape(name)}</title>
<h1>m2u demo: the shipped model {html.escape(name)}</h1>
<p>{len(samples)} embedded faces (variants of a public-domain portrait), aligned at {crop_size}x{crop_size},
masked by m2u's engine. Columns: masked | predicted mask | restored | original. M-Seg Dice {dice:.3f}.</p>
<table border="1" cellpadding="4"><tr><th>method</th><th>PSNR (dB)</th><th>SSIM</th><th>L1</th></tr>{table}</table>
<p>Telea fills the same predicted mask. One portrait is not a benchmark: see the model card for the test-split
figures.</p>
<img src="demo.png" alt="masked | predicted mask | restored | original">
"""
    staged.write_text(out / "index.html", page)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-o", "--out", "out_dir", default="runs/demo", show_default=True, type=click.Path(file_okay=False)
)
@click.option("--count", default=8, show_default=True, type=click.IntRange(1, 40), help="Embedded faces.")
@click.option(
    "--check", is_flag=True, help="Only say whether a shipped model is there (exit 0) or not (exit 1)."
)
def main(out_dir: str, count: int, check: bool) -> None:
    """The shipped model on the embedded default faces: OUT/index.html (masked | mask | restored | original)."""
    from m2u.inference.pretrained import PretrainedUnavailable, pretrained_paths

    try:
        pretrained_paths()
    except PretrainedUnavailable as error:
        click.echo(f"make demo: {error}", err=True)
        sys.exit(1)
    if check:
        return
    report = run_demo(out_dir, count)
    for label, row in report["rows"].items():
        click.echo(f"{label:>12}: PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.3f}  L1 {row['l1']:.4f}")
    click.echo(f"page: {Path(out_dir) / 'index.html'}")


if __name__ == "__main__":
    main()

"""How far m2u-unmask's restored region should reach past the (refined) mask: `UnmaskConfig.dilate`, measured on
synthetic masks (where the truth is known) and on real ones (where the rim M-Seg misses shows). Prints the figures
and writes benchmarks/results/restored_region.json.

    .venv/bin/python benchmarks/restored_region.py [--grow 0,0.008,0.016,0.02] [--celeba 90] [--shared ../shared]
        [--model PACKAGE -o FILE]    # a candidate model package instead of the shipped one
        [--limit N]                  # only the first N real crops: a quick, partial run ("partial": true)

The generator fills the region and it is pasted back whole (its feathered edge outside it), so growing it repaints
the rim of a real mask that M-Seg's edge misses, and on a synthetic mask, whose edge M-Seg finds exactly, repaints
face that was right (the generator also fills a larger region more blurrily). Per setting, with the shipped model and
every face found once (detections shared by all settings):

- synthetic: CelebA photos of the TEST split of the identity hash split (seed 0), masked by m2u-mask in its three
  groups (benchmarks/unmask.py's build_eval_set, seed 5); m2u-unmask's output against the unmasked original, PSNR over
  the masked face's box (mean and median over the faces restored; the masked photo's own PSNR for scale);
- real: the 102 labelled crops of ../shared/faces/real-mask-seg (the first N in name order with --limit N); the share of label pixels the output leaves exactly
  unchanged and within 12 levels (RealMaskConfig.near_levels; benchmarks/real_mask_seg.py's two remnant figures), pooled over the photos
  restored, also for the two halves of the crops (alternate names).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 RGB images (m2u.evaluation.pixel.psnr_per_image, as m2u-eval computes it)."""
    import torch

    from m2u.evaluation.pixel import psnr_per_image

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].float()

    return float(psnr_per_image(tensor(a), tensor(b), data_range=255.0)[0])


def synthetic_photos(shared: Path, count: int, work: Path) -> list[dict]:
    """m2u-mask's masked photos with their originals, the masked face's box and the photo's faces as found."""
    from unmask import build_eval_set, split_photos  # benchmarks/unmask.py

    from m2u.masking import read_image

    photos = split_photos(shared / "faces" / "celeba", count, "test", 0)
    return [
        {"masked": read_image(r["masked"]), "original": read_image(r["original"]), "box": r["box"]}
        for r in build_eval_set(photos, work, seed=5)
    ]


def real_crop_files(shared: Path) -> list[Path]:
    """The labelled real-mask crops, in name order."""
    return sorted((shared / "faces" / "real-mask-seg" / "image").glob("*.jpg"))


def labelled_crops(shared: Path, limit: int = 0) -> list[dict]:
    """The first `limit` labelled crops in name order (0: all) with their labels."""
    from m2u.evaluation.real_masks import read_label
    from m2u.masking import read_image

    folder = shared / "faces" / "real-mask-seg"
    crops = []
    files = real_crop_files(shared)
    for path in files[:limit] if limit > 0 else files:
        image = read_image(path)
        label = read_label(folder / "mask" / path.name, image.shape[:2])
        crops.append({"name": path.name, "image": image, "label": label})
    return crops


def measure(unmasker, synthetic: list[dict], real: list[dict]) -> dict:
    from m2u.evaluation.real_masks import RealMaskConfig, left_unchanged

    near_levels = RealMaskConfig.near_levels
    scores, masked_scores = [], []
    for photo in synthetic:
        result, restored, _ = unmasker.unmask_found(photo["masked"], photo["found"])
        if not restored:
            continue
        x0, y0, x1, y1 = (int(v) for v in photo["box"])
        box = (slice(max(0, y0), y1), slice(max(0, x0), x1))
        scores.append(psnr(result[box], photo["original"][box]))
        masked_scores.append(psnr(photo["masked"][box], photo["original"][box]))
    pooled = {"all": [0, 0, 0], "even": [0, 0, 0], "odd": [0, 0, 0]}  # label, exact, near pixels
    restored_crops = 0
    for k, crop in enumerate(real):
        result, restored, _ = unmasker.unmask_found(crop["image"], crop["found"])
        if not restored:
            continue
        restored_crops += 1
        label = crop["label"]
        counts = (
            int(label.sum()),
            int((label & left_unchanged(result, crop["image"])).sum()),
            int((label & left_unchanged(result, crop["image"], near_levels)).sum()),
        )
        for half in ("all", "even" if k % 2 == 0 else "odd"):
            pooled[half] = [a + b for a, b in zip(pooled[half], counts)]
    return {
        "synthetic_faces_restored": len(scores),
        "synthetic_psnr_mean": round(float(np.mean(scores)), 3),
        "synthetic_psnr_median": round(float(np.median(scores)), 3),
        "synthetic_masked_psnr_mean": round(float(np.mean(masked_scores)), 3),
        "real_crops_restored": restored_crops,
        **{
            f"real_remnants{'' if half == 'all' else '_' + half}": round(exact / label, 4)
            for half, (label, exact, _) in pooled.items()
        },
        **{
            f"real_remnants_within_{near_levels}_levels{'' if half == 'all' else '_' + half}": round(
                near / label, 4
            )
            for half, (label, _, near) in pooled.items()
        },
    }


def main(argv: list[str] | None = None) -> None:
    import torch

    from m2u.inference.pretrained import GENERATOR_FILE, MSEG_FILE
    from m2u.inference.unmask import UnmaskConfig, Unmasker

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--grow", default="0,0.008,0.016,0.02", help="UnmaskConfig.dilate values, comma-separated"
    )
    parser.add_argument("--celeba", type=int, default=90, help="CelebA test-split photos to mask")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--model", type=Path, help="a model package folder (default: the shipped one)")
    parser.add_argument(
        "-o", "--out", type=Path, default=REPO / "benchmarks" / "results" / "restored_region.json"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=0,
        help="only the first N real-mask-seg crops (name order; 0: all): a partial run, marked so in the JSON",
    )
    args = parser.parse_args(argv)
    if args.limit < 0:
        parser.error("--limit: 0 (all) or more")
    if not (args.shared / "faces" / "real-mask-seg" / "image").is_dir():
        raise SystemExit(f"no labelled real masks under {args.shared / 'faces'} (give --shared)")
    torch.set_num_threads(2)
    start = time.perf_counter()
    files = (args.model / MSEG_FILE, args.model / GENERATOR_FILE) if args.model else (None, None)
    unmasker = Unmasker.from_files(*files, UnmaskConfig(device="cpu", progress=False))
    available = len(real_crop_files(args.shared))
    real = labelled_crops(args.shared, args.limit)
    partial = len(real) < available
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = synthetic_photos(args.shared, args.celeba, Path(tmp))
    for item in synthetic:
        item["found"] = unmasker.detect(item["masked"])
    for item in real:
        item["found"] = unmasker.detect(item["image"])
    shipped = unmasker.config
    settings = {}
    for grow in (float(g) for g in args.grow.split(",")):
        unmasker.config = replace(shipped, dilate=grow)
        pixels = round(grow * unmasker.usage.require_crop_size())
        settings[f"dilate {grow:g} ({pixels} px)"] = figures = measure(unmasker, synthetic, real)
        print(f"dilate {grow:g} ({pixels} px): {json.dumps(figures)}", flush=True)
    result = {
        "benchmark": "restored_region",
        # --limit: the real figures are over the first crops only, not comparable with a whole run's.
        "partial": partial,
        "model": str(args.model)
        if args.model
        else "the shipped model (m2u.inference.pretrained.DEFAULT_MODEL)",
        "shipped_dilate": shipped.dilate,
        "crop_size": unmasker.usage.require_crop_size(),
        "settings": settings,
        "protocol": {
            "celeba_photos": args.celeba,
            "real_crops": len(real),
            "real_crops_available": available,
            "real_selection": f"the first {len(real)} of {available} in name order (--limit {args.limit})"
            if partial
            else f"all {available}",
            "celeba_selection": "test split of the identity hash split (seed 0), masked by m2u-mask (build_eval_set, seed 5)",
            "synthetic_psnr": "over the masked face's box, m2u-unmask's output against the unmasked original",
            "real": "../shared/faces/real-mask-seg, labels read by m2u-eval's read_label (>= 127); halves: alternate names",
            "seconds": round(time.perf_counter() - start, 1),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

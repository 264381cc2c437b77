"""M-Seg on real masks, mapped back to the photo, against hand-drawn labels (issue 23, item 2).

    .venv/bin/python benchmarks/real_mask_seg.py                         # the shipped model
    .venv/bin/python benchmarks/real_mask_seg.py --model runs/real/package \
        --sheet runs/real-sheet.png --json benchmarks/results/real_mask_seg_real.json

Per labelled crop of ../shared/faces/real-mask-seg (image/NAME.jpg, label mask/NAME.jpg read by m2u-eval's `read_label`: brightest channel at least 127):
`m2u-unmask`'s pipeline as it is (the masked-face cascade, visible-feature alignment, M-Seg, generator, feathered
paste-back); each restored face's M-Seg mask is warped back to the photo (inverse of its alignment) and the faces
are united. Figures: faces found; Dice per photo averaged where a face was found and over all photos (a photo with
no face found scores 0); precision and recall per photo averaged where found; remnants: the share of label pixels the output leaves exactly unchanged (pooled), where
found and over all, and the share it leaves within RealMaskConfig.near_levels (12) of the input (the photo's own pixels pasted
back resampled look unchanged, the mask's edge showing: before 2026-12-05 the rim round the mask was pasted so). `--whole-crop` skips detection (each crop resized to the model's size is the face): M-Seg
alone on real masks, apart from the detector. `--sheet` writes photo | predicted mask | restored rows (real photos: never commit it).
`--refine-grid` also measures M-Seg's mask unrefined and under a grid of GrabCut seeds (m2u.inference.mask_refine),
each with Dice over all photos on the two halves of the crops (alternate names), into the JSON's "refine_grid".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "faces" / "real-mask-seg"


def _detections(unmasker, image: np.ndarray, name: str, cache: dict) -> list:
    """The photo's faces from the cache (detection does not depend on the model: the cascade's dlib CNN pass takes
    ~20 s a photo on a busy 2-core machine), else detected and added to it."""
    from m2u.masking import Face

    if name not in cache:
        cache[name] = [
            {"box": [int(v) for v in f.box], "landmarks": f.landmarks.tolist(), "score": float(f.score),
             "detector": f.detector, "retry": bool(f.retry), "problem": f.problem,
             "keypoints": None if f.keypoints is None else np.asarray(f.keypoints, np.float64).tolist()}
            for f in unmasker.detect(image)
        ]  # fmt: skip
    # A cache written before BlazeFace's keypoints were kept has none: those faces align on dlib's eyes.
    return [
        Face(
            tuple(f["box"]),
            np.asarray(f["landmarks"], np.float32),
            f["score"],
            f["detector"],
            f["retry"],
            f["problem"],
            None if f.get("keypoints") is None else np.asarray(f["keypoints"], np.float32),
        )
        for f in cache[name]
    ]


def evaluate(
    unmasker, data: Path, limit: int | None = None, sheet_rows: int = 0, cache_path: Path | None = None
):
    from m2u.core.imageio import read_image
    from m2u.evaluation.real_masks import RealMaskConfig, left_unchanged, mask_scores, photo_mask, read_label

    rows, tiles = [], []
    cache = json.loads(cache_path.read_text()) if cache_path and cache_path.is_file() else {}
    images = sorted((data / "image").glob("*.jpg"))[:limit]
    for path in images:
        image = read_image(path)
        label = read_label(data / "mask" / path.name, image.shape[:2])
        if unmasker.config.aligned:
            result, faces = unmasker.unmask_aligned(image)
        else:
            found = _detections(unmasker, image, path.name, cache)
            if cache_path:
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                cache_path.write_text(json.dumps(cache))
            result, faces, _ = unmasker.unmask_found(image, found)
        predicted = photo_mask(image.shape[:2], faces)
        unchanged = left_unchanged(result, image)
        near = left_unchanged(result, image, RealMaskConfig.near_levels)
        rows.append(
            {
                "name": path.name,
                "found": bool(faces),
                "faces": len(faces),
                "dice": mask_scores(predicted, label, unchanged)[0],
                # Per photo: the share of the predicted region that is mask, and of the mask that is predicted.
                "precision": float((predicted & label).sum() / max(predicted.sum(), 1)),
                "recall": float((predicted & label).sum() / max(label.sum(), 1)),
                "label_pixels": int(label.sum()),
                "remnant_pixels": int((unchanged & label).sum()),
                "near_remnant_pixels": int((near & label).sum()),
            }
        )
        if len(tiles) < sheet_rows:
            size = 128
            tile = [cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA) for x in (image, result)]
            pred = cv2.resize(predicted.astype(np.uint8) * 255, (size, size), interpolation=cv2.INTER_NEAREST)
            tiles.append(np.hstack([tile[0], np.dstack([pred] * 3), tile[1]]))
    return rows, tiles


def summarize(rows: list[dict]) -> dict:
    from m2u.evaluation.real_masks import RealMaskConfig

    near = RealMaskConfig.near_levels
    found = [r for r in rows if r["found"]]

    def remnants(subset: list[dict], key: str = "remnant_pixels") -> float | None:
        label = sum(r["label_pixels"] for r in subset)
        return round(sum(r[key] for r in subset) / label, 4) if label else None

    return {
        "photos": len(rows),
        "faces_found": len(found),
        "dice_where_found": round(float(np.mean([r["dice"] for r in found])), 4) if found else None,
        "dice_all": round(float(np.mean([r["dice"] for r in rows])), 4) if rows else None,
        "precision_where_found": round(float(np.mean([r["precision"] for r in found])), 4) if found else None,
        "recall_where_found": round(float(np.mean([r["recall"] for r in found])), 4) if found else None,
        "remnants_where_found": remnants(found),
        "remnants_all": remnants(rows),
        f"remnants_within_{near}_levels_where_found": remnants(found, "near_remnant_pixels"),
        f"remnants_within_{near}_levels_all": remnants(rows, "near_remnant_pixels"),
    }


REFINE_GRID = [(core, outside, 4) for core in (0.03, 0.05, 0.08, 0.12) for outside in (0.04, 0.06, 0.12)] + [
    (0.08, 0.06, 8)
]


def refine_grid(unmasker, data: Path, limit: int | None, cache_path: Path | None) -> list[dict]:
    """The figures with the mask unrefined and with each GrabCut setting of REFINE_GRID, plus Dice over all photos
    on each half of the crops (alternate names): a setting that helps only one half is tuned to noise."""
    from dataclasses import replace

    from m2u.inference.mask_refine import MaskRefineConfig

    settings = [MaskRefineConfig(enabled=False)] + [
        MaskRefineConfig(sure_core=c, sure_outside=o, iterations=i) for c, o, i in REFINE_GRID
    ]
    table = []
    for setting in settings:
        unmasker.config = replace(unmasker.config, refine=setting)
        rows, _ = evaluate(unmasker, data, limit, 0, cache_path)
        figures = summarize(rows)
        table.append(
            {
                "refine": "off" if not setting.enabled else
                f"sure_core {setting.sure_core}, sure_outside {setting.sure_outside}, {setting.iterations} iterations",
                **{k: figures[k] for k in ("faces_found", "dice_where_found", "dice_all", "precision_where_found",
                                           "recall_where_found", "remnants_where_found", "remnants_all")},
                "dice_all_even_half": round(float(np.mean([r["dice"] for r in rows[0::2]])), 4),
                "dice_all_odd_half": round(float(np.mean([r["dice"] for r in rows[1::2]])), 4),
            }
        )  # fmt: skip
        print(json.dumps(table[-1]), flush=True)
    return table


def main(argv: list[str] | None = None) -> dict:
    import torch

    from m2u.inference.pretrained import GENERATOR_FILE, MSEG_FILE
    from m2u.inference.unmask import UnmaskConfig, Unmasker

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--model", type=Path, default=None, help="a model package folder (default: the shipped one)"
    )
    parser.add_argument("--mseg", type=Path, default=None, help="an M-Seg file instead of the package's")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument(
        "--sheet", type=Path, default=None, help="photo | mask | restored PNG (do not commit)"
    )
    parser.add_argument("--sheet-rows", type=int, default=12)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--whole-crop",
        action="store_true",
        help="no detection: each crop is taken as the face (resized to the model's size), to measure M-Seg alone",
    )
    parser.add_argument(
        "--detections",
        type=Path,
        default=None,
        help="a JSON cache of the cascade's faces per photo (reused, extended)",
    )
    parser.add_argument(
        "--refine-grid", action="store_true", help="also tabulate GrabCut refinement settings (REFINE_GRID)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.data / "image").is_dir():
        raise SystemExit(f"{args.data}/image not found: the labelled real masks are not on this machine")
    config = UnmaskConfig(device="cpu", progress=False, aligned=args.whole_crop)
    if args.model is None and args.mseg is None:
        unmasker = Unmasker.from_files(None, None, config)
    else:
        from m2u.inference.pretrained import pretrained_dir

        package = args.model or pretrained_dir()
        unmasker = Unmasker.from_files(args.mseg or package / MSEG_FILE, package / GENERATOR_FILE, config)
    started = time.perf_counter()
    rows, tiles = evaluate(
        unmasker, args.data, args.limit, args.sheet_rows if args.sheet else 0, args.detections
    )
    figures = {
        "model": str(args.model or "shipped default") + (f" with M-Seg {args.mseg}" if args.mseg else ""),
        "mode": "whole crop as the face (no detection)"
        if args.whole_crop
        else "m2u-unmask pipeline (detection)",
        "data": str(args.data),
        **summarize(rows),
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    if args.refine_grid:
        shipped = unmasker.config
        figures["refine_grid"] = refine_grid(unmasker, args.data, args.limit, args.detections)
        unmasker.config = shipped
    print(json.dumps({k: v for k, v in figures.items() if k not in ("rows", "refine_grid")}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if args.sheet and tiles:
        from PIL import Image

        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.vstack(tiles)).save(args.sheet)
    return figures


if __name__ == "__main__":
    main()

"""Masks on rolled faces: how often the 68 points drift and the mask drawn on them misses (render version 4).

    .venv/bin/python benchmarks/rolled_faces.py [--photos 40] [--start 2000]   # → benchmarks/results/rolled_faces.json

CelebA photos (`--photos` of ../shared/faces/celeba sorted by name, from `--start`) are turned by each angle of
ANGLES either way with Pillow (the canvas grown to hold them, grey corners). The upright photo's first face gives
the true 68 points, turned with the photo. On each turned photo m2u's detector (`FaceDetector`, defaults) finds the
largest face and `apply_mask` (defaults, the engine's checks on) draws a mask. Counted per angle, over both
directions:
- `masked`: faces masked (the others were not found, or refused with a reason);
- `points_drifted`: masked faces whose fitted points are on average more than DRIFT eye distances from the true ones;
- `mask_misses`: masked faces whose mask covers a true eye point or leaves a true mouth point bare, reported ok.
Each figure is measured twice in the same run: as m2u draws now (a face rolled past `UPRIGHT_FIT_ROLL` fitted again
upright, `m2u.masking.detect.refit_rolled`) and with that refit switched off (the threshold set past any roll): the
baseline. Skips cleanly when ../shared is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CELEBA = REPO.parent / "shared" / "faces" / "celeba"
ANGLES = (30, 40, 45, 50, 55, 60)
DRIFT = 0.25  # eye distances, mean over the 68 points


def _turned_truth(points: np.ndarray, size: tuple[int, int], turned_size: tuple[int, int], degrees: float):
    """The upright photo's points where Pillow's rotate(degrees, expand=True) puts them."""
    (w, h), (tw, th) = size, turned_size
    t = np.deg2rad(degrees)
    turn = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    return (points - [w / 2, h / 2]) @ turn.T + [tw / 2, th / 2]


def measure(photos: list[Path]) -> dict[str, dict[str, int]]:
    from PIL import Image

    from m2u.masking import DetectorConfig, FaceDetector, MaskConfig, MaskingError, apply_mask

    detector = FaceDetector(DetectorConfig())
    counts = {
        str(angle): {"turned": 0, "masked": 0, "points_drifted": 0, "mask_misses": 0} for angle in ANGLES
    }
    for path in photos:
        photo = Image.open(path).convert("RGB")
        upright = detector.detect(np.asarray(photo))
        if not upright:
            continue
        points = upright[0].landmarks.astype(np.float64)
        eye_distance = float(np.linalg.norm(points[42:48].mean(0) - points[36:42].mean(0)))
        for angle in ANGLES:
            for degrees in (angle, -angle):
                turned = photo.rotate(degrees, expand=True, fillcolor=(128, 128, 128))
                image = np.asarray(turned)
                truth = _turned_truth(points, photo.size, turned.size, degrees)
                row = counts[str(angle)]
                row["turned"] += 1
                faces = detector.detect(image)
                if not faces:
                    continue
                try:
                    mask = apply_mask(image, faces[0], MaskConfig(), seed=0).mask
                except MaskingError:
                    continue
                row["masked"] += 1
                drift = float(np.linalg.norm(faces[0].landmarks - truth, axis=1).mean()) / eye_distance
                row["points_drifted"] += drift > DRIFT
                height, width = mask.shape
                pixels = np.round(truth).astype(int)
                pixels[:, 0] = np.clip(pixels[:, 0], 0, width - 1)
                pixels[:, 1] = np.clip(pixels[:, 1], 0, height - 1)
                covered = mask[pixels[:, 1], pixels[:, 0]] > 0
                row["mask_misses"] += bool(covered[36:48].any() or not covered[48:68].all())
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--start", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "rolled_faces.json")
    args = parser.parse_args()
    if not CELEBA.is_dir():
        print(f"skipped: {CELEBA} is absent")
        return 0
    import m2u.masking.detect as detect

    photos = sorted(CELEBA.glob("*.jpg"))[args.start : args.start + args.photos]
    started = time.perf_counter()
    now = measure(photos)
    threshold = detect.UPRIGHT_FIT_ROLL
    detect.UPRIGHT_FIT_ROLL = 1000.0  # the baseline: no face is ever refitted
    try:
        baseline = measure(photos)
    finally:
        detect.UPRIGHT_FIT_ROLL = threshold
    result = {
        "photos": [p.name for p in (photos[0], photos[-1])] + [len(photos)],
        "angles": list(ANGLES),
        "drift_threshold_eye_distances": DRIFT,
        "upright_fit_roll": threshold,
        "refit": now,
        "baseline_no_refit": baseline,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(
        f"{'angle':>6} | {'masked':>13} | {'points drifted':>15} | {'mask misses':>13}   (now / without the refit)"
    )
    for angle in ANGLES:
        a, b = now[str(angle)], baseline[str(angle)]
        print(f"{angle:>6} | {a['masked']:>5} / {b['masked']:<5} | {a['points_drifted']:>6} / {b['points_drifted']:<6} |"
              f" {a['mask_misses']:>5} / {b['mask_misses']:<5}")  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

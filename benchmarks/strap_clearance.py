"""Straps near the eyes: how many masks draw a strap beside an eye (render version 4 ends them short of the eyes).

    .venv/bin/python benchmarks/strap_clearance.py [--photos 200]   # → benchmarks/results/strap_clearance.json

On the first `--photos` CelebA photos of ../shared/faces/celeba (sorted by name), each photo's largest face gets each
strapped mask type (surgical, n95, kn95, cloth, gas; realism on, `color="random"`, the face's m2u-mask seed) twice,
with and without straps; the strap pixels are the difference. Counted per type: masks with a strap pixel within
NEAR eye distances of an eye's outline (the hull of its six points). Measured twice in the same run: as m2u draws
now (`STRAP_EYE_CLEARANCE`) and with the clearance off: the baseline. Skips cleanly when ../shared is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
CELEBA = REPO.parent / "shared" / "faces" / "celeba"
TYPES = ("surgical", "n95", "kn95", "cloth", "gas")
NEAR = 0.15  # eye distances from an eye's outline


def measure(photos: list[Path]) -> dict[str, dict[str, int]]:
    from m2u.masking import DetectorConfig, FaceDetector, MaskConfig, MaskingError, apply_mask, read_image
    from m2u.masking.batch import face_seed

    detector = FaceDetector(DetectorConfig())
    counts = {kind: {"masks": 0, "strap_near_an_eye": 0} for kind in TYPES}
    for path in photos:
        image = read_image(path)
        faces = detector.detect(image)
        if not faces:
            continue
        points = faces[0].landmarks
        eye_distance = float(np.linalg.norm(points[42:48].mean(0) - points[36:42].mean(0)))
        eyes = np.zeros(image.shape[:2], np.uint8)
        for eye in (points[36:42], points[42:48]):
            cv2.fillConvexPoly(eyes, cv2.convexHull(eye.astype(np.float32)).astype(np.int32), 1)
        reach = int(2 * NEAR * eye_distance) | 1
        near = cv2.dilate(eyes, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (reach, reach))) > 0
        seed = face_seed(0, Path(path.stem), 0)
        for kind in TYPES:
            config = MaskConfig(mask_type=kind, color="random")
            try:
                strapped = apply_mask(image, faces[0], config, seed).mask > 0
                bare = apply_mask(
                    image, faces[0], MaskConfig(mask_type=kind, color="random", straps=False), seed
                )
            except MaskingError:
                continue
            counts[kind]["masks"] += 1
            counts[kind]["strap_near_an_eye"] += bool((strapped & ~(bare.mask > 0) & near).any())
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "strap_clearance.json")
    args = parser.parse_args()
    if not CELEBA.is_dir():
        print(f"skipped: {CELEBA} is absent")
        return 0
    import m2u.masking.render as render

    photos = sorted(CELEBA.glob("*.jpg"))[: args.photos]
    started = time.perf_counter()
    now = measure(photos)
    clearance = render.STRAP_EYE_CLEARANCE
    render.STRAP_EYE_CLEARANCE = -1e9  # the baseline: no strap is ever cut for an eye
    try:
        baseline = measure(photos)
    finally:
        render.STRAP_EYE_CLEARANCE = clearance
    result = {
        "photos": len(photos),
        "near_eye_distances": NEAR,
        "strap_eye_clearance": clearance,
        "now": now,
        "baseline_no_clearance": baseline,
        "seconds": round(time.perf_counter() - started, 1),
    }
    for kind in TYPES:
        a, b = now[kind], baseline[kind]
        print(f"{kind:>9}: a strap near an eye on {a['strap_near_an_eye']} of {a['masks']} masks "
              f"(without the clearance {b['strap_near_an_eye']} of {b['masks']})")  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

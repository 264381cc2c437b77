"""Before/after contact sheets of the mask engine's realism (masking/README.md shows them).

    .venv/bin/python benchmarks/realism_sheet.py --out docs/images/realism    # committed: the NASA portrait only
    .venv/bin/python benchmarks/realism_sheet.py --out runs/realism --real ../shared/faces/real-masked   # not committed

Rows of the committed sheet: the clean templates of earlier versions (realism 0, the old dataset default: a random
type in its own colours) and the dataset's default now (realism 1, random colour from the real mix, random print),
on the same seeds. NASA's portrait of Eileen Collins ships inside scikit-image (public domain); flipped and turned
copies give it a few poses and lights. With --real, a third sheet puts real masked photos (never committed: research
use only) next to ours.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from m2u.core.imageio import read_image
from m2u.datasets.config import BuildConfig
from m2u.masking import DetectorConfig, FaceDetector, MaskConfig, MaskingError, apply_mask


def _faces(detector: FaceDetector) -> list[tuple[np.ndarray, np.ndarray]]:
    """The portrait in four lights/poses: (image, landmarks)."""
    from skimage import data

    portrait = data.astronaut()
    variants = [portrait, portrait[:, ::-1].copy()]
    dim = np.clip(portrait.astype(np.float32) * np.linspace(1.1, 0.35, 512)[None, :, None], 0, 255).astype(
        np.uint8
    )
    variants += [dim, np.clip(portrait.astype(np.float32) * [0.9, 0.85, 1.15], 0, 255).astype(np.uint8)]
    out = []
    for image in variants:
        faces = detector.detect(image, largest_only=True)
        if faces:
            out.append((image, faces[0].landmarks))
    return out


def _tile(image: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    centre = (landmarks.min(axis=0) + landmarks.max(axis=0)) / 2
    half = 0.75 * float(np.max(landmarks.max(axis=0) - landmarks.min(axis=0)))
    x0, y0 = np.maximum(np.floor(centre - half), 0).astype(int)
    x1, y1 = np.minimum(np.ceil(centre + half), image.shape[1::-1]).astype(int)
    return cv2.resize(image[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)


def sheet(faces, config: MaskConfig, seeds: range, size: int) -> np.ndarray:
    tiles = []
    for k, seed in enumerate(seeds):
        image, landmarks = faces[k % len(faces)]
        try:
            rendered = apply_mask(image, landmarks, config, seed).image
        except MaskingError:
            rendered = image
        tiles.append(_tile(rendered, landmarks, size))
    return np.hstack(tiles)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for before.png / after.png (/ real.png)"
    )
    parser.add_argument("--count", type=int, default=8, help="tiles per row")
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument(
        "--real", type=Path, default=None, help="a folder of real masked photos (not committed)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    faces = _faces(FaceDetector(DetectorConfig()))
    before = MaskConfig(mask_type="random", realism=0.0)
    after = MaskConfig(**BuildConfig().mask_options)
    n = args.count
    for name, config in (("before", before), ("after", after)):
        rows = [sheet(faces, config, range(r * n, (r + 1) * n), args.size) for r in range(args.rows)]
        Image.fromarray(np.vstack(rows)).save(args.out / f"{name}.png", optimize=True)
        print("wrote", args.out / f"{name}.png")
    if args.real:
        photos = sorted(p for p in args.real.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[
            : n * args.rows
        ]
        tiles = []
        for path in photos:
            image = read_image(path)
            h, w = image.shape[:2]
            side = min(h, w)
            crop = image[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
            tiles.append(cv2.resize(crop, (args.size, args.size), interpolation=cv2.INTER_AREA))
        while len(tiles) % n:
            tiles.append(np.full((args.size, args.size, 3), 255, np.uint8))
        Image.fromarray(np.vstack([np.hstack(tiles[i : i + n]) for i in range(0, len(tiles), n)])).save(
            args.out / "real.png"
        )
        print("wrote", args.out / "real.png")


if __name__ == "__main__":
    main()

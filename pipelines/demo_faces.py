"""The embedded default input for a fresh clone without CelebA: variants of one public-domain portrait.

scikit-image ships NASA's portrait of astronaut Eileen Collins (public domain) inside its wheel, so the demo runs
with nothing downloaded. Each variant is a different crop, scale, small rotation, mirror and exposure of it: enough
for the `smoke` pipeline to exercise every stage; not a dataset to learn from.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from m2u.core.imageio import write_image


def write_demo_faces(out_dir: str | Path, count: int = 40, seed: int = 0) -> list[Path]:
    from skimage import data

    portrait = data.astronaut()  # RGB uint8, 512x512
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    height, width = portrait.shape[:2]
    for index in range(count):
        angle = rng.uniform(-12, 12)
        scale = rng.uniform(0.8, 1.15)
        centre = (width * rng.uniform(0.42, 0.5), height * rng.uniform(0.3, 0.38))  # around the face
        matrix = cv2.getRotationMatrix2D(centre, angle, scale)
        matrix[:, 2] += (np.array([width, height]) / 2 - np.array(centre)) * 0.5
        image = cv2.warpAffine(portrait, matrix, (width, height), borderMode=cv2.BORDER_REFLECT101)
        if index % 2:
            image = image[:, ::-1]
        image = np.clip(image.astype(np.float32) * rng.uniform(0.75, 1.2), 0, 255).astype(np.uint8)
        # Names follow CelebA's {identity}_{imageid}.jpg so identity splits work on the demo too.
        path = out / f"{index % 8:04d}_{index:06d}.jpg"
        write_image(path, np.ascontiguousarray(image))
        written.append(path)
    return written

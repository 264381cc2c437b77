"""The embedded default input for a fresh clone without CelebA: variants of one public-domain portrait.

scikit-image ships NASA's portrait of astronaut Eileen Collins (public domain) inside its wheel, so the demo runs
with nothing downloaded. Each variant is a different crop, scale, small rotation, mirror and exposure of it: enough
for the `smoke` pipeline to exercise every stage; not a dataset to learn from.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import cv2
import numpy as np

from m2u.core.fileio import atomic_write_bytes, content_digest
from m2u.core.guard import UserError
from m2u.core.imageio import encode_image

DEMO_COUNT = 40


class DemoFacesChanged(UserError, ValueError):
    """A folder of demo faces holds a file that is not the demo face m2u writes there; the message names it."""


@functools.lru_cache(maxsize=2)
def demo_face_files(count: int = DEMO_COUNT, seed: int = 0) -> tuple[tuple[str, bytes], ...]:
    """Each demo face's file name and bytes (kept: a run checks the folder before its lock and writes it under it)."""
    from skimage import data

    portrait = data.astronaut()  # RGB uint8, 512x512
    rng = np.random.default_rng(seed)
    files = []
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
        name = f"{index % 8:04d}_{index:06d}.jpg"
        files.append((name, encode_image(name, np.ascontiguousarray(image))))
    return tuple(files)


def write_demo_faces(out_dir: str | Path, count: int = DEMO_COUNT, seed: int = 0) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [atomic_write_bytes(out / name, data) for name, data in demo_face_files(count, seed)]


def demo_faces_problem(out_dir: str | Path, count: int = DEMO_COUNT, seed: int = 0) -> str:
    """Why the demo faces in `out_dir` cannot be used as they are ("" when they can: the folder is absent, or each
    file in it is a demo face with the bytes m2u writes at its name): the first file that is not."""
    out = Path(out_dir)
    if not os.path.lexists(out):
        return ""
    if out.is_symlink() or not out.is_dir():
        return f"{out} is not a folder; move it away, or give the faces instead of `--demo-faces`"
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in demo_face_files(count, seed)}
    for name in sorted(os.listdir(out)):
        if name.startswith("."):  # m2u's own record (.m2u-written) and temporary files, never read as faces
            continue
        if name not in expected:
            return (
                f"{out / name} is not one of the demo faces m2u writes in {out}; move it away, "
                "or give the faces instead of `--demo-faces`"
            )
        try:
            same = content_digest(out / name) == expected[name]
        except OSError:  # a link, a folder, a FIFO at a face's name
            same = False
        if not same:
            return (
                f"{out / name} is not the demo face m2u writes there (changed since it was written); move it "
                f"away for m2u to write it again, or give the faces instead of `--demo-faces`"
            )
    return ""


def ensure_demo_faces(out_dir: str | Path, count: int = DEMO_COUNT, seed: int = 0) -> list[Path]:
    """The demo faces in `out_dir`, written once: those missing are written, those there with the same bytes are
    kept as they are (never rewritten: a finished run's inputs keep their files), and a folder holding any other file
    is refused (DemoFacesChanged, naming it) before anything is written."""
    problem = demo_faces_problem(out_dir, count, seed)
    if problem:
        raise DemoFacesChanged(problem)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in demo_face_files(count, seed):
        path = out / name
        if not path.exists():
            atomic_write_bytes(path, data)
        paths.append(path)
    return paths

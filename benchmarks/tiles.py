"""m2u-unmask's `--tiles` (RealFaceDetectorConfig.tiles) against the whole-photo detector, on photos whose faces are
small next to the photo. Prints the figures and writes benchmarks/results/tiles.json.

    .venv/bin/python benchmarks/tiles.py [--shared ../shared] [-o FILE]

Sets, each run with tiles off and on, the shipped model, every other setting m2u-unmask's default:
- "crowd": a 7 x 7 collage of the first 49 photos of ../shared/faces/real-masked in name order, each fitted into a
  200 x 240 cell on grey (1400 x 1680): 49 masked faces, each under 0.15 of the collage's longer side;
- "strip": the next 10 photos side by side in 240 x 300 cells (2400 x 300);
- "extras": every photo of ../shared/faces/extras (group photos and portraits of bare faces: nothing should be
  restored there).
Per set and setting: faces restored, faces found (restored + left as they are), photos whose reason says tiles could
find more, and seconds (wall time of unmask_files, models loaded before the clock starts). The collages are built in
a temporary folder: the shared photos are never written anywhere else.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def fitted(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` scaled to fit a `width` x `height` cell (aspect kept), centred on mid grey."""
    import cv2

    scale = min(width / image.shape[1], height / image.shape[0])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    cell = np.full((height, width, 3), 128, np.uint8)
    top, left = (height - small.shape[0]) // 2, (width - small.shape[1]) // 2
    cell[top : top + small.shape[0], left : left + small.shape[1]] = small
    return cell


def collage(images: list[np.ndarray], columns: int, width: int, height: int) -> np.ndarray:
    """`images` in rows of `columns` cells of `width` x `height` (the last row filled with grey)."""
    cells = [fitted(image, width, height) for image in images]
    cells += [np.full((height, width, 3), 128, np.uint8)] * (-len(cells) % columns)
    rows = [np.hstack(cells[k : k + columns]) for k in range(0, len(cells), columns)]
    return np.vstack(rows)


def _count(results: list) -> dict:
    from m2u.inference.photos import SMALL_FACES_MAY_HIDE

    return {
        "photos": len(results),
        "faces_restored": sum(r.faces for r in results),
        "faces_found": sum(r.faces + r.left_faces for r in results),
        "photos_with_a_face_restored": sum(r.faces > 0 for r in results),
        "photos_tiles_could_help": sum(SMALL_FACES_MAY_HIDE in r.reason for r in results),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("-o", "--out", type=Path, default=REPO / "benchmarks" / "results" / "tiles.json")
    args = parser.parse_args(argv)
    faces = args.shared / "faces"
    if not (faces / "real-masked").is_dir() or not (faces / "extras").is_dir():
        print(f"skipped: {faces}/real-masked and extras are needed")
        return 0
    import cv2

    from m2u.core.imageio import IMAGE_SUFFIXES
    from m2u.inference.photos import unmask_files
    from m2u.inference.unmask import UnmaskConfig, Unmasker
    from m2u.masking import read_image

    real = sorted(p for p in (faces / "real-masked").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    result: dict = {"sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        built = {
            "crowd": collage([read_image(p) for p in real[:49]], 7, 200, 240),
            "strip": collage([read_image(p) for p in real[49:59]], 10, 240, 300),
        }
        inputs = {}
        for name, image in built.items():
            (work / name).mkdir()
            cv2.imwrite(str(work / name / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            inputs[name] = [str(work / name)]
        inputs["extras"] = [str(faces / "extras")]
        for tiles in (False, True):
            config = UnmaskConfig(progress=False, device="cpu", tiles=tiles)
            unmasker = Unmasker.from_files(None, None, config)
            for name, given in inputs.items():
                start = time.perf_counter()
                rows = unmask_files(
                    given, None, None, work / f"out-{name}-{tiles}", config, unmasker=unmasker
                )
                figures = {**_count(rows), "seconds": round(time.perf_counter() - start, 1)}
                result["sets"].setdefault(name, {})["tiles" if tiles else "whole_photo"] = figures
                print(f"{name} tiles={tiles}: {json.dumps(figures)}", flush=True)
    result["sizes"] = {name: list(image.shape[:2]) for name, image in built.items()}
    result["machine"] = platform.platform()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

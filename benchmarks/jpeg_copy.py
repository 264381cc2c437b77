"""How far m2u-unmask's JPEG copy of a photo moves the pixels it did not restore (the README's "Paste-back" figure).
Prints the figures and writes benchmarks/results/jpeg_copy.json.

    .venv/bin/python benchmarks/jpeg_copy.py [--photos ../shared/faces/real-masked] [--limit N] [-o FILE]

For each JPEG photo of the folder (by its decoded format, in name order), unmasked once with the shipped model and the
default settings, as m2u-unmask runs it: the pixels the paste left exactly as they were (the restored array equals
the decoded photo: no paste weight reached them) are the photo's other pixels. Its copy is written as m2u-unmask
writes it under --format same (m2u.core.imageio.write_photo: quality 95, colour not subsampled), decoded again, and
compared with the decoded photo there: per photo, the largest change of any channel of any other pixel, and the
share of other pixels moved by more than 4 levels. Photos with nothing restored get no copy and are only counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "faces" / "real-masked")
    parser.add_argument("--limit", type=int, default=0, help="only the first N JPEG photos (a partial run)")
    parser.add_argument("-o", "--out", type=Path, default=REPO / "benchmarks" / "results" / "jpeg_copy.json")
    args = parser.parse_args()

    from PIL import Image

    from m2u.core.imageio import read_photo, write_photo
    from m2u.inference.unmask import UnmaskConfig, Unmasker

    photos = []
    for path in sorted(p for p in args.photos.iterdir() if p.is_file()):
        try:
            with Image.open(path) as img:
                if img.format == "JPEG":
                    photos.append(path)
        except OSError:
            continue
    if args.limit > 0:
        photos = photos[: args.limit]
    unmasker = Unmasker.from_files(None, None, UnmaskConfig(device="cpu", progress=False))
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        for k, path in enumerate(photos):
            photo = read_photo(path)
            result, faces, _ = unmasker.unmask_with_refusals(photo.rgb)
            if not faces:
                rows.append({"photo": path.name, "restored": 0})
                continue
            copy = Path(work) / f"{k}.jpg"
            write_photo(copy, result, like=photo)
            written = read_photo(copy).rgb
            other = np.all(result == photo.rgb, axis=2)
            moved = np.abs(written.astype(np.int16) - photo.rgb.astype(np.int16)).max(axis=2)[other]
            rows.append(
                {
                    "photo": path.name,
                    "restored": len(faces),
                    "other_pixels": int(other.sum()),
                    "max_change": int(moved.max(initial=0)),
                    "share_over_4": round(float((moved > 4).mean()), 6) if moved.size else 0.0,
                }
            )
            print(f"{k + 1}/{len(photos)} {path.name}: {rows[-1]}", flush=True)
    copied = [r for r in rows if r["restored"]]
    maxima = np.array([r["max_change"] for r in copied]) if copied else np.zeros(0, int)
    summary = {
        "photos": str(args.photos),
        "jpeg_photos": len(rows),
        "copied": len(copied),
        "partial": args.limit > 0,
        "max_change": int(maxima.max(initial=0)),
        "median_max_change": float(np.median(maxima)) if copied else None,
        "photos_by_max_change": {str(v): int((maxima == v).sum()) for v in sorted(set(maxima.tolist()))},
        "mean_share_over_4": round(float(np.mean([r["share_over_4"] for r in copied])), 6)
        if copied
        else None,
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    sys.exit(main())

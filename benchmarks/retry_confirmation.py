"""Does BlazeFace's confirmation of the low-threshold retry (DetectorConfig.confirm_retry) keep the detector's faces
and stop a false retry "face" from hiding a photo's real ones? Prints the counts and writes
benchmarks/results/retry_confirmation.json.

    .venv/bin/python benchmarks/retry_confirmation.py [--files 3000]

On the first --files CelebA photos of ../shared/faces/celeba (sorted by name) and every photo of faces/extras (group
photos, LFW crops, a dog), m2u-mask's detector runs with the confirmation (the default) and without it (the
baseline, the detector before 2026-12-07) in the same run. Per set: faces found each way, faces only the retry found
each way, the photos whose faces differ (with their counts), and CPU seconds of each. Skips cleanly when ../shared
is absent.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "faces"
SUFFIXES = (".jpg", ".jpeg", ".png")


def detect_all(paths: list[Path], confirm: bool) -> tuple[dict[str, list], float]:
    """Each readable photo's faces as (box, retry), and the CPU seconds the detection took."""
    from m2u.core.imageio import read_image
    from m2u.masking import DetectorConfig, FaceDetector, ImageReadError

    detector = FaceDetector(DetectorConfig(confirm_retry=confirm))
    detector.detect(read_image(paths[0]))  # models loaded before the clock starts, for either way alike
    faces: dict[str, list] = {}
    seconds = 0.0
    for path in paths:
        try:
            image = read_image(path)
        except ImageReadError:
            continue
        started = time.process_time()
        found = detector.detect(image)
        seconds += time.process_time() - started
        faces[path.name] = [(list(map(int, face.box)), bool(face.retry)) for face in found]
    return faces, seconds


def compare(paths: list[Path]) -> dict:
    now, now_seconds = detect_all(paths, confirm=True)
    before, before_seconds = detect_all(paths, confirm=False)
    differ = {
        name: {"now": len(now[name]), "before": len(before[name])}
        for name in sorted(now)
        if sorted(now[name]) != sorted(before[name])
    }
    return {
        "photos": len(now),
        "faces": sum(map(len, now.values())),
        "faces_before": sum(map(len, before.values())),
        "retry_faces": sum(retry for faces in now.values() for _, retry in faces),
        "retry_faces_before": sum(retry for faces in before.values() for _, retry in faces),
        "photos_that_differ": differ,
        "cpu_seconds": round(now_seconds, 2),
        "cpu_seconds_before": round(before_seconds, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "retry_confirmation.json"
    )
    args = parser.parse_args()
    if not (FACES / "celeba").is_dir() or not (FACES / "extras").is_dir():
        print(f"skipped: {FACES}/celeba or extras is absent")
        return 0
    sets = {
        f"celeba_first_{args.files}": sorted((FACES / "celeba").glob("*.jpg"))[: args.files],
        "extras": sorted(p for p in (FACES / "extras").rglob("*") if p.suffix.lower() in SUFFIXES),
    }
    results = {name: compare(paths) for name, paths in sets.items()}
    print(
        "| set | photos | faces (without confirmation) | retry faces (without) | photos that differ | CPU s (without) |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['photos']} | {r['faces']} ({r['faces_before']}) | {r['retry_faces']} "
              f"({r['retry_faces_before']}) | {len(r['photos_that_differ'])} | {r['cpu_seconds']} "
              f"({r['cpu_seconds_before']}) |")  # fmt: skip
        for photo, counts in r["photos_that_differ"].items():
            print(f"    {photo}: {counts['now']} faces (without: {counts['before']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""m2u-make-dataset benchmark: pairs/s with 1 and 2 workers, peak memory, and where the time goes.

    .venv/bin/python benchmarks/make_dataset.py            # 1,000-photo subset, 1 and 2 workers (~2 min)
    .venv/bin/python benchmarks/make_dataset.py --full     # plus the whole 12,000 with 2 workers (~4-5 min)
    .venv/bin/python benchmarks/make_dataset.py --quick    # 100 photos, smoke run, not for the record
    .venv/bin/python benchmarks/make_dataset.py --ray-overhead-only   # Ray against multiprocessing, 1,000 photos

Needs ../shared/faces/celeba. Each build runs as its own `m2u-make-dataset` process (default arguments: 256 px,
JPEG q95, random mask types) so that its own peak memory is measured cleanly (`peak_rss_mib_largest_process`: the
largest resident set among that build's main process and its workers, read by a small launcher process of that
build's own; not a maximum over the builds so far). Also times each stage per photo in one process (read + SHA-256,
detection + landmarks, alignment, masking, encoding) and the HOG detector alone at upsample 0 on the full image
versus downscaled images (CelebA faces are ~90 px wide; HOG's window is 80 px). Writes
benchmarks/results/make_dataset.json; ratios are against the same run's 1-worker figure.

``--ray`` (or ``--ray-overhead-only``, which skips everything else) also builds the subset with
``--distributor ray`` (a local Ray instance with the same number of CPUs, started by that build, so its start-up is
included) and with multiprocessing, both with ``--ray-shard-size`` photos per shard so that both have as many
tasks; rounds alternate the two; the overhead is Ray's wall time over multiprocessing's within each round
(median over rounds). Needs idle cores for a figure worth recording. ``--ray-overhead-only`` writes
benchmarks/results/make_dataset_ray.json (the other figures in make_dataset.json stay as they are).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "make_dataset.json"
RAY_RESULTS = RESULTS.with_name("make_dataset_ray.json")
CELEBA = (
    Path(os.environ.get("M2U_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "faces" / "celeba"
)
TARGET_12000_S = 180.0  # issue 3: the paper's 12,000 photos in at most 3 minutes on 2 cores


def _run_build(
    out: Path, limit: int | None, workers: int, extra: list[str] | None = None, faces: Path = CELEBA
) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "m2u.datasets.cli",
        str(faces),
        "-o",
        str(out),
        "--workers",
        str(workers),
    ]
    command += ["--quiet", "--overwrite"] + (["--limit", str(limit)] if limit else []) + (extra or [])
    out.parent.mkdir(parents=True, exist_ok=True)
    wall, peak_kib = run_measured(command, cwd=out.parent)
    stats = json.loads((out / "stats.json").read_text())
    return {
        "photos": stats["inputs"],
        "workers": workers,
        "wall_s": round(wall, 1),
        "process_s": stats["timings"]["process_s"],
        "pairs_per_s": round(stats["planned_samples"] / wall, 1),
        "cpu_s": stats["timings"].get("cpu_s"),
        "pairs_per_cpu_s": stats["timings"].get("pairs_per_cpu_s"),
        "counts": stats["counts"]["by_status"],
        "samples": stats["counts"]["samples"],
        # This build's own peak: the largest resident set of its main process and the workers it waited for.
        "peak_rss_mib_largest_process": round(peak_kib / 1024, 1),
    }


# Runs the command given after the file name and writes the largest ru_maxrss (KiB) of it and the descendants it
# waited for into that file. A small process of its own because Linux gives an exec'd child, as its starting
# ru_maxrss, the peak of the memory it was forked from: a build started straight from this process (models loaded
# by _stage_times) would report at least this process's size.
_MEASURING_LAUNCHER = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[2:]).returncode; "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(code)"
)


def run_measured(command: list[str], cwd: Path | None = None) -> tuple[float, int]:
    """Run `command`; return its wall seconds and ITS peak resident set in KiB: the largest ru_maxrss of that
    process and of the descendants it waited for (a build's workers), in KiB on Linux.

    Not this process's RUSAGE_CHILDREN, which is the largest of every child so far and so only rises from one build
    to the next; and measured from a small launcher (_MEASURING_LAUNCHER), not from a child of this process.
    """
    with tempfile.TemporaryDirectory(prefix="m2u-peak-rss-") as tmp:
        record = Path(tmp) / "maxrss_kib"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _MEASURING_LAUNCHER, str(record), *command], cwd=cwd)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, command)
        return wall, int(record.read_text())


def _stage_times(files: list[Path]) -> dict[str, Any]:
    import hashlib

    from m2u.datasets.align import align_face
    from m2u.datasets.build import BuildConfig, make_masker
    from m2u.datasets.codecs import encode_image, encode_mask
    from m2u.masking import DetectorConfig, Face, FaceDetector, read_image

    config = BuildConfig()
    detector, masker = FaceDetector(DetectorConfig()), make_masker(config)
    detector.detect(read_image(files[0]))  # load the models outside the timings
    totals = dict.fromkeys(("read", "detect", "align", "mask", "encode"), 0.0)
    masked_ok = 0
    for index, path in enumerate(files):
        t0 = time.perf_counter()
        hashlib.sha256(path.read_bytes()).hexdigest()
        image = read_image(path)
        t1 = time.perf_counter()
        faces = detector.detect(image, largest_only=True)  # as the builder does
        t2 = time.perf_counter()
        totals["read"] += t1 - t0
        totals["detect"] += t2 - t1
        if not faces:
            continue
        aligned = align_face(image, faces[0].landmarks, config.size)
        t3 = time.perf_counter()
        totals["align"] += t3 - t2
        try:
            masked, mask, _ = masker(aligned.image, Face.from_landmarks(aligned.landmarks), index)
        except Exception:  # noqa: BLE001 - refused placements cost time too; counted, not encoded
            totals["mask"] += time.perf_counter() - t3
            continue
        t4 = time.perf_counter()
        encode_image(masked, config.image_format, config.quality)
        encode_image(aligned.image, config.image_format, config.quality)
        encode_mask(mask)
        totals["encode"] += time.perf_counter() - t4
        totals["mask"] += t4 - t3
        masked_ok += 1
    per_photo_ms = {stage: round(1000 * seconds / len(files), 2) for stage, seconds in totals.items()}
    return {
        "photos": len(files),
        "masked": masked_ok,
        "ms_per_photo": per_photo_ms,
        "total_ms_per_photo": round(sum(per_photo_ms.values()), 2),
    }


def _hog_scales(files: list[Path]) -> dict[str, Any]:
    import cv2
    import dlib

    from m2u.masking import read_image

    hog = dlib.get_frontal_face_detector()
    images = [read_image(f) for f in files]
    out = {}
    for scale, upsample in ((1.0, 0), (0.8, 0), (0.75, 0), (0.5, 0), (1.0, 1)):
        start, found = time.perf_counter(), 0
        for image in images:
            small = (
                image
                if scale == 1.0
                else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            )
            found += bool(hog(small, upsample))
        out[f"scale_{scale}_upsample_{upsample}"] = {
            "ms_per_image": round(1000 * (time.perf_counter() - start) / len(images), 2),
            "found_fraction": round(found / len(images), 3),
        }
    return out


def ray_overhead(
    tmp: Path, subset: int, workers: int, shard_size: int, rounds: int, faces: Path = CELEBA
) -> dict[str, Any]:
    """Ray against multiprocessing on the same photos, same shards, alternating within each round."""
    extra = ["--shard-size", str(shard_size)]
    runs: dict[str, list[dict[str, Any]]] = {"multiprocessing": [], "ray": []}
    for index in range(rounds):
        order = ("multiprocessing", "ray") if index % 2 == 0 else ("ray", "multiprocessing")
        for distributor in order:
            out = tmp / f"{distributor}-{index}"
            run = _run_build(out, subset, workers, [*extra, "--distributor", distributor], faces)
            runs[distributor].append(run)
            print(json.dumps({"distributor": distributor, "round": index, **run}), flush=True)
    ratios = [
        ray["wall_s"] / mp["wall_s"] for mp, ray in zip(runs["multiprocessing"], runs["ray"], strict=True)
    ]
    return {
        "photos": runs["ray"][0]["photos"],
        "workers": workers,
        "shard_size": shard_size,
        "rounds": rounds,
        "runs": runs,
        "ray_wall_over_multiprocessing_per_round": [round(r, 3) for r in ratios],
        "ray_overhead_ratio_median": round(float(np.median(ratios)), 3),
        "ray_overhead_s_median": round(
            float(
                np.median([r["wall_s"] - m["wall_s"] for m, r in zip(runs["multiprocessing"], runs["ray"])])
            ),
            1,
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true", help="also build all 12,000 photos with 2 workers")
    parser.add_argument("--subset", type=int, default=1000)
    parser.add_argument(
        "-o", "--out", type=Path, help=f"default {RESULTS} ({RAY_RESULTS.name} with --ray-overhead-only)"
    )
    parser.add_argument("--keep", type=Path, help="build the full dataset here and keep it (with --full)")
    parser.add_argument(
        "--ray", action="store_true", help="also measure Ray's overhead against multiprocessing"
    )
    parser.add_argument("--ray-overhead-only", action="store_true", help="only measure Ray's overhead")
    parser.add_argument(
        "--ray-shard-size", type=int, default=100, help="photos per shard in the Ray comparison"
    )
    parser.add_argument("--ray-rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="workers (Ray CPUs) of the Ray comparison")
    parser.add_argument("--faces", type=Path, default=CELEBA, help="photo folder (default: ../shared CelebA)")
    args = parser.parse_args(argv)
    args.out = args.out or (RAY_RESULTS if args.ray_overhead_only else RESULTS)
    if not args.faces.is_dir():
        sys.exit(f"needs the photos at {args.faces}")
    subset = 100 if args.quick else args.subset
    results: dict[str, Any] = {
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_at_start": os.getloadavg(),
        },
    }
    if args.ray or args.ray_overhead_only:
        with tempfile.TemporaryDirectory(prefix="m2u-make-dataset-ray-") as tmp:
            results["ray_vs_multiprocessing"] = ray_overhead(
                Path(tmp), subset, args.workers, args.ray_shard_size, args.ray_rounds, args.faces
            )
        if args.ray_overhead_only:
            results["machine"]["load_avg_at_end"] = os.getloadavg()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
            print(f"wrote {args.out}")
            return results
    files = sorted(p for p in args.faces.iterdir() if p.suffix.lower() == ".jpg")
    results["stages_one_process"] = _stage_times(files[: min(200, subset)])
    results["hog_detector"] = _hog_scales(files[: min(200, subset)])
    print(json.dumps(results, indent=1), flush=True)
    with tempfile.TemporaryDirectory(prefix="m2u-make-dataset-bench-") as tmp:
        runs = {}
        for workers in (1, 2):
            runs[f"subset_workers_{workers}"] = _run_build(
                Path(tmp) / f"w{workers}", subset, workers, faces=args.faces
            )
            print(json.dumps(runs[f"subset_workers_{workers}"]), flush=True)
        runs["subset_speedup_2_vs_1"] = round(
            runs["subset_workers_2"]["pairs_per_s"] / runs["subset_workers_1"]["pairs_per_s"], 2
        )
        if args.full:
            full = _run_build(args.keep or Path(tmp) / "full", None, 2, faces=args.faces)
            full["meets_target_180_s"] = full["wall_s"] <= TARGET_12000_S
            runs["full_12000_workers_2"] = full
            print(json.dumps(full), flush=True)
        results["builds"] = runs
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

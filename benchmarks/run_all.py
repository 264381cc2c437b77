"""Run every benchmark, then print one summary table of their headline figures (`make bench`).

    .venv/bin/python benchmarks/run_all.py            # the record runs (tens of minutes on 2 CPU cores)
    .venv/bin/python benchmarks/run_all.py --quick    # each script's smoke mode (not for the record)
    .venv/bin/python benchmarks/run_all.py --summary  # only print the table, from the JSON already in results/

The record run: each script writes benchmarks/results/<name>.json, and the table is written to
benchmarks/results/summary.md. --quick writes each script's JSON into --out-dir (default: a fresh temporary folder,
printed), never into benchmarks/results/, and writes no summary.md: the table is only printed. --summary writes
nothing. With --out-dir a record run writes its JSON and summary.md there instead.
The fixed-budget CelebA training run (benchmarks/celeba_cpu_run.py, ~30 min) is not included: run it by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# script -> the figures worth a row: (label, path of keys in its JSON)
HEADLINES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "masking": [
        ("images/s, 1 worker (median of rounds)", ("medians", "one_worker_images_per_s")),
        ("images/s, all workers (median)", ("medians", "all_workers_images_per_s")),
        ("images per CPU-second, 1 worker (median)", ("medians", "one_worker_images_per_cpu_second")),
        ("detection alone, images/s (median)", ("medians", "detection_only_images_per_s")),
        (
            "MaskTheFace-style stand-in, images/s (median)",
            ("medians", "masktheface_style_process_images_per_s"),
        ),
        ("vs MaskTheFace (--peer), 200 files, per CPU-second", ("peer", "ratio_per_cpu_second")),
        ("vs MaskTheFace (--peer), 1,000 files, per CPU-second", ("peer_1000_files", "ratio_per_cpu_second")),
        ("masked fraction", ("one_worker", "masked_fraction")),
        ("peak RSS MiB", ("one_worker", "peak_rss_mib_largest_process")),
    ],
    "make_dataset": [
        ("pairs/s, 1,000 photos, 1 worker", ("builds", "subset_workers_1", "pairs_per_s")),
        ("pairs/s, 1,000 photos, 2 workers", ("builds", "subset_workers_2", "pairs_per_s")),
        ("2 vs 1 workers", ("builds", "subset_speedup_2_vs_1")),
        ("12,000 photos, wall s", ("builds", "full_12000_workers_2", "wall_s")),
        ("12,000 photos, pairs per CPU-s", ("builds", "full_12000_workers_2", "pairs_per_cpu_s")),
    ],
    "loader": [
        ("JPEG samples per worker CPU-s", ("formats", "jpg", "worker_only_samples_per_cpu_s")),
        ("JPEG samples/s, 1 worker", ("formats", "jpg", "workers_1", "samples_per_s")),
        ("JPEG vs plain webdataset, per CPU-s", ("formats", "jpg", "ratio_vs_plain_webdataset")),
        ("PNG samples per worker CPU-s", ("formats", "png", "worker_only_samples_per_cpu_s")),
    ],
    "training": [
        ("generator params", ("params", "generator")),
        ("generator GMACs at 256", ("cost", "generator_gmacs")),
        ("forward s, 256, batch 1", ("forward_latency_s", "fp32")),
        ("channels_last speed-up", ("forward_latency_s", "channels_last_speedup")),
        ("G+D train images/s at 128", ("gan_train_step", "128", "images_per_second")),
    ],
    "evaluation": [
        ("identity / other metrics (target <= 1)", ("identity_in_m2u_eval", "identity_over_other_metrics")),
        ("identity / other metrics before", ("identity_in_m2u_eval", "identity_over_other_metrics_before")),
        ("identity speed-up vs dlib descriptor", ("identity_in_m2u_eval", "speedup_vs_dlib_descriptor")),
    ],
    "unmask": [
        ("masked faces found, shipped cascade", ("shipped_cascade", "rate")),
        ("worst mask type", ("shipped_cascade", "worst_mask_type_rate")),
        ("detections on faceless images", ("shipped_cascade", "detections_on_faceless_images")),
        ("detection CPU ms per face", ("shipped_cascade", "cpu_ms_per_face")),
        ("mouth offset px, 256 crop (mean)", ("alignment_error_crop_px", "visible", "mouth_px_mean")),
        ("m2u-unmask faces per CPU-s", ("pipeline", "faces_per_cpu_s")),
        ("16-face photo, CPU ms per face (default)", ("many_faces", "cpu_ms_per_face", "default")),
        ("16-face photo, default vs one face per pass", ("many_faces", "default_vs_one_face_per_pass")),
    ],
}


def _dig(data: object, path: tuple[str, ...]) -> object:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def cpu_description() -> str:
    """The CPU's model and the flags the figures depend on (vector width, native bf16), from /proc/cpuinfo."""
    from m2u.training.device import cpu_model_name

    model, flags = cpu_model_name(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    relevant = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    return f"{model}, {os.cpu_count()} cores; flags: {' '.join(relevant) or 'none of avx/amx/fma'}"


def summary(results: Path = RESULTS) -> str:
    """The table of the headline figures of the JSON files in `results`."""
    lines = [
        "Each figure is from its script's own run (the README's benchmark section says when and on which machine); this table was made on: "
        f"{cpu_description()}",
        "",
        "| benchmark | figure | value |",
        "|---|---|---|",
    ]
    for name, rows in HEADLINES.items():
        path = results / f"{name}.json"
        if not path.exists():
            lines.append(f"| {name} | (no results yet) | |")
            continue
        data = json.loads(path.read_text())
        for label, keys in rows:
            value = _dig(data, keys)
            lines.append(f"| {name} | {label} | {value if value is not None else 'n/a'} |")
    return "\n".join(lines) + "\n"


def command_for(name: str, quick: bool, out_dir: Path) -> list[str]:
    """The command that runs benchmark `name`, writing its JSON to out_dir/<name>.json."""
    command = [sys.executable, str(HERE / f"{name}.py")]
    if quick:
        command += ["--files", "50"] if name == "masking" else ["--quick"]
    return [*command, "--out", str(out_dir / f"{name}.json")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="each script's smoke mode, into --out-dir (not for the record)"
    )
    parser.add_argument(
        "--summary",
        action="store_true",
        help="only print the table (from --out-dir's JSON, default benchmarks/results); writes nothing",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where each script writes its JSON (default: benchmarks/results; with --quick a fresh temporary "
        "folder, never benchmarks/results)",
    )
    args = parser.parse_args(argv)
    if args.summary:
        print(summary(args.out_dir or RESULTS))
        return 0
    if args.quick:
        if args.out_dir is not None and args.out_dir.resolve() == RESULTS.resolve():
            parser.error(
                "--quick: smoke runs are not for the record; give an --out-dir other than benchmarks/results"
            )
        out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="m2u-bench-quick-"))
        print(f"--quick: the JSON goes to {out_dir} (not benchmarks/results)", flush=True)
    else:
        out_dir = args.out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in HEADLINES:
        command = command_for(name, args.quick, out_dir)
        print(f"== {' '.join(command[1:])}", flush=True)
        if subprocess.run(command).returncode != 0:
            failed.append(name)
    table = summary(out_dir)
    if not args.quick:  # the record run's table beside its JSON
        (out_dir / "summary.md").write_text(table)
    print(table)
    if args.quick:
        print(f"--quick: the smoke runs' JSON is in {out_dir}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The written record (.m2u-written) under reruns: its size, and the cost of a write, with the compaction and without.
Prints the figures and writes benchmarks/results/written_record.json.

    .venv/bin/python benchmarks/written_record.py [--files 600] [--reruns 8] [--quick] [-o FILE]

Each setting writes --files outputs (2 KB each, the same bytes every rerun, as m2u-mask's seeded outputs are) into a
fresh temporary folder through m2u.core.fileio.atomic_write_bytes, --reruns times, each rerun as a new process would
(this process's memory of the folder's record forgotten in between), and records the record's size after each rerun
and the time per write. Settings, alternated rerun by rerun (each rerun starting with the next one) so that the
machine's noise hits each alike:
- "off": no compaction (COMPACT_RECORD_FROM past any size): the record as it grew before it was compacted;
- "apart": the compaction as shipped, for reruns more than a minute apart (IN_FLIGHT_NS 0 here, so that the
  benchmark need not wait a minute between reruns: only stamps of the same instant count as in flight);
- "back to back": the compaction as shipped, reruns within the minute (every earlier rerun's stamps in flight);
- "off again": "off" in a folder of its own, the control: its ratio to "off" is the harness's noise.
The ratio of each setting's time per write to "off"'s, in the same run, is the cost of the compaction, where it
stands out from the control's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("off", "apart", "back to back", "off again")


def one_rerun(folder: Path, files: int, payload: bytes, setting: str) -> float:
    """Seconds spent writing the rerun's `files` outputs into `folder` under `setting`."""
    from m2u.core import fileio

    fileio._COMPACT_AT.clear()  # a new process knows nothing of the folder's record
    fileio._RECORDS.clear()
    saved = fileio.COMPACT_RECORD_FROM, fileio.IN_FLIGHT_NS
    if setting.startswith("off"):
        fileio.COMPACT_RECORD_FROM = sys.maxsize
    elif setting == "apart":
        fileio.IN_FLIGHT_NS = 0
    try:
        start = time.perf_counter()
        for k in range(files):
            fileio.atomic_write_bytes(folder / f"photo{k:05d}_surgical.jpg", payload)
        return time.perf_counter() - start
    finally:
        fileio.COMPACT_RECORD_FROM, fileio.IN_FLIGHT_NS = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=600, help="outputs per rerun (default 600)")
    parser.add_argument("--reruns", type=int, default=8, help="reruns per setting (default 8)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 60 files, 3 reruns (not for the record)"
    )
    parser.add_argument(
        "-o", "--out", type=Path, default=REPO / "benchmarks" / "results" / "written_record.json"
    )
    args = parser.parse_args(argv)
    files, reruns = (60, 3) if args.quick else (args.files, args.reruns)
    from m2u.core.fileio import RECORD_NAME

    payload = os.urandom(2048)
    sizes: dict[str, list[int]] = {s: [] for s in SETTINGS}
    seconds: dict[str, float] = dict.fromkeys(SETTINGS, 0.0)
    with tempfile.TemporaryDirectory(prefix="m2u-written-record-") as tmp:
        folders = {s: Path(tmp) / s.replace(" ", "_") for s in SETTINGS}
        for rerun in range(reruns):
            # Each rerun starts with the next setting: a machine slowing down within a rerun weighs on each alike.
            first = rerun % len(SETTINGS)
            for setting in SETTINGS[first:] + SETTINGS[:first]:
                seconds[setting] += one_rerun(folders[setting], files, payload, setting)
                sizes[setting].append((folders[setting] / RECORD_NAME).stat().st_size)
    writes = files * reruns
    per_write = {s: 1e6 * seconds[s] / writes for s in SETTINGS}
    report = {
        "files": files,
        "reruns": reruns,
        "quick": args.quick,
        "record_bytes_after_each_rerun": sizes,
        "microseconds_per_write": {s: round(v, 1) for s, v in per_write.items()},
        "time_per_write_vs_off": {s: round(per_write[s] / per_write["off"], 3) for s in SETTINGS},
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    for setting in SETTINGS:
        kib = ", ".join(f"{b / 1024:.0f}" for b in sizes[setting])
        print(
            f"{setting:>12}: record KiB after each rerun {kib}; {per_write[setting]:.0f} us per write "
            f"({report['time_per_write_vs_off'][setting]:.2f} x off)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

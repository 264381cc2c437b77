"""m2u-mask: mask every face in files or folders; masked image, binary mask and metadata per input, report.csv."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import cv2
import numpy as np

from m2u.masking.appearance import PATTERNS
from m2u.masking.detect import DETECTOR_MODELS, DetectorConfig, FaceDetector
from m2u.masking.geometry import MaskingError
from m2u.masking.imageio import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    describe_ignored_files,
    is_image_entry,
    read_image,
)
from m2u.masking.parallel import worker_pool
from m2u.masking.render import MaskConfig, apply_mask, inputs_per_config, parse_mask_code, warm_templates
from m2u.masking.templates import ALL_TYPES, MASK_TYPES

# status: ok, no_face, refused (faces found, but the mask could not be placed correctly on any: fold-over,
# mask off the mouth...), error (unreadable input or a failure of ours). mask_type: the type asked for.
REPORT_FIELDS = ("path", "status", "faces", "reason", "mask_type")
STATUSES = ("ok", "no_face", "refused", "error")
JPEG_QUALITY = 95


def discover(inputs: tuple[str, ...]) -> list[tuple[Path, Path]]:
    """(file, output stem relative to OUT) for every image file in the inputs, folders searched recursively.
    Files in sub-folders keep their sub-folder in OUT, so equal names in different folders do not collide."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if is_image_entry(p)):
                found.append((file, file.relative_to(path).with_suffix("")))
        else:
            # Explicit files are taken whatever their suffix: a bad one gets its own row in the report.
            found.append((path, Path(path.stem)))
    used: set[Path] = set()
    unique = []
    for file, stem in found:
        candidate, n = stem, 2
        while candidate in used:
            candidate, n = stem.with_name(f"{stem.name}-{n}"), n + 1
        used.add(candidate)
        unique.append((file, candidate))
    return unique


def write_atomic(path: Path, data: bytes) -> None:
    """Write under a hidden temporary name, then rename: a killed run never leaves a truncated output under its
    real name (an interrupted file simply does not exist yet)."""
    temp = path.with_name(f".{path.name}.tmp")
    try:
        temp.write_bytes(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def face_seed(seed: int, stem: Path, index: int) -> int:
    """A per-face seed from the run seed and the file's output name: independent of worker scheduling."""
    digest = hashlib.sha256(f"{seed}:{stem.as_posix()}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class Job:
    out_dir: Path
    mask_config: MaskConfig
    detector_config: DetectorConfig
    seed: int
    max_pixels: int


_DETECTOR: FaceDetector | None = None


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads would oversubscribe


def process_file(job: Job, file: Path, stem: Path) -> dict[str, str | int]:
    """Mask one file and write its outputs; returns its report row (never raises for bad input)."""
    global _DETECTOR
    # "read" is not a report column: it tells the exit code whether anything at all could be read.
    row: dict[str, str | int] = {"path": str(file), "status": "error", "faces": 0, "reason": "", "read": 0}
    try:
        image = read_image(file, max_pixels=job.max_pixels)
    except ImageReadError as exc:
        row["reason"] = exc.reason
        return row
    row["read"] = 1
    if _DETECTOR is None or _DETECTOR.config != job.detector_config:
        _DETECTOR = FaceDetector(job.detector_config)
    faces = _DETECTOR.detect(image)
    if not faces:
        row.update(status="no_face", reason="no face found")
        return row
    masked, union = image, np.zeros(image.shape[:2], np.uint8)
    metas, failures = [], []
    for index, face in enumerate(faces):
        try:
            result = apply_mask(masked, face, job.mask_config, face_seed(job.seed, stem, index))
        except MaskingError as exc:
            failures.append(f"face {index}: {exc.reason}")
            continue
        masked = result.image
        np.maximum(union, result.mask, out=union)
        metas.append({"face": index, "box": list(face.box), "score": face.score, **_detection(face)})
        metas[-1].update(result.meta)
    row["faces"] = len(metas)
    low = [
        f"face {m['face']} found by the low-threshold retry (score {m['score']:.3f})"
        for m in metas
        if m["retry"]
    ]
    row["reason"] = "; ".join(failures + low)
    if not metas:
        row["status"] = "refused"  # faces were found; every mask was refused by the placement checks
        return row
    base = job.out_dir / stem.parent / f"{stem.name}_{job.mask_config.mask_type}"
    base.parent.mkdir(parents=True, exist_ok=True)
    ok, jpeg = cv2.imencode(
        ".jpg", cv2.cvtColor(masked, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    ok_mask, png = cv2.imencode(".png", union)
    if not (ok and ok_mask):
        row.update(status="error", reason="could not encode the outputs")
        return row
    write_atomic(Path(f"{base}.jpg"), jpeg.tobytes())
    write_atomic(Path(f"{base}_mask.png"), png.tobytes())
    info = {
        "input": str(file),
        "width": image.shape[1],
        "height": image.shape[0],
        "faces": metas,
        "failed": failures,
    }
    # One line: json's C encoder (indent makes it fall back to pure Python, ~10x slower on the landmark lists).
    write_atomic(Path(f"{base}.json"), json.dumps(info, sort_keys=True).encode() + b"\n")
    row["status"] = "ok"
    return row


def _detection(face) -> dict[str, object]:
    """How a face was found: whether only the low-threshold retry pass found it (false positives come from there:
    filter them with --min-score)."""
    return {"detector": face.detector, "retry": bool(face.retry)}


def _run_one(args: tuple[Job, Path, Path]) -> dict[str, str | int]:
    job, file, stem = args
    try:
        return process_file(job, file, stem)
    except Exception as exc:  # a bug or an exotic failure must not stop the other files
        reason = f"unexpected {type(exc).__name__}: {exc}"
        return {"path": str(file), "status": "error", "faces": 0, "reason": reason, "read": 0}


def run(
    files: list[tuple[Path, Path]], job: Job, workers: int, progress: bool = True
) -> list[dict[str, str | int]]:
    """Process every file (in order of the list) with `workers` processes; returns the report rows."""
    global _DETECTOR
    tasks = [(job, file, stem) for file, stem in files]
    # Models and templates are loaded once here; forked workers inherit them instead of each loading its own.
    _DETECTOR = FaceDetector(job.detector_config).load_models()
    warm_templates(job.mask_config)
    if workers <= 1:
        _init_worker()
        return _collect(map(_run_one, tasks), len(tasks), progress)
    with worker_pool(workers, _init_worker) as pool:
        return _collect(pool.imap(_run_one, tasks, chunksize=4), len(tasks), progress)


def _collect(rows: Iterator[dict], total: int, progress: bool) -> list[dict[str, str | int]]:
    """The rows as a list, with a progress bar when asked for (tqdm is imported only then: a quiet run does not
    pay for it)."""
    if not progress:
        return list(rows)
    from tqdm import tqdm

    return list(tqdm(rows, total=total, unit="img", file=sys.stderr))


def write_report(rows: list[dict[str, str | int]], path: Path) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=REPORT_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue().encode())


def _contact_sheet(
    files: list[tuple[Path, Path]], detector: DetectorConfig, target: Path, seed: int, pack: str | None
) -> None:
    from m2u.masking.sheet import render_contact_sheet

    for file, _ in files:
        try:
            image = read_image(file)
        except ImageReadError:
            continue
        faces = FaceDetector(detector).detect(image)
        if faces:
            sheet = render_contact_sheet(image, faces[0], seed=seed, pack=pack)
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
            click.echo(f"contact sheet of {file} written to {target}", err=True)
            return
    raise click.ClickException("no input image with a face for the contact sheet")


_MASK = MaskConfig()
_DETECT = DetectorConfig()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder.",
)
@click.option(
    "--mask-type",
    default=_MASK.mask_type,
    show_default=True,
    help=f"One of {', '.join(MASK_TYPES)} (any case: N95, KN95), random, {ALL_TYPES} (every type, one output "
    "each), or a template of --pack.",
)
@click.option(
    "--color",
    default=_MASK.color,
    help="Colour name or #rrggbb (or random); default: the template's own colours.",
)
@click.option("--color-weight", default=_MASK.color_weight, show_default=True, type=click.FloatRange(0, 1))
@click.option(
    "--pattern", default=_MASK.pattern, help=f"One of {', '.join(PATTERNS)}, an image file, or random."
)
@click.option(
    "--pattern-weight", default=_MASK.pattern_weight, show_default=True, type=click.FloatRange(0, 1)
)
@click.option(
    "--pack",
    default=_MASK.pack,
    type=click.Path(exists=True),
    help="A MaskTheFace-style masks.cfg, its folder, or a MaskTheFace checkout (its masks/masks.cfg).",
)
@click.option(
    "--code",
    default=None,
    help="MaskTheFace's --code: comma-separated type[-#rrggbb|-colour|-pattern or texture] entries, cycled "
    "over the inputs (input i gets entry i mod N); replaces --mask-type, and an entry's colour or pattern "
    "replaces --color or --pattern.",
)
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Same seed and inputs: byte-identical outputs."
)
@click.option(
    "--workers", default=1, show_default=True, type=click.IntRange(0), help="Processes; 0 = all cores."
)
@click.option("--detector", default=_DETECT.model, show_default=True, type=click.Choice(DETECTOR_MODELS))
@click.option(
    "--upsample",
    default=_DETECT.upsample,
    show_default=True,
    type=click.IntRange(0, 4),
    help="First detection pass upsampling.",
)
@click.option(
    "--cnn-fallback/--no-cnn-fallback",
    default=_DETECT.cnn_fallback,
    show_default=True,
    help="Try the CNN when HOG finds nothing.",
)
@click.option(
    "--min-score",
    default=_DETECT.min_score,
    type=float,
    help="Ignore detections scoring below this (HOG scores; the low-threshold retry accepts down to "
    f"{_DETECT.retry_threshold}). Each face's score is in its JSON; retry finds are noted in report.csv.",
)
@click.option(
    "--max-pixels",
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    type=click.IntRange(1),
    help="Refuse larger images.",
)
@click.option(
    "--contact-sheet",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Only render a PNG of all mask types and presets on the first face found.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(
    inputs,
    out_dir,
    mask_type,
    color,
    color_weight,
    pattern,
    pattern_weight,
    pack,
    code,
    seed,
    workers,
    detector,
    upsample,
    cnn_fallback,
    min_score,
    max_pixels,
    contact_sheet,
    quiet,
) -> None:
    """Put masks on every face in INPUTS (image files or folders, searched recursively).

    For x/name.jpg with a face: OUT/name_<type>.jpg (masked), OUT/name_<type>_mask.png (0/255, same size as the
    input) and OUT/name_<type>.json; OUT/report.csv has one row per input and mask type (status ok / no_face /
    refused / error)."""
    try:
        mask_config = MaskConfig(
            mask_type=mask_type,
            color=color,
            color_weight=color_weight,
            pattern=pattern,
            pattern_weight=pattern_weight,
            pack=pack,
        )
        detector_config = DetectorConfig(
            model=detector,
            upsample=upsample,
            max_upsample=max(upsample, 1),
            cnn_fallback=cnn_fallback,
            min_score=min_score,
        )
        configs = parse_mask_code(code, mask_config) if code is not None else mask_config.expand()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    files = discover(inputs)
    ignored = describe_ignored_files(inputs)
    if ignored:
        click.echo(ignored, err=True)
    if not files:
        raise click.UsageError("no image files found in the inputs")
    if contact_sheet is not None:
        _contact_sheet(files, detector_config, contact_sheet, seed, pack)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    # "all": every input with every type; --code: the entries cycled over the inputs.
    groups = (
        inputs_per_config(configs, len(files))
        if code is not None
        else [(c, range(len(files))) for c in configs]
    )
    start = time.perf_counter()
    rows = []
    for config, indices in groups:
        job = Job(out_dir, config, detector_config, seed, max_pixels)
        done = run([files[i] for i in indices], job, workers, progress=not quiet)
        rows += [{**row, "mask_type": config.mask_type} for row in done]
    elapsed = time.perf_counter() - start
    write_report(rows, out_dir / "report.csv")
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    faces = sum(int(r["faces"]) for r in rows)
    click.echo(
        f"{len(rows)} inputs: {counts['ok']} masked ({faces} faces), {counts['no_face']} without a face, "
        f"{counts['refused']} refused, {counts['error']} errors; {len(rows) / max(elapsed, 1e-9):.1f} images/s "
        f"with {workers} worker(s). Report: {out_dir / 'report.csv'}",
        err=True,
    )
    if not any(r["read"] for r in rows):
        click.echo("nothing could be read", err=True)
        sys.exit(1)

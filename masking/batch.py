"""Masking many files: the engine behind m2u-mask, as a library function (`mask_files`).

For x/name.jpg with a face: OUT/name_<type>.jpg (masked), OUT/name_<type>_mask.png (0/255, same size as the input)
and OUT/name_<type>.json; OUT/report.csv has one row per input and mask type (status ok / no_face / refused /
error, with the reason).
Files in sub-folders keep their sub-folder in OUT, so equal names in different folders do not collide.

Safety: inputs come from `m2u.core.inputs.discover` with OUT excluded (a rerun never reads its own outputs
back); an OUT that is an input folder, or whose outputs would replace an input, is refused before anything is
written; OUT is locked while a run writes it, so two runs cannot interleave their files and report.csv. Every
output is written under a temporary name and renamed. Entries that are not regular files (FIFOs, devices,
broken links) are error rows and are never opened.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from m2u.core.checks import check_types
from m2u.core.errors import SettingError
from m2u.core.fileio import (
    REPORT_TEXT_ERRORS,
    OutputRefusedError,
    fit_stem,
    folder_clock,
    remove_temp_files,
    remove_written,
    replace_problem,
    written_files_not_in,
)
from m2u.core.fileio import atomic_write_bytes as write_atomic
from m2u.core.guard import describe_os_error, stop_of, stops_the_run
from m2u.core.imageio import DEFAULT_MAX_PIXELS, ImageReadError, ImageTooLargeError, read_photo
from m2u.core.inputs import (
    Discovery,
    InputEntry,
    OutputFolderError,
    check_output_folder,
    claim_output_names,
    earlier_names,
    find_inputs,
    names_ledger,
    no_images_error,
    output_lock,
    read_names_ledger,
    remember_output_names,
    report_clash,
)
from m2u.core.outcome import EARLIER_OUTPUT_KEPT, Outcome, Status
from m2u.core.parallel import report, worker_pool
from m2u.core.runtime import runtime_field
from m2u.masking.detect import DetectorConfig, FaceDetector, no_face_reason, retry_note
from m2u.masking.geometry import MaskingError
from m2u.masking.render import MaskConfig, apply_mask, inputs_per_config, parse_mask_code, warm_templates

REPORT_NAME = "report.csv"
# status: ok, no_face, refused (faces found, but the mask could not be placed correctly on any: fold-over,
# mask off the mouth...), error (unreadable input or a failure of ours). mask_type: the type asked for.
# `output`: the masked photo written (its _mask.png and .json beside it), "" where none was
REPORT_FIELDS = ("path", "status", "faces", "reason", "mask_type", "output")
# The outputs are a JPEG and a mask: a transparent photo's masked copy shows its transparent areas white.
TRANSPARENCY_LOST = "transparency: written as a JPEG, its transparent areas white"
# Every status but NOT_MASKED, which only m2u-unmask gives (faces found, none wears a mask).
STATUSES = tuple(s for s in Status if s is not Status.NOT_MASKED)
JPEG_QUALITY = 95
# What an image over --max-pixels is told (its row's reason, the contact sheet's line).
MAX_PIXELS_HINT = "--max-pixels raises the limit"
LOCK_TOOL = "m2u-mask"


@dataclass(frozen=True)
class BatchConfig:
    """What m2u-mask does to every input; `workers` 0 (or 1) means in this process, no worker processes."""

    mask: MaskConfig = field(default_factory=MaskConfig)
    # MaskTheFace's --code: type[-colour|-pattern] entries cycled over the inputs (input i gets entry i mod N);
    # None: every input gets `mask` (each type of it for "all").
    mask_code: str | None = None
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    seed: int = 0  # same seed and inputs: byte-identical outputs
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are refused (an error row)
    workers: int = runtime_field(default=1)
    progress: bool = runtime_field(default=True)
    limit: int | None = None  # only the first N inputs found (--limit)

    def __post_init__(self) -> None:
        # A seed of 7.0 gave other bytes than 7, a limit of 2.5 or a mask given as a dict failed deep inside.
        check_types(self)
        if self.limit is not None and self.limit < 1:
            raise SettingError("limit", f"must be >= 1, got {self.limit}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise SettingError(
                "workers", f"must be an integer >= 0 (0 = in this process), got {self.workers!r}"
            )
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise SettingError("max_pixels", f"must be an integer >= 1, got {self.max_pixels!r}")

    def resolved_workers(self) -> int:
        return max(self.workers, 1)

    def mask_configs(self) -> tuple[MaskConfig, ...]:
        """The single-type configurations of the run (ValueError naming a bad --code entry)."""
        return (
            parse_mask_code(self.mask_code, self.mask) if self.mask_code is not None else self.mask.expand()
        )

    def groups(self, n_inputs: int) -> list[tuple[MaskConfig, list[int]]]:
        """(configuration, input indices): --code cycles its entries over the inputs; otherwise every input gets
        every configuration ("all": each type)."""
        configs = self.mask_configs()
        if self.mask_code is not None:
            return inputs_per_config(configs, n_inputs)
        return [(c, list(range(n_inputs))) for c in configs]


@dataclass
class BatchResult:
    out_dir: Path
    rows: list[dict[str, str | int]]
    workers: int
    seconds: float
    skipped: str  # what the folder scans passed over, as a sentence ("" when nothing)
    # Outputs an earlier run wrote into this folder for inputs this run had not (an input removed, or renamed by
    # its position among equal names): kept, as finished work, but not in report.csv.
    earlier: tuple[Path, ...] = ()
    # The masked photos of an earlier run kept for inputs this run was given and gave no output (each row's reason
    # names its own); `earlier` names their metadata files too.
    kept: tuple[Path, ...] = ()

    @property
    def report(self) -> Path:
        return self.out_dir / REPORT_NAME

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)

    @property
    def faces(self) -> int:
        return sum(int(r["faces"]) for r in self.rows)

    @property
    def anything_read(self) -> bool:
        return any(r["read"] for r in self.rows)


def output_stems(entries: list[InputEntry], out: Path | None = None) -> list[tuple[InputEntry, Path]]:
    """(entry, output stem relative to OUT) per entry: the sub-folder below its input folder is kept, and equal
    stems (also in all but letter case: m2u.core.fileio.claim_name) get -2, -3... in input order. An input an
    earlier run's report.csv in `out` named keeps its stem, in any order (m2u.core.inputs.claim_output_names)."""
    wanted = []
    for entry in entries:
        stem = Path(entry.relative).with_suffix("")
        stem = stem.with_name(fit_stem(stem.name))  # a long input name still gives names the disk takes
        wanted.append((stem.as_posix(), ""))
    earlier = [] if out is None else _earlier_stems(out)
    return [(e, Path(n)) for e, n in zip(entries, claim_output_names(entries, wanted, earlier), strict=True)]


def _earlier_stems(out: Path) -> list[tuple[str, str]]:
    """(input, output stem) of the earlier m2u-mask runs into `out`: the rows of the last run's report.csv (its
    outputs are <stem>_<mask type>.jpg ...), then the names ledger of every run (m2u.core.inputs.
    remember_output_names). Only a regular file m2u wrote is read: check_output_folder refuses others later."""
    return _row_stems(out, _report_rows(out)) + read_names_ledger(out, LOCK_TOOL)


def _report_rows(out: Path) -> list[dict[str, str]]:
    """The rows of the report.csv an earlier run left in `out` ([] when none); only a regular file m2u wrote."""
    report = out / REPORT_NAME
    rows: list[dict[str, str]] = []
    if report.exists() and not replace_problem(report):
        with (
            contextlib.suppress(OSError, csv.Error),
            open(report, newline="", encoding="utf-8", errors="replace") as handle,
        ):
            rows = list(csv.DictReader(handle))
    return rows


def _earlier_rows_kept(
    earlier: list[dict[str, str]], planned: list[tuple[str, str]], reported: set[tuple[str, str]], began: int
) -> list[dict[str, str | int]]:
    """A run stopped midway: the earlier run's rows (`earlier`, its report.csv) of the (input, mask type) pairs
    this run planned (`planned`) and did not report, in `planned`'s order, whose outputs are still that run's
    (none written since this run `began`): its report keeps them, as the folder keeps their outputs."""
    by_pair = {(row.get("path", ""), row.get("mask_type", "")): row for row in earlier}
    kept: list[dict[str, str | int]] = []
    for pair in planned:
        row = by_pair.get(pair)
        if row is None or pair in reported:
            continue
        output = Path(row.get("output") or "")
        if row.get("output"):
            try:
                if output.stat().st_mtime_ns >= began:  # rewritten by this run: no longer the earlier one's
                    continue
            except OSError:
                continue
        kept.append(dict(row))
    return kept


def _row_stems(out: Path, rows: list[dict[str, str]] | list[dict[str, str | int]]) -> list[tuple[str, str]]:
    """(input, output stem inside `out`) of report rows with an output."""
    stems = []
    for row in rows:
        output, ending = str(row.get("output") or ""), f"_{row.get('mask_type')}.jpg"
        if output.endswith(ending):  # OUT/<stem>_<mask type>.jpg: the stem's path
            stems.append((str(row.get("path") or ""), output[: -len(ending)]))
    return earlier_names(out, stems)


def output_base(out_dir: Path, stem: Path, mask_type: str) -> Path:
    return out_dir / stem.parent / f"{stem.name}_{mask_type}"


def output_paths(out_dir: Path, stem: Path, mask_type: str) -> list[Path]:
    """The three files an input with a face gets."""
    base = output_base(out_dir, stem, mask_type)
    return [Path(f"{base}.jpg"), Path(f"{base}_mask.png"), Path(f"{base}.json")]


def face_seed(seed: int, stem: Path, index: int) -> int:
    """A per-face seed from the run seed and the file's output name: independent of worker scheduling."""
    digest = hashlib.sha256(f"{seed}:{stem.as_posix()}:{index}".encode("utf-8", "surrogateescape")).digest()
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


def process_file(job: Job, file: Path, stem: Path, problem: str = "") -> dict[str, str | int]:
    """Mask one file and write its outputs; returns its report row (never raises for bad input). A `problem`
    found at discovery (a FIFO, a device, a broken link) is the row's reason and the file is never opened."""
    return process_files(job, (job.mask_config,), [(file, stem, problem)])[0][0]


# A group of photos (process_files): at most GROUP_FILES photos (a task's files) and, beyond its first photo,
# GROUP_PIXELS decoded pixels (~24 MB of RGB). FaceDetector.detect_many's phases pay off more the longer each
# runs: groups of 64 took ~3 % less CPU than groups of 16 on 200 CelebA photos (2026-12-04).
GROUP_FILES = 64
FILE_DONE = "file done"  # the message a task sends as each file's rows are final: (FILE_DONE, stem, rows)
GROUP_PIXELS = 8_000_000


def process_files(
    job: Job, masks: tuple[MaskConfig, ...], items: list[tuple[Path, Path, str]]
) -> list[list[dict[str, str | int]]]:
    """`process_file` for several files (file, stem, problem) and several mask configurations (`--mask-type
    all`): each file is read and its faces found once, then each configuration masks them from the same image;
    per file, one report row per configuration. The files are taken in groups (GROUP_FILES, GROUP_PIXELS): the
    group's photos are read, then their faces found together (FaceDetector.detect_many: each model's work in one
    run), then masked and written. A failure of ours is an error row for its file alone. Each file's rows are
    also sent (m2u.core.parallel.report) as it is finished: the progress bar's step, and what a run stopped midway
    has finished."""
    global _DETECTOR
    if _DETECTOR is None or _DETECTOR.config != job.detector_config:
        _DETECTOR = FaceDetector(job.detector_config)
    rows: list[list[dict[str, str | int]]] = []
    group: list[tuple[int, dict[str, str | int], np.ndarray]] = []
    pixels = 0
    for file, stem, problem in items:
        read = _guarded(file, masks, _read, job, masks, file, problem)
        if isinstance(read, list):
            rows.append(read)
            report((FILE_DONE, str(stem), read))
            continue
        rows.append([])  # filled in when the group is masked
        group.append((len(rows) - 1, *read))
        pixels += read[1].shape[0] * read[1].shape[1]
        if pixels >= GROUP_PIXELS or len(group) >= GROUP_FILES:
            _mask_group(job, masks, items, group, rows)
            group, pixels = [], 0
    _mask_group(job, masks, items, group, rows)
    return rows


def _read(
    job: Job, masks: tuple[MaskConfig, ...], file: Path, problem: str
) -> tuple[dict[str, str | int], np.ndarray] | list[dict[str, str | int]]:
    """(row so far, image) of a readable file, else its finished rows (one per mask configuration)."""
    # "read" is not a report column: it tells the exit code whether anything at all could be read.
    row: dict[str, str | int] = {
        "path": str(file),
        "status": "error",
        "faces": 0,
        "reason": problem,
        "read": 0,
    }
    if not problem:
        try:
            photo = read_photo(file, max_pixels=job.max_pixels)
        except ImageTooLargeError as exc:
            row["reason"] = f"{exc.reason} ({MAX_PIXELS_HINT})"
        except ImageReadError as exc:
            row["reason"] = exc.reason
        else:
            row["read"] = 1
            # Not a report column either: what the outputs cannot keep of the photo, said in the rows that write
            # them (m2u-unmask's rows say the same of its copies).
            row["losses"] = "; ".join(
                (*photo.losses, *([TRANSPARENCY_LOST] if photo.alpha is not None else []))
            )
            return row, photo.rgb
    return [dict(row) for _ in masks]


def _mask_group(
    job: Job,
    masks: tuple[MaskConfig, ...],
    items: list[tuple[Path, Path, str]],
    group: list[tuple[int, dict[str, str | int], np.ndarray]],
    rows: list[list[dict[str, str | int]]],
) -> None:
    """Find the faces of the group's photos together, then mask and write each; fills in their `rows`."""
    if not group:
        return
    assert _DETECTOR is not None
    try:
        found = _DETECTOR.detect_many([image for _, _, image in group])
    except Exception as exc:
        if stops_the_run(exc):
            raise
        found = None  # one photo's failure: each is found on its own below, so the failure stays with it
    for k, (index, row, image) in enumerate(group):
        file, stem, _ = items[index]
        faces = found[k] if found is not None else None
        rows[index] = _guarded(file, masks, _mask_faces, job, masks, image, faces, file, stem, row)
        report((FILE_DONE, str(stem), rows[index]))


def _mask_faces(
    job: Job,
    masks: tuple[MaskConfig, ...],
    image: np.ndarray,
    faces: list | None,
    file: Path,
    stem: Path,
    row: dict[str, str | int],
) -> list[dict[str, str | int]]:
    """The rows of one read photo: its `faces` (found here when None) masked with each configuration."""
    if faces is None:
        assert _DETECTOR is not None
        faces = _DETECTOR.detect(image)
    if not faces:
        row.update(Outcome(Status.NO_FACE, no_face_reason(job.detector_config)).fields())
        return [dict(row) for _ in masks]
    return [_mask_and_write(job, mask, image, faces, file, stem, dict(row)) for mask in masks]


def _guarded(file: Path, masks: tuple[MaskConfig, ...], work, *args):
    """`work(*args)`, or error rows naming the exception (a failure of ours on one file does not stop the run,
    unless every later file would fail the same way: a full disk, a read-only folder)."""
    try:
        return work(*args)
    except Exception as exc:
        if stops_the_run(exc):
            raise
        outcome = Outcome(Status.ERROR, f"unexpected {type(exc).__name__}: {exc}")
        return [{"path": str(file), **outcome.fields(), "faces": 0, "read": 0} for _ in masks]


def _mask_and_write(
    job: Job, mask_config: MaskConfig, image: np.ndarray, faces: list, file: Path, stem: Path, row: dict
) -> dict[str, str | int]:
    """Mask every face of `image` with one configuration and write its three outputs; fills in `row`."""
    masked, union = image, np.zeros(image.shape[:2], np.uint8)
    metas, failures = [], []
    for index, face in enumerate(faces):
        try:
            result = apply_mask(masked, face, mask_config, face_seed(job.seed, stem, index))
        except MaskingError as exc:
            failures.append(f"face {index}: {exc.reason}")
            continue
        masked = result.image
        np.maximum(union, result.mask, out=union)
        metas.append({"face": index, "box": list(face.box), "score": face.score, **_detection(face)})
        metas[-1].update(result.meta)
    row["faces"] = len(metas)
    low = [f"face {m['face']} {retry_note(m['score'])}" for m in metas if m["retry"]]
    row["reason"] = "; ".join([*([str(row["losses"])] if row.get("losses") else []), *failures, *low])
    if not metas:
        row["status"] = (
            Status.REFUSED.value
        )  # faces were found; every mask was refused by the placement checks
        return row
    jpg, png, meta = output_paths(job.out_dir, stem, mask_config.mask_type)
    jpg.parent.mkdir(parents=True, exist_ok=True)
    ok, jpeg = cv2.imencode(
        ".jpg", cv2.cvtColor(masked, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    ok_mask, png_bytes = cv2.imencode(".png", union)
    if not (ok and ok_mask):
        row.update(status="error", reason="could not encode the outputs")
        return row
    write_atomic(jpg, jpeg.tobytes())
    write_atomic(png, png_bytes.tobytes())
    info = {
        "input": str(file),
        "width": image.shape[1],
        "height": image.shape[0],
        "faces": metas,
        "failed": failures,
    }
    # One line: json's C encoder (indent makes it fall back to pure Python, ~10x slower on the landmark lists).
    write_atomic(meta, json.dumps(info, sort_keys=True).encode() + b"\n")
    row["status"], row["output"] = "ok", str(jpg)
    return row


def _detection(face) -> dict[str, object]:
    """How a face was found: whether only the low-threshold retry pass found it (false positives come from there:
    filter them with --min-score)."""
    return {"detector": face.detector, "retry": bool(face.retry)}


def _run_group(
    args: tuple[Job, tuple[MaskConfig, ...], list[tuple[Path, Path, str]]],
) -> list[list[dict]]:
    return process_files(*args)


def run(
    files: list[tuple[InputEntry, Path]],
    job: Job,
    workers: int,
    progress: bool = True,
    masks: tuple[MaskConfig, ...] | None = None,
    finished: dict[str, list[dict[str, str | int]]] | None = None,
) -> list[dict[str, str | int]]:
    """Process every entry (in order of the list) with `workers` processes; returns the report rows. With `masks`
    (several configurations for every file) each file is read and detected once, and the rows come back grouped by
    configuration, in the order of `masks`. `finished` gets each file's rows (one per mask) by its output name as
    the file is done, in whatever order: what a run stopped midway has finished."""
    global _DETECTOR
    masks = masks or (job.mask_config,)
    items = [(entry.path, stem, entry.problem) for entry, stem in files]
    size = group_size(len(items), workers)
    tasks = [(job, masks, items[i : i + size]) for i in range(0, len(items), size)]
    # Models and templates are loaded once here; forked workers inherit them instead of each loading its own.
    _DETECTOR = FaceDetector(job.detector_config).load_models()
    for mask in masks:
        warm_templates(mask)
    with worker_pool(workers, _init_worker) as pool:  # 0 or 1: in this process
        per_file = _collect(pool, tasks, len(items), progress, {} if finished is None else finished)
    return [rows[k] for k in range(len(masks)) for rows in per_file]


def group_size(files: int, workers: int) -> int:
    """Files per task: up to GROUP_FILES, fewer when several workers share too few files for four tasks each."""
    if workers <= 1:
        return GROUP_FILES
    return max(1, min(GROUP_FILES, files // (4 * workers)))


def _collect(pool, tasks: list, total: int, progress: bool, finished: dict) -> list:
    """The per-file results of every task, in order; `finished` gets each file's rows as the file is done, and a
    progress bar steps with it (tqdm is imported only then: a quiet run does not pay for it)."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", file=sys.stderr)

    def file_done(message: Any) -> None:
        if isinstance(message, tuple) and message and message[0] == FILE_DONE:
            finished[message[1]] = message[2]
            if bar is not None:
                bar.update(1)

    try:
        return [result for group in pool.imap(_run_group, tasks, on_message=file_done) for result in group]
    finally:
        if bar is not None:
            bar.close()


def _remove_unreported_outputs(
    out: Path, masks: tuple[MaskConfig, ...], stems: list[Path], reported: set[str], began: int
) -> None:
    """A run stopped midway: the outputs this run wrote for a file whose rows never reached it (a worker stopped
    between its last write and its message) go, so the folder holds what report.csv says; an earlier run's
    outputs of the files this run did not reach stay."""
    for stem in stems:
        if str(stem) in reported:
            continue
        for mask in masks:
            for path in output_paths(out, stem, mask.mask_type):
                with contextlib.suppress(OSError, OutputRefusedError):
                    if path.stat().st_mtime_ns >= began:
                        remove_written(out, [path.relative_to(out).as_posix()])


def _say_earlier_outputs_kept(out: Path, rows: list[dict[str, str | int]], stems: list[Path]) -> list[Path]:
    """An input that gets no output this run (no face, every mask refused, an error, a higher --min-score) keeps the
    outputs an earlier run into `out` wrote for it: finished work is never deleted (as m2u-unmask keeps an earlier
    restoration). Its row's reason names the masked photo kept, so report.csv says what the folder holds; the masked
    photos so kept are returned."""
    kept = []
    for row, stem in zip(rows, stems, strict=True):
        if row["status"] == "ok":
            continue
        photo = output_paths(out, stem, str(row["mask_type"]))[0]
        if photo.exists():
            reason = f"{photo} {EARLIER_OUTPUT_KEPT}"
            row["reason"] = f"{row['reason']}; {reason}" if row["reason"] else reason
            kept.append(photo)
    return kept


def write_report(rows: list[dict[str, str | int]], path: Path) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=REPORT_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue().encode("utf-8", REPORT_TEXT_ERRORS))
    remember_output_names(path.parent, LOCK_TOOL, _row_stems(path.parent, rows))


def mask_files(
    inputs: str | os.PathLike[str] | list[str] | tuple[str, ...] | Discovery,
    out_dir: str | os.PathLike[str],
    config: BatchConfig = BatchConfig(),
) -> BatchResult:
    """Mask every face of every input into `out_dir` and write `out_dir/report.csv` (see the module docstring).

    `inputs`: the arguments, or their `m2u.core.inputs.find_inputs` result (then not scanned again).
    Raises InputError (no inputs), OutputFolderError (OUT is an input folder, would replace an input, or another
    run is writing it, or it holds another command's report.csv) before any output is written."""
    out = Path(out_dir)
    found = find_inputs(inputs, out)
    files = output_stems(found.entries[: config.limit], out)
    groups = config.groups(len(files))
    targets = [
        p for mask, indices in groups for i in indices for p in output_paths(out, files[i][1], mask.mask_type)
    ]
    check_output_folder(out, found, [*targets, out / REPORT_NAME, names_ledger(out, LOCK_TOOL)])
    clash = report_clash(out, LOCK_TOOL, (REPORT_NAME,))
    if clash:
        raise OutputFolderError(clash)
    if not files:
        raise no_images_error(found)
    detector = config.detector.for_photos(len(files))
    FaceDetector(detector)  # a detector this install cannot run is refused before OUT is made
    out.mkdir(parents=True, exist_ok=True)
    workers = config.resolved_workers()
    with output_lock(out, LOCK_TOOL, reports=(REPORT_NAME,)):
        start = time.perf_counter()
        rows: list[dict[str, str | int]] = []
        stems: list[Path] = []  # each row's output name
        finished: dict[str, list[dict[str, str | int]]] = {}  # the run under way: each finished file's rows
        under_way: tuple[MaskConfig, ...] = ()  # its masks, in the order of each file's rows
        under_way_stems: list[Path] = []  # its files' output names
        began = folder_clock(out)
        earlier_rows = _report_rows(out)  # kept for the inputs a stopped run does not reach
        try:
            if config.mask_code is None and len(groups) > 1:
                # Every file gets every configuration ("all"): read and detect each file once for all of them.
                under_way = tuple(mask for mask, _ in groups)
                under_way_stems = [stem for _, stem in files]
                job = Job(out, under_way[0], detector, config.seed, config.max_pixels)
                done = run(files, job, workers, progress=config.progress, masks=under_way, finished=finished)
                rows += [
                    {**row, "mask_type": under_way[k // len(files)].mask_type} for k, row in enumerate(done)
                ]
                stems += [files[k % len(files)][1] for k in range(len(done))]
                finished, under_way = {}, ()
            else:
                for mask, indices in groups:
                    job = Job(out, mask, detector, config.seed, config.max_pixels)
                    finished, under_way, under_way_stems = {}, (mask,), [files[i][1] for i in indices]
                    done = run(
                        [files[i] for i in indices], job, workers, progress=config.progress, finished=finished
                    )
                    rows += [{**row, "mask_type": mask.mask_type} for row in done]
                    stems += [files[i][1] for i in indices]
                    finished, under_way = {}, ()
        except BaseException as error:
            # Stopped (SIGTERM, Ctrl-C, a full disk): the workers are gone; what they were writing is removed.
            remove_temp_files(out, recursive=True, hidden_only=True)
            stop = stop_of(error)
            if stop is None:
                raise
            # The report lists what this run finished, as a finished run's does, so an earlier run's report.csv no
            # longer describes this run's files; the outputs of the inputs it did not reach stay as they were, and
            # so do the earlier report's rows of them.
            reached = [stem for stem in under_way_stems if str(stem) in finished]
            rows += [
                {**finished[str(stem)][k], "mask_type": mask.mask_type}
                for k, mask in enumerate(under_way)
                for stem in reached
            ]
            stems += [stem for _ in under_way for stem in reached]
            try:
                _remove_unreported_outputs(out, under_way, under_way_stems, set(finished), began)
                _say_earlier_outputs_kept(out, rows, stems)
                planned = [
                    (str(files[i][0].path), mask.mask_type) for mask, indices in groups for i in indices
                ]
                kept = _earlier_rows_kept(
                    earlier_rows, planned, {(str(r["path"]), str(r["mask_type"])) for r in rows}, began
                )
                write_report(rows + kept, out / REPORT_NAME)
            except OSError as unwritten:  # a full disk: the stop is still what is said
                said = f"{out / REPORT_NAME} could not be written: {describe_os_error(unwritten)}"
                raise type(stop)(said) from error
            also = f", and the earlier run's rows of {len(kept)} it did not reach" if kept else ""
            raise type(stop)(
                f"{out / REPORT_NAME} lists the {len(rows)} of {len(planned)} outputs finished{also}"
            ) from error
        seconds = time.perf_counter() - start
        kept_outputs = _say_earlier_outputs_kept(out, rows, stems)
        write_report(rows, out / REPORT_NAME)
        produced = {
            output_paths(out, stem, str(row["mask_type"]))[2] for row, stem in zip(rows, stems, strict=True)
        }
        earlier = _outputs_not_in(out, produced)
    return BatchResult(out, rows, workers, seconds, found.describe_skipped(), earlier, tuple(kept_outputs))


def _outputs_not_in(out: Path, produced: set[Path]) -> tuple[Path, ...]:
    """The metadata files (`<name>_<type>.json`) of outputs m2u wrote into `out` that this run's rows do not name:
    an earlier run's, for inputs this run had not."""

    def is_output(path: Path) -> bool:
        return path.suffix == ".json" and path.with_suffix(".jpg").exists()

    return tuple(written_files_not_in(out, produced, is_output))

"""The per-photo file loop of `m2u-unmask`: inputs found and named, each photo unmasked (m2u.inference.unmask
`Unmasker`) and written, and the run's reports: `report.csv` (one `FileResult` row per input: ok, no_face,
not_masked, refused or error, with the reason) and `faces.jsonl` (one line per face found, restored or not)."""

from __future__ import annotations

import contextlib
import csv
import functools
import glob
import io
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, fields
from html import escape
from pathlib import Path, PurePosixPath
from typing import Any, get_type_hints
from urllib.parse import quote

from tqdm import tqdm

from m2u.core.fileio import (
    OutputRefusedError,
    fit_stem,
    folder_clock,
    remove_written,
    replace_problem,
    report_text,
    staged_files,
    written_files_not_in,
)
from m2u.core.guard import stops_the_run
from m2u.core.imageio import copy_losses, photo_format, read_photo, write_image, write_photo
from m2u.core.inputs import (
    Discovery,
    InputEntry,
    claim_output_names,
    earlier_names,
    names_ledger,
    read_names_ledger,
    remember_output_names,
)
from m2u.core.outcome import EARLIER_OUTPUT_KEPT, Status
from m2u.core.parallel import worker_pool
from m2u.inference.masked_rule import NOTHING_TO_RESTORE, judged_no_face, judged_not_masked
from m2u.inference.restore import IMPLAUSIBLE_MASK_SHARE
from m2u.inference.unmask import (
    WHOLE_FRAME_NOT_MASKED,
    FaceRestoration,
    UnmaskConfig,
    Unmasker,
    turned_reason,
)

__all__ = ["FileResult", "face_record", "left_faces_reason", "output_suffix", "summarize", "unmask_files"]


CROPS = "crops"  # OUT/crops/: --keep-crops' aligned crops, masks and restorations
REPORTS = ("report.csv", "faces.jsonl", "index.html")  # OUT's reports, rewritten by every run
UNMASK_TOOL = "m2u-unmask"  # its output lock's name (OUT/.m2u-unmask.lock)
# A photo's reason where faces too small for one look at the whole photo may be missed (a crowd, a wide strip) and
# tiles are off (Unmasker.faces_may_hide); the run's last line counts them.
SMALL_FACES_MAY_HIDE = "smaller faces may be missed: tiles are off"
# How often (seconds of wall time) a run rewrites its reports for the photos finished so far: a run killed outright
# (kill -9, a power loss) loses at most this much of its report, and each rewrite (the whole report, a few ms per
# thousand photos) costs next to nothing at this pace.
REPORT_INTERVAL_S = 60.0


# "same": the input's own suffix where m2u.core.imageio.write_photo writes its format (WebP lossless); other inputs
# (GIF, PPM, PGM) become PNG.
def output_suffix(path: Path, output_format: str) -> str:
    """The suffix of the restored photo of `path`: its own for "same" (lossless inputs stay lossless)."""
    if output_format == "same":
        return path.suffix if photo_format(path.suffix) else ".png"
    return "." + output_format


@dataclass
class FileResult:
    """One row of report.csv."""

    input: str
    status: str  # m2u.core.outcome.Status: ok | no_face | not_masked | refused | error (the reason says which error)
    reason: str = ""
    output: str = ""
    faces: int = 0  # restored
    # found and left as they are, whatever the reason (not masked, upside down, below --min-score): faces.jsonl
    # gives each one's; not only the faces of a `refused` row
    left_faces: int = 0
    mask_fractions: str = ""  # per face: the share of the crop M-Seg marked as mask
    width: int = 0
    height: int = 0
    seconds: float = 0.0


def _bool_cell(text: str) -> bool:
    """A bool cell as `_CELL_KINDS` writes it; any other text is not of the column's kind."""
    if text not in ("true", "false"):
        raise ValueError(f"not a true/false cell: {text!r}")
    return text == "true"


# How report.csv writes each kind of cell and reads it back, one pair per type a FileResult field may have, so that a
# cell reads back as the value written: csv's default, str(), would write a bool as "True"/"False", which a reader
# taking the type from the field's default (bool(text)) reads as true either way.
_CELL_KINDS: dict[type, tuple[Callable[[Any], str], Callable[[str], Any]]] = {
    str: (str, str),
    int: (str, int),
    float: (repr, float),  # the shortest text that reads back as the same float
    bool: (lambda value: "true" if value else "false", _bool_cell),
}


def _columns_of(row_type: type) -> dict[str, type]:
    """Each field of `row_type` in order and the type its cells hold (the field's annotation); a field of a type
    `_CELL_KINDS` has no pair for is refused."""
    hints = get_type_hints(row_type)
    columns = {field.name: hints[field.name] for field in fields(row_type)}
    for name, kind in columns.items():
        if kind not in _CELL_KINDS:
            raise TypeError(f"report.csv's column {name} holds {kind}, a type _CELL_KINDS does not write")
    return columns


# report.csv's schema, what its rows are written and read back with: taken as this module loads, so that a column of
# a type report.csv cannot write back fails at once, not in a run's report.
_REPORT_COLUMNS = _columns_of(FileResult)


def _report_columns(row_type: type = FileResult) -> dict[str, type]:
    return _REPORT_COLUMNS if row_type is FileResult else _columns_of(row_type)


def _report_cells(row: FileResult) -> dict[str, str]:
    """`row` as report.csv's cells (`_report_columns`)."""
    return {
        name: _CELL_KINDS[kind][0](getattr(row, name)) for name, kind in _report_columns(type(row)).items()
    }


def _output_names(entries: list[InputEntry], output_format: str, out: Path | None = None) -> list[str]:
    """The restored photos' paths inside OUT: each input's own path below its input folder (subfolders kept, as
    m2u-mask keeps them: a/x.jpg and b/x.jpg stay apart), with the format's suffix; a name taken already (x.jpg
    and x.png written as PNG, or x.jpg and x.JPG) gets -2, -3... in input order. An input an earlier run's
    report.csv in `out` named keeps that name, in any order (m2u.core.inputs.claim_output_names)."""
    wanted = []
    for entry in entries:
        relative = PurePosixPath(entry.relative)
        stem = (relative.parent / fit_stem(relative.stem)).as_posix()
        wanted.append((stem, output_suffix(entry.path, output_format)))
    if out is None:
        return claim_output_names(entries, wanted)
    return claim_output_names(entries, wanted, _earlier_outputs(out))


def _earlier_outputs(out: Path) -> list[tuple[str, str]]:
    """(input, output name) of the earlier m2u-unmask runs into `out`: the last run's report.csv, then the names
    ledger of every run (m2u.core.inputs.remember_output_names)."""
    report = earlier_names(out, [(row["input"], row["output"]) for row in _report_rows(out)])
    return report + read_names_ledger(out, UNMASK_TOOL)


def unmask_files(
    inputs: str | os.PathLike[str] | list[str] | tuple[str, ...] | Discovery,
    mseg_path: str | Path | None,
    generator_path: str | Path | None,
    out_dir: str | Path,
    config: UnmaskConfig | None = None,
    *,
    unmasker: Unmasker | None = None,
) -> list[FileResult]:
    """Unmask every input photo into `out_dir` (its path below its input folder; the format `config.output_format`:
    `_output_names`) and write
    `out_dir/report.csv`. `inputs`: the arguments, or their `m2u.core.inputs.find_inputs` result (then not
    scanned again: m2u-unmask prints its `describe_skipped`)."""
    from m2u.core.inputs import (
        OutputFolderError,
        check_output_folder,
        discover,
        no_images_error,
        output_lock,
        report_clash,
    )

    config = config or UnmaskConfig()
    out = Path(out_dir)
    # Checked before the models load or anything is written: OUT is not an input folder and no output replaces
    # an input (m2u.core.inputs); OUT itself is never read as input.
    found = inputs if isinstance(inputs, Discovery) else discover(inputs, exclude=[out])
    entries = found.entries[: config.limit]
    paths = [e.path for e in entries]
    # Each input's output name is fixed before any work, so the check below sees every file the run can write.
    names = _output_names(entries, config.output_format, out)
    check_output_folder(
        out,
        found,
        [
            *(out / name for name in names),
            *(out / report for report in REPORTS),
            names_ledger(out, UNMASK_TOOL),
            *_crops_there(out, names, config),
        ],
    )
    if not paths:
        raise no_images_error(found)
    clash = report_clash(out, UNMASK_TOOL, REPORTS) or _another_photos_restoration(out, zip(paths, names))
    if clash:
        raise OutputFolderError(clash)
    # The models load (and the device is checked) before OUT is made: a bad model file or --device leaves none.
    unmasker = unmasker or Unmasker.from_files(mseg_path, generator_path, config)
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out, UNMASK_TOOL, reports=REPORTS):
        return _unmask_paths(list(zip(paths, names, strict=True)), out, config, unmasker)


def _unmask_paths(
    paths: list[tuple[Path, str]], out: Path, config: UnmaskConfig, unmasker: Unmasker
) -> list[FileResult]:
    # An earlier m2u-unmask run's reports describe its photos, not this run's: removed before the first photo is
    # written, so a run killed before it writes its own leaves none that misleads. Only an m2u-unmask report (its
    # report.csv header); another command's reports of these names were refused before any work (report_clash,
    # for folders its lock records them in), and so was a person's file at a report's name (check_output_folder).
    # Its rows are read first: a report this run writes before it has finished (in progress, stopped by Ctrl-C or
    # an error) keeps the earlier row of each of its photos not reached yet, whose output is still the earlier one.
    earlier = _EarlierReport.read(out)
    began = folder_clock(out)
    if _is_unmask_report(out / REPORTS[0]):
        remove_written(out, REPORTS)
    if config.keep_crops:
        (out / CROPS).mkdir(exist_ok=True)
    results: list[FileResult] = []
    face_lines: list[dict] = []
    reported = time.monotonic()
    # The worker pool of every m2u per-file job, in this process: the models are loaded once here, and a
    # photo's work is mostly PyTorch, which uses every core by itself.
    try:
        with worker_pool(0) as pool:
            rows = pool.imap(functools.partial(_unmask_row, out=out, config=config, unmasker=unmasker), paths)
            for row, lines in tqdm(
                rows, total=len(paths), unit="file", desc="unmask", disable=not config.progress
            ):
                results.append(row)
                face_lines += lines
                if time.monotonic() - reported >= REPORT_INTERVAL_S:
                    _write_reports(
                        out,
                        results,
                        face_lines,
                        f"in progress: {len(results)} of {len(paths)}",
                        earlier.rows_for(paths[len(results) :], began),
                    )
                    reported = time.monotonic()
    except BaseException:
        # Stopped midway (Ctrl-C, SIGTERM, a full disk): the reports say what was finished, and the earlier run's
        # rows of the photos not reached (their outputs are its), so OUT never keeps an earlier run's report beside
        # this run's photos, nor loses the rows of its photos. On a full disk they may not fit either: the stop wins.
        with contextlib.suppress(OSError):
            _write_reports(
                out,
                results,
                face_lines,
                f"stopped after {len(results)} of {len(paths)}",
                earlier.rows_for(paths[len(results) :], began),
            )
        raise
    _write_reports(out, results, face_lines)
    return results


def earlier_restorations(out: str | Path, results: Iterable[FileResult]) -> list[Path]:
    """The restorations m2u wrote into `out` that this run's `results` do not name: an earlier run's, of photos this
    run had not (kept, as finished work; m2u-unmask names them). Reports and `crops/` are not outputs."""
    out = Path(out)
    produced = {Path(os.path.normpath(r.output)) for r in results if r.output}

    def is_restoration(path: Path) -> bool:
        parts = path.relative_to(out).parts
        return not (len(parts) == 1 and parts[0] in REPORTS) and parts[0] != CROPS

    return written_files_not_in(out, produced, is_restoration)


def kept_for_photos_not_restored(earlier: Iterable[Path], results: Iterable[FileResult]) -> list[Path]:
    """Of `earlier` (earlier_restorations), those at the output name of a photo this run was given and did not
    restore (a rerun with a higher --min-score): its row's reason names the restoration kept there."""
    said = [r.reason for r in results if not r.output and EARLIER_OUTPUT_KEPT in r.reason]
    return [path for path in earlier if any(f"{path} {EARLIER_OUTPUT_KEPT}" in reason for reason in said)]


def _another_photos_restoration(out: Path, planned: Iterable[tuple[Path, str]]) -> str:
    """Why this run must not write its outputs ("" when it may): one of them would replace the restoration of
    another photo, which an earlier run (its report.csv, the names ledger) names as that output's input and which is
    still there (a
    rerun of the same photo replaces its own restoration; one whose photo was moved or deleted may be replaced).
    `_output_names` hands no input a name the report gives another photo still there: this is a last guard, in
    case the two ever disagree."""
    sources: dict[
        tuple[int, int], str
    ] = {}  # earlier outputs, by file identity: the paths were given as typed
    for earlier_source, name in reversed(_earlier_outputs(out)):  # the last run's report wins
        with contextlib.suppress(OSError):
            info = os.stat(out / name)
            sources[(info.st_dev, info.st_ino)] = earlier_source
    for path, name in planned:
        try:
            info = os.stat(out / name)
        except OSError:
            continue
        source = sources.get((info.st_dev, info.st_ino))
        if source is None:
            continue
        try:
            if os.path.samefile(source, path):
                continue
        except OSError:
            continue  # its photo is gone (moved, deleted): nothing left that it restores
        return (
            f"{out / name} is the restoration of {source} (an earlier run's), which this run would "
            f"replace with {path}'s; choose another `out_dir`"
        )
    return ""


def _report_rows(out: Path) -> list[dict[str, str]]:
    """The rows of the report.csv an earlier m2u-unmask run wrote into `out`; [] when there is none. Read before
    check_output_folder refuses what m2u must not replace, so only a regular file m2u wrote is opened (a FIFO at
    the name would hang the run)."""
    report = out / REPORTS[0]
    if not report.exists() or replace_problem(report) or not _is_unmask_report(report):
        return []
    with open(report, newline="") as handle:
        return list(csv.DictReader(handle))


def _is_unmask_report(path: Path) -> bool:
    """Whether `path` is a report.csv m2u-unmask wrote (its header row: FileResult's fields)."""
    header = ",".join(_report_columns())
    try:
        with open(path, newline="") as handle:
            return handle.readline().rstrip("\r\n") == header
    except (OSError, UnicodeDecodeError):
        return False


def _unmask_row(
    item: tuple[Path, str], *, out: Path, config: UnmaskConfig, unmasker: Unmasker
) -> tuple[FileResult, list[dict]]:
    """One photo's report row and faces.jsonl lines; an unreadable photo or a failure of ours is an error row."""
    from m2u.core.imageio import ImageTooLargeError
    from m2u.masking import ImageReadError

    path, name = item
    start = time.perf_counter()
    row = FileResult(input=str(path), status="ok")
    lines: list[dict] = []
    try:
        lines = _unmask_one(path, name, out, config, unmasker, row)
    except (
        ImageTooLargeError
    ) as exc:  # no option raises m2u-unmask's limit (a guard against decompression bombs)
        row = _error_row(row, f"{exc.reason} (scale the photo down first)")
    except ImageReadError as exc:
        row = _error_row(row, exc.reason)
    except Exception as exc:
        if stops_the_run(exc):
            raise  # a full disk or read-only folder: every later file would fail the same way
        row = _error_row(row, f"{type(exc).__name__}: {exc}")
    row.seconds = round(time.perf_counter() - start, 4)
    return row, lines


def _error_row(row: FileResult, reason: str) -> FileResult:
    """The row of a photo that failed midway: nothing restored or written counts (faces found before the failure
    had been counted, and the summary said them restored)."""
    return FileResult(input=row.input, status=Status.ERROR, reason=reason, width=row.width, height=row.height)


def _unmask_one(
    path: Path, name: str, out: Path, config: UnmaskConfig, unmasker: Unmasker, row: FileResult
) -> list[dict]:
    """Unmask one photo into `out / name`, filling in its report `row`; returns its faces.jsonl lines."""
    if not path.exists() and not path.is_symlink():
        row.status, row.reason = Status.ERROR, "no such file"
        return []
    photo = read_photo(path)
    row.height, row.width = photo.rgb.shape[:2]
    result, faces, refused = unmasker.unmask_with_refusals(photo.rgb)
    row.faces, row.left_faces = len(faces), len(refused)
    if refused:
        row.reason = left_faces_reason(refused, "faces.jsonl")
    lines: list[dict] = []
    if not faces:
        row.status = _status_without_faces(refused)
        row.reason = row.reason or "no face found by the detector"
        if row.status == Status.NO_FACE and unmasker.config.whole_frame and not unmasker.config.aligned:
            row.reason += f"; {WHOLE_FRAME_NOT_MASKED}"
        if (out / name).exists():  # kept (finished work is never deleted), but not passed off as this run's
            row.reason += f"; {out / name} {EARLIER_OUTPUT_KEPT}"
    else:
        target = out / name
        if config.keep_crops:  # before the photo: a crop refused leaves no photo its row does not report
            _write_crops(out, name, faces)
        # A copy of the photo: a transparent one stays transparent, its colour profile and EXIF kept.
        write_photo(target, result, like=photo)
        row.output = str(target)
        if losses := copy_losses(photo, target):
            row.reason = "; ".join((*losses, *([row.reason] if row.reason else [])))
        row.mask_fractions = " ".join(f"{f.mseg_fraction:.3f}" for f in faces)
        if any(f.alignment == "whole-frame" for f in faces):
            row.reason = "no face found by the detector: the whole photo restored as one masked face crop" + (
                f" ({row.reason})" if row.reason else ""
            )
        if turned := turned_reason(faces):
            row.reason = turned + (f"; {row.reason}" if row.reason else "")
        if any(f.alignment == "aligned-input-resized" for f in faces):
            size = unmasker.usage.require_crop_size()
            resized = (  # aligned inputs are never refused: what the copy lost is all there is besides
                f"aligned input resized from {row.width}x{row.height} to {size}x{size} for the model "
                "(restoration pasted back at the input's size)"
            )
            row.reason = resized + (f"; {row.reason}" if row.reason else "")
        lines += [
            {"input": str(path), "output": str(target), "face": k, **f.record()} for k, f in enumerate(faces)
        ]
    if unmasker.faces_may_hide(photo.rgb.shape, [f.box for f in (*faces, *refused)]):
        row.reason += f"{'; ' if row.reason else ''}{SMALL_FACES_MAY_HIDE}"
    lines += [
        {"input": str(path), "output": row.output, "face": k, **face_record(f)}
        for k, f in enumerate(refused, start=len(faces))
    ]
    return lines


def _crops_base(name: str) -> str:
    """Where --keep-crops writes the crops of the photo written as `name`: OUT/crops/<name>_face<k>_*.png. The
    output name is whole (suffix kept) as output names are unique: x.jpg's crops are not x.png's."""
    return f"{CROPS}/{name}"


def _crops_there(out: Path, names: list[str], config: UnmaskConfig) -> list[Path]:
    """The files already at the crops' names of this run (checked before any work, as every output is), and a
    refusal where a photo's own output would land among the crops."""
    if not config.keep_crops:
        return []
    inside = [name for name in names if PurePosixPath(name).parts[0] == CROPS]
    if inside:
        raise OutputRefusedError(
            f"{out / inside[0]}: an input's output would be written inside {out / CROPS}, where `keep_crops` "
            "writes the crops; choose another output folder or leave `keep_crops` out"
        )
    folder = out / CROPS
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise OutputRefusedError(
            f"{folder} is {'a link' if folder.is_symlink() else 'a file'}, not a folder: `keep_crops` writes the "
            "crops in a folder of that name; move it or choose another output folder"
        )
    return (
        [path for name in names for path in folder.glob(f"{glob.escape(name)}_face*")]
        if folder.is_dir()
        else []
    )


def _write_crops(out: Path, name: str, faces: list[FaceRestoration]) -> None:
    """Each restored face's aligned crop, predicted mask and restoration (--keep-crops)."""
    for k, face in enumerate(faces):
        base = out / f"{_crops_base(name)}_face{k}"
        write_image(Path(f"{base}_input.png"), face.crop)
        write_image(Path(f"{base}_mask.png"), face.mask, rgb=False)
        write_image(Path(f"{base}_restored.png"), face.restored)


@dataclass(frozen=True)
class _EarlierReport:
    """The rows and face lines of the report an earlier m2u-unmask run left in OUT (read before this run removes
    it), for the reports this run writes before it has finished: a photo of this run not reached yet keeps its
    earlier row and lines, as it keeps its earlier output."""

    by_name: dict[str, dict[str, str]]  # output name inside OUT -> row
    by_input: dict[str, dict[str, str]]  # input as given -> row (rows with no output: no face, an error)
    lines: dict[str, list[dict]]  # input -> its faces.jsonl lines

    @classmethod
    def read(cls, out: Path) -> _EarlierReport:
        rows = _report_rows(out)
        lines: dict[str, list[dict]] = {}
        faces = out / REPORTS[1]
        if rows and faces.is_file() and not replace_problem(faces):
            with contextlib.suppress(OSError, UnicodeDecodeError, ValueError):
                for text in faces.read_text().splitlines():
                    line = json.loads(text)
                    if isinstance(line, dict):
                        lines.setdefault(str(line.get("input", "")), []).append(line)
        by_input = {row["input"]: row for row in rows if row.get("input")}
        named = earlier_names(out, [(row.get("input", ""), row.get("output", "")) for row in rows])
        return cls({name: by_input[source] for source, name in named if source in by_input}, by_input, lines)

    def rows_for(self, pending: list[tuple[Path, str]], began: int) -> list[tuple[FileResult, list[dict]]]:
        """The earlier row (as a FileResult) and face lines of each photo of `pending` (path, output name) that
        the earlier report has, by its output name or else by its input, in `pending`'s order; not where its
        output is gone or was written since this run `began` (the photo under way when it stopped: its output is
        this run's now)."""
        carried = []
        for path, name in pending:
            values = self.by_name.get(name) or self.by_input.get(str(path))
            row = _report_row(values) if values is not None else None
            if row is None:
                continue
            if row.output:
                try:
                    if os.stat(row.output).st_mtime_ns >= began:
                        continue
                except OSError:
                    continue
            carried.append((row, self.lines.get(row.input, [])))
        return carried


def _report_row(values: dict[str, str], row_type: type[FileResult] = FileResult) -> FileResult | None:
    """A report.csv row read back as a FileResult (`_report_columns`); None where a value is not of its column's
    kind. An empty cell (a column an earlier m2u did not write) is the field's default."""
    typed: dict[str, Any] = {}
    columns = _report_columns(row_type)
    for field in fields(row_type):
        text = values.get(field.name) or ""
        try:
            if text or field.default is MISSING:
                typed[field.name] = _CELL_KINDS[columns[field.name]][1](text)
            else:
                typed[field.name] = field.default
        except (TypeError, ValueError):
            return None
    return row_type(**typed)


def _write_reports(
    out: Path,
    results: list[FileResult],
    face_lines: list[dict],
    unfinished: str = "",
    earlier: list[tuple[FileResult, list[dict]]] | None = None,
) -> None:
    """report.csv (one row per input), faces.jsonl (one line per face) and index.html, published together (a stop
    while they are written leaves the last ones whole); `unfinished` says on index.html how far a run that has not
    finished got ("stopped after 6 of 30"), and `earlier` holds the earlier run's rows and face lines of the photos
    it has not reached (`_EarlierReport.rows_for`), reported after its own."""
    earlier = earlier or []
    rows = [*results, *(row for row, _ in earlier)]
    lines = [*face_lines, *(line for _, kept in earlier for line in kept)]
    report = io.StringIO(newline="")
    writer = csv.DictWriter(report, fieldnames=list(_report_columns()))
    writer.writeheader()
    for row in rows:
        writer.writerow(_report_cells(row))
    with staged_files() as staged:
        staged.write_text(out / "report.csv", report.getvalue())
        staged.write_text(out / "faces.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
        page = _index_html(out, rows, unfinished, staged.staged_path(out / "faces.jsonl"), len(earlier))
        staged.write_text(out / "index.html", page)
        staged.publish()
    remember_output_names(out, UNMASK_TOOL, earlier_names(out, [(r.input, r.output) for r in results]))


def _link(out: Path, path: str) -> str:
    """`path` as a link from OUT/index.html: relative (the page works wherever OUT and the inputs are moved
    together), percent-encoded from the file name's bytes (a name that is not UTF-8 still finds its file)."""
    return quote(os.fsencode(os.path.relpath(os.path.abspath(path), os.path.abspath(out))))


def _index_html(
    out: Path,
    results: list[FileResult],
    unfinished: str = "",
    faces_jsonl: str | Path | None = None,
    earlier: int = 0,
) -> str:
    """OUT/index.html: each photo beside its restored copy, with its status and reason, to look a run over in a
    browser. The photos are linked, not copied. A run that has not finished says so first (`unfinished`), and how
    many of the rows (the last `earlier`) are an earlier run's. `faces_jsonl`: where the faces' lines are (default
    OUT/faces.jsonl)."""
    kept = (
        f"<b>The last {earlier} photos, not reached yet, keep the earlier run's rows and outputs.</b> "
        if earlier
        else ""
    )
    rows = []
    for row in results:
        before = f'<img src="{_link(out, row.input)}" loading="lazy">'
        after = f'<img src="{_link(out, row.output)}" loading="lazy">' if row.output else ""
        said = f"<b>{escape(row.status)}</b>: {row.faces} restored, {row.left_faces} left"
        where = escape(report_text(os.path.basename(row.input)))
        rows.append(
            f"<tr><td>{before}</td><td>{after}</td><td>{said}<br><small>{where}<br>"
            f"{escape(report_text(row.reason))}</small></td></tr>"
        )
    return f"""<!doctype html><meta charset="utf-8"><title>m2u-unmask: {len(results)} photos</title>
<style>body{{font-family:sans-serif}} td{{vertical-align:top;padding:4px}} img{{max-width:360px;max-height:360px}}</style>
<p>{f"<b>Not finished: {escape(unfinished)} photos.</b> " if unfinished else ""}{kept}{escape(summarize(results, faces_jsonl or out / "faces.jsonl"))}. Each photo, its restored copy (none where nothing was restored),
its status and reason; every face's evidence is in faces.jsonl.</p>
<table><tr><th>photo</th><th>restored</th><th></th></tr>
{chr(10).join(rows)}
</table>
"""


def _left_rank(face) -> int:
    """Which left face speaks for a photo (`_status_without_faces`' order): one the rule found not masked first,
    then one left for another reason (upside down, below --min-score), last an uncertain detection judged no face."""
    if isinstance(face, FaceRestoration) and judged_not_masked(face.problem):
        return 0
    return 2 if judged_no_face(face.problem) else 1


def left_faces_reason(left: list, where: str = "") -> str:
    """A photo's one-line reason for the faces (and detections) left as they are: the reason of the one that gives
    the photo its status (`_left_rank`), and how many more there are (`where`: what lists each one's reason)."""
    first = min(left, key=_left_rank)
    reason = f"{len(left)} face(s) left as they are: {first.problem}"
    if len(left) > 1:
        more = f", each with its reason in {where}" if where else ""
        reason += f" (and {len(left) - 1} more{more})"
    return reason


def _status_without_faces(left: list) -> str:
    """report.csv's status of a photo where nothing was restored: `not_masked` when the masked-face rule left a
    face that wears no mask, `refused` when a face was left for any other reason (upside down by the detector's
    check or the upside-down classifier, below --min-score), else `no_face` (nothing found, or only uncertain
    detections without a mask: no faces)."""
    rank = min(map(_left_rank, left), default=2)
    return (Status.NOT_MASKED, Status.REFUSED, Status.NO_FACE)[rank]


def face_record(face) -> dict:
    """A face's line in faces.jsonl (without the input's name): a FaceRestoration's own record (evidence, reason),
    or, for a detection left before alignment (a Face), where it was and why."""
    if isinstance(face, FaceRestoration):
        return face.record()
    return {
        "detector": face.detector,
        "score": round(face.score, 4),
        "box": [int(v) for v in face.box],
        "restored": False,
        "problem": face.problem,
    }


def implausible_masks_warning(results: list[FileResult]) -> str:
    """A warning when the restored faces' M-Seg masks cover nearly their whole crops ("" otherwise): every face
    was painted over, and the statuses still read ok. From the rows' own mask fractions (report.csv's)."""
    shares = [float(share) for r in results for share in r.mask_fractions.split()]
    broad = sum(share > IMPLAUSIBLE_MASK_SHARE for share in shares)
    if not broad:
        return ""
    return (
        f"warning: on {broad} of the {len(shares)} faces restored M-Seg's mask covers more than "
        f"{IMPLAUSIBLE_MASK_SHARE:.0%} of the face crop (a mask covers about a third): that M-Seg model is not "
        "trustworthy (trained too briefly?), and those faces were painted over whole"
    )


def summarize(results: list[FileResult], faces_jsonl: str | Path | None = None) -> str:
    """One line: files by status, faces restored, and faces by detection pass and alignment source."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    line = f"{len(results)} files: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    line += f"; {sum(r.faces for r in results)} faces restored"
    left = sum(r.left_faces for r in results)
    unmasked = 0
    if faces_jsonl is not None and Path(faces_jsonl).is_file():
        by: dict[str, int] = {}
        for text in Path(faces_jsonl).read_text().splitlines():
            face = json.loads(text)
            if not face.get("restored", True):
                problem = face.get("problem", "")
                unmasked += judged_not_masked(problem) and NOTHING_TO_RESTORE not in problem
                continue
            key = f"{face['detector']}/{face['alignment']}"
            by[key] = by.get(key, 0) + 1
        if by:  # right after the count it breaks down: the restored faces' detection passes
            line += " (" + ", ".join(f"{n} {k}" for k, n in sorted(by.items())) + ")"
    if left:
        line += f", {left} left as they are (see faces.jsonl)"
    if hidden := sum(SMALL_FACES_MAY_HIDE in r.reason for r in results):
        line += (
            f"; {hidden} photo(s) may hold faces too small to find at once: --tiles looks over tiles (slower)"
        )
    if unmasked:
        # The decision errs towards leaving a face (a bare face repainted is the worse mistake): a user whose
        # photos are all masked faces gets the way to restore the ones it left, and is told what else it does.
        line += (
            f"; {unmasked} judged not masked: if they wear masks after all, --all-faces restores every face found "
            "(bare ones too)"
        )
    return line

"""m2u-eval real-masks: how m2u-unmask does on photos of people really wearing masks.

No ground-truth unmasked face exists for a real masked photo, so what can be measured is what m2u-unmask finds and
touches: for each photo, the faces found (restored, or left as they are with the reason), M-Seg's predicted mask
mapped back to the photo, and, where a binary label image of the mask is given (the photo's path below its folder,
any image suffix, in the labels folder; JPEG labels are thresholded at `label_threshold`; a label with transparency
is read as shown on black: its transparent pixels are background, `read_label`), Dice and IoU of the predicted mask
against the label and the
remnant share: the label pixels m2u-unmask left exactly unchanged in its output (mask left in the photo), and the
near remnant share: those it changed by at most `near_levels` (a pixel pasted back as a resampled copy of itself still
shows the mask). A photo with no face restored (none found, or every face left as it is) has an empty predicted
mask: against a label with mask pixels it scores Dice 0, IoU 0 and remnant 1 (nothing of its mask was touched);
against an empty label (the photo shows no mask) Dice 1 and IoU 1, a correct prediction, and no remnant share.

Writes OUT/real_masks.csv (one row per photo), OUT/faces.jsonl (one line per face found: detector, box, the
masked-face decision's evidence and, for a face left, its reason; as m2u-unmask writes it), OUT/summary.json and
OUT/index.html, a contact sheet of photo (boxes: green restored, orange left as it is, grey judged no face) |
predicted mask | restored | label, at thumbnail size.
"""

from __future__ import annotations

import contextlib
import csv
import html
import io
import json
import os
import re
import unicodedata
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from m2u.core.checks import check_at_least, check_at_most
from m2u.core.fileio import StagedFiles, staged_files
from m2u.core.imageio import encode_image

__all__ = [
    "RealMaskConfig",
    "PhotoScore",
    "evaluate_real_masks",
    "left_unchanged",
    "mask_scores",
    "photo_mask",
    "read_label",
]

# The MFSD labels are JPEG: grey values round the edge, so a label pixel is one whose brightest channel is >= this.
LABEL_THRESHOLD = 127
# The largest contact-sheet cell side (RealMaskConfig.thumb): a photo's four cells at 1024 px are 12 MB and fill a
# screen; unchecked, --thumb 30000 asked about 10 GB per photo and failed every one (a MemoryError row each).
MAX_THUMB = 1024


@dataclass(frozen=True)
class RealMaskConfig:
    label_threshold: int = LABEL_THRESHOLD
    # Side of a contact-sheet cell (the photo scaled to fit it).
    thumb: int = 192
    # Rows on the contact sheet (every photo is in the CSV); None: every photo.
    sheet_rows: int | None = None
    # A label pixel the output changes by at most this many levels per channel counts as a near remnant: pasted
    # back as a resampled copy of itself, it shows the mask as before (`left_unchanged`).
    near_levels: int = 12
    limit: int | None = None  # the first N photos found (in the order found); None: every one

    def __post_init__(self) -> None:
        # A label threshold of 0 would make every pixel of every label mask. SettingErrors: a command line, a config
        # file and `--set` each name the setting as the user wrote it.
        check_at_least(self, {"label_threshold": 1, "near_levels": 0, "thumb": 16, "limit": 1})
        check_at_most(self, {"label_threshold": 254, "near_levels": 254, "thumb": MAX_THUMB})


@dataclass
class PhotoScore:
    """One row of real_masks.csv."""

    photo: str
    # ok | no_face | no_masked_face | no_label | bad_label | unreadable | error. A label status (no_label, bad_label)
    # takes precedence over the face status (no_face, no_masked_face), whose reason then follows the label's.
    status: str
    reason: str = ""
    faces_found: int = (
        0  # restored + left as they are (detections m2u-unmask judged to be no face not counted)
    )
    faces_restored: int = 0
    faces_left: int = 0
    # Of faces_restored, those restored in the photo turned (m2u-unmask's try of a photo stored upside down or
    # sideways: UnmaskConfig.try_turned), right side up.
    faces_restored_turned: int = 0
    # The turn (degrees anticlockwise) of the photo those faces were restored in; 0: restored as it is.
    turned_degrees: int = 0
    not_faces: int = 0  # uncertain detections without a mask: no face
    # The evidence of the face with the highest mask probability (restored or left): the mask classifier's
    # probability, the share of the mouth region M-Seg marks and the share of M-Seg's mask it is sure of
    # (m2u.inference.masked_rule.MaskedFaceRule: the sure-mask route reads it).
    mask_probability: float | None = None
    mseg_mouth_coverage: float | None = None
    mseg_mask_confidence: float | None = None
    mask_fraction: float | None = None  # share of the photo under the predicted mask; None: not scored
    label: str = ""
    dice: float | None = None
    iou: float | None = None
    remnant: float | None = None  # share of label pixels left unchanged in the output
    remnant_near: float | None = None  # share left within near_levels of the input (RealMaskConfig)


def photo_mask(shape: tuple[int, int], faces: list) -> np.ndarray:
    """The union of the faces' predicted crop masks (FaceRestoration.mask, .matrix) mapped back to a photo of
    `shape` (height, width): bool."""
    height, width = shape
    union = np.zeros((height, width), bool)
    for face in faces:
        inverse = cv2.invertAffineTransform(np.asarray(face.matrix, np.float64))
        warped = cv2.warpAffine(
            face.mask.astype(np.float32) / 255.0,
            inverse,
            (width, height),
            flags=cv2.INTER_LINEAR,
            borderValue=0.0,
        )
        union |= warped >= 0.5
    return union


def left_unchanged(result: np.ndarray, image: np.ndarray, tolerance: int = 0) -> np.ndarray:
    """The pixels (bool (H, W)) whose output differs from the input photo by at most `tolerance` levels in every
    channel: 0, left exactly as they were (the remnant share's pixels); a few levels, also those pasted back as a
    resampled copy of themselves (the photo's own pixels warped to the crop and back), which show the mask as it
    was (benchmarks/real_mask_seg.py reports both)."""
    if tolerance == 0:
        return ~np.any(result != image, axis=2)
    return np.abs(result.astype(np.int16) - image.astype(np.int16)).max(axis=2) <= tolerance


def mask_scores(
    predicted: np.ndarray, label: np.ndarray, unchanged: np.ndarray
) -> tuple[float, float, float | None]:
    """(Dice, IoU, remnant share) of a bool predicted mask against a bool label; `unchanged` marks the pixels the
    output kept exactly. An empty label with an empty prediction scores 1, 1; an empty label has no remnant share
    (None: no label pixel to leave, so no perfect score either)."""
    inter = float(np.logical_and(predicted, label).sum())
    total = float(predicted.sum() + label.sum())
    union = float(np.logical_or(predicted, label).sum())
    dice = 2 * inter / total if total else 1.0
    iou = inter / union if union else 1.0
    remnant = float(np.logical_and(label, unchanged).sum()) / float(label.sum()) if label.any() else None
    return dice, iou, remnant


def label_key(relative: str) -> str:
    """What pairs a photo with its label: its path below its folder (posix) without the suffix, so
    `a/x.jpg`'s label is `LABELS/a/x.png` (any image suffix), never `b/x.jpg`'s. In Unicode NFC: macOS writes names
    decomposed (NFD), so "José.png" saved there names the photo "José.jpg" written elsewhere."""
    relative = unicodedata.normalize("NFC", relative)
    return relative.rsplit(".", 1)[0] if "." in relative.rsplit("/", 1)[-1] else relative


def label_index(labels: Path, exclude: list[Path]) -> tuple[dict[str, list[Path]], str]:
    """The label images below `labels` (found as m2u finds images: any image suffix, in subfolders too; nothing
    under an `exclude` folder: the output folder, then the photo folders) by `label_key`, and the sentence saying
    which files of the labels folder were passed over ("" if none)."""
    from m2u.core.inputs import discover

    found = discover([labels], exclude=exclude, roles={folder: "photo folder" for folder in exclude[1:]})
    index: dict[str, list[Path]] = {}
    for entry in found.entries:  # a broken one too: read_label says why
        index.setdefault(label_key(entry.relative), []).append(entry.path)
    skipped = found.describe_skipped()
    return index, skipped.replace("in the input folders", "in the labels folder")


def read_label(
    path: Path, shape: tuple[int, int] | None = None, threshold: int = LABEL_THRESHOLD
) -> np.ndarray:
    """A binary label image as a bool (H, W) array: True where its brightest channel is at least `threshold`. A
    label with transparency is read as shown on black: a transparent pixel is background, a half transparent one
    half its value (a white mask on a transparent or a transparent black background reads as the mask). With
    `shape` (height, width), a label at another resolution than its photo is resized to it first. The one reading
    of a label image: m2u-eval and the benchmarks that score against labels all use it."""
    from m2u.core.imageio import read_photo

    photo = read_photo(path)
    grey = photo.rgb.max(axis=2)
    if photo.alpha is not None and (photo.alpha < 255).any():
        # read_image shows transparent pixels on white, which would make a transparent background all mask.
        colour = photo.colour if photo.colour is not None else photo.rgb
        shown = (colour.max(axis=2).astype(np.uint32) * photo.alpha + 127) // 255
        grey = shown.astype(np.uint8)
        if not (grey >= threshold).any() and (photo.alpha == 255).any():
            raise LabelError(
                "its opaque pixels are all darker than the threshold: a mask drawn dark on a transparent "
                "background? draw it light (white), or save the label as white on black"
            )
    problem = label_problem(grey, shape, threshold)
    if problem:
        raise LabelError(problem)
    if shape is not None and grey.shape != tuple(shape):
        # Resized as grey values, then thresholded: the edge lands where the label's own edge is.
        grey = cv2.resize(grey, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return grey >= threshold


class LabelError(ValueError):
    """A label image that cannot be a binary mask of its photo (see label_problem)."""


# A label's ambiguous pixels (within AMBIGUOUS_LEVELS of the threshold: neither clearly mask nor clearly not; a
# label may draw its mask in any clear grey, 200 as well as 255): JPEG labels' soft edges are a few at most (none
# in ../shared/faces/real-mask-seg's labels), while its photos read as labels have 12 % and more, 43 % in the
# median (real-masked's photos 14 % and more; measured), noise most of its pixels. Near either end of the range
# the band narrows to half the threshold's distance to that end: at 200, a label's 255 is clearly mask.
AMBIGUOUS_LEVELS = 64
MAX_MID_GREY_SHARE = 0.05
# How far a label's width/height ratio may differ from its photo's (relative) and still be that photo's label,
# resized: a label of another shape is another picture's, or a crop, and stretching it scores nonsense.
MAX_ASPECT_DIFFERENCE = 0.02


def ambiguous_band(threshold: int) -> int:
    """How close to `threshold` a label pixel is ambiguous (see AMBIGUOUS_LEVELS)."""
    return min(AMBIGUOUS_LEVELS, (threshold + 1) // 2, (256 - threshold) // 2)


def label_problem(grey: np.ndarray, shape: tuple[int, int] | None, threshold: int = LABEL_THRESHOLD) -> str:
    """Why the grey label image (read against `threshold`) cannot be a binary mask of a photo of `shape` (height,
    width); "" when it can."""
    if grey.max(initial=0) == 1:
        # An index mask (0 background, 1 mask) would read as an empty label: Dice 0, silently, in every mean.
        return "its values are only 0 and 1 (an index mask?); save the mask as 0/255 (white on black)"
    levels = np.unique(grey)
    if len(levels) == 2 and not levels[0] < threshold <= levels[1]:
        # A clean two-level label drawn darker or lighter than the threshold reads as empty (Dice 0) or whole.
        low, high = int(levels[0]), int(levels[1])
        return (
            f"its only values are {low} and {high}, both {'below' if high < threshold else 'at or above'} the "
            f"threshold {threshold}: give a threshold between them (`label_threshold`, m2u-eval's "
            f"--label-threshold; e.g. {(low + high + 1) // 2})"
        )
    band = ambiguous_band(threshold)
    mid = float((np.abs(grey.astype(np.int16) - threshold) < band).mean())
    if mid > MAX_MID_GREY_SHARE:
        return f"not a binary label: {mid:.0%} of its pixels are within {band} levels of the threshold {threshold}"
    if shape is not None:
        label_ratio, photo_ratio = grey.shape[1] / grey.shape[0], shape[1] / shape[0]
        if abs(label_ratio / photo_ratio - 1) > MAX_ASPECT_DIFFERENCE:
            return (
                f"the label is {grey.shape[1]}x{grey.shape[0]} px, its photo {shape[1]}x{shape[0]}: another shape "
                "(a label is resized to its photo only when their shapes match)"
            )
    return ""


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    height, width = image.shape[:2]
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    if small.ndim == 2:
        small = np.stack([small] * 3, -1)
    canvas = np.full((side, side, 3), 32, np.uint8)
    y, x = (side - size[1]) // 2, (side - size[0]) // 2
    canvas[y : y + size[1], x : x + size[0]] = small
    return canvas


def _with_boxes(image: np.ndarray, restored: list, left: list, not_faces: list) -> np.ndarray:
    out = image.copy()
    thickness = max(2, round(max(image.shape[:2]) / 200))
    kinds = ((restored, (0, 200, 0)), (left, (255, 140, 0)), (not_faces, (150, 150, 150)))
    for boxes, colour in (([f.box for f in faces], colour) for faces, colour in kinds):
        for left_x, top, right, bottom in boxes:
            cv2.rectangle(out, (int(left_x), int(top)), (int(right), int(bottom)), colour, thickness)
    return out


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(float(np.mean(present)), 4) if present else None


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(float(np.median(present)), 4) if present else None


def summarize_scores(rows: list[PhotoScore]) -> dict:
    """The figures over all photos: faces found, Dice/IoU where found and over all labelled photos (0 where no
    face was restored), remnant share, mean mask fraction."""
    readable = [r for r in rows if r.status not in ("unreadable", "error")]
    found = [r for r in readable if r.faces_found]
    restored = [r for r in readable if r.faces_restored]
    labelled = [r for r in readable if r.dice is not None]
    labelled_found = [r for r in labelled if r.faces_restored]
    return {
        "photos": len(rows),
        "readable": len(readable),
        "photos_with_face_found": len(found),
        "found_rate": round(len(found) / len(readable), 4) if readable else None,
        "photos_with_face_restored": len(restored),
        "restored_rate": round(len(restored) / len(readable), 4) if readable else None,
        "faces_found": sum(r.faces_found for r in readable),
        "faces_restored": sum(r.faces_restored for r in readable),
        "faces_restored_turned": sum(r.faces_restored_turned for r in readable),
        # Photos with a face restored, by the turn they were restored in (degrees anticlockwise; "0": as it is).
        "photos_restored_by_turn": {
            str(d): sum(r.turned_degrees == d for r in restored)
            for d in sorted({r.turned_degrees for r in restored})
        },
        "faces_left": sum(r.faces_left for r in readable),
        "detections_judged_no_face": sum(r.not_faces for r in readable),
        "mean_mask_fraction_where_restored": _mean([r.mask_fraction for r in restored]),
        "labelled_photos": len(labelled),
        "dice_where_restored": _mean([r.dice for r in labelled_found]),
        "iou_where_restored": _mean([r.iou for r in labelled_found]),
        "remnant_where_restored": _mean([r.remnant for r in labelled_found]),
        "dice_all_labelled": _mean([r.dice for r in labelled]),
        "iou_all_labelled": _mean([r.iou for r in labelled]),
        "remnant_all_labelled": _mean([r.remnant for r in labelled]),
        "remnant_near_where_restored": _mean([r.remnant_near for r in labelled_found]),
        "remnant_near_all_labelled": _mean([r.remnant_near for r in labelled]),
        "median_mask_probability": _median([r.mask_probability for r in readable]),
        "median_mseg_mouth_coverage": _median([r.mseg_mouth_coverage for r in readable]),
        "statuses": {s: sum(r.status == s for r in rows) for s in sorted({r.status for r in rows})},
    }


def evaluate_real_masks(
    photos: list[str] | tuple[str, ...],
    out_dir: str | Path,
    unmasker,
    labels_dir: str | Path | None = None,
    config: RealMaskConfig | None = None,
    progress: bool = False,
) -> dict:
    """Run `unmasker` (an m2u.inference.Unmasker: detection, the masked-face decision, M-Seg, generator, as
    m2u-unmask runs them) on every photo of `photos` (files, folders, globs) and score it; with `labels_dir`, against
    the label of the same path below its folder. Returns the summary (also in OUT/summary.json)."""
    from tqdm import tqdm

    from m2u.core.inputs import output_lock
    from m2u.masking import ImageReadError

    config = config or RealMaskConfig()
    run = plan_real_masks(photos, out_dir, labels_dir, config)
    out = run.out
    out.mkdir(parents=True, exist_ok=True)
    rows: list[PhotoScore] = []
    face_lines: list[dict] = []
    sheet: list[SheetRow] = []
    finished_lines = 0  # the face lines of the photos in `rows`
    # The report (its rows, pages and contact-sheet cells) is staged as it is made and published once whole
    # (m2u.core.fileio.StagedFiles): until then an earlier run's finished report in OUT is left as it was.
    with output_lock(out, EVAL_TOOL, reports=REPORTS), staged_files() as staged:
        (out / "sheet").mkdir(exist_ok=True)
        earlier = any(os.path.lexists(out / name) for name in REPORTS)
        try:
            for index, entry in enumerate(
                tqdm(run.photos, unit="photo", desc="real masks", disable=not progress)
            ):
                row = PhotoScore(photo=str(entry.path), status="ok")
                names: list[str] = []
                try:
                    lookup = run.label_lookup(entry)
                    names = _score_photo(
                        row, entry.path, unmasker, lookup, config, out, index, len(sheet), face_lines, staged
                    )
                except ImageReadError as exc:
                    row.status, row.reason = "unreadable", exc.reason
                except Exception as exc:  # noqa: BLE001 - one bad photo is recorded, the rest still run
                    row.status, row.reason = "error", f"{type(exc).__name__}: {exc}"
                failed = row.status in ("unreadable", "error")
                if failed:
                    del face_lines[finished_lines:]  # a photo's faces are counted with its row or not at all
                    # and so are its figures: a photo failing after its scores (writing its sheet cells) kept its
                    # Dice in a row the summary counts as not read
                    row = PhotoScore(photo=row.photo, status=row.status, reason=row.reason, label=row.label)
                rows.append(row)
                finished_lines = len(face_lines)
                # A failed photo has a row too (its reason, no cells), while the sheet has room.
                if names or (failed and (config.sheet_rows is None or len(sheet) < config.sheet_rows)):
                    sheet.append(SheetRow(row, names, entry.relative))
        except BaseException:
            # Stopped midway (Ctrl-C, SIGTERM, an error): an earlier run's finished report stays whole (what was
            # staged goes); where there is none, the reports say what this run finished, marked as stopped. On a
            # full disk they may not fit: the stop wins.
            if not earlier:
                del face_lines[finished_lines:]
                stopped = f"after {len(rows)} of {len(run.photos)} photos"
                with contextlib.suppress(OSError):
                    _write_outputs(run, rows, face_lines, sheet, staged, stopped=stopped)
            raise
        return _write_outputs(run, rows, face_lines, sheet, staged)


SHEET_KINDS = ("photo", "predicted", "restored", "label")
REPORTS = (
    "real_masks.csv",
    "faces.jsonl",
    "summary.json",
    "index.html",
)  # OUT's reports, rewritten by every run
EVAL_TOOL = "m2u-eval-real-masks"  # its output lock's name
# The statuses of a photo or label that could not be scored as given: said one line each on stderr, flagged on the
# sheet, and the command exits 1 when any occurs (bad_label, unreadable, error; no_label is said, not failed).
INPUT_PROBLEMS = ("unreadable", "error", "bad_label", "no_label")
SHEET_CELL = re.compile(r"\d{5,}_(?:photo|predicted|restored|label)\.png")  # sheet_name's names, in sheet/


@dataclass(frozen=True)
class SheetRow:
    """One row of the contact sheet: the photo's CSV row, its cells (none for a photo that failed) and its path
    below its input folder (what tells a/x.jpg from b/x.jpg)."""

    row: PhotoScore
    cells: list[str]
    name: str


def sheet_name(index: int, kind: str) -> str:
    return f"sheet/{index:05d}_{kind}.png"


@dataclass(frozen=True)
class LabelLookup:
    """Where one photo's label was looked for (`where`, LABELS/<its path below its folder>.*), what is there,
    and another photo scored in the run that looks in the same place (then neither label can be told)."""

    where: str
    paths: list[Path]
    shared_with: str = ""
    # Labels whose names differ from the photo's only in letter case (not paired: two such labels could be two
    # photos'), named in a missing label's reason.
    case_only: list[str] = field(default_factory=list)


@dataclass
class RealMaskRun:
    """What `evaluate_real_masks` will read and write, checked before any photo is unmasked (`plan_real_masks`)."""

    out: Path
    photos: list  # the m2u.core.inputs.InputEntry of each photo to score, in the order found
    every: list  # every photo found (`photos` is the first RealMaskConfig.limit of them)
    labels: Path | None
    labels_of: dict[str, list[Path]]  # label_index
    photos_of_key: dict[str, list[Path]]  # the photos scored, by label_key (two under one key: no label told)
    # What the folder scans passed over, photos' and labels' (a file without an image suffix, a hidden one...),
    # each a sentence: the report says it, so fewer rows than files is never unexplained.
    passed_over: list[str] = field(default_factory=list)
    _casefolded: dict[str, list[str]] | None = field(default=None, repr=False)

    def label_lookup(self, entry) -> LabelLookup | None:
        """Where the photo of `entry` finds its label; None without labels."""
        if self.labels is None:
            return None
        key = label_key(entry.relative)
        others = [str(path) for path in self.photos_of_key.get(key, []) if path != entry.path]
        where = f"{self.labels / key}.*"
        paths = self.labels_of.get(key, [])
        case_only = [] if paths else self._labels_by_casefold().get(key.casefold(), [])
        return LabelLookup(where, paths, others[0] if others else "", case_only)

    def _labels_by_casefold(self) -> dict[str, list[str]]:
        """The label files by their key in lower case, once per run."""
        if self._casefolded is None:
            self._casefolded = {}
            for key, paths in self.labels_of.items():
                for path in paths:
                    self._casefolded.setdefault(key.casefold(), []).append(path.name)
        return self._casefolded

    def unmatched_labels(self) -> list[str] | None:
        """The label files no photo found is named like (a typo, a photo missing), sorted; None without labels."""
        if self.labels is None:
            return None
        keys = {label_key(entry.relative) for entry in self.every}
        return sorted(
            path.relative_to(self.labels).as_posix()
            for key, paths in self.labels_of.items()
            if key not in keys
            for path in paths
        )


def plan_real_masks(
    photos: list[str] | tuple[str, ...],
    out_dir: str | Path,
    labels_dir: str | Path | None = None,
    config: RealMaskConfig | None = None,
) -> RealMaskRun:
    """The photos, their labels and the report's files, with every refusal a run can meet before its first photo
    (m2u-eval real-masks calls it before loading the model): an input that does not exist, no photo, a labels
    folder that is missing or is a photo folder, an output folder that is an input or labels folder, a file of
    someone else's at a report or contact-sheet name."""
    from m2u.core.inputs import (
        OutputFolderError,
        check_arguments,
        check_output_folder,
        discover,
        input_folder_named,
        report_clash,
    )

    config = config or RealMaskConfig()
    out = Path(out_dir)
    check_arguments(photos)
    labels = None if labels_dir is None else Path(labels_dir)
    if labels is not None and not labels.is_dir():
        raise ValueError(f"labels folder not found: {labels}")
    # A labels folder inside a photo folder holds no photos, and a photo folder inside the labels no labels.
    found = discover(
        photos,
        exclude=[out] if labels is None else [out, labels],
        roles={labels: "labels folder"} if labels else None,
    )
    # A photo glob's folder too ('labels/*.jpg' --labels labels): each photo would be its own label.
    named = "" if labels is None else input_folder_named(labels, found, "photo")
    if named:
        raise ValueError(
            f"the labels folder {labels} is {named}: its labels would be scored as photos; keep the labels in a "
            "folder of their own"
        )
    every = list(found.entries)
    chosen = every[: config.limit]
    written = [out / name for name in REPORTS]
    written += [out / sheet_name(index, kind) for index in range(len(chosen)) for kind in SHEET_KINDS]
    check_output_folder(out, found, written)
    clash = report_clash(out, EVAL_TOOL, REPORTS)
    if clash:
        raise OutputFolderError(clash)
    if not chosen:
        raise ValueError("no input images found")
    if labels is not None and os.path.realpath(out) == os.path.realpath(labels):
        raise OutputFolderError(f"`out_dir` {out} is the labels folder; the report would mix with the labels")
    labels_of, labels_skipped = ({}, "") if labels is None else label_index(labels, [out, *found.folders])
    photos_of_key: dict[str, list[Path]] = {}
    for entry in chosen:
        photos_of_key.setdefault(label_key(entry.relative), []).append(entry.path)
    passed_over = [sentence for sentence in (found.describe_skipped(), labels_skipped) if sentence]
    return RealMaskRun(out, chosen, every, labels, labels_of, photos_of_key, passed_over)


def _score_photo(
    row: PhotoScore,
    path: Path,
    unmasker,
    lookup: LabelLookup | None,
    config: RealMaskConfig,
    out: Path,
    index: int,
    sheet_rows: int,
    face_lines: list[dict],
    staged: StagedFiles,
) -> list[str]:
    """Unmask one photo and fill in its `row` (faces, decision evidence, label scores) and its faces' lines
    (`face_lines`); returns the contact sheet cells written for it ([] once the sheet has `config.sheet_rows` rows)."""
    from m2u.inference.masked_rule import judged_no_face
    from m2u.inference.photos import face_record
    from m2u.masking import ImageReadError, read_image

    image = read_image(path)
    result, restored, left = unmasker.unmask_with_refusals(image)
    not_faces = [f for f in left if judged_no_face(f.problem)]
    left = [f for f in left if not judged_no_face(f.problem)]
    _record_faces(row, restored, left, not_faces)
    face_lines += [
        {"photo": str(path), "face": k, **face_record(face)}
        for k, face in enumerate((*restored, *left, *not_faces))
    ]
    predicted = photo_mask(image.shape[:2], restored)
    row.mask_fraction = round(float(predicted.mean()), 4)
    label_image = None
    if lookup is not None:
        label_paths = lookup.paths
        if lookup.shared_with:
            _label_status(
                row,
                "bad_label",
                f"its label cannot be told: {lookup.shared_with} also looks for {lookup.where} (photos of "
                "two folders with one path below them: give them in one folder, whose subfolders tell them apart)",
            )
        elif not label_paths:
            case = f"; {', '.join(lookup.case_only)} differs only in letter case" if lookup.case_only else ""
            _label_status(row, "no_label", f"no label {lookup.where} (any image suffix){case}")
        elif len(label_paths) > 1:
            _label_status(
                row,
                "bad_label",
                f"{len(label_paths)} labels for it ({', '.join(p.name for p in label_paths)}): keep one",
            )
        else:
            (label_path,) = label_paths
            row.label = str(label_path)
            try:
                label = read_label(label_path, image.shape[:2], config.label_threshold)
            except (ImageReadError, LabelError) as exc:  # the label's fault, not the photo's: said so
                said = exc.reason if isinstance(exc, ImageReadError) else exc
                _label_status(row, "bad_label", f"label {label_path}: {said}")
                label = None
            if label is not None:
                dice, iou, remnant = mask_scores(predicted, label, left_unchanged(result, image))
                near = mask_scores(predicted, label, left_unchanged(result, image, config.near_levels))[2]
                row.dice, row.iou = round(dice, 4), round(iou, 4)
                row.remnant = None if remnant is None else round(remnant, 4)
                row.remnant_near = None if near is None else round(near, 4)
                label_image = label
    if config.sheet_rows is not None and sheet_rows >= config.sheet_rows:
        return []
    cells = [
        _fit(_with_boxes(image, restored, left, not_faces), config.thumb),
        _fit((predicted * 255).astype(np.uint8), config.thumb),
        _fit(result, config.thumb),
    ]
    if label_image is not None:
        cells.append(_fit((label_image * 255).astype(np.uint8), config.thumb))
    names = []
    for kind, cell in zip(SHEET_KINDS, cells):
        name = sheet_name(index, kind)
        staged.write_bytes(out / name, encode_image(out / name, cell))  # published with the report
        names.append(name)
    return names


def _label_status(row: PhotoScore, status: str, reason: str) -> None:
    """A label status into `row`: it is the row's status, and the faces' reason (no face found, faces left) stays
    after the label's, so the row still says what the photo's faces came to."""
    row.status = status
    row.reason = reason + (f"; {row.reason}" if row.reason else "")


def _record_faces(row: PhotoScore, restored: list, left: list, not_faces: list) -> None:
    """The photo's face counts, the masked-face decision's evidence and its status into `row`."""
    from m2u.inference.photos import left_faces_reason

    row.faces_restored, row.faces_left, row.not_faces = len(restored), len(left), len(not_faces)
    row.faces_found = len(restored) + len(left)
    row.faces_restored_turned = sum(bool(f.turned) for f in restored)
    row.turned_degrees = max((f.turned for f in restored), default=0)  # one turn per photo
    judged = [f for f in (*restored, *left) if getattr(f, "evidence", None)]
    if judged:
        best = max(judged, key=lambda f: f.evidence.get("mask_probability", -1.0)).evidence
        row.mask_probability = best.get("mask_probability")  # not asked with --all-faces
        row.mseg_mouth_coverage = best["mouth_coverage"]
        row.mseg_mask_confidence = best.get("mask_confidence")  # not read with --all-faces
    if left:
        row.reason = left_faces_reason(left)
    if row.faces_restored_turned:
        from m2u.inference.unmask import turned_reason

        row.reason = turned_reason(restored) + (f"; {row.reason}" if row.reason else "")
    if not row.faces_found:
        row.status = "no_face"
        row.reason = (
            f"{len(not_faces)} uncertain detection(s) with no mask on them: no face"
            if not_faces
            else "no face found by the detector"
        )
    elif not restored:
        row.status = "no_masked_face"


def _write_outputs(
    run: RealMaskRun,
    rows: list[PhotoScore],
    face_lines: list[dict],
    sheet: list[SheetRow],
    staged: StagedFiles,
    stopped: str = "",
) -> dict:
    """real_masks.csv, faces.jsonl, summary.json and the contact sheet's index.html of `run`; returns the summary,
    with the label files no photo is named like (counted, and the first few named) and what the scans passed over.
    `stopped`: how far a run stopped midway got (summary.json's "stopped", said first on the sheet), so its figures
    are not read as a whole run's."""
    out, unmatched_labels, labelled = run.out, run.unmatched_labels(), run.labels is not None
    # Staged, then published with the sheet's cells (m2u.core.fileio.StagedFiles, which refuses a link planted at
    # an output's name and records what it wrote, so a later run may replace it), as m2u-eval's reports are.
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=[f.name for f in fields(PhotoScore)])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
    staged.write_text(out / "real_masks.csv", table.getvalue())
    staged.write_text(out / "faces.jsonl", "".join(json.dumps(line) + "\n" for line in face_lines))
    summary = summarize_scores(rows)
    if unmatched_labels is not None:
        summary["labels_without_a_photo"] = len(unmatched_labels)
        if unmatched_labels:
            summary["labels_without_a_photo_e_g"] = unmatched_labels[:5]
    if run.passed_over:
        summary["passed_over"] = run.passed_over
    if stopped:
        summary = {"stopped": stopped, **summary}
    staged.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    staged.write_text(out / "index.html", _sheet_html(summary, sheet, labelled))  # the entry: last
    _remove_earlier_cells(out / "sheet", {name for entry in sheet for name in entry.cells}, staged)
    staged.publish()
    return summary


def _remove_earlier_cells(folder: Path, kept: set[str], staged: StagedFiles) -> None:
    """Delete, when `staged` is published, the contact-sheet cells an earlier run wrote into `folder` that this
    run's sheet (`kept`: its cells, as sheet_name names them) does not show: only files m2u recorded as written, at
    a cell's name; a person's file there stays."""
    from m2u.core.fileio import replace_problem

    stale = [
        name
        for name in sorted(os.listdir(folder))
        if SHEET_CELL.fullmatch(name)
        and f"sheet/{name}" not in kept
        and os.path.lexists(folder / name)
        and not replace_problem(folder / name)  # a regular file m2u wrote
    ]
    if stale:
        staged.remove_at_publish(folder, stale, ours=lambda path: SHEET_CELL.fullmatch(path.name) is not None)


def summary_figures(summary: dict) -> list[tuple[str, str]]:
    """The summary's figures as (key, text) for a person to read (the command's lines, the contact sheet's head):
    those with no value here left out (Dice, IoU and the remnants without labels), a mapping as "key value, ..."
    and a list as "a, b" (not Python's braces and quotes); statuses and passed_over are said on their own lines."""

    def said(value: Any) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{key} {said(item)}" for key, item in value.items())
        if isinstance(value, list | tuple):
            return ", ".join(said(item) for item in value)
        return str(value)

    return [
        (key, said(value))
        for key, value in summary.items()
        if key not in ("statuses", "passed_over") and value is not None and value != {}
    ]


def _sheet_html(summary: dict, sheet: list[SheetRow], labelled: bool) -> str:
    heads = ["photo", "predicted mask", "restored"] + (["label"] if labelled else []) + ["figures"]
    lines = []
    for row, names, name in ((entry.row, entry.cells, entry.name) for entry in sheet):
        figures = f"{html.escape(row.status)}<br>found {row.faces_found}, restored {row.faces_restored}"
        if row.dice is not None:
            if row.remnant is None:  # an empty label: no label pixel to leave
                figures += f"<br>Dice {row.dice:.3f}<br>IoU {row.iou:.3f}<br>remnant: none (empty label)"
            else:
                figures += f"<br>Dice {row.dice:.3f}<br>IoU {row.iou:.3f}<br>remnant {row.remnant:.3f}"
                figures += f" (near {row.remnant_near:.3f})"
        if row.reason:
            figures += f"<br><small>{html.escape(row.reason)}</small>"
        title = f"<td><small>{html.escape(name)}</small></td>"
        if not names:  # unreadable, or failed: its status and reason, no pictures
            lines.append(
                f'<tr class="failed">{title}<td colspan="{len(heads) - 1}"></td><td>{figures}</td></tr>'
            )
            continue
        cells = "".join(f'<td><img src="{html.escape(n)}" loading="lazy"></td>' for n in names)
        if labelled and len(names) == 3:
            cells += "<td></td>"
        flagged = ' class="failed"' if row.status in INPUT_PROBLEMS else ""
        lines.append(f"<tr{flagged}>{title}{cells}<td>{figures}</td></tr>")
    keys = ", ".join(f"{key}: {text}" for key, text in summary_figures(summary))
    statuses = ", ".join(f"{status} {n}" for status, n in summary.get("statuses", {}).items())
    passed = "".join(f"<p>{html.escape(sentence)}</p>" for sentence in summary.get("passed_over", []))
    return f"""<!doctype html><meta charset="utf-8"><title>m2u-eval real-masks</title>
<style>tr.failed td {{background: #fde8e8}}</style>
<h1>m2u-eval real-masks</h1>
<p>{html.escape(keys)}</p>
<p><b>photos by status:</b> {html.escape(statuses)}</p>
{passed}
<p>Boxes on the photo: green restored, orange left as it is (see the reason), grey an uncertain detection judged no
face. Predicted mask: M-Seg's, mapped back to the photo (restored faces only).</p>
<table border="1" cellpadding="2"><tr><th>name</th>{"".join(f"<th>{h}</th>" for h in heads)}</tr>
{"".join(lines)}
</table>
"""

"""By-eye labels of the faces a run of m2u-unmask left as they are: which of them were masked faces the masked-face
decision skipped (issue 23, item 5: "no masked face is skipped"), bare faces, detections of no face, or another box
on a face some other box stands for.

The figures of `m2u-eval real-masks` count faces left, not why: a face left in a photo of masked people may be a
bystander without a mask, a second box on a restored face or a masked face the decision got wrong, and only a person
looking can tell. A labels file records that look once (a JSON object whose "faces" list holds one entry per face box
looked at: "photo", the file name; "box", [left, top, right, bottom] in the photo's pixels; "label", one of LABELS;
"note", optional), and `check_left_faces` reads a run's faces.jsonl against it, so a later run says at once which
masked faces are still skipped, which were restored since, and which left faces nobody has labelled yet (boxes move
when a detector changes: those are listed to be looked at, never guessed).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from m2u.core.boxes import box_iou, covered_share

__all__ = ["LABELS", "FaceLabel", "FaceLabelError", "check_left_faces", "read_face_labels"]

# "masked": a face wearing a mask over its mouth (the decision should restore it); "bare": a face with no mask over
# its mouth (a mask pulled under the chin included: left as it is, rightly); "no face": the box holds no face (trees,
# a garment, the back of a head); "same face": a part of, or a second box on, a face another box stands for (an ear,
# an eye, the face with the chest); "unclear": too small or blurred to tell.
LABELS = ("masked", "bare", "no face", "same face", "unclear")
# A left face is the labelled one where their boxes overlap by at least this IoU (a detector's box on the same face
# moves by a few pixels between versions; two faces side by side overlap far less).
MATCH_IOU = 0.5
# A labelled masked face counts as restored where a restored face's box covers at least this share of the labelled
# box: the face restored through another box of it (an eye-and-brow box left, the whole face restored). A share of
# the labelled box, not of the smaller one: a small restored neighbour inside a large labelled box restores nothing.
RESTORED_OVERLAP = 0.3


class FaceLabelError(ValueError):
    """A labels file m2u cannot read: the message names the file and the entry."""


@dataclass(frozen=True)
class FaceLabel:
    photo: str
    box: tuple[float, float, float, float]
    label: str
    note: str = ""


def read_face_labels(path: Path) -> list[FaceLabel]:
    """The labels in `path` (see the module docstring); FaceLabelError on the first malformed entry."""
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))["faces"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FaceLabelError(f"{path}: not a face labels file ({error})") from None
    if not isinstance(entries, list):
        raise FaceLabelError(f'{path}: not a face labels file ("faces" is no list)')
    labels: list[FaceLabel] = []
    seen: set[tuple[str, tuple[float, ...]]] = set()
    for k, entry in enumerate(entries):
        where = f"{path}: entry {k}"
        if not isinstance(entry, dict) or not all(key in entry for key in ("photo", "box", "label")):
            raise FaceLabelError(f'{where}: needs "photo", "box" and "label"')
        raw = entry["box"]
        if not (
            isinstance(raw, list)
            and len(raw) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in raw)
            and raw[2] > raw[0]
            and raw[3] > raw[1]
        ):
            raise FaceLabelError(f"{where}: box {raw!r} is not [left, top, right, bottom] in pixels")
        box = (float(raw[0]), float(raw[1]), float(raw[2]), float(raw[3]))
        photo = entry["photo"]
        # Runs' rows are matched by file name: a label with a folder in it would never match anything.
        if not isinstance(photo, str) or not photo or Path(photo).name != photo:
            raise FaceLabelError(f"{where}: photo {photo!r} is not a file name (no folder)")
        if entry["label"] not in LABELS:
            raise FaceLabelError(f"{where}: label {entry['label']!r} is not one of {', '.join(LABELS)}")
        if (photo, box) in seen:
            raise FaceLabelError(f"{where}: {photo} {raw} is labelled twice (it would be counted twice)")
        seen.add((photo, box))
        labels.append(FaceLabel(photo, box, entry["label"], str(entry.get("note", ""))))
    return labels


def _name(row: dict) -> str:
    return Path(str(row.get("photo") or row.get("input") or "")).name


def _where(photo: str, box) -> str:
    return f"{photo} [{', '.join(f'{v:g}' for v in box)}]"


def check_left_faces(face_rows: list[dict], labels: list[FaceLabel]) -> dict:
    """A run's faces (faces.jsonl rows of m2u-unmask or m2u-eval real-masks: "photo" or "input", "box", "restored")
    against `labels`. In each photo the boxes left (faces left as they are and detections judged no face) and the
    labels are paired one to one, the most overlapping pair first (IoU at least MATCH_IOU); a paired box is counted by
    its label ("left_by_label"), an unpaired one listed as unlabelled. Every face labelled masked is then restored (a
    restored face covers RESTORED_OVERLAP of its box), skipped (a box left is paired with it: the decision left a
    masked face) or not found (neither: the detector no longer reports it)."""
    by_photo: dict[str, list[dict]] = {}
    for row in face_rows:
        by_photo.setdefault(_name(row), []).append(row)
    labels_of: dict[str, list[FaceLabel]] = {}
    for label in labels:
        labels_of.setdefault(label.photo, []).append(label)
    left_by_label = dict.fromkeys(LABELS, 0)
    unlabelled: list[str] = []
    paired: set[int] = set()
    for photo, rows in sorted(by_photo.items()):
        boxes = [tuple(float(v) for v in row["box"]) for row in rows if not row.get("restored")]
        candidates = labels_of.get(photo, [])
        overlaps = [
            (box_iou(label.box, box), b, k)
            for b, box in enumerate(boxes)
            for k, label in enumerate(candidates)
        ]
        pairs = sorted((pair for pair in overlaps if pair[0] >= MATCH_IOU), reverse=True)
        boxes_paired: set[int] = set()
        labels_paired: set[int] = set()
        for _, b, k in pairs:
            if b not in boxes_paired and k not in labels_paired:
                boxes_paired.add(b)
                labels_paired.add(k)
                left_by_label[candidates[k].label] += 1
                paired.add(id(candidates[k]))
        unlabelled += [_where(photo, box) for b, box in enumerate(boxes) if b not in boxes_paired]
    skipped, restored, not_found = [], [], []
    for label in labels:
        if label.label != "masked":
            continue
        where = _where(label.photo, label.box) + (f": {label.note}" if label.note else "")
        done = [tuple(float(v) for v in r["box"]) for r in by_photo.get(label.photo, []) if r.get("restored")]
        if any(covered_share(label.box, box) >= RESTORED_OVERLAP for box in done):
            restored.append(where)
        elif id(label) in paired:
            skipped.append(where)
        else:
            not_found.append(where)
    return {
        # Boxes left: faces left as they are and detections judged no face (m2u-eval's "faces_left": the former).
        "boxes_left": sum(left_by_label.values()) + len(unlabelled),
        "left_by_label": left_by_label,
        "left_unlabelled": len(unlabelled),
        "unlabelled_left_faces": unlabelled,
        "labelled_masked_faces": len(skipped) + len(restored) + len(not_found),
        "masked_faces_skipped": len(skipped),
        "masked_faces_restored": len(restored),
        "masked_faces_not_found": len(not_found),
        "skipped": skipped,
        "restored_since_labelled": restored,
        "not_found": not_found,
    }

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
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LABELS", "FaceLabel", "FaceLabelError", "check_left_faces", "read_face_labels"]

# "masked": a face wearing a mask over its mouth (the decision should restore it); "bare": a face with no mask over
# its mouth (a mask pulled under the chin included: left as it is, rightly); "no face": the box holds no face (trees,
# a garment, the back of a head); "same face": a part of, or a second box on, a face another box stands for (an ear,
# an eye, the face with the chest); "unclear": too small or blurred to tell.
LABELS = ("masked", "bare", "no face", "same face", "unclear")
# A left face is the labelled one where their boxes overlap by at least this IoU (a detector's box on the same face
# moves by a few pixels between versions; two faces side by side overlap far less).
MATCH_IOU = 0.5
# A labelled masked face counts as restored where a restored face's box overlaps it by at least this share of the
# smaller box: the face restored through another box of it (an eye-and-brow box left, the whole face restored).
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
    labels = []
    for k, entry in enumerate(entries):
        try:
            box = tuple(float(v) for v in entry["box"])
            label = FaceLabel(str(entry["photo"]), box, str(entry["label"]), str(entry.get("note", "")))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as error:
            raise FaceLabelError(f"{path}: entry {k}: {error!r}") from None
        if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
            raise FaceLabelError(f"{path}: entry {k}: box {list(box)} is not [left, top, right, bottom]")
        if label.label not in LABELS:
            raise FaceLabelError(
                f"{path}: entry {k}: label {label.label!r} is not one of {', '.join(LABELS)}"
            )
        labels.append(label)
    return labels


def _area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _intersection(a, b) -> float:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def _iou(a, b) -> float:
    inter = _intersection(a, b)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _inside_share(a, b) -> float:
    smaller = min(_area(a), _area(b))
    return _intersection(a, b) / smaller if smaller > 0 else 0.0


def _name(row: dict) -> str:
    return Path(str(row.get("photo") or row.get("input") or "")).name


def _where(photo: str, box) -> str:
    return f"{photo} [{', '.join(f'{v:g}' for v in box)}]"


def check_left_faces(face_rows: list[dict], labels: list[FaceLabel]) -> dict:
    """A run's faces (faces.jsonl rows of m2u-unmask or m2u-eval real-masks: "photo" or "input", "box", "restored")
    against `labels`. Every left face is matched to the label whose box overlaps it most (IoU at least MATCH_IOU, same
    photo) and counted by that label ("left_by_label"), or listed as unlabelled. Every face labelled masked is then
    restored (a restored face overlaps it, RESTORED_OVERLAP), skipped (a left face matches it: the decision left a
    masked face) or not found (neither: the detector no longer reports it)."""
    by_photo: dict[str, list[dict]] = {}
    for row in face_rows:
        by_photo.setdefault(_name(row), []).append(row)
    labels_of: dict[str, list[FaceLabel]] = {}
    for label in labels:
        labels_of.setdefault(label.photo, []).append(label)
    left_by_label = dict.fromkeys(LABELS, 0)
    unlabelled = []
    for photo, rows in sorted(by_photo.items()):
        for row in rows:
            if row.get("restored"):
                continue
            box = tuple(float(v) for v in row["box"])
            best = max(labels_of.get(photo, []), key=lambda lab: _iou(lab.box, box), default=None)
            if best is None or _iou(best.box, box) < MATCH_IOU:
                unlabelled.append(_where(photo, box))
            else:
                left_by_label[best.label] += 1
    skipped, restored, not_found = [], [], []
    for label in labels:
        if label.label != "masked":
            continue
        rows = by_photo.get(label.photo, [])
        where = _where(label.photo, label.box) + (f": {label.note}" if label.note else "")
        boxes = [(bool(r.get("restored")), tuple(float(v) for v in r["box"])) for r in rows]
        if any(done and _inside_share(label.box, box) >= RESTORED_OVERLAP for done, box in boxes):
            restored.append(where)
        elif any(not done and _iou(label.box, box) >= MATCH_IOU for done, box in boxes):
            skipped.append(where)
        else:
            not_found.append(where)
    return {
        "faces_left": sum(left_by_label.values()) + len(unlabelled),
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

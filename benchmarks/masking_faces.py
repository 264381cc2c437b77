"""Does m2u-mask's detection with the BlazeFace first pass (DetectorConfig.blazeface_first, the default) lose a face
that the dlib HOG ladder alone (blazeface_first=False, the path before issue 28) finds? Prints the counts and writes
benchmarks/results/masking_faces.json.

    .venv/bin/python benchmarks/masking_faces.py [--files 1000] [--turned 500] [--shared ../shared] [--fit]

Three sets: the first --files CelebA photos, every photo of faces/extras (group photos, LFW crops, a dog), and the
first --turned CelebA photos turned 180 degrees (upside-down faces: the ladder finds many of them and marks them,
Face.problem, so that m2u-mask refuses them; the new default must keep doing so). Per set: faces each path finds, the
ladder's faces the new path has no face for (box IoU below 0.3: must be 0 on the upright sets; on turned photos a
face BlazeFace labels as if upright gets a box shifted from HOG's, and the detail says whether either path marks
it), faces only the new path finds, how many photos BlazeFace decided, faces each path leaves unmarked (what
m2u-mask would mask), CPU ms per photo of each detection. Where both found a face: the mean distance between the two landmark sets (pixels, and in eye
distances), and, on the CelebA set, the IoU of the binary masks apply_mask draws from each with the same seed and
whether both agree on refusing.

`--fit` also refits BLAZEFACE_TO_DLIB_BOX (m2u.masking.detect) by least squares on CelebA files 2000-2599 (faces
both BlazeFace and HOG find), disjoint from the files checked here, and prints the constants.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from m2u.core.boxes import box_iou

REPO = Path(__file__).resolve().parents[1]
FIT_FILES = slice(2000, 2600)


def _eye_distance(landmarks: np.ndarray) -> float:
    return float(np.hypot(*(landmarks[42:48].mean(0) - landmarks[36:42].mean(0))))


def _images(paths: list[Path], turned: bool):
    from m2u.core.imageio import read_image

    for path in paths:
        image = read_image(path)
        yield path, (np.ascontiguousarray(image[::-1, ::-1]) if turned else image)


def _check_set(name: str, paths: list[Path], turned: bool, masks: bool) -> dict:
    from m2u.masking import DetectorConfig, FaceDetector, MaskConfig, MaskingError, apply_mask

    ladder = FaceDetector(DetectorConfig(blazeface_first=False)).load_models()
    new = FaceDetector(DetectorConfig()).load_models()
    counts = dict.fromkeys(
        (
            "photos",
            "ladder_faces",
            "new_faces",
            "ladder_faces_lost",
            "new_only_faces",
            "photos_decided_by_blazeface",
            "ladder_unmarked_faces",
            "new_unmarked_faces",
            "unmarked_new_faces_the_ladder_marks_or_lacks",
        ),
        0,
    )
    lost, unmarked, distances, normalised, mask_ious = [], [], [], [], []
    refusals = {"both": 0, "neither": 0, "ladder_only": 0, "new_only": 0}
    cpu = {"ladder": 0.0, "new": 0.0}
    for path, image in _images(paths, turned):
        start = time.process_time()
        old_faces = ladder.detect(image)
        cpu["ladder"] += time.process_time() - start
        start = time.process_time()
        new_faces = new.detect(image)
        cpu["new"] += time.process_time() - start
        counts["photos"] += 1
        counts["ladder_faces"] += len(old_faces)
        counts["new_faces"] += len(new_faces)
        counts["photos_decided_by_blazeface"] += any(f.detector.startswith("blaze") for f in new_faces)
        counts["ladder_unmarked_faces"] += sum(not f.problem for f in old_faces)
        counts["new_unmarked_faces"] += sum(not f.problem for f in new_faces)
        matched = set()
        for old in old_faces:
            best = max(range(len(new_faces)), key=lambda k: box_iou(old.box, new_faces[k].box), default=None)
            if best is None or box_iou(old.box, new_faces[best].box) < 0.3:
                counts["ladder_faces_lost"] += 1
                lost.append(
                    {
                        "photo": path.name,
                        "ladder_face_marked": old.problem != "",
                        "new_faces": len(new_faces),
                        "new_faces_marked": sum(f.problem != "" for f in new_faces),
                    }
                )
                continue
            matched.add(best)
            face = new_faces[best]
            if face.problem == "" and old.problem != "":
                counts["unmarked_new_faces_the_ladder_marks_or_lacks"] += 1
                unmarked.append(path.name)
            distance = float(np.hypot(*(face.landmarks - old.landmarks).T).mean())
            distances.append(distance)
            normalised.append(distance / max(_eye_distance(old.landmarks), 1e-6))
            if masks:
                results = []
                for f in (old, face):
                    try:
                        results.append(apply_mask(image, f, MaskConfig(), seed=0).mask > 0)
                    except MaskingError:
                        results.append(None)
                a, b = results
                key = {
                    (True, True): "both",
                    (False, False): "neither",
                    (True, False): "ladder_only",
                    (False, True): "new_only",
                }[(a is None, b is None)]
                refusals[key] += 1
                if a is not None and b is not None:
                    mask_ious.append(float((a & b).sum() / max((a | b).sum(), 1)))
        unmatched = [f for k, f in enumerate(new_faces) if k not in matched]
        counts["new_only_faces"] += len(unmatched)
        counts["unmarked_new_faces_the_ladder_marks_or_lacks"] += sum(not f.problem for f in unmatched)
        unmarked += [path.name for f in unmatched if not f.problem]

    def spread(values: list[float]) -> dict | None:
        if not values:
            return None
        v = np.asarray(values)
        return {
            "mean": round(float(v.mean()), 4),
            "median": round(float(np.median(v)), 4),
            "p95": round(float(np.percentile(v, 95)), 4),
            "max": round(float(v.max()), 4),
            "min": round(float(v.min()), 4),
        }

    result = {
        "set": name,
        **counts,
        # Each ladder face without a new face over it: whether the ladder marked it (upside down: refused by
        # m2u-mask either way) and how many faces the new path found on that photo, and marked.
        "ladder_faces_lost_detail": lost,
        "unmarked_new_faces_the_ladder_marks_or_lacks_in": unmarked,
        "cpu_ms_per_photo": {k: round(1000 * v / max(len(paths), 1), 2) for k, v in cpu.items()},
        "landmark_mean_distance_px": spread(distances),
        "landmark_mean_distance_eye_distances": spread(normalised),
    }
    if masks:
        result["mask_iou_same_seed"] = spread(mask_ious)
        result["refused_by_apply_mask"] = refusals
    print(
        f"{name}: {counts['photos']} photos, ladder {counts['ladder_faces']} faces, new {counts['new_faces']} "
        f"({counts['photos_decided_by_blazeface']} photos by BlazeFace); lost {counts['ladder_faces_lost']}, "
        f"new only {counts['new_only_faces']}; unmarked ladder {counts['ladder_unmarked_faces']}, new "
        f"{counts['new_unmarked_faces']}; CPU ms/photo {result['cpu_ms_per_photo']}",
        flush=True,
    )
    return result


def _fit(paths: list[Path]) -> dict:
    """Least squares for BLAZEFACE_TO_DLIB_BOX on faces both BlazeFace and the HOG ladder find."""
    from m2u.masking import DetectorConfig, FaceDetector
    from m2u.masking.blazeface import blazeface_detect
    from m2u.masking.detect import BLAZEFACE_TO_DLIB_BOX, blazeface_dlib_box
    from m2u.masking.geometry import LEFT_EYE, RIGHT_EYE

    ladder = FaceDetector(DetectorConfig(blazeface_first=False))
    pairs, eye_pairs = [], []
    for _, image in _images(paths, False):
        found = blazeface_detect(image, "short", 0.5)
        for face in ladder.detect(image):
            best = max(found, key=lambda d: box_iou(face.box, d.box), default=None)
            if best is not None and box_iou(face.box, best.box) >= 0.3:
                pairs.append((best.keypoints.astype(np.float64), np.asarray(face.box, np.float64)))
                points = face.landmarks.astype(np.float64)
                eye_pairs.append(
                    (best.keypoints.astype(np.float64), points[LEFT_EYE].mean(0), points[RIGHT_EYE].mean(0))
                )
    mids = np.array([(k[0] + k[1]) / 2 for k, _ in pairs])
    eyes = np.array([k[1] - k[0] for k, _ in pairs])
    down = np.array([k[3] - (k[0] + k[1]) / 2 for k, _ in pairs])
    boxes = np.array([b for _, b in pairs])
    centres = np.c_[(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2] - mids
    # centre offset = a * eyes + b * down (one pair of coefficients for x and y: rotation-invariant)
    design = np.vstack([np.c_[eyes[:, 0], down[:, 0]], np.c_[eyes[:, 1], down[:, 1]]])
    a, b = np.linalg.lstsq(design, np.r_[centres[:, 0], centres[:, 1]], rcond=None)[0]
    sizes = np.c_[np.hypot(*eyes.T), np.hypot(*down.T)]
    g, h = np.linalg.lstsq(sizes, boxes[:, 2] - boxes[:, 0], rcond=None)[0]
    fitted = tuple(round(float(x), 3) for x in (a, b, g, h))
    width = (boxes[:, 2] - boxes[:, 0])[:, None]
    in_use = np.array([blazeface_dlib_box(k) for k, _ in pairs], np.float64)
    error = np.abs(in_use - boxes) / width
    print(f"fit on {len(pairs)} faces: {fitted} (in use: {BLAZEFACE_TO_DLIB_BOX})", flush=True)
    eyes_fit = _fit_eyes(eye_pairs)
    return {
        "faces": len(pairs),
        "fitted": fitted,
        "in_use": BLAZEFACE_TO_DLIB_BOX,
        "corner_error_box_widths_mean_in_use": [round(float(x), 3) for x in error.mean(0)],
        "eyes": eyes_fit,
    }


def _fit_eyes(eye_pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """BLAZEFACE_TO_DLIB_EYES: the median offset of dlib's eye centres from BlazeFace's eye keypoints, in the
    keypoints' eye frame, and how far the constants in use leave dlib's eye centres (eye distances)."""
    from m2u.masking.detect import BLAZEFACE_TO_DLIB_EYES, blazeface_eye_centres

    offsets, errors = [], []
    for keypoints, left, right in eye_pairs:
        axis = keypoints[1] - keypoints[0]
        distance = float(np.hypot(*axis))
        along = axis / distance
        across = np.array([-along[1], along[0]])
        dlib_eyes = np.stack([left, right])
        offsets.append(
            [[(e - k) @ along / distance, (e - k) @ across / distance] for e, k in zip(dlib_eyes, keypoints)]
        )
        errors.append(np.hypot(*(blazeface_eye_centres(keypoints) - dlib_eyes).T) / distance)
    fitted = tuple(tuple(round(float(x), 3) for x in eye) for eye in np.median(np.array(offsets), axis=0))
    errors_array = np.array(errors)
    print(f"eye fit on {len(eye_pairs)} faces: {fitted} (in use: {BLAZEFACE_TO_DLIB_EYES})", flush=True)
    return {
        "faces": len(eye_pairs),
        "fitted": fitted,
        "in_use": BLAZEFACE_TO_DLIB_EYES,
        "eye_error_eye_distances_median_in_use": [
            round(float(x), 4) for x in np.median(errors_array, axis=0)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--turned", type=int, default=500)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "masking_faces.json")
    parser.add_argument("--fit", action="store_true", help="refit BLAZEFACE_TO_DLIB_BOX on files 2000-2599")
    args = parser.parse_args()
    faces = args.shared / "faces"
    celeba = sorted(p for p in (faces / "celeba").iterdir() if p.suffix.lower() == ".jpg")
    extras = sorted(p for p in (faces / "extras").rglob("*") if p.is_file())
    if not celeba:
        raise SystemExit(f"no CelebA files in {faces / 'celeba'}")
    result = {
        "sets": [
            _check_set(f"celeba first {args.files}", celeba[: args.files], turned=False, masks=True),
            _check_set("extras", extras, turned=False, masks=False),
            _check_set(f"celeba first {args.turned} turned 180 degrees", celeba[: args.turned], True, False),
        ]
    }
    if args.fit:
        result["box_fit"] = _fit(celeba[FIT_FILES])
    upright, turned = result["sets"][:2], result["sets"][2]
    # The requirement: on upright photos no face the ladder finds is lost.
    result["faces_lost_upright"] = sum(s["ladder_faces_lost"] for s in upright)
    # Turned photos: a lost ladder face is harmless where the new path marks every face it finds on that photo.
    result["turned_lost_with_an_unmarked_new_face"] = sum(
        d["new_faces_marked"] < d["new_faces"] for d in turned["ladder_faces_lost_detail"]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"ladder faces lost by the new default on upright photos: {result['faces_lost_upright']}; on turned "
        f"photos {turned['ladder_faces_lost']} (with an unmarked new face: "
        f"{result['turned_lost_with_an_unmarked_new_face']}); written {args.out}"
    )


if __name__ == "__main__":
    main()

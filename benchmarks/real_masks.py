"""Real masks (issue 23): faces found, M-Seg's Dice against hand-drawn labels, and the masked-face decision, on the
shared folders. Prints the figures and writes benchmarks/results/real_masks.json; the contact sheets go to
runs/real_masks/ (they show the shared photos: never committed).

    .venv/bin/python benchmarks/real_masks.py [--shared ../shared] [--celeba 200] [--with-dlib] [--model FOLDER]

Detection (item 1), per detector: photos of ../shared/faces/real-masked with at least one face found (no boxes are
labelled there: the contact sheet shows what was found), tight crops of real-mask-seg/image whose face is found (a
detection box holding the centre of the labelled mask), and detections on faceless images (benchmarks/unmask.py's
`faceless_images`, 57 images made without downloading, plus dlib's example photo of dogs). The BlazeFace passes run
once per image at a low threshold and every candidate is read off those runs; the shipped detector
(`RealFaceDetector`, with its dlib fallback) then runs for real. `--with-dlib` adds the dlib masked-face cascade
alone (minutes on the large photos).

Segmentation (item 2): `m2u-eval real-masks` (m2u.evaluation.real_masks) with the shipped model on
real-mask-seg against its labels: Dice, IoU and the remnant share where a face is restored and over all photos, with
every face found restored (M-Seg's own figure: "real_mask_seg_labelled_every_face"; the decision's classifier was
trained on these crops, so its gate is measured on real-masked instead).

The decision (item 5): the same evaluation without labels, counting faces restored and left as they are, on CelebA
photos of the test split of the identity split (every k-th, offset 0: `--celeba` of them), on every photo of
../shared/faces/extras, on the faceless images and on real-masked. The decision's thresholds were chosen on other
photos (MaskedFaceRule's docstring: CelebA at offset 1 and real-mask-seg). Which faces left on real-masked are
masked faces the decision skipped, and which are bare faces, no face or a second box on one face, only a person can
tell: `--face-labels` (benchmarks/labels/real_masked_left_faces.json, labelled by eye) gives "left_faces_by_eye" in
its figures, with the masked faces still skipped, those restored since and the left faces nobody has labelled yet.

Upside down: real-masked and real-mask-seg turned 180 degrees ("real_masked_turned", "real_mask_seg_turned"): a face
restored in the photo as it is there is restored upside down (RealFaceDetectorConfig's orientation check and the
decision should leave each one as it is); a photo with nothing restored, a face left as upside down or no face at
all, is tried again turned (UnmaskConfig.try_turned: 180 degrees, then 90 either way), and the faces restored
that way ("faces_restored_turned") are right side up; per set, "photos_restored_right_side_up" counts the photos
restored in the turn that undoes the set's own and "photos_restored_wrong_way_up" the rest (as they are, or turned
another way). "real_masked_sideways" and
"real_masked_sideways_anticlockwise": real-masked turned 90 degrees clockwise and anticlockwise, as photos stored
sideways; a photo whose restored faces all lean far from upright is also tried turned a quarter turn each way
(UnmaskConfig.try_turned, SIDEWAYS_LEAN); and every photo whose sure detections' boxes read turned to the box
orientation net is tried turned that way (`--box-orientation FILE` measures a candidate net).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
RESULTS = REPO / "benchmarks" / "results"
SHEETS = REPO / "runs" / "real_masks"
# Which faces left on real-masked are masked faces the decision skipped (item 5), looked at once and kept as boxes.
FACE_LABELS = REPO / "benchmarks" / "labels" / "real_masked_left_faces.json"
LOW = 0.2  # every BlazeFace run keeps scores down to this; candidates filter higher


def blaze_runs(image: np.ndarray) -> dict:
    from m2u.masking.blazeface import blazeface_detect

    return {
        (model, pad): [(d.box, d.score) for d in blazeface_detect(image, model, LOW, pad=pad)]
        for model in ("short", "full")
        for pad in (0.0, 0.25, 0.5)
    }


def read_off(runs: dict, stages: list[list[tuple[str, float, float]]], min_side: float) -> list:
    """The boxes of the first stage with any detection (model, pad, threshold passes), merged as the shipped
    detector merges a stage's passes (masked_faces.merge_detections)."""
    from m2u.masking.masked_faces import merge_detections

    for stage in stages:
        found = [
            (box, score)
            for model, pad, threshold in stage
            for box, score in runs[(model, pad)]
            if score >= threshold and box[2] - box[0] >= min_side
        ]
        if found:
            return [box for box, _ in merge_detections(found)]
    return []


def label_centre(path: Path) -> tuple[float, float] | None:
    from m2u.evaluation.real_masks import read_label

    ys, xs = np.nonzero(read_label(path))
    return (float(xs.mean()), float(ys.mean())) if len(xs) else None


def detection_figures(sets: dict, detect) -> dict:
    """detect(image) -> boxes. Found rates on real-masked and real-mask-seg, detections on faceless images."""
    real = [bool(detect(image)) for image in sets["real"]]
    seg = [
        centre is not None
        and any(x0 <= centre[0] <= x1 and y0 <= centre[1] <= y1 for x0, y0, x1, y1 in detect(i))
        for i, centre in zip(sets["seg"], sets["seg_centres"])
    ]
    faceless = {name: len(detect(image)) for name, image in zip(sets["faceless_names"], sets["faceless"])}
    return {
        "real_masked_found": f"{sum(real)}/{len(real)}",
        "real_masked_rate": round(sum(real) / len(real), 4),
        "real_mask_seg_found": f"{sum(seg)}/{len(seg)}",
        "real_mask_seg_rate": round(sum(seg) / len(seg), 4),
        "faceless_detections": sum(faceless.values()),
        "faceless_images": len(faceless),
        "faceless_images_with_detections": {k: v for k, v in faceless.items() if v},
    }


def main() -> None:
    import cv2
    import torch
    from unmask import faceless_images, split_photos  # benchmarks/unmask.py

    from m2u.evaluation.real_masks import RealMaskConfig, evaluate_real_masks
    from m2u.inference.masked_rule import MaskedFaceRule
    from m2u.inference.unmask import UnmaskConfig, Unmasker
    from m2u.masking import read_image
    from m2u.masking.masked_faces import BLAZE_CASCADE, MaskedFaceDetector, RealFaceDetector

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--celeba", type=int, default=200)
    parser.add_argument(
        "--with-dlib", action="store_true", help="also the dlib masked-face cascade alone (slow)"
    )
    parser.add_argument(
        "--skip-detection", action="store_true", help="only the evaluations (segmentation, decision)"
    )
    parser.add_argument("--skip-evaluation", action="store_true", help="only the detection figures")
    parser.add_argument(
        "--only",
        help="only these evaluations, comma-separated (e.g. faceless,real_masked_turned); the others are kept "
        "from the JSON",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="a model package folder (its mseg.safetensors and generator.safetensors) to measure instead of the "
        "shipped model",
    )
    parser.add_argument(
        "--classifier", type=Path, help="a mask classifier file to measure instead of the shipped one"
    )
    parser.add_argument(
        "--upside-down-classifier",
        type=Path,
        help="an upside-down classifier file to measure instead of the shipped one",
    )
    parser.add_argument(
        "--box-orientation",
        type=Path,
        help="a box orientation net file to measure instead of the shipped one",
    )
    parser.add_argument(
        "--min-mask-probability",
        type=float,
        help="the decision's classifier threshold (default: MaskedFaceRule's), as chosen for --classifier on the "
        "tuning photos (benchmarks/tune_masked_rule.py)",
    )
    parser.add_argument(
        "--min-mouth-probability",
        type=float,
        help="the M-Seg route's classifier threshold (default: MaskedFaceRule's), as --min-mask-probability",
    )
    parser.add_argument(
        "--no-try-turned",
        action="store_true",
        help="without m2u-unmask's turned try (UnmaskConfig.try_turned), to measure what it adds",
    )
    parser.add_argument(
        "--face-labels",
        type=Path,
        default=FACE_LABELS,
        help="by-eye labels of the faces left on real-masked (m2u.evaluation.face_labels): which are masked faces "
        "the decision skipped",
    )
    parser.add_argument("--sheets", type=Path, default=SHEETS, help="where the contact sheets go")
    parser.add_argument("-o", "--out", type=Path, default=RESULTS / "real_masks.json")
    args = parser.parse_args()
    from m2u.evaluation.face_labels import FaceLabelError, read_face_labels

    try:  # read before the runs: a bad labels file must not cost a run's minutes first
        face_labels = read_face_labels(args.face_labels)
    except FaceLabelError as error:
        parser.error(str(error))
    use_classifier(args.classifier)
    use_classifier(args.upside_down_classifier, "UPSIDE_DOWN_CLASSIFIER")
    use_classifier(args.box_orientation, "BOX_ORIENTATION_NET")
    # One thread: on a shared machine torch's worker threads spin against each other (tests/evaluation/conftest.py).
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    faces = args.shared / "faces"
    real_dir, seg_dir, label_dir = (
        faces / "real-masked",
        faces / "real-mask-seg" / "image",
        faces / "real-mask-seg" / "mask",
    )
    if not real_dir.is_dir() or not seg_dir.is_dir():
        raise SystemExit(f"no real masked photos under {faces} (give --shared)")
    result: dict = {}
    start = time.perf_counter()

    if not args.skip_detection:
        seg_files = sorted(seg_dir.iterdir())
        negatives = faceless_images()
        dogs = faces / "extras" / "dlib-examples" / "dogs.jpg"
        if dogs.is_file():
            negatives.append(("dlib example dogs.jpg", read_image(dogs)))
        sets = {
            "real": [read_image(p) for p in sorted(real_dir.iterdir())],
            "seg": [read_image(p) for p in seg_files],
            "seg_centres": [label_centre(label_dir / p.name) for p in seg_files],
            "faceless": [image for _, image in negatives],
            "faceless_names": [name for name, _ in negatives],
        }
        runs = {id(image): blaze_runs(image) for key in ("real", "seg", "faceless") for image in sets[key]}
        print(f"BlazeFace runs: {time.perf_counter() - start:.0f} s", flush=True)
        every = [(m, p) for p in (0.0, 0.25, 0.5) for m in ("full", "short")]
        candidates = {
            "blaze full": [[("full", 0.0, 0.5)]],
            "blaze short": [[("short", 0.0, 0.5)]],
            "blaze full + short": [[("full", 0.0, 0.5), ("short", 0.0, 0.5)]],
            "blaze full + short, pads 0/0.25": [[(m, p, 0.5) for m, p in every[:4]]],
            "blaze full + short, pads 0/0.25/0.5": [[(m, p, 0.5) for m, p in every]],
            "blaze full + short, pads 0/0.25/0.5, at 0.6": [[(m, p, 0.6) for m, p in every]],
            "blaze full + short, pads 0/0.25/0.5, at 0.7 (the sure score)": [[(m, p, 0.7) for m, p in every]],
        }
        shipped = [[(p.model, p.pad, p.threshold) for p in stage] for stage in BLAZE_CASCADE]
        candidates["shipped BlazeFace stages (no fallback)"] = shipped
        detection = {}
        for name, stages in candidates.items():
            for min_side in (0, 24):
                label = name if not min_side else f"{name}, boxes >= {min_side} px"
                figures = detection_figures(
                    sets, lambda image, s=stages, m=min_side: read_off(runs[id(image)], s, m)
                )
                detection[label] = figures
                print(
                    f"{label:60s} real {figures['real_masked_found']}, seg {figures['real_mask_seg_found']}, "
                    f"faceless {figures['faceless_detections']} on {figures['faceless_images']}",
                    flush=True,
                )
        if args.with_dlib:
            detector = RealFaceDetector().load_models()
            t0 = time.process_time()
            figures = detection_figures(sets, lambda image: [f.box for f in detector.detect(image)])
            count = len(sets["real"]) + len(sets["seg"]) + len(negatives)
            figures["cpu_seconds_per_image"] = round((time.process_time() - t0) / count, 4)
            detection[
                "RealFaceDetector, every detection (sure and uncertain; the dlib fallback included)"
            ] = figures
            print(f"shipped RealFaceDetector: {figures}", flush=True)
            masked = MaskedFaceDetector().load_models()
            detection["dlib masked-face cascade alone"] = detection_figures(
                sets, lambda image: [f.box for f in masked.detect(image)]
            )
            print(f"dlib masked cascade: {detection['dlib masked-face cascade alone']}", flush=True)
        result["detection"] = detection

    if args.skip_evaluation:
        _write_merged(args.out, result)
        return
    rule = MaskedFaceRule()
    for field in ("min_mask_probability", "min_mouth_probability"):
        if getattr(args, field) is not None:
            rule = dataclasses.replace(rule, **{field: getattr(args, field)})
    from m2u.inference.pretrained import GENERATOR_FILE, MSEG_FILE

    files = (args.model / MSEG_FILE, args.model / GENERATOR_FILE) if args.model else (None, None)
    unmasker = Unmasker.from_files(
        *files, UnmaskConfig(progress=False, device="cpu", rule=rule, try_turned=not args.no_try_turned)
    )
    # M-Seg's own figure on the labelled crops: every face found restored (the decision's classifier saw these
    # crops in training, so its gate is measured on real-masked instead).
    every_face = Unmasker.from_files(*files, UnmaskConfig(progress=False, device="cpu", masked_only=False))
    config = RealMaskConfig(thumb=160)
    evaluations = {}
    with tempfile.TemporaryDirectory() as tmp:
        celeba = split_photos(faces / "celeba", args.celeba, "test", 0)
        celeba_list = Path(tmp) / "celeba.txt"
        celeba_list.write_text("".join(f"{p}\n" for p in celeba))
        faceless_dir = Path(tmp) / "faceless"
        faceless_dir.mkdir()
        for k, (name, image) in enumerate(faceless_images()):
            cv2.imwrite(
                str(faceless_dir / f"{k:02d}_{name.replace(' ', '_')}.png"),
                cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
            )
        runs_of = {
            "real_mask_seg_labelled_every_face": ([str(seg_dir)], label_dir),
            "real_masked": ([str(real_dir)], None),
            "celeba_unmasked": ([str(celeba_list)], None),
            "extras_unmasked": ([str(faces / "extras")], None),
            "faceless": ([str(faceless_dir)], None),
            "real_masked_turned": ([str(Path(tmp) / "real_masked_turned")], None),
            "real_mask_seg_turned": ([str(Path(tmp) / "real_mask_seg_turned")], None),
            "real_masked_sideways": ([str(Path(tmp) / "real_masked_sideways")], None),
            "real_masked_sideways_anticlockwise": (
                [str(Path(tmp) / "real_masked_sideways_anticlockwise")],
                None,
            ),
        }
        only = set(args.only.split(",")) if args.only else set(runs_of)
        turned_sets = {
            "real_masked_turned": (real_dir, 2),
            "real_mask_seg_turned": (seg_dir, 2),
            "real_masked_sideways": (real_dir, 3),
            "real_masked_sideways_anticlockwise": (real_dir, 1),
        }
        for name, (source, quarter_turns) in turned_sets.items():
            if name in only:
                _write_turned(source, Path(tmp) / name, quarter_turns)
        for name, (inputs, labels) in runs_of.items():
            if name not in only:
                continue
            out = args.sheets / name
            if out.exists():
                import shutil

                shutil.rmtree(out)  # the benchmark's own output folder from an earlier run
            t0 = time.perf_counter()
            chosen = every_face if name.endswith("every_face") else unmasker
            summary = evaluate_real_masks(inputs, out, chosen, labels, config)
            summary.update(right_side_up(summary, turned_sets.get(name, (None, 0))[1]))
            if name == "real_masked":
                summary["left_faces_by_eye"] = left_faces_by_eye(out / "faces.jsonl", face_labels)
                summary["left_faces_by_eye"]["labels"] = shown_path(args.face_labels)
            summary["seconds"] = round(time.perf_counter() - t0, 1)
            evaluations[name] = summary
            print(f"{name}: {json.dumps(summary)}", flush=True)
    earlier = json.loads(args.out.read_text()) if args.only and args.out.is_file() else {}
    if earlier:
        evaluations = {**earlier.get("evaluations", {}), **evaluations}
    result["evaluations"] = evaluations
    result["decision_rule"] = {k: getattr(rule, k) for k in rule.__dataclass_fields__}
    result["protocol"] = {
        "try_turned": not args.no_try_turned,
        "celeba_photos": args.celeba,
        "celeba_selection": "test split of the identity hash split (seed 0), every k-th in name order, offset 0",
        "model": str(args.model)
        if args.model
        else "the shipped model (m2u.inference.pretrained.DEFAULT_MODEL)",
        "mask_classifier": str(args.classifier) if args.classifier else "the shipped one (MASK_CLASSIFIER)",
        "upside_down_classifier": str(args.upside_down_classifier)
        if args.upside_down_classifier
        else "the shipped one (UPSIDE_DOWN_CLASSIFIER)",
        "box_orientation_net": str(args.box_orientation)
        if args.box_orientation
        else "the shipped one (BOX_ORIENTATION_NET)",
        "sheets": str(args.sheets.resolve().relative_to(REPO))
        if args.sheets.resolve().is_relative_to(REPO)
        else str(args.sheets),
        "machine": platform.platform(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if args.only:
        # A partial run: the other sets' figures come from the file, and so does the last full run's time.
        earlier_protocol = earlier.get("protocol", {})
        result["protocol"]["only"] = sorted(only)
        result["protocol"]["full_run_seconds"] = earlier_protocol.get(
            "full_run_seconds", None if "only" in earlier_protocol else earlier_protocol.get("seconds")
        )
    _write_merged(args.out, result)


def left_faces_by_eye(faces_jsonl: Path, labels: list) -> dict:
    """The run's faces (`faces_jsonl`) against the by-eye labels: masked faces skipped, restored since they were
    labelled or no longer found, and the boxes left by label (m2u.evaluation.face_labels.check_left_faces)."""
    from m2u.evaluation.face_labels import check_left_faces

    rows = [json.loads(line) for line in faces_jsonl.read_text().splitlines() if line.strip()]
    return check_left_faces(rows, labels)


def shown_path(path: Path) -> str:
    """`path` relative to the repository where it lies in it."""
    return str(path.resolve().relative_to(REPO)) if path.resolve().is_relative_to(REPO) else str(path)


def right_side_up(summary: dict, quarter_turns: int) -> dict:
    """For a set whose photos were turned `quarter_turns` times 90 degrees anticlockwise: the photos restored in
    the turn that undoes it (right side up), and those restored in any other (as they are, or turned wrongly)."""
    by_turn = summary["photos_restored_by_turn"]
    right = by_turn.get(str((360 - 90 * quarter_turns) % 360), 0)
    return {
        "photos_restored_right_side_up": right,
        "photos_restored_wrong_way_up": sum(by_turn.values()) - right,
    }


def _write_turned(source: Path, target: Path, quarter_turns: int) -> None:
    """Every photo of `source` turned `quarter_turns` times 90 degrees anticlockwise (np.rot90), as PNG in
    `target`."""
    import cv2

    from m2u.masking import read_image

    target.mkdir()
    for path in sorted(source.iterdir()):
        image = read_image(path)
        turned = cv2.cvtColor(np.ascontiguousarray(np.rot90(image, quarter_turns)), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(target / f"{path.stem}.png"), turned)


def use_classifier(path: Path | None, which: str = "MASK_CLASSIFIER") -> None:
    """Measure the classifier at `path` (a candidate) instead of the shipped file: `which` names the module's path
    (MASK_CLASSIFIER, UPSIDE_DOWN_CLASSIFIER or BOX_ORIENTATION_NET), read when the net is first loaded."""
    if path is None:
        return
    import m2u.inference.mask_presence as mask_presence

    if not path.is_file():
        raise SystemExit(f"no classifier file at {path}")
    setattr(mask_presence, which, path.resolve())


def _write_merged(path: Path, result: dict) -> None:
    """The figures of this run over those already in `path` (a --skip-detection run keeps the detection figures)."""
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.update(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

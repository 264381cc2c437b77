"""Train the masked-face HOG detector that m2u-unmask's cascade ships (masking/models/masked_face_hog.svm).

    .venv/bin/python benchmarks/train_masked_detector.py [--photos 1500] [--C 15] [--shared ../shared]
                                                          [-o runs/masked_face_hog.svm] [--install]

Writes the detector to -o (default runs/masked_face_hog.svm); the shipped one (masking/models/masked_face_hog.svm)
is replaced only with --install, which copies the new file over it once training has finished (as
benchmarks/release_recipe.py --install does with the model package). -o naming the shipped file is refused.

Training data: CelebA photos (`{identity}_{imageid}.jpg`) of the TRAIN split of the hash split by identity with
seed 0 (`m2u.datasets.splits.assign_split`; benchmarks/unmask.py evaluates on the test split, so no identity is
shared), every k-th in name order, in three groups masked by `m2u-mask --mask-type random --seed 1` with the
templates' own colours, `--color random` and `--pattern random`. Boxes: the ones m2u-mask records per face (dlib's
frontal HOG detector on the unmasked photo), so the new detector's boxes follow the same convention. dlib's
structural-SVM trainer (`dlib.train_simple_object_detector`, 80x80 window, left-right flips, the given C) learns
one HOG filter; the result is a ~45 KB file in dlib's serialised format.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DEFAULT_OUT = REPO / "runs" / "masked_face_hog.svm"


def install_detector(trained: Path, target: Path) -> Path:
    """Copy a trained detector over `target` (the shipped model), atomically: a partial copy never replaces it."""
    import shutil

    temporary = target.with_name(f".{target.name}.installing")
    shutil.copyfile(trained, temporary)
    temporary.replace(target)
    return target


def main(argv: list[str] | None = None) -> None:
    from m2u.masking.masked_faces import MASKED_HOG_MODEL

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=1500)
    parser.add_argument("--C", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="where to write the detector (default: %(default)s)",
    )
    parser.add_argument(
        "--install",
        action="store_true",
        help=f"also replace the shipped detector ({MASKED_HOG_MODEL}) with the new one",
    )
    args = parser.parse_args(argv)
    if args.out.resolve() == Path(MASKED_HOG_MODEL).resolve():
        parser.error(
            f"-o {args.out} is the shipped detector: write elsewhere and pass --install to replace it"
        )
    import dlib
    from unmask import build_eval_set, split_photos  # benchmarks/unmask.py

    from m2u.masking import read_image

    photos = split_photos(args.shared / "faces" / "celeba", args.photos, "train")
    if not photos:
        raise SystemExit(f"no CelebA photos under {args.shared / 'faces' / 'celeba'} (give --shared)")
    with tempfile.TemporaryDirectory() as tmp:
        records = build_eval_set(photos, Path(tmp), seed=1)
        by_file: dict[str, list] = {}
        for r in records:
            by_file.setdefault(r["masked"], []).append(dlib.rectangle(*(int(v) for v in r["box"])))
        files = sorted(by_file)
        images = [read_image(f) for f in files]
        boxes = [by_file[f] for f in files]
    options = dlib.simple_object_detector_training_options()
    options.add_left_right_image_flips = True
    options.C = args.C
    options.num_threads = args.threads
    options.detection_window_size = 80 * 80
    start = time.perf_counter()
    detector = dlib.train_simple_object_detector(images, boxes, options)
    seconds = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    detector.save(str(args.out))
    on_training = dlib.test_simple_object_detector(images, boxes, detector)
    summary = {
        "photos": len(photos),
        "masked_photos": len(files),
        "faces": len(records),
        "C": args.C,
        "train_seconds": round(seconds, 1),
        "training_set_precision": round(on_training.precision, 4),
        "training_set_recall": round(on_training.recall, 4),
        "model": str(args.out),
    }
    if args.install:
        summary["installed_as"] = str(install_detector(args.out, Path(MASKED_HOG_MODEL)))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

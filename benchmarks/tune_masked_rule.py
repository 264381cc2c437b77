"""Choose MaskedFaceRule's thresholds for a model pair (issue 23, item 5): the decision's evidence on every face of
the TUNING photos, and how many faces each candidate rule restores there. Prints the table and writes
benchmarks/results/masked_rule_tuning.json.

    .venv/bin/python benchmarks/tune_masked_rule.py [--mseg FILE --generator FILE] [--shared ../shared]

Tuning photos (never the measured ones of benchmarks/real_masks.py): CelebA photos of the test split of the identity
hash split at offset 1 (real_masks.py measures offset 0), bare faces that must be left as they are, and the 102
labelled crops of real-mask-seg, masked faces that must be restored (M-Seg never trains on them). The evidence of a
face is the mask classifier's probability, M-Seg's mask fraction on the aligned crop, its coverage of the mouth
and eye regions and how sure M-Seg is of its mask (MaskedFaceRule.evidence); which faces a candidate rule restores is
`MaskedFaceRule.restores` (the classifier route and the M-Seg route, see its docstring). The grid varies the
classifier and shape thresholds; a second table varies `min_mask_confidence`, a third the sure-mask route's
`min_sure_route_mouth_coverage`, each with the other defaults. Only the
decision's evidence is computed here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
RESULTS = REPO / "benchmarks" / "results"
TUNED = (
    "min_mask_probability",
    "min_mouth_probability",
    "min_mouth_coverage",
    "min_mouth_route_fraction",
    "max_mouth_route_eye_coverage",
)


def face_evidence(unmasker, photos: list[Path]) -> list[dict]:
    """The decision's evidence of every face found in `photos` (one dict per face; `photo` names it)."""
    from m2u.masking import read_image

    faces = []
    for path in photos:
        _, restored, left = unmasker.unmask_with_refusals(read_image(path))
        for face in (*restored, *left):
            evidence = getattr(face, "evidence", None)
            if evidence:
                # Under the rule that restores nothing, "no face" marks exactly the uncertain detections: they are
                # faces only where a candidate rule restores them (MaskedFaceRule.uncertain_is_face).
                uncertain = getattr(face, "problem", "").startswith("no face")
                faces.append({"photo": path.name, "uncertain": uncertain, **evidence})
    return faces


def restored_count(faces: list[dict], rule) -> int:
    """Faces `rule` (a MaskedFaceRule) restores, from their recorded evidence (uncertain detections included:
    restored, they are faces)."""
    return sum(1 for f in faces if rule.restores(f))


def one_threshold_table(sets: dict, field: str, values: tuple[float, ...]) -> list[dict]:
    """Faces restored in each set with MaskedFaceRule's `field` at each of `values`, the rest at their defaults."""
    from m2u.inference.masked_rule import MaskedFaceRule

    table = []
    for value in values:
        rule = MaskedFaceRule(**{field: value})
        row = {
            field: value,
            **{f"{name}_restored": restored_count(evidence, rule) for name, evidence in sets.items()},
        }
        table.append(row)
        print(f"{field}={value:<4} with the other defaults: {row}")
    return table


def main() -> None:
    from real_masks import use_classifier
    from unmask import split_photos

    from m2u.inference.masked_rule import MaskedFaceRule
    from m2u.inference.unmask import UnmaskConfig, Unmasker

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mseg", default=None, help="M-Seg model file (default: the shipped model's)")
    parser.add_argument("--generator", default=None, help="generator model file (with --mseg)")
    parser.add_argument(
        "--classifier", type=Path, help="a mask classifier file to tune for instead of the shipped one"
    )
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--celeba", type=int, default=200)
    parser.add_argument("-o", "--out", type=Path, default=RESULTS / "masked_rule_tuning.json")
    args = parser.parse_args()
    use_classifier(args.classifier)
    faces = args.shared / "faces"
    if not (faces / "real-mask-seg" / "image").is_dir():
        raise SystemExit(f"no real-mask-seg crops under {faces} (give --shared)")
    # (Almost) nothing is restored, every face's evidence is recorded, uncertain detections marked as such (one the
    # classifier gives a probability rounding to 1.0 is restored and unmarked: every candidate restores it anyway).
    never = MaskedFaceRule(**dict.fromkeys(TUNED, 1.0), min_mask_confidence=1.0)
    # One look per face (dlib's eye centres): the tables weigh the rule's thresholds on one crop of each face. m2u-
    # unmask's second look (on BlazeFace's eyes) applies the same rule to a second crop; what it adds on bare and
    # masked photos is measured by benchmarks/real_masks.py.
    config = UnmaskConfig(progress=False, device="cpu", rule=never, alignment="visible-dlib")
    unmasker = Unmasker.from_files(args.mseg, args.generator, config)
    sets = {
        "celeba_bare_offset1": face_evidence(
            unmasker, split_photos(faces / "celeba", args.celeba, "test", 1)
        ),
        "real_mask_seg": face_evidence(unmasker, sorted((faces / "real-mask-seg" / "image").iterdir())),
    }
    table = []
    grid = itertools.product(
        (0.99, 0.98, 0.95, 0.9), (0.0, 0.2, 0.5, 0.7, 1.0), (0.5, 0.7, 0.9), (0.05, 0.1, 0.15), (0.2, 1.0)
    )
    for probability, mouth_probability, mouth, fraction, eyes in grid:
        rule = MaskedFaceRule(
            min_mask_probability=probability,
            min_mouth_probability=mouth_probability,
            min_mouth_coverage=mouth,
            min_mouth_route_fraction=fraction,
            max_mouth_route_eye_coverage=eyes,
        )
        row = {name: getattr(rule, name) for name in TUNED}
        for name, evidence in sets.items():
            row[f"{name}_restored"] = restored_count(evidence, rule)
            row[f"{name}_faces"] = len(evidence)  # sure and uncertain detections with evidence
        table.append(row)
    for row in table:
        print(
            " ".join(f"{name}={row[name]:<5}" for name in TUNED),
            f"bare restored {row['celeba_bare_offset1_restored']}/{row['celeba_bare_offset1_faces']}  "
            f"real-mask-seg restored {row['real_mask_seg_restored']}/{row['real_mask_seg_faces']}",
        )
    # The sure-mask route's confidence and its mouth limit, and the M-Seg route's classifier threshold at the steps
    # the grid skips, each with the other thresholds at their defaults (each face's evidence is in `faces`).
    confidence_table = one_threshold_table(sets, "min_mask_confidence", (0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
    mouth_table = one_threshold_table(sets, "min_sure_route_mouth_coverage", (0.5, 0.6, 0.7, 0.8, 0.9))
    route_table = one_threshold_table(sets, "min_mouth_probability", (0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
    result = {
        "model": {
            "mseg": args.mseg or "shipped",
            "generator": args.generator or "shipped",
            "mask_classifier": str(args.classifier) if args.classifier else "shipped",
        },
        "table": table,
        "confidence_table": confidence_table,
        "sure_route_mouth_table": mouth_table,
        "mseg_route_classifier_table": route_table,
        "faces": sets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, suffix=".tmp") as handle:
        handle.write(json.dumps(result, indent=1) + "\n")
    Path(handle.name).chmod(0o644)  # a results file, not a private one (NamedTemporaryFile makes 0600)
    Path(handle.name).replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

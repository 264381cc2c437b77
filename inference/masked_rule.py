"""The masked-face decision rule of `m2u-unmask`: which found faces wear a mask (restored) and which are left
exactly as they are, from the mask classifier's probability and M-Seg's mask on the aligned crop."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["THRESHOLDS_TUNED_ON", "MaskedFaceRule"]


def _region(centre: tuple[float, float], half_width: float, half_height: float) -> tuple[float, ...]:
    return (centre[0] - half_width, centre[0] + half_width, centre[1] - half_height, centre[1] + half_height)


@dataclass(frozen=True)
class MaskedFaceRule:
    """Which found faces wear a mask (restored) and which are left exactly as they are.

    The evidence: the mask classifier's probability on the aligned crop (m2u.inference.mask_presence: trained on
    m2u-mask's masked faces against the same faces unmasked and against non-faces), and M-Seg's mask. M-Seg alone
    cannot tell: trained only on masked faces, the shipped M-Seg marks the lower half of unmasked faces as mask too
    (benchmarks/results/real_masks.json: median_mseg_mouth_coverage of the unmasked CelebA photos). A face is restored when the classifier gives at least
    `min_mask_probability` and M-Seg marks at least `min_mask_fraction` of the crop. Detections the detector is
    unsure of (`Face.retry`: BlazeFace below its sure score, the dlib fallback) are faces at all only when the
    classifier gives at least `min_face_probability`: otherwise they are reported as no face.

    Chosen on benchmarks/real_masks.py's tuning sets (THRESHOLDS_TUNED_ON) with the model that shipped then
    (m2unet-celeba-128); a retrained M-Seg or classifier should be rechecked with that script. The mouth and eye
    coverage of M-Seg's mask are recorded for each face (faces.jsonl) but decide nothing."""

    min_mask_probability: float = 0.95
    # An uncertain detection (`Face.retry`) is a face at all when the classifier gives at least this: a masked face,
    # restored or not by `min_mask_probability`. Below it, no face (textures, a cat: the classifier saw non-faces).
    min_face_probability: float = 0.5
    min_mask_fraction: float = 0.02
    mouth_region: tuple[float, ...] = _region((0.5, 0.635), 0.15, 0.08)
    eye_region: tuple[float, ...] = _region((0.5, 0.38), 0.25, 0.07)

    def __post_init__(self) -> None:
        for name in ("min_mask_probability", "min_face_probability", "min_mask_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)}")

    @staticmethod
    def coverage(mask: np.ndarray, region: tuple[float, ...]) -> float:
        """The share of `region` (crop fractions) that `mask` (2-D, > 0 = mask) covers."""
        height, width = mask.shape[:2]
        x0, x1, y0, y1 = region
        part = mask[round(y0 * height) : round(y1 * height), round(x0 * width) : round(x1 * width)]
        return float((part > 0).mean()) if part.size else 0.0

    def evidence(self, mask: np.ndarray, probability: float) -> dict[str, float]:
        """The figures the rule reads or records (written to faces.jsonl)."""
        return {
            "mask_probability": round(float(probability), 4),
            "mask_fraction": round(float((mask > 0).mean()), 4),
            "mouth_coverage": round(self.coverage(mask, self.mouth_region), 4),
            "eye_coverage": round(self.coverage(mask, self.eye_region), 4),
        }

    def not_masked_reason(self, mask: np.ndarray, probability: float, uncertain: bool = False) -> str:
        """Why the face is left as it is ("" when it is restored). `uncertain`: the detector was unsure it is a
        face at all (the reason then starts with "no face")."""
        if probability >= self.min_mask_probability:
            fraction = float((mask > 0).mean())
            if fraction >= self.min_mask_fraction:
                return ""
            return (
                f"not masked: M-Seg marks {fraction:.1%} of the face crop as mask "
                f"(at least {self.min_mask_fraction:.0%} to restore)"
            )
        if uncertain and probability < self.min_face_probability:
            return (
                f"no face: an uncertain detection with no mask on it (mask classifier {probability:.2f}, "
                f"below {self.min_face_probability:g})"
            )
        return (
            f"not masked: the mask classifier gives {probability:.2f} (below {self.min_mask_probability:g})"
        )


# What MaskedFaceRule's defaults were chosen on (benchmarks/real_masks.py's run of 2026-12-03, the tuning photos:
# CelebA of the test split at offset 1, never the measured offset 0, and real-mask-seg's 102 crops). On the 200 bare
# tuning faces the classifier reaches 0.5 on 5 (three-quarter and profile views, whose crops the visible-point
# alignment places badly, and a hand before a mouth), 0.9 on 3, 0.95 on 1; on the real-mask-seg crops (in the
# classifier's training, so optimistic) 95 of 102 reach 0.5, 86 reach 0.95. 0.95 puts "no bare face touched" first:
# a face left as it is is recorded, a bare face repainted is damage. min_mask_fraction: below 2 % of the crop there
# is nothing to restore.
THRESHOLDS_TUNED_ON = (
    "CelebA test-split photos at offset 1 (not the measured offset 0) and real-mask-seg's 102 crops; "
    "benchmarks/results/real_masks.json holds the measured figures"
)

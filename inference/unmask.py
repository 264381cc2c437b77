"""`m2u-unmask`: restore every masked face in arbitrary photos, and leave everything else exactly as it is.

For each photo: read it (`m2u.masking.read_image`), find every face, masked or not (by default MediaPipe's BlazeFace
then the dlib masked-face cascade where it finds nothing: `m2u.masking.masked_faces.RealFaceDetector`; or that
cascade alone, or plain dlib HOG / CNN), align each with the dataset's transform (`m2u.datasets.align.align_face`)
placed from what a mask does not hide (eye centres, and a mouth centre estimated from the eye centres:
`visible_anchor_points`), predict the mask with M-Seg, and decide from that mask whether the face wears one
(`MaskedFaceRule`: it covers the mouth, not the eyes, and a real share of the face; a face left on dlib's eye centres
gets a second look aligned on BlazeFace's eye keypoints). Faces that do are restored: M-Seg's mask refined by the
crop's colours and grown a pixel is the region the generator fills (the composite keeps every other pixel), and that
region is pasted back into the photo at its own resolution, whole, with a feathered outer edge: only pixels under the
warped paste weight change, and only each face's bounding region of the photo is warped (bicubic). With `aligned=True` the inputs are taken as aligned
crops already: no detection, each resized to the model's size when it is not that size and decided as a detected face
is (`masked_only`: restored only where a mask is found on it). A photo in which no face is
found is tried that way as one face crop (`UnmaskConfig.whole_frame`) and restored only where the masked-face rule's
stricter whole-frame test holds (`MaskedFaceRule.frame_is_masked_face`) and the crop reads upright. A photo in which
nothing is restored and a face is left as upside down, or no face is found at all, is unmasked again turned (180
degrees, then 90 either way), and so is one whose faces lie on their side, or whose restorations rest only on
uncertain detections or the whole frame (a quarter turn each way, taken where it restores as many sure faces,
upright); what is restored there is turned back (`UnmaskConfig.try_turned`).

Every input file gets one row in `report.csv` (written by m2u.inference.photos): status `ok`, `no_face`, `not_masked` (faces found, none wears a
mask), `refused` or `error` (m2u.core.outcome, the vocabulary m2u-mask and m2u-make-dataset use too), with the reason
(unreadable, no such file, ...); `faces.jsonl` has one line per face (input, detector, score, box, alignment source,
mask fraction, the masked-face rule's evidence, `restored`). A face left as it is (no mask found on it; the detector
marks it unusable (`Face.problem`: it looks upside down, so its landmarks would place the alignment on the wrong
features); or it scores below `min_score`) keeps every pixel and is listed with `"restored": false` and the
`problem`; a photo with nothing restored gets no output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from m2u.core.boxes import inside_share
from m2u.core.checks import check_at_most, check_types
from m2u.core.errors import SettingError
from m2u.core.imageio import as_rgb_image
from m2u.datasets.layout import DEFAULT_IMAGE_SIZE, check_image_size
from m2u.inference.mask_refine import MaskRefineConfig, refine_mask
from m2u.inference.masked_rule import NO_FACE, NOT_MASKED, NOTHING_TO_RESTORE, MaskedFaceRule, judged_no_face
from m2u.inference.paste import (
    feather_weight,
    grow_region,
    keep_black_and_white,
    paste_feathered,
    paste_region,
    resize_matrix,
)
from m2u.inference.restore import (
    TwoStageModel,
    inpaint_batch,
    load_two_stage,
    model_usage,
    predict_masks_and_probabilities,
    restore_batch,
)
from m2u.training.device import resolve_device
from m2u.training.imagespace import to_uint8_images
from m2u.training.models.mseg import check_mask_threshold

# MaskedFaceRule and the paste functions live in masked_rule.py and paste.py; they stay importable from here.
# The per-photo file loop and its reports (unmask_files, FileResult, summarize) are m2u.inference.photos.
__all__ = [
    "FaceRestoration",
    "MaskedFaceRule",
    "UnmaskConfig",
    "Unmasker",
    "feather_weight",
    "paste_feathered",
    "paste_region",
]

DETECTORS: tuple[str, ...] = ("blazeface", "masked", "hog", "cnn")
ALIGNMENTS: tuple[str, ...] = ("visible", "visible-dlib", "landmarks")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
# bf16 autocast pays off on a CPU with native bf16 from this many faces per forward pass: benchmarks/unmask.py
# (bf16_vs_fp32) measured the shipped model at 128² at x0.8 of fp32's speed for one face and x1.2-1.7 from four.
BF16_MIN_BATCH = 4
# The second look (Unmasker._unmask_faces) is taken where dlib's eye centres lie more than this far from BlazeFace's,
# in eye distances (m2u.masking.detect.eye_disagreement): on unmasked CelebA faces of the tuning photos (test split,
# offset 1), where dlib's fit is good, the median is 0.05 and 13 % of the faces are above 0.1; the masked faces an
# ungated second look restored on real-masked were 0.24-2.8 apart, but for three at 0.05-0.08 (a second draw, not a
# better crop). Measured by a probe (2026-12-05, docs/real-masks.md).
SECOND_LOOK_MIN_EYE_SHIFT = 0.1
# Why a photo tried whole (UnmaskConfig.whole_frame) gets nothing restored (the face's problem, report.csv's reason).
WHOLE_FRAME_NOT_MASKED = "the whole photo, tried as one face crop, is not a masked face"
# The largest `dilate` and `feather` (fractions of the crop): a mask grown by a whole crop covers the whole crop, and a
# feather of half the crop fades the paste down to its centre, so larger values change nothing more; unchecked, a
# value like 1e6 asked a kernel of petabytes on every photo (a MemoryError row each) instead of one refusal.
MAX_DILATE = 1.0
MAX_FEATHER = 0.5


@dataclass
class UnmaskConfig:
    """How photos are unmasked."""

    crop_size: int | None = None  # the aligned crop the models see; None: the size the model files record
    mask_threshold: float | None = None  # None: the threshold the M-Seg file records
    # The region restored is the (refined) mask grown by this fraction of the crop (1 px at 128): the generator
    # fills it and it is pasted back whole, so a real mask's rim that M-Seg's edge misses by a pixel is repainted
    # too. Growing it further hides more of the rim and costs the synthetic masks, whose edge M-Seg finds exactly
    # (the generator fills a larger region more blurrily): measured in docs/real-masks.md ("The region restored").
    dilate: float = 0.008
    # Width of the pasted region's soft outer edge (feather_weight), fraction of the crop.
    feather: float = 0.03
    keep_crops: bool = False  # also write each aligned crop, its predicted mask and its restoration
    # "blazeface": MediaPipe's BlazeFace, then the dlib masked-face cascade where it finds nothing
    # (m2u.masking.masked_faces.RealFaceDetector); "masked": that dlib cascade alone (MASKED_CASCADE); "hog" /
    # "cnn": one dlib pass ladder as m2u-mask uses (DetectorConfig).
    detector_model: str = "blazeface"
    # With "blazeface": also look for faces too small for the whole-photo pass (a crowd, a wide strip) on
    # overlapping tiles (RealFaceDetectorConfig.tiles: off by default there, measured; slower on such photos).
    tiles: bool = False
    # Faces the detector scores below this are left as they are (recorded), as m2u-mask's --min-score ignores
    # them. Scores are the detector's own: BlazeFace a probability, dlib's HOG a margin, its CNN a confidence.
    min_score: float | None = None
    # A photo in which no face is found (none restored, none left "not masked", none refused by the detector) is
    # tried as one face crop, as --aligned takes it (tight crops that cut the face at the forehead or chin are where
    # the detectors fail), and restored only where MaskedFaceRule.frame_is_masked_face holds.
    whole_frame: bool = True
    # A photo in which nothing is restored and a face is left because it looks upside down (to the detector's
    # orientation check or the upside-down classifier), or no face is found at all (nothing, or only detections
    # judged no face), as in a photo stored upside down or sideways, is unmasked again turned (TURNS: 180 degrees,
    # then 90 either way, sideways with sure detections only) until a turn restores a face, BlazeFace alone finding
    # the faces there, and what is restored is turned back into the photo (FaceRestoration.turned). Only with
    # masked_only (the decision vouches for each face there), with the default detector (blazeface: the dlib
    # detectors alone would cost seconds per turn on a photo with no face, and were not measured turned), and only
    # faces detected there (no whole-frame crop: on an upright photo it took a cap for a mask). Likewise a photo
    # whose restored faces all lean at least SIDEWAYS_LEAN degrees from upright (found lying on their side, their
    # crops still leaning) is unmasked again a quarter turn each way, and the turn that finds them upright is taken;
    # so is one where BlazeFace's eye keypoints show a face lying on its side (SIDEWAYS_KEYPOINT_ROLL), and so is one
    # whose restorations rest only on uncertain detections or the whole frame. Before those three, a photo whose sure
    # detections' boxes read turned to the box orientation net (BOX_TURN_CONFIDENCE) is unmasked again turned that way
    # (where nothing was restored, that turn is tried first); and no turned view is taken whose restored faces' boxes
    # still read turned there.
    # Measured in docs/real-masks.md ("The turned try").
    try_turned: bool = True
    # Restore only faces M-Seg finds a mask on (`rule`); False: every face found is restored.
    masked_only: bool = True
    rule: MaskedFaceRule = field(default_factory=MaskedFaceRule)
    # The restored region: M-Seg's mask re-labelled by the crop's colours (m2u.inference.mask_refine); the rule
    # decides on M-Seg's own mask.
    refine: MaskRefineConfig = field(default_factory=MaskRefineConfig)
    # "visible": eye centres + a mouth centre placed from the eye centres (what a mask leaves visible;
    # `visible_anchor_points`), the eye centres dlib's, and a sure detection the decision leaves is looked at again
    # aligned on BlazeFace's eye keypoints where BlazeFace found it (`_unmask_faces`); "visible-dlib": dlib's eye
    # centres only, no second look (the default until 2026-12-05); "landmarks": the 68-point predictor's mouth points
    # (guessed under a mask), as the dataset aligns.
    alignment: str = "visible"
    # The inputs are aligned crops already (a dataset's masked members, cropped faces): no detection; each crop is one
    # face, decided as a detected one is (masked_only).
    aligned: bool = False
    device: str = "auto"
    # The faces of a photo go through M-Seg and the generator together, up to this many per forward pass.
    max_batch: int = 16
    # "auto": bf16 autocast on a CPU with native bf16 (m2u.training.device.cpu_native_bf16) for passes of at least
    # BF16_MIN_BATCH faces, where it measured faster; fp32 otherwise (and on CUDA). bf16 changes restored pixels by
    # a few levels at most, so with "auto" a face's restoration can differ slightly with its photo's face count.
    precision: str = "auto"
    progress: bool = True
    # The restored photo's format: "same" (the input's own: PNG stays lossless, JPEG stays JPEG), "png", "jpg".
    output_format: str = "same"
    limit: int | None = None  # only the first N inputs found (--limit)

    def __post_init__(self) -> None:
        check_types(
            self
        )  # a NaN or infinite --grow, --feather or --min-score is refused here, before any work
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}")
        if self.limit is not None and self.limit < 1:
            raise SettingError("limit", f"must be >= 1, got {self.limit}")
        if self.crop_size is not None:
            check_image_size(self.crop_size, "crop_size")
        check_mask_threshold(self.mask_threshold)
        if self.dilate < 0 or self.feather < 0:
            raise ValueError("dilate and feather must be >= 0")
        check_at_most(self, {"dilate": MAX_DILATE, "feather": MAX_FEATHER})
        if self.detector_model not in DETECTORS:
            raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {self.detector_model!r}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {', '.join(ALIGNMENTS)}, got {self.alignment!r}")
        if self.tiles and self.detector_model != "blazeface":
            raise SettingError(
                "tiles", f"tiles are BlazeFace's; `detector_model` {self.detector_model} has none"
            )


OUTPUT_FORMATS = ("same", "png", "jpg")


@dataclass
class FaceRestoration:
    """One face: the aligned crop, M-Seg's mask (uint8 0/255), the composite, and the crop transform."""

    crop: np.ndarray
    mask: np.ndarray
    restored: np.ndarray
    matrix: np.ndarray
    mask_fraction: (
        float  # share of the crop under the mask restored (M-Seg's, refined: `mseg_fraction` is its own)
    )
    # The detection pass that found it ("hog0", "mhog0", "cnn1", ...; "none" for an aligned input).
    detector: str = ""
    score: float = 0.0
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # in the photo's pixels
    alignment: str = ""  # visible | visible-dlib | landmarks | aligned-input | aligned-input-resized
    # Where the alignment's eye centres came from: "blazeface" (its eye keypoints) or "dlib" (the 68 points); "" for
    # an aligned input or a whole frame.
    eyes: str = ""
    weight: np.ndarray | None = None  # crop-space paste weight (1 on the region restored, feathered outside)
    precision: str = "fp32"  # of the forward pass that restored it (fp32 | bf16)
    # What MaskedFaceRule read off the mask (mask fraction, mouth and eye coverage).
    evidence: dict = field(default_factory=dict)
    # Why the face was left as it is ("" when restored): the masked-face rule's reason.
    problem: str = ""
    # The turn of the photo in which the face was found and restored, in degrees anticlockwise (90, 180, 270;
    # UnmaskConfig.try_turned), 0 as it is; box and matrix are in the photo's own pixels either way.
    turned: int = 0
    # Why the photo was turned for it (turned_reason): nothing was restored as it is, its faces lay on their side, or
    # what was restored as it is rested on no sure detection.
    turned_because: str = ""
    # The detector was unsure it is a face at all (m2u.masking Face.retry: BlazeFace below its sure score, the dlib
    # fallback): its mask was the evidence of a face.
    uncertain: bool = False
    # The share of the crop the generator filled and the photo got back: the refined mask grown by --grow
    # (`Unmasker.restored_region`); None for a face left as it is.
    restored_fraction: float | None = None

    @property
    def lean(self) -> float:
        """How far the face leans from upright in the view it was restored in (the photo, or the photo turned by
        `turned`), in degrees anticlockwise as seen, (-180, 180]: the rotation of its alignment."""
        degrees = math.degrees(math.atan2(self.matrix[1][0], self.matrix[0][0])) + self.turned
        return float(-((-degrees + 180.0) % 360.0 - 180.0))

    @property
    def mseg_fraction(self) -> float:
        """The share of the crop M-Seg's own mask marks (what the decision read; report.csv's mask_fractions)."""
        return float(self.evidence.get("mask_fraction", round(self.mask_fraction, 4)))

    def record(self) -> dict:
        """The face's line in faces.jsonl (without the input's name): `mask_fraction` is M-Seg's own mask, as in
        report.csv, and a restored face's `restored_fraction` the region the generator filled (the refined mask
        grown by --grow)."""
        return {
            "detector": self.detector,
            "score": round(self.score, 4),
            "box": [int(v) for v in self.box],
            "alignment": self.alignment,
            **({"eyes": self.eyes} if self.eyes else {}),
            "precision": self.precision,
            **self.evidence,
            "mask_fraction": self.mseg_fraction,
            **(
                {}
                if self.problem or self.restored_fraction is None
                else {"restored_fraction": round(self.restored_fraction, 4)}
            ),
            "restored": not self.problem,
            **({"problem": self.problem} if self.problem else {}),
            **({"turned": self.turned} if self.turned else {}),
            **({"uncertain_detection": True} if self.uncertain else {}),
        }


class Unmasker:
    """The detection → alignment → M-Seg → generator → paste-back pipeline for one photo at a time."""

    def __init__(self, models: TwoStageModel, config: UnmaskConfig | None = None):
        from m2u.masking import DetectorConfig, FaceDetector
        from m2u.masking.masked_faces import MaskedFaceDetector, RealFaceDetector, RealFaceDetectorConfig

        self.config = config or UnmaskConfig()
        self.device = next(models.generator.parameters()).device
        if self.config.device != "auto":
            # The models run where they are: a `device` that says otherwise was ignored without a word.
            wanted = resolve_device(
                self.config.device
            )  # a name torch does not know, or no CUDA: SettingError
            if wanted != self.device:
                raise ValueError(
                    f"`device` is {self.config.device} but the models are on {self.device}: load them there "
                    "(Unmasker.from_files, load_pretrained(device=...)) or leave `device` auto"
                )
        self.mseg = models.mseg.eval()
        self.generator = models.generator.eval()
        # Crop size and threshold from the model files unless the config names them (then with a warning).
        self.usage = model_usage(
            models, self.config.crop_size, self.config.mask_threshold, DEFAULT_IMAGE_SIZE
        )
        self.detector: RealFaceDetector | MaskedFaceDetector | FaceDetector
        self._blazeface_only: RealFaceDetector | None = None  # the turned try's detector (_detect_turned)
        if self.config.detector_model == "blazeface":
            if not self.config.aligned:  # aligned crops are never detected: no BlazeFace needed
                from m2u.masking.blazeface import BlazeFaceUnavailable, check_available

                try:
                    check_available()  # a missing install: one line before any photo, not an error row for each
                except BlazeFaceUnavailable as exc:  # the masked cascade needs none of it: say how to use it
                    raise BlazeFaceUnavailable(
                        f"{exc}; or give `detector_model` masked (dlib's masked-face cascade alone)"
                    ) from None
            self.detector = RealFaceDetector(RealFaceDetectorConfig(tiles=self.config.tiles))
        elif self.config.detector_model == "masked":
            self.detector = MaskedFaceDetector()
        else:
            # dlib's detector as asked for: no BlazeFace first pass ("blazeface" is the detector for that).
            self.detector = FaceDetector(
                DetectorConfig(model=self.config.detector_model, blazeface_first=False)
            )

    @classmethod
    def from_files(
        cls,
        mseg_path: str | Path | None,
        generator_path: str | Path | None,
        config: UnmaskConfig | None = None,
    ) -> Unmasker:
        """The pair of model files, or (both None) the model shipped with m2u."""
        config = config or UnmaskConfig()
        return cls(load_two_stage(mseg_path, generator_path, resolve_device(config.device)), config)

    def pass_precision(self, faces: int) -> str:
        """The precision a forward pass of `faces` faces runs in (see UnmaskConfig.precision)."""
        if self.config.precision != "auto":
            return self.config.precision
        from m2u.training.device import cpu_native_bf16

        native = self.device.type == "cpu" and cpu_native_bf16()
        return "bf16" if native and faces >= BF16_MIN_BATCH else "fp32"

    def restore_crops(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Aligned uint8 crops of the models' size S (`usage.crop_size`; `align_face(image, landmarks, S)`) ->
        (masks uint8 0/255 (N, S, S), composites uint8 (N, S, S, 3))."""
        if not len(crops):
            raise ValueError("restore_crops needs at least one crop")
        masks, composites, _ = self.restore_passes(self._checked_crops(crops))
        return masks, composites

    def _checked_crops(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        """`crops` as uint8 RGB arrays of the models' crop size, or one ValueError: crops of another size ran at
        that size (a poorer restoration, without a word), and crops of different sizes failed in numpy's words."""
        size = self.usage.require_crop_size()
        checked = [as_rgb_image(crop, "each crop") for crop in crops]
        for index, crop in enumerate(checked):
            if crop.shape[:2] != (size, size):
                raise ValueError(
                    f"each crop must be {size}x{size}, the models' crop size (`crop_size`), but crop {index} is "
                    f"{crop.shape[1]}x{crop.shape[0]}: align faces at that size (align_face(image, landmarks, "
                    f"{size})) or pass a crop of any size to unmask_aligned, which resizes it"
                )
        return checked

    @torch.no_grad()
    def restore_passes(
        self, crops: list[np.ndarray], regions: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """`restore_crops` plus each crop's precision: the crops go through the models together, in forward passes
        of up to `max_batch` faces. `regions` (one (S, S) mask per crop, > 0 inside): the regions the generator
        fills, already decided (the generator alone runs; the masks returned are these), else M-Seg's masks."""
        masks, composites, precisions = [], [], []
        step = self.config.max_batch
        for start in range(0, len(crops), step):
            chunk = crops[start : start + step]
            precision = self.pass_precision(len(chunk))
            batch = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).float().div(255.0).to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                if regions is None:
                    mask, _, comp = restore_batch(self.mseg, self.generator, batch, self.usage.mask_threshold)
                else:
                    planes = np.stack(regions[start : start + step]) > 0
                    mask = torch.from_numpy(planes[:, None]).float().to(self.device)
                    _, comp = inpaint_batch(self.generator, batch, mask)
            masks.append((mask[:, 0].float().cpu().numpy() > 0.5).astype(np.uint8) * 255)
            composites.append(to_uint8_images(comp.float().cpu()))
            precisions += [precision] * len(chunk)
        return np.concatenate(masks), np.concatenate(composites), precisions

    @torch.no_grad()
    def predict_masks_with_probabilities(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """M-Seg alone on aligned uint8 crops -> (masks uint8 0/255 (N, S, S), M-Seg's per-pixel probabilities
        (N, S, S) float32 from the same pass): what the decision reads before the generator runs (faces left as
        they are cost no generator pass; the probabilities give the rule's mask confidence)."""
        from m2u.training.imagespace import to_model_range

        crops = self._checked_crops(crops)
        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255.0).to(self.device)
        mask, probability = predict_masks_and_probabilities(
            self.mseg, to_model_range(batch), self.usage.mask_threshold
        )
        masks = (mask[:, 0].cpu().numpy() > 0.5).astype(np.uint8) * 255
        return masks, probability[:, 0].float().cpu().numpy()

    def _dilate_px(self) -> int:
        return round(self.config.dilate * self.usage.require_crop_size())

    def restored_region(self, mask: np.ndarray) -> np.ndarray:
        """The crop-space region the generator fills for a (refined) mask: the mask grown by `dilate`, uint8 0/1;
        `paste_weight` pastes the same region back, feathered."""
        return grow_region(mask, self._dilate_px())

    def paste_weight(self, mask: np.ndarray) -> np.ndarray:
        """The crop-space weight a (refined) mask's restoration is pasted back with: 1 on `restored_region`,
        feathered outside it."""
        size = self.usage.require_crop_size()
        feather_px = max(1, round(self.config.feather * size)) if self.config.feather > 0 else 0
        return feather_weight(self.restored_region(mask), feather_px)

    def _restore_into(
        self, image: np.ndarray, crops: list[np.ndarray], matrices: list[np.ndarray], meta: list[dict]
    ) -> tuple[np.ndarray, list[FaceRestoration], list[FaceRestoration]]:
        """(the photo with the masked faces pasted back, those faces, the faces left as they are: `not_masked`)."""
        result, faces = self._restore_records(image, crops, matrices, meta)
        return result, [f for f in faces if not f.problem], [f for f in faces if f.problem]

    @staticmethod
    def _frame_reads_upright(face: FaceRestoration) -> bool:
        """Whether a whole-frame crop reads more upright as it is than turned any quarter turn, to the upside-down
        classifier (its probability as it is goes into the evidence). A photo stored sideways or upside down in
        which no face is found can still pass the frame's mask evidence (M-Seg and the classifier see the mask
        whichever way it lies): measured in benchmarks/real_masks.py, 3 sideways real-masked photos had a smear
        painted beside the face that way; the classifier read 2 of them (and none of the 3 upright frames restored)
        more upright turned. Such a photo is left to the turned try instead."""
        from m2u.inference.mask_presence import upside_down_probabilities

        doubts = upside_down_probabilities(
            [np.ascontiguousarray(np.rot90(face.crop, quarter_turns)) for quarter_turns in range(4)]
        )
        face.evidence["upside_down_probability"] = round(float(doubts[0]), 4)
        return int(np.argmin(doubts)) == 0

    def _upside_down_unless_box_upright(
        self, image: np.ndarray, face: FaceRestoration, upside_down_probability: float
    ) -> str:
        """The upside-down reason of a face with a mask that the upside-down classifier calls upside down, "" where
        the box orientation net reads its detector box surely upright (`_box_reads_upright`): the classifier reads
        the aligned crop, and a cap pulled low or a hood (real-masked's 298 and with_mask170) looks to it like the
        mask seen upside down, where the box, read before any landmark fit, shows the face upright."""
        reason = self.config.rule.upside_down_reason(upside_down_probability)
        return "" if self._box_reads_upright(image, face) else reason

    @staticmethod
    def _box_reads_upright(image: np.ndarray, face: FaceRestoration) -> bool:
        """Whether the box orientation net reads a sure detection's box upright at BOX_TURN_CONFIDENCE or more (its
        reading goes into the evidence): what overrules either orientation check (the upside-down classifier's, or
        the detector's HOG check) on a face the decision restores. Never for an uncertain detection."""
        from m2u.inference.mask_presence import box_orientations

        if face.uncertain:
            return False
        (ways,) = box_orientations(image, [face.box])
        face.evidence["box_upright_probability"] = round(float(ways[0]), 4)
        return bool(ways[0] >= BOX_TURN_CONFIDENCE)

    def _restore_records(
        self, image: np.ndarray, crops: list[np.ndarray], matrices: list[np.ndarray], meta: list[dict]
    ) -> tuple[np.ndarray, list[FaceRestoration]]:
        """As `_restore_into`, with every face's record in the order of `crops` (`problem` "" where restored)."""
        from m2u.inference.mask_presence import mask_probabilities, upside_down_probabilities

        rule = self.config.rule
        decide = self.config.masked_only or any(
            info.get("uncertain") or info.get("whole_frame") for info in meta
        )
        probabilities = mask_probabilities(crops) if decide else np.ones(len(crops))
        # Faces aligned from their landmarks (not a whole frame, not an aligned input) are also asked whether they
        # are upside down, where the decision runs.
        landmarked = [not info.get("whole_frame") and info.get("detector") != "none" for info in meta]
        turned = (
            upside_down_probabilities(crops)
            if self.config.masked_only and any(landmarked)
            else np.zeros(len(crops))
        )
        masks, mask_maps = self.predict_masks_with_probabilities(crops) if decide else (None, None)
        faces: list[FaceRestoration] = []
        for k, (crop, matrix, p, info) in enumerate(zip(crops, matrices, probabilities, meta, strict=True)):
            uncertain = info.pop("uncertain", False)
            whole_frame = info.pop("whole_frame", False)
            detector_problem = info.pop("detector_problem", "")
            # mask and restored are filled in below (M-Seg's mask, the generator's composite).
            face = FaceRestoration(crop, None, None, matrix, 0.0, uncertain=uncertain, **info)  # type: ignore[arg-type]
            if masks is not None and mask_maps is not None:
                face.mask = masks[k]
                face.evidence = rule.evidence(masks[k], p, mask_maps[k])
                if whole_frame:
                    # With --all-faces too: the frame is a face only where it is a masked one, upright.
                    if not rule.frame_is_masked_face(face.evidence) or not self._frame_reads_upright(face):
                        face.problem = f"{NO_FACE}{WHOLE_FRAME_NOT_MASKED}"
                elif self.config.masked_only:
                    face.problem = rule.not_masked_reason(masks[k], p, uncertain, mask_maps[k])
                    if landmarked[k]:
                        face.evidence["upside_down_probability"] = round(float(turned[k]), 4)
                        if not face.problem and rule.upside_down_reason(turned[k]):
                            face.problem = self._upside_down_unless_box_upright(image, face, turned[k])
                    if detector_problem:
                        # Recorded either way: a restored face shows which refusal was overruled.
                        face.evidence["detector_problem"] = detector_problem
                        # Overruled where both classifiers vouch, or where the upside-down classifier does not
                        # call it so and the box reads surely upright (a printed mask fools HOG's check as a low cap
                        # fools the classifier). Never on the box alone against both checks: measured, the box net
                        # read one face of the turned real-masked set upright at 0.99 that both called upside down.
                        if face.problem or not (
                            rule.overrules_upside_down_detection(face.evidence)
                            or not rule.upside_down_reason(turned[k])
                            and self._box_reads_upright(image, face)
                        ):
                            face.problem = detector_problem
                elif uncertain and not rule.restores(face.evidence):
                    # With --all-faces too, an uncertain detection is a face only where the rule finds a mask.
                    face.problem = rule.not_masked_reason(masks[k], p, uncertain, mask_maps[k])
            faces.append(face)
        _drop_second_boxes(faces)
        kept = [f for f in faces if not f.problem]
        unread = [f for f in kept if f.mask is None]
        if unread:  # --all-faces: M-Seg has not read these crops for a decision
            for face, mask in zip(unread, self.predict_masks_with_probabilities([f.crop for f in unread])[0]):
                face.mask = mask
        for face in kept:
            if not face.evidence:
                face.evidence = rule.evidence(face.mask, 1.0)
                face.evidence.pop("mask_probability")  # not asked (--all-faces)
            # The evidence is M-Seg's own mask; the region restored is the refined one.
            face.mask = refine_mask(face.crop, face.mask, self.config.refine)
            if not face.mask.any():  # --all-faces on a bare face: nothing would change, so it is not restored
                face.problem = f"{NOT_MASKED}{NOTHING_TO_RESTORE}"
        kept = [f for f in kept if not f.problem]
        if kept:
            # The generator runs only on the faces to restore (in passes of up to max_batch faces), and fills the
            # region that is pasted back: the refined mask grown by `dilate`. (Filling M-Seg's own mask instead
            # left what the refinement added and the grown rim showing the photo's own pixels, the mask's edge.)
            _, composites, precisions = self.restore_passes(
                [f.crop for f in kept], [self.restored_region(f.mask) for f in kept]
            )
            for face, comp, precision in zip(kept, composites, precisions, strict=True):
                face.restored, face.precision = comp, precision
        result = image.copy()
        for face in faces:
            face.mask_fraction = float((face.mask > 0).mean())
            if face.problem:
                continue  # not one pixel of the photo changes for it
            face.restored_fraction = float(self.restored_region(face.mask).mean())
            face.weight = self.paste_weight(face.mask)
            # Only the masked region is pasted back: elsewhere the crop is a resampled copy of the photo.
            paste_region(result, face.restored, face.matrix, face.weight)
        return result, faces

    def detect(self, image: np.ndarray) -> list:
        """Every face the detector finds in `image` (uint8 RGB), usable or not (`Face.problem`)."""
        return self.detector.detect(image)

    def unmask_image(self, image: np.ndarray) -> tuple[np.ndarray, list[FaceRestoration]]:
        """Every usable face of `image` (uint8 RGB) restored and pasted back; the faces in detection order."""
        result, restored, _ = self.unmask_with_refusals(image)
        return result, restored

    def faces_may_hide(self, shape: tuple[int, ...], boxes: list) -> bool:
        """Whether a photo of `shape` whose faces were found at `boxes` may hold faces too small for the default
        detector's whole-photo pass, with its tiles off (RealFaceDetectorConfig.may_hide_faces)."""
        from m2u.masking.masked_faces import RealFaceDetector

        detector = self.detector
        if not isinstance(detector, RealFaceDetector) or detector.config.tiles or self.config.aligned:
            return False
        return detector.config.may_hide_faces(shape[0], shape[1], boxes)

    def unmask_with_refusals(self, image: np.ndarray) -> tuple[np.ndarray, list[FaceRestoration], list]:
        """As `unmask_image`, plus the faces found but left exactly as they are, each with its `problem`: the
        detector's (m2u.masking Face: it looks upside down), a score below `min_score` (Face), or the masked-face
        rule's (FaceRestoration: no mask found on it)."""
        image = as_rgb_image(image)  # every way in: a float, RGBA or empty image is a ValueError here
        if self.config.aligned:
            result, restored, left = self._unmask_aligned(image)
            return keep_black_and_white(image, result), restored, left
        return self.unmask_found(image, self.detect(image))

    def unmask_found(
        self, image: np.ndarray, found: list, as_turned: bool = False
    ) -> tuple[np.ndarray, list[FaceRestoration], list]:
        """As `unmask_with_refusals` for the faces `found` in `image` by this unmasker's detector (m2u.masking Face
        objects, refused ones included), e.g. detections cached by a benchmark. `as_turned`: `image` is a photo
        turned by `_unmask_turned` (no whole-frame crop, no turning again). A black-and-white photo is restored in
        grey (`keep_black_and_white`)."""
        result, restored, left = self._unmask_found(image, found, as_turned)
        return keep_black_and_white(image, result), restored, left

    def _unmask_found(
        self, image: np.ndarray, found: list, as_turned: bool
    ) -> tuple[np.ndarray, list[FaceRestoration], list]:
        floor = self.config.min_score
        if floor is not None:
            found = [
                f
                if f.problem or f.score >= floor
                else replace(f, problem=f"detector score {f.score:.3f} below --min-score {floor:g}")
                for f in found
            ]
        # An uncertain detection the detector also refuses (upside down, low score) is no face: it is never shown
        # to the classifier that could make it one.
        found = [
            replace(f, problem=f"{NO_FACE}an uncertain detection; {f.problem}")
            if f.problem and f.retry
            else f
            for f in found
        ]
        # A face only the detector's orientation check refuses is shown to the decision, which restores it only
        # when the mask classifier and the upside-down classifier both vouch for it (MaskedFaceRule.
        # overrules_upside_down_detection) or the box orientation net reads its box surely upright
        # (`_box_reads_upright`); otherwise it keeps the detector's reason.
        from m2u.masking.detect import LOOKS_UPSIDE_DOWN, eye_line_angle, is_upside_down_problem

        doubted = {
            id(f)
            for f in found
            if self.config.masked_only
            and not f.retry
            and is_upside_down_problem(f.problem)
            and (floor is None or f.score >= floor)
        }
        refused = [f for f in found if f.problem and id(f) not in doubted]
        result, restored, left = self._unmask_faces(
            image, [f for f in found if not f.problem or id(f) in doubted]
        )
        if (
            self.config.whole_frame
            and not as_turned
            and not restored
            and all(judged_no_face(f.problem) for f in refused + left)
        ):
            framed, framed_restored, _ = self._unmask_aligned(image, whole_frame=True)
            if framed_restored:
                result, restored = framed, framed_restored
        turning = (
            self.config.try_turned
            and self.config.masked_only
            and self.config.detector_model == "blazeface"
            and not as_turned
        )
        # A face left as upside down, or no face at all (nothing found, or only detections judged no face); a photo
        # whose faces are all left as not masked (or below --min-score) was read the right way up.
        nothing_upright = (
            turning
            and not restored
            and (
                any(LOOKS_UPSIDE_DOWN in f.problem for f in refused + left)
                or all(judged_no_face(f.problem) for f in refused + left)
            )
        )
        # Which way up the faces lie to the box orientation net (0: as they are, or not surely otherwise), read on the
        # boxes of the sure detections and of the uncertain ones restored (a face restored only so is the photo's
        # likeliest face; in a photo stored sideways or upside down it is often the only one found, and restored
        # lying or upside down). Other uncertain detections are not read: the faceless images' all are of that kind.
        read = [f.box for f in found if not f.retry]
        read += [f.box for f in restored if f.uncertain and f.detector != "whole-frame"]
        box_turn = self._box_turn(image, read) if turning else 0
        # Each turn of the photo is unmasked at most once, whichever checks below ask for it.
        views: dict[int, tuple[np.ndarray, list[FaceRestoration], list] | None] = {}

        def view(quarter_turns: int, because: str) -> tuple[np.ndarray, list[FaceRestoration], list] | None:
            if quarter_turns not in views:
                views[quarter_turns] = self._unmask_turned(image, quarter_turns)
            unmasked = views[quarter_turns]
            if unmasked is None:
                return None
            result, faces, left = unmasked
            return result, [replace(f, turned_because=because) for f in faces], left

        if nothing_upright:
            # The turn the boxes read first, then the rest in their usual order.
            for quarter_turns in sorted(TURNS, key=lambda turns: turns != box_turn):
                turned = view(quarter_turns, NOTHING_RESTORED_AS_IT_IS)
                if turned is not None:
                    return turned
        if box_turn and not nothing_upright:
            # The box orientation net reads the faces turned (upside down, or lying on their side) where they were
            # restored as they are or left as not masked: dlib's 68 points, fitted as if upright, land on the wrong
            # features there, so the restoration is upside down or a smear, or the crop shows no mask. The turn is
            # taken where it restores at least as many faces (at least one), upright; where nothing was restored as
            # it is, each with a mask-shaped M-Seg mask (as the keypoint check below asks).
            turned = view(
                box_turn,
                f"as it is, the box orientation net reads its faces upright turned {turn_words(90 * box_turn)}",
            )
            if self._turn_holds(turned, max(1, len(restored)), mask_shaped=not restored):
                return turned  # type: ignore[return-value]
        if turning and restored and all(abs(f.lean) >= SIDEWAYS_LEAN for f in restored):
            # Faces lying on their side are restored poorly as they are: their 68 points are fitted on an upright
            # box, so the crop still leans. Turned a quarter turn they are found and aligned as upright faces.
            mean_lean = float(np.mean([f.lean for f in restored]))
            upright = self._unmask_quarter_turned(
                view,
                len(restored),
                clockwise_first=mean_lean > 0,
                because=f"as it is, its faces lie on their side, leaning {abs(mean_lean):.0f} degrees",
            )
            if upright is not None:
                return upright
        whole_frame = any(f.detector == "whole-frame" for f in restored)
        if turning and restored and all(f.uncertain or whole_frame for f in restored):
            # Restored only on detections the detector was unsure of, or as one whole-frame crop (masks the only
            # evidence of faces): in a photo stored sideways that is how a face lying on its side is found, a box on
            # its eyes or forehead where the restoration paints a smudge. A quarter turn shows the face upright to
            # the sure passes, and a turn is taken only where those restore as many faces, upright (each leaning
            # less than SIDEWAYS_LEAN); no upright photo measured restores any face turned so
            # (benchmarks/real_masks.py, docs/real-masks.md).
            upright = self._unmask_quarter_turned(
                view,
                len(restored),
                clockwise_first=float(np.mean([f.lean for f in restored])) > 0,
                because="as it is, no face was found and the whole photo was restored as one face crop"
                if whole_frame
                else "as it is, only detections the detector was unsure of were restored",
            )
            if upright is not None:
                return upright
        rolls = [eye_line_angle(f.keypoints) for f in found if f.keypoints is not None and not f.retry]
        lying = [roll for roll in rolls if abs(roll) >= SIDEWAYS_KEYPOINT_ROLL]
        if turning and not nothing_upright and lying:
            # BlazeFace saw a face lying on its side (its eye keypoints one above the other): its crop, aligned on
            # eyes fitted on the wrong features, shows the decision no mask, or is restored as a smear; a quarter
            # turn shows it upright, and is taken where it restores at least as many faces as were restored as it is.
            # (A photo whose faces were all left as not masked is not tried otherwise.) The weakest cause of a turn,
            # so a face restored there must also show a mask's shape (the mouth covered, the eyes not): without
            # that, one bare face of extras (keypoints 80 degrees from level) was restored turned, classifier 0.99
            # with M-Seg on 80 % of its eyes (benchmarks/real_masks.py, docs/real-masks.md).
            upright = self._unmask_quarter_turned(
                view,
                max(1, len(restored)),
                clockwise_first=lying[0] < 0,
                because=f"as it is, a face found lies on its side, its eyes {abs(lying[0]):.0f} degrees from level",
                mask_shaped=True,
            )
            if upright is not None:
                return upright
        return result, restored, refused + left

    @staticmethod
    def _box_turn(image: np.ndarray, boxes: list) -> int:
        """The quarter turns (np.rot90, anticlockwise) that show the faces in `boxes` (a detector's, of `image`: sure
        detections, and uncertain ones restored) upright to the box orientation net (m2u.inference.mask_presence.box_orientations); 0 where
        it does not say so surely (BOX_TURN_CONFIDENCE): no box read turned so, or one read upright so. Where boxes
        disagree, the turn most of them read."""
        from m2u.inference.mask_presence import box_orientations

        if not boxes:
            return 0
        ways = box_orientations(image, boxes)
        chosen, confident = ways.argmax(1), ways.max(1) >= BOX_TURN_CONFIDENCE
        if not confident.any() or (confident & (chosen == 0)).any():
            return 0
        return int(np.bincount(chosen[confident], minlength=4).argmax())

    def _unmask_quarter_turned(
        self,
        view: Callable[[int, str], tuple[np.ndarray, list[FaceRestoration], list] | None],
        at_least: int,
        clockwise_first: bool,
        because: str,
        mask_shaped: bool = False,
    ) -> tuple[np.ndarray, list[FaceRestoration], list] | None:
        """The photo unmasked turned a quarter turn each way (`view`: its turned views, `_unmask_turned` with the
        reason applied), for faces lying on their side: a turn counts where it restores at least `at_least` faces,
        each leaning less than SIDEWAYS_LEAN there (and with `mask_shaped`, each with a mask-shaped M-Seg mask by the
        sure-mask route's limits), and of two that count, the one whose faces the upside-down classifier reads most
        surely upright (which way a face lies is a guess where its eyes were found on the wrong features: for one of
        the 37 measured faces the lean's sign pointed the wrong way); None where neither counts."""
        best, best_doubt = None, math.inf
        for quarter_turns in (3, 1) if clockwise_first else (1, 3):
            turned = view(quarter_turns, because)
            if turned is None or not self._turn_holds(turned, at_least, mask_shaped):
                continue
            doubt = max(f.evidence.get("upside_down_probability", 0.0) for f in turned[1])
            if doubt < best_doubt:
                best, best_doubt = turned, doubt
        return best

    def _turn_holds(
        self, turned: tuple[np.ndarray, list[FaceRestoration], list] | None, at_least: int, mask_shaped: bool
    ) -> bool:
        """Whether a photo unmasked turned (`_unmask_turned`) restores at least `at_least` faces, each leaning less
        than SIDEWAYS_LEAN there (found upright), and with `mask_shaped` each with a mask-shaped M-Seg mask by the
        sure-mask route's limits."""
        rule = self.config.rule
        return (
            turned is not None
            and len(turned[1]) >= at_least
            and max(abs(f.lean) for f in turned[1]) < SIDEWAYS_LEAN
            and (
                not mask_shaped
                or all(
                    rule.mask_shaped(
                        f.evidence, rule.max_sure_route_eye_coverage, rule.min_sure_route_mouth_coverage
                    )
                    for f in turned[1]
                )
            )
        )

    def _detect_turned(self, image: np.ndarray) -> list:
        """The faces of a photo turned by the turned try: BlazeFace's passes alone where the detector is the default
        one (every face the try restored in the measured turned photos was BlazeFace's, and the dlib cascade behind
        it costs seconds on a large photo with no face), the detector itself otherwise."""
        from m2u.masking.masked_faces import RealFaceDetector

        if isinstance(self.detector, RealFaceDetector) and self.detector.config.fallback is not None:
            if self._blazeface_only is None:
                self._blazeface_only = RealFaceDetector(replace(self.detector.config, fallback=None))
            return self._blazeface_only.detect(image)
        return self.detector.detect(image)

    def _unmask_turned(
        self, image: np.ndarray, quarter_turns: int
    ) -> tuple[np.ndarray, list[FaceRestoration], list] | None:
        """`image` unmasked turned `quarter_turns` times 90 degrees anticlockwise, with its faces and result
        turned back; None when nothing is restored that way. The faces left there are reported as found there
        (boxes in `image`'s pixels, their reasons saying so); the caller says why the photo was turned
        (FaceRestoration.turned_because)."""
        height, width = image.shape[:2]
        turned = np.ascontiguousarray(np.rot90(image, quarter_turns))
        found = self._detect_turned(turned)
        if quarter_turns % 2:
            # Sideways, only sure detections: each extra view is another chance of a face in a faceless image (with
            # uncertain ones too, 3 of the 57 faceless images had one restored; benchmarks/real_masks.py,
            # docs/real-masks.md).
            found = [f for f in found if not f.retry]
        result, restored, left = self.unmask_found(turned, found, as_turned=True)
        if not restored or self._box_turn(turned, [f.box for f in restored]):
            # Nothing restored, or the restored faces' boxes read surely turned there too (a face restored lying on
            # its side or upside down in this view: the turn that shows it upright is another). Uncertain detections
            # restored are read too, as they are before the turn: a close-up stretched sideways, its only face an
            # uncertain detection called upside down, was restored turned 180 degrees, its hair repainted.
            return None
        return (
            np.ascontiguousarray(np.rot90(result, -quarter_turns)),
            [_turned_back(f, quarter_turns, width, height) for f in restored],
            [_turned_back(f, quarter_turns, width, height) for f in left],
        )

    def unmask_faces(self, image: np.ndarray, faces: list) -> tuple[np.ndarray, list[FaceRestoration]]:
        """`faces` (m2u.masking Face objects of `image`) restored and pasted back, in their order; faces the
        masked-face rule finds no mask on are left out (and as they are)."""
        result, restored, _ = self._unmask_faces(image, faces)
        return result, restored

    def _unmask_faces(
        self, image: np.ndarray, faces: list
    ) -> tuple[np.ndarray, list[FaceRestoration], list[FaceRestoration]]:
        from m2u.masking.detect import eye_disagreement

        if not faces:
            return image.copy(), [], []
        result, records = self._align_and_restore(image, faces, blaze_eyes=False)
        restored = [r for r in records if not r.problem]
        left = [r for r in records if r.problem]
        if self.config.alignment != "visible" or not self.config.masked_only:
            return result, restored, left
        # The second look: a sure detection the decision leaves (not one the detector was unsure of, whose mask on
        # its first look is all the evidence of a face, nor one its orientation check refused, which has its own
        # route), aligned again on BlazeFace's eye keypoints where BlazeFace found it. On a masked face dlib's
        # predictor, which fits all 68 points at once, can pull its eye points onto the mask, and the crop then
        # shows no mask-shaped mask; BlazeFace's eye keypoints are right where dlib's are wrong, and sometimes wrong
        # where dlib's are right (tight crops), so they are the second look, not the first (benchmarks/real_masks.py,
        # docs/real-masks.md). Only where the two disagree (SECOND_LOOK_MIN_EYE_SHIFT): where they agree the crop
        # would be nearly the same, and deciding on it again would only give the classifiers another draw.
        again = [
            k
            for k, (face, record) in enumerate(zip(faces, records, strict=True))
            if record.problem
            and not judged_no_face(
                record.problem
            )  # a second box on a face restored: restoring it would paste twice
            and face.keypoints is not None
            and not face.retry
            and not face.problem
            and eye_disagreement(face.keypoints, face.landmarks) > SECOND_LOOK_MIN_EYE_SHIFT
        ]
        if not again:
            return result, restored, left
        result, second = self._align_and_restore(result, [faces[k] for k in again], blaze_eyes=True)
        for k, record in zip(again, second, strict=True):
            if not record.problem:
                records[k] = record
            else:  # the first look's record stays, and says the second look left the face too
                records[k].problem += f"; on a second look aligned on BlazeFace's eyes: {record.problem}"
        return result, [r for r in records if not r.problem], [r for r in records if r.problem]

    def _align_and_restore(
        self, image: np.ndarray, faces: list, blaze_eyes: bool
    ) -> tuple[np.ndarray, list[FaceRestoration]]:
        """`faces` aligned (on BlazeFace's eye keypoints with `blaze_eyes`), decided and restored into a copy of
        `image`: (that copy, each face's record in the order of `faces`)."""
        from m2u.datasets.align import align_face
        from m2u.masking.detect import is_upside_down_problem
        from m2u.masking.masked_faces import visible_anchor_points

        size = self.usage.require_crop_size()
        alignment = self.config.alignment
        aligned = [
            align_face(
                image,
                face.landmarks,
                size,
                None
                if alignment == "landmarks"
                else visible_anchor_points(face.landmarks, face.keypoints if blaze_eyes else None),
            )
            for face in faces
        ]
        meta = [
            {
                "detector": f.detector,
                "score": f.score,
                "box": f.box,
                "alignment": alignment,
                "eyes": "blazeface" if blaze_eyes else "dlib",
                "uncertain": f.retry,
                # The detector's orientation refusal, which the decision may overrule (unmask_found).
                "detector_problem": f.problem if is_upside_down_problem(f.problem) else "",
            }
            for f in faces
        ]
        return self._restore_records(image, [a.image for a in aligned], [a.matrix for a in aligned], meta)

    def unmask_aligned(self, image: np.ndarray) -> tuple[np.ndarray, list[FaceRestoration]]:
        """`image` is one aligned face crop: restored as a whole (resized to the model's size when it is not that
        size, and the restoration pasted back at the input's own size), unless the masked-face rule finds no mask
        on it (then nothing is restored and the image comes back unchanged)."""
        result, restored, _ = self._unmask_aligned(as_rgb_image(image))
        return result, restored

    def _unmask_aligned(
        self, image: np.ndarray, whole_frame: bool = False
    ) -> tuple[np.ndarray, list[FaceRestoration], list[FaceRestoration]]:
        size = self.usage.require_crop_size()
        height, width = image.shape[:2]
        if (height, width) == (size, size):
            crop, source = image, "aligned-input"
        else:
            shrink = height * width > size * size
            crop = cv2.resize(
                image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
            )
            source = "aligned-input-resized"
        meta = [{"detector": "none", "score": 0.0, "box": (0, 0, width, height), "alignment": source}]
        if whole_frame:
            meta[0].update(detector="whole-frame", alignment="whole-frame", whole_frame=True)
        return self._restore_into(image, [crop], [resize_matrix(width, height, size)], meta)


# The turned try's turns, in quarter turns anticlockwise (np.rot90), in the order tried: upside down first (what the
# orientation checks point to), then sideways either way.
TURNS: tuple[int, ...] = (2, 1, 3)
NOTHING_RESTORED_AS_IT_IS = "nothing was restored as it is"
# A photo whose restored faces all lean at least this far from upright (FaceRestoration.lean, degrees) is unmasked
# again a quarter turn each way, and a turn is taken only where its faces lean less (Unmasker.unmask_found). Measured on the photos' restored faces
# (benchmarks/real_masks.py's sets, as they are): upright real-masked at most 28.7 (99th percentile 26.0), real-mask-seg
# 20.5, real-masked turned 180 degrees 15.6; real-masked turned 90 degrees either way, 37 of its 63 faces restored as
# they are at 42.3-77.9 (the rest lean under 23 degrees, their eyes found on the wrong features).
SIDEWAYS_LEAN = 35.0
# A photo in which BlazeFace's eye keypoints of a sure detection lie at least this far from level
# (m2u.masking.detect.eye_line_angle, degrees) is unmasked again a quarter turn each way (Unmasker.unmask_found; until
# 2026-12-05 only where nothing was restored as it is). Measured (a probe) on the sure detections of
# benchmarks/real_masks.py's photos as they are: upright real-masked at most 47.7 (99th percentile 31.8), the 200
# CelebA photos 12.1, extras 80.2 once (in obama1, no mask; 99th percentile 15.4); real-masked turned 90 degrees
# clockwise, 21 of the 71 photos with nothing restored and a sure detection reach 60.
SIDEWAYS_KEYPOINT_ROLL = 55.0
# A photo whose sure detections' boxes read turned to the box orientation net (m2u.inference.mask_presence.
# box_orientations: at least one this sure of a turn other than none, none this sure of none) is unmasked again turned
# that way (Unmasker._box_turn, unmask_found); a turned view whose restored faces read turned so is refused; and a face
# the upside-down classifier calls upside down is restored where its box reads upright this surely. 0.9 was set before
# m2u-unmask was measured with the net; a probe of the net alone on the benchmark's sure detections had shown that at
# 0.9 it reads 1 upright real-masked photo and 1 real-mask-seg crop turned, and no CelebA or extras photo
# (docs/real-masks.md).
BOX_TURN_CONFIDENCE = 0.9


# A detection whose box lies more than this share inside another face's box (of the smaller of the two) is that face
# again (`_drop_second_boxes`): two faces cannot share most of one's box.
SAME_FACE_INSIDE = 0.6


def _drop_second_boxes(faces: list[FaceRestoration]) -> None:
    """One face, one record: BlazeFace's passes (two networks, three borders) box a face at several scales and
    places (the eyes only; the face and the chest) with an IoU small enough for the detector's merge to keep both, so
    one person was restored twice (one paste over the other) or restored and also listed "not masked". Of faces whose
    boxes overlap by more than SAME_FACE_INSIDE, the one the decision restores is kept (of two, the higher detector
    score); each other becomes "no face: a second box on ...", neither restored nor counted as a face. Decided here,
    after the evidence, rather than in the detector's merge: there the higher score wins, and an eyes-only box can
    outscore the whole face (measured: a turned real-masked photo lost its restoration that way). A detection the
    rule already judged no face (an uncertain box with no mask on it) that overlaps a face kept as a face (restored,
    or left as not masked or upside down) as much is named a second box too, before the rule's own words: the status
    is the same, and the reason says which face it doubles."""
    claimed: list[FaceRestoration] = []
    already_no_face = [f for f in faces if judged_no_face(f.problem)]
    for face in sorted(faces, key=lambda f: (bool(f.problem), -f.score)):
        if judged_no_face(face.problem):
            continue
        same = next((c for c in claimed if inside_share(face.box, c.box) > SAME_FACE_INSIDE), None)
        if same is None:
            claimed.append(face)
        else:
            face.problem = _second_box_reason(face, same)
    for face in already_no_face:
        same = next((c for c in claimed if inside_share(face.box, c.box) > SAME_FACE_INSIDE), None)
        if same is not None:  # the verdict first, then what the rule had found on the box
            face.problem = f"{_second_box_reason(face, same)}; {face.problem[len(NO_FACE) :]}"


def _second_box_reason(face: FaceRestoration, kept: FaceRestoration) -> str:
    share = inside_share(face.box, kept.box)
    return f"{NO_FACE}a second box on the face at {tuple(kept.box)} ({share:.1%} of the smaller box inside the other)"


def turn_words(degrees: int) -> str:
    """How a report names a turn of FaceRestoration.turned degrees anticlockwise."""
    return {90: "90 degrees anticlockwise", 180: "180 degrees", 270: "90 degrees clockwise"}[degrees]


def turned_reason(restored: list[FaceRestoration]) -> str:
    """A photo's report reason when its faces were restored by the turned try ("" when they were not): the turn,
    and why the photo was turned."""
    turned = [f for f in restored if f.turned]
    if not turned:
        return ""
    why = f" ({turned[0].turned_because})" if turned[0].turned_because else ""
    return f"restored in the photo turned {turn_words(turned[0].turned)}{why}"


def _turn_matrix(quarter_turns: int, width: int, height: int) -> np.ndarray:
    """The 2x3 map of a width x height photo's pixels onto np.rot90(photo, quarter_turns)'s pixels."""
    return {
        1: np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, width - 1.0]]),
        2: np.array([[-1.0, 0.0, width - 1.0], [0.0, -1.0, height - 1.0]]),
        3: np.array([[0.0, -1.0, height - 1.0], [1.0, 0.0, 0.0]]),
    }[quarter_turns % 4]


def _turned_back(face, quarter_turns: int, width: int, height: int):
    """A face found in a width x height photo turned `quarter_turns` times 90 degrees anticlockwise (a
    FaceRestoration, or a detector's Face left before alignment), described in the photo's own pixels: its box, and
    its crop matrix (photo -> crop) or its points, turned back; a left face's reason says where it was looked at."""
    forward = _turn_matrix(quarter_turns, width, height)
    back = cv2.invertAffineTransform(forward)

    def points(p):
        return (
            None
            if p is None
            else (back[:, :2] @ np.asarray(p, np.float64).T + back[:, 2:]).T.astype(np.float32)
        )

    left, top, right, bottom = face.box
    corners = points([(left, top), (right, bottom)])
    (x0, y0), (x1, y1) = np.rint(corners.min(axis=0)).astype(int), np.rint(corners.max(axis=0)).astype(int)
    box = (int(x0), int(y0), int(x1), int(y1))
    degrees = 90 * (quarter_turns % 4)
    where = f"in the photo turned {turn_words(degrees)}"
    problem = f"{where}: {face.problem}" if face.problem else ""
    if judged_no_face(face.problem):
        # Still read as no face (the report's status, the evaluation's counts): the place goes after the verdict.
        problem = f"{NO_FACE}{where}: {face.problem[len(NO_FACE) :]}"
    if isinstance(face, FaceRestoration):
        matrix = np.asarray(face.matrix, np.float64)
        composed = np.hstack([matrix[:, :2] @ forward[:, :2], matrix[:, :2] @ forward[:, 2:] + matrix[:, 2:]])
        return replace(face, box=box, matrix=composed, problem=problem, turned=degrees)
    return replace(
        face, box=box, landmarks=points(face.landmarks), keypoints=points(face.keypoints), problem=problem
    )

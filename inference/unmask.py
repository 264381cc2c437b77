"""`m2u-unmask`: restore every masked face in arbitrary photos, and leave everything else exactly as it is.

For each photo: read it (`m2u.masking.read_image`), find every face, masked or not (by default MediaPipe's BlazeFace
then the dlib masked-face cascade where it finds nothing: `m2u.masking.masked_faces.RealFaceDetector`; or that
cascade alone, or plain dlib HOG / CNN), align each with the dataset's transform (`m2u.datasets.align.align_face`)
placed from what a mask does not hide (eye centres, and a mouth centre estimated from the eye centres:
`visible_anchor_points`), predict the mask with M-Seg, and decide from that mask whether the face wears one
(`MaskedFaceRule`: it covers the mouth, not the eyes, and a real share of the face). Faces that do are restored with
the generator, composited (generator pixels only under the predicted mask), and the restored mask region pasted back
into the photo at its own resolution with a feathered edge: only pixels under the warped, feathered mask change, and
only each face's bounding region of the photo is warped (bicubic). With `aligned=True` the inputs are taken as aligned
crops already: no detection, each resized to the model's size when it is not that size.

Every input file gets one row in `report.csv`: status `ok`, `no_face`, `not_masked` (faces found, none wears a
mask), `refused` or `error` (m2u.core.outcome, the vocabulary m2u-mask and m2u-make-dataset use too), with the reason
(unreadable, no such file, ...); `faces.jsonl` has one line per face (input, detector, score, box, alignment source,
mask fraction, the masked-face rule's evidence, `restored`). A face left as it is (no mask found on it; the detector
marks it unusable (`Face.problem`: it looks upside down, so its landmarks would place the alignment on the wrong
features); or it scores below `min_score`) keeps every pixel and is listed with `"restored": false` and the
`problem`; a photo with nothing restored gets no output.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from m2u.core.fileio import atomic_write_text
from m2u.core.guard import stops_the_run
from m2u.core.imageio import write_image
from m2u.core.outcome import Status
from m2u.datasets.layout import DEFAULT_IMAGE_SIZE, check_image_size
from m2u.inference.restore import TwoStageModel, load_two_stage, model_usage, restore_batch
from m2u.training.device import resolve_device
from m2u.training.imagespace import to_uint8_images
from m2u.training.models.mseg import check_mask_threshold

__all__ = [
    "UnmaskConfig",
    "FaceRestoration",
    "FileResult",
    "Unmasker",
    "expand_inputs",
    "feather_weight",
    "paste_feathered",
    "paste_region",
    "summarize",
    "unmask_files",
]


DETECTORS: tuple[str, ...] = ("blazeface", "masked", "hog", "cnn")
ALIGNMENTS: tuple[str, ...] = ("visible", "landmarks")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
# bf16 autocast pays off on a CPU with native bf16 from this many faces per forward pass: benchmarks/unmask.py
# (bf16_vs_fp32) measured the shipped model at 128² at x0.8 of fp32's speed for one face and x1.2-1.7 from four.
BF16_MIN_BATCH = 4


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


@dataclass
class UnmaskConfig:
    """How photos are unmasked."""

    crop_size: int | None = None  # the aligned crop the models see; None: the size the model files record
    mask_threshold: float | None = None  # None: the threshold the M-Seg file records
    dilate: float = (
        0.02  # grow the predicted mask by this fraction of the crop before pasting (hides its rim)
    )
    feather: float = 0.03  # width of the soft edge of the pasted region, fraction of the crop
    keep_crops: bool = False  # also write each aligned crop, its predicted mask and its restoration
    # "blazeface": MediaPipe's BlazeFace, then the dlib masked-face cascade where it finds nothing
    # (m2u.masking.masked_faces.RealFaceDetector); "masked": that dlib cascade alone (MASKED_CASCADE); "hog" /
    # "cnn": one dlib pass ladder as m2u-mask uses (DetectorConfig).
    detector_model: str = "blazeface"
    # Faces the detector scores below this are left as they are (recorded), as m2u-mask's --min-score ignores
    # them. Scores are the detector's own: BlazeFace a probability, dlib's HOG a margin, its CNN a confidence.
    min_score: float | None = None
    # Restore only faces M-Seg finds a mask on (`rule`); False: every face found is restored.
    masked_only: bool = True
    rule: MaskedFaceRule = field(default_factory=MaskedFaceRule)
    # "visible": eye centres + a mouth centre placed from the eye centres (what a mask leaves
    # visible); "landmarks": the 68-point predictor's mouth points (guessed under a mask), as the dataset aligns.
    alignment: str = "visible"
    # The inputs are aligned crops already (a dataset's masked members, cropped faces): no detection.
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
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.crop_size is not None:
            check_image_size(self.crop_size, "crop_size")
        check_mask_threshold(self.mask_threshold)
        if self.dilate < 0 or self.feather < 0:
            raise ValueError("dilate and feather must be >= 0")
        if self.detector_model not in DETECTORS:
            raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {self.detector_model!r}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {', '.join(ALIGNMENTS)}, got {self.alignment!r}")


OUTPUT_FORMATS = ("same", "png", "jpg")

# "same": the input's suffix where OpenCV writes it as it came (WebP written lossless); other inputs become PNG.
_SAME_SUFFIXES = {
    ".jpg": ".jpg",
    ".jpeg": ".jpg",
    ".png": ".png",
    ".webp": ".webp",
    ".bmp": ".bmp",
    ".tif": ".tif",
    ".tiff": ".tif",
}
_WRITE_PARAMS = {".jpg": [cv2.IMWRITE_JPEG_QUALITY, 95], ".webp": [cv2.IMWRITE_WEBP_QUALITY, 101]}


def output_suffix(path: Path, output_format: str) -> str:
    """The suffix of the restored photo of `path`: its own for "same" (lossless inputs stay lossless)."""
    if output_format == "same":
        return _SAME_SUFFIXES.get(path.suffix.lower(), ".png")
    return "." + output_format


@dataclass
class FaceRestoration:
    """One face: the aligned crop, M-Seg's mask (uint8 0/255), the composite, and the crop transform."""

    crop: np.ndarray
    mask: np.ndarray
    restored: np.ndarray
    matrix: np.ndarray
    mask_fraction: float
    # The detection pass that found it ("hog0", "mhog0", "cnn1", ...; "none" for an aligned input).
    detector: str = ""
    score: float = 0.0
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # in the photo's pixels
    alignment: str = ""  # visible | landmarks | aligned-input | aligned-input-resized
    weight: np.ndarray | None = None  # crop-space paste weight (feathered, dilated mask)
    precision: str = "fp32"  # of the forward pass that restored it (fp32 | bf16)
    # What MaskedFaceRule read off the mask (mask fraction, mouth and eye coverage).
    evidence: dict = field(default_factory=dict)
    # Why the face was left as it is ("" when restored): the masked-face rule's reason.
    problem: str = ""

    def record(self) -> dict:
        """The face's line in faces.jsonl (without the input's name)."""
        return {
            "detector": self.detector,
            "score": round(self.score, 4),
            "box": [int(v) for v in self.box],
            "alignment": self.alignment,
            "mask_fraction": round(self.mask_fraction, 4),
            "precision": self.precision,
            **self.evidence,
            "restored": not self.problem,
            **({"problem": self.problem} if self.problem else {}),
        }


@dataclass
class FileResult:
    """One row of report.csv."""

    input: str
    status: str  # m2u.core.outcome.Status: ok | no_face | not_masked | refused | error (the reason says which error)
    reason: str = ""
    output: str = ""
    faces: int = 0  # restored
    refused_faces: int = 0  # found but left as they are (not masked, upside down, below --min-score)
    mask_fractions: str = ""  # per face: the share of the crop M-Seg marked as mask
    width: int = 0
    height: int = 0
    seconds: float = 0.0


def feather_weight(mask: np.ndarray, dilate_px: int, feather_px: int) -> np.ndarray:
    """Crop-space paste weight in [0, 1]: the mask grown by `dilate_px`, its edge softened over about
    `feather_px`, and faded to 0 at the crop border so no crop edge shows in the photo."""
    size = mask.shape[0]
    region = (mask > 0).astype(np.uint8)
    if dilate_px > 0:
        region = cv2.dilate(region, np.ones((2 * dilate_px + 1,) * 2, np.uint8))
    weight = region.astype(np.float32)
    if feather_px > 0:
        k = 2 * feather_px + 1
        weight = cv2.GaussianBlur(weight, (k, k), sigmaX=feather_px / 2.0)
        # The border fade: 0 at the edge, 1 from `feather_px` inwards.
        ramp = np.clip(np.minimum(np.arange(size), np.arange(size)[::-1]) / float(feather_px), 0.0, 1.0)
        weight *= np.minimum.outer(ramp, ramp).astype(np.float32)
    return np.clip(weight, 0.0, 1.0)


def paste_region(
    photo: np.ndarray, crop: np.ndarray, matrix: np.ndarray, weight: np.ndarray
) -> tuple[int, int, int, int]:
    """Blend `crop` into `photo` IN PLACE through the inverse of the alignment `matrix`, by `weight` (crop-space).

    Only the photo's bounding region of the weight's support is warped (bicubic for the image, so a crop smaller
    than the face is upsampled smoothly; bilinear for the weight), and only pixels whose warped weight is above
    zero change: every other pixel keeps its exact input value. Returns the region (x0, y0, x1, y1) touched."""
    ys, xs = np.nonzero(weight > 0)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    inverse = cv2.invertAffineTransform(np.asarray(matrix, np.float64))
    corners = np.array(
        [
            [xs.min(), ys.min()],
            [xs.max() + 1, ys.min()],
            [xs.min(), ys.max() + 1],
            [xs.max() + 1, ys.max() + 1],
        ],
        np.float64,
    )
    corners = corners @ inverse[:, :2].T + inverse[:, 2]
    height, width = photo.shape[:2]
    x0, y0 = (int(np.clip(v, 0, lim)) for v, lim in zip(np.floor(corners.min(0)) - 2, (width, height)))
    x1, y1 = (int(np.clip(v, 0, lim)) for v, lim in zip(np.ceil(corners.max(0)) + 3, (width, height)))
    if x1 <= x0 or y1 <= y0:
        return (0, 0, 0, 0)
    # The same inverse warp, expressed for the region's own pixel grid.
    local = inverse.copy()
    local[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(crop, local, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(weight.astype(np.float32), local, size, flags=cv2.INTER_LINEAR, borderValue=0.0)
    alpha = np.clip(alpha, 0.0, 1.0)
    region = photo[y0:y1, x0:x1]
    a = alpha[..., None]
    blended = np.clip(np.rint(region.astype(np.float32) * (1.0 - a) + warped.astype(np.float32) * a), 0, 255)
    inside = alpha > 0
    region[inside] = blended.astype(np.uint8)[inside]
    return (x0, y0, x1, y1)


def paste_feathered(
    photo: np.ndarray, crop: np.ndarray, matrix: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """A copy of `photo` with `crop` blended in by `weight` (see `paste_region`)."""
    out = photo.copy()
    paste_region(out, crop, matrix, weight)
    return out


def _resize_matrix(width: int, height: int, size: int) -> np.ndarray:
    """The 2x3 matrix that maps an input of width x height onto the size x size crop (a plain resize)."""
    return np.array([[size / width, 0.0, 0.0], [0.0, size / height, 0.0]])


class Unmasker:
    """The detection → alignment → M-Seg → generator → paste-back pipeline for one photo at a time."""

    def __init__(self, models: TwoStageModel, config: UnmaskConfig | None = None):
        from m2u.masking import DetectorConfig, FaceDetector
        from m2u.masking.masked_faces import MaskedFaceDetector, RealFaceDetector

        self.config = config or UnmaskConfig()
        self.device = next(models.generator.parameters()).device
        self.mseg = models.mseg.eval()
        self.generator = models.generator.eval()
        # Crop size and threshold from the model files unless the config names them (then with a warning).
        self.usage = model_usage(
            models, self.config.crop_size, self.config.mask_threshold, DEFAULT_IMAGE_SIZE
        )
        if self.config.detector_model == "blazeface":
            self.detector = RealFaceDetector()
        elif self.config.detector_model == "masked":
            self.detector = MaskedFaceDetector()
        else:
            self.detector = FaceDetector(DetectorConfig(model=self.config.detector_model))

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
        """Aligned uint8 crops -> (masks uint8 0/255 (N, S, S), composites uint8 (N, S, S, 3))."""
        masks, composites, _ = self.restore_passes(crops)
        return masks, composites

    @torch.no_grad()
    def restore_passes(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """`restore_crops` plus each crop's precision: the crops go through the models together, in forward passes
        of up to `max_batch` faces."""
        masks, composites, precisions = [], [], []
        step = self.config.max_batch
        for start in range(0, len(crops), step):
            chunk = crops[start : start + step]
            precision = self.pass_precision(len(chunk))
            batch = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).float().div(255.0).to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                mask, _, comp = restore_batch(self.mseg, self.generator, batch, self.usage.mask_threshold)
            masks.append((mask[:, 0].float().cpu().numpy() > 0.5).astype(np.uint8) * 255)
            composites.append(to_uint8_images(comp.float().cpu()))
            precisions += [precision] * len(chunk)
        return np.concatenate(masks), np.concatenate(composites), precisions

    @torch.no_grad()
    def predict_masks(self, crops: list[np.ndarray]) -> np.ndarray:
        """M-Seg alone on aligned uint8 crops -> masks uint8 0/255 (N, S, S): what the decision reads before the
        generator runs (faces left as they are cost no generator pass)."""
        from m2u.training.imagespace import to_model_range

        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255.0).to(self.device)
        mask = self.mseg.predict_mask(to_model_range(batch), self.usage.mask_threshold)
        return (mask[:, 0].cpu().numpy() > 0.5).astype(np.uint8) * 255

    def paste_weight(self, mask: np.ndarray) -> np.ndarray:
        """The crop-space weight a predicted mask is pasted back with (dilated, feathered)."""
        size = self.usage.require_crop_size()
        dilate_px = round(self.config.dilate * size)
        feather_px = max(1, round(self.config.feather * size)) if self.config.feather > 0 else 0
        return feather_weight(mask, dilate_px, feather_px)

    def _restore_into(
        self, image: np.ndarray, crops: list[np.ndarray], matrices: list[np.ndarray], meta: list[dict]
    ) -> tuple[np.ndarray, list[FaceRestoration], list[FaceRestoration]]:
        """(the photo with the masked faces pasted back, those faces, the faces left as they are: `not_masked`)."""
        from m2u.inference.mask_presence import mask_probabilities

        rule = self.config.rule
        decide = self.config.masked_only or any(info.get("uncertain") for info in meta)
        probabilities = mask_probabilities(crops) if decide else np.ones(len(crops))
        masks = self.predict_masks(crops) if decide else None
        faces: list[FaceRestoration] = []
        for k, (crop, matrix, p, info) in enumerate(zip(crops, matrices, probabilities, meta, strict=True)):
            uncertain = info.pop("uncertain", False)
            face = FaceRestoration(crop, None, None, matrix, 0.0, **info)
            if masks is not None:
                face.mask = masks[k]
                face.evidence = rule.evidence(masks[k], p)
                if self.config.masked_only:
                    face.problem = rule.not_masked_reason(masks[k], p, uncertain)
                elif uncertain and p < rule.min_face_probability:
                    # With --all-faces too, an uncertain detection is a face only where the classifier says so.
                    face.problem = rule.not_masked_reason(masks[k], p, uncertain)
            faces.append(face)
        kept = [f for f in faces if not f.problem]
        if kept:
            # The generator runs only on the faces to restore (in passes of up to max_batch faces).
            kept_masks, composites, precisions = self.restore_passes([f.crop for f in kept])
            for face, mask, comp, precision in zip(kept, kept_masks, composites, precisions, strict=True):
                # The decision's mask where it was read (the same M-Seg on the same crop), else the restorer's.
                face.mask = mask if face.mask is None else face.mask
                face.restored, face.precision = comp, precision
        result = image.copy()
        for face in faces:
            face.mask_fraction = float((face.mask > 0).mean())
            if face.problem:
                continue  # not one pixel of the photo changes for it
            if not face.evidence:
                face.evidence = rule.evidence(face.mask, 1.0)
                face.evidence.pop("mask_probability")  # not asked (--all-faces)
            face.weight = self.paste_weight(face.mask)
            # Only the masked region is pasted back: elsewhere the crop is a resampled copy of the photo.
            paste_region(result, face.restored, face.matrix, face.weight)
        return result, kept, [f for f in faces if f.problem]

    def detect(self, image: np.ndarray) -> list:
        """Every face the detector finds in `image` (uint8 RGB), usable or not (`Face.problem`)."""
        return self.detector.detect(image)

    def unmask_image(self, image: np.ndarray) -> tuple[np.ndarray, list[FaceRestoration]]:
        """Every usable face of `image` (uint8 RGB) restored and pasted back; the faces in detection order."""
        result, restored, _ = self.unmask_with_refusals(image)
        return result, restored

    def unmask_with_refusals(self, image: np.ndarray) -> tuple[np.ndarray, list[FaceRestoration], list]:
        """As `unmask_image`, plus the faces found but left exactly as they are, each with its `problem`: the
        detector's (m2u.masking Face: it looks upside down), a score below `min_score` (Face), or the masked-face
        rule's (FaceRestoration: no mask found on it)."""
        if self.config.aligned:
            result, restored, left = self._unmask_aligned(image)
            return result, restored, left
        found = self.detect(image)
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
            replace(f, problem=f"no face: an uncertain detection; {f.problem}")
            if f.problem and f.retry
            else f
            for f in found
        ]
        refused = [f for f in found if f.problem]
        result, restored, left = self._unmask_faces(image, [f for f in found if not f.problem])
        return result, restored, refused + left

    def unmask_faces(self, image: np.ndarray, faces: list) -> tuple[np.ndarray, list[FaceRestoration]]:
        """`faces` (m2u.masking Face objects of `image`) restored and pasted back, in their order; faces the
        masked-face rule finds no mask on are left out (and as they are)."""
        result, restored, _ = self._unmask_faces(image, faces)
        return result, restored

    def _unmask_faces(
        self, image: np.ndarray, faces: list
    ) -> tuple[np.ndarray, list[FaceRestoration], list[FaceRestoration]]:
        from m2u.datasets.align import align_face
        from m2u.masking.masked_faces import visible_anchor_points

        if not faces:
            return image.copy(), [], []
        size = self.usage.require_crop_size()
        visible = self.config.alignment == "visible"
        aligned = [
            align_face(
                image, face.landmarks, size, visible_anchor_points(face.landmarks) if visible else None
            )
            for face in faces
        ]
        meta = [
            {
                "detector": f.detector,
                "score": f.score,
                "box": f.box,
                "alignment": self.config.alignment,
                "uncertain": f.retry,
            }
            for f in faces
        ]
        return self._restore_into(image, [a.image for a in aligned], [a.matrix for a in aligned], meta)

    def unmask_aligned(self, image: np.ndarray) -> tuple[np.ndarray, list[FaceRestoration]]:
        """`image` is one aligned face crop: restored as a whole (resized to the model's size when it is not that
        size, and the restoration pasted back at the input's own size), unless the masked-face rule finds no mask
        on it (then nothing is restored and the image comes back unchanged)."""
        result, restored, _ = self._unmask_aligned(image)
        return result, restored

    def _unmask_aligned(
        self, image: np.ndarray
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
        return self._restore_into(image, [crop], [_resize_matrix(width, height, size)], meta)


def expand_inputs(inputs: list[str] | tuple[str, ...], out_dir: str | Path | None = None) -> list[Path]:
    """The input files (m2u.core.inputs.discover: folders recursive, globs, list files, hidden files passed
    over); nothing inside `out_dir` is taken, so a rerun never reads its own outputs back."""
    from m2u.core.inputs import discover

    return [e.path for e in discover(inputs, exclude=[] if out_dir is None else [out_dir]).entries]


def _unique_name(stem: str, used: set[str]) -> str:
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}-{k}"
    used.add(name)
    return name


def _write_rgb(path: Path, image: np.ndarray) -> None:
    # Whole or not at all, never through a link or over a stranger's file (m2u.core.fileio).
    write_image(path, image, params=_WRITE_PARAMS.get(path.suffix.lower(), []))


def unmask_files(
    inputs: list[str] | tuple[str, ...],
    mseg_path: str | Path | None,
    generator_path: str | Path | None,
    out_dir: str | Path,
    config: UnmaskConfig | None = None,
    *,
    unmasker: Unmasker | None = None,
) -> list[FileResult]:
    """Unmask every input photo into `out_dir` (same name stem; the format `config.output_format`) and write
    `out_dir/report.csv`."""
    from m2u.core.inputs import check_output_folder, discover, no_images_error, output_lock

    config = config or UnmaskConfig()
    out = Path(out_dir)
    # Checked before the models load or anything is written: OUT is not an input folder and no output replaces
    # an input (m2u.core.inputs); OUT itself is never read as input.
    found = discover(inputs, exclude=[out])
    if config.limit is not None:
        del found.entries[config.limit :]
    paths = [e.path for e in found.entries]
    # Each input's output name is fixed before any work (equal stems get -2, -3... in input order), so the check
    # below sees every file the run can write.
    planned: set[str] = set()
    names = [_unique_name(p.stem, planned) + output_suffix(p, config.output_format) for p in paths]
    check_output_folder(
        out, found, [*(out / name for name in names), out / "report.csv", out / "faces.jsonl"]
    )
    if not paths:
        raise no_images_error(found)
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out, "m2u-unmask"):
        unmasker = unmasker or Unmasker.from_files(mseg_path, generator_path, config)
        return _unmask_paths(list(zip(paths, names, strict=True)), out, config, unmasker)


def _unmask_paths(
    paths: list[tuple[Path, str]], out: Path, config: UnmaskConfig, unmasker: Unmasker
) -> list[FileResult]:
    from m2u.masking import ImageReadError, read_image

    if config.keep_crops:
        (out / "crops").mkdir(exist_ok=True)
    results: list[FileResult] = []
    face_lines: list[dict] = []
    for path, name in tqdm(paths, unit="file", desc="unmask", disable=not config.progress):
        start = time.perf_counter()
        row = FileResult(input=str(path), status="ok")
        try:
            if not path.exists() and not path.is_symlink():
                row.status, row.reason = Status.ERROR, "no such file"
            else:
                image = read_image(path)
                row.height, row.width = image.shape[:2]
                result, faces, refused = unmasker.unmask_with_refusals(image)
                row.faces, row.refused_faces = len(faces), len(refused)
                if refused:
                    row.reason = f"{len(refused)} face(s) left as they are: {refused[0].problem}"
                if not faces:
                    row.status = _status_without_faces(refused)
                    row.reason = row.reason or "no face found by the detector"
                else:
                    target = out / name
                    _write_rgb(target, result)
                    row.output = str(target)
                    row.mask_fractions = " ".join(f"{f.mask_fraction:.3f}" for f in faces)
                    if any(f.alignment == "aligned-input-resized" for f in faces):
                        size = unmasker.usage.require_crop_size()
                        row.reason = (  # aligned inputs are never refused: nothing else to say
                            f"aligned input resized from {row.width}x{row.height} to {size}x{size} for the model "
                            "(restoration pasted back at the input's size)"
                        )
                    face_lines += [
                        {"input": str(path), "output": str(target), "face": k, **f.record()}
                        for k, f in enumerate(faces)
                    ]
                face_lines += [
                    {"input": str(path), "output": row.output, "face": k, **_refused_record(f)}
                    for k, f in enumerate(refused, start=len(faces))
                ]
                if faces and config.keep_crops:
                    for k, face in enumerate(faces):
                        stem = out / "crops" / f"{Path(name).stem}_face{k}"
                        _write_rgb(Path(f"{stem}_input.png"), face.crop)
                        write_image(Path(f"{stem}_mask.png"), face.mask, rgb=False)
                        _write_rgb(Path(f"{stem}_restored.png"), face.restored)
        except ImageReadError as exc:
            row.status, row.reason = Status.ERROR, exc.reason
        except Exception as exc:
            if stops_the_run(exc):
                raise  # a full disk or read-only folder: every later file would fail the same way
            row.status, row.reason = Status.ERROR, f"{type(exc).__name__}: {exc}"
        row.seconds = round(time.perf_counter() - start, 4)
        results.append(row)
    report = io.StringIO(newline="")
    writer = csv.DictWriter(report, fieldnames=[f.name for f in fields(FileResult)])
    writer.writeheader()
    for row in results:
        writer.writerow(row.__dict__)
    atomic_write_text(out / "report.csv", report.getvalue())
    atomic_write_text(out / "faces.jsonl", "".join(json.dumps(line) + "\n" for line in face_lines))
    return results


def _status_without_faces(left: list) -> str:
    """report.csv's status of a photo where nothing was restored: `not_masked` when the masked-face rule left a
    face that wears no mask, `refused` when the detector's checks left faces (upside down, below --min-score),
    else `no_face` (nothing found, or only uncertain detections without a mask: no faces)."""
    if any(isinstance(f, FaceRestoration) and f.problem.startswith("not masked") for f in left):
        return Status.NOT_MASKED
    detector_refused = [
        f for f in left if not isinstance(f, FaceRestoration) and not f.problem.startswith("no face")
    ]
    return Status.REFUSED if detector_refused else Status.NO_FACE


def _refused_record(face) -> dict:
    """A face's line in faces.jsonl when it was left as it is (without the input's name): where, and why."""
    if isinstance(face, FaceRestoration):
        return face.record()
    return {
        "detector": face.detector,
        "score": round(face.score, 4),
        "box": [int(v) for v in face.box],
        "restored": False,
        "problem": face.problem,
    }


def summarize(results: list[FileResult], faces_jsonl: str | Path | None = None) -> str:
    """One line: files by status, faces restored, and faces by detection pass and alignment source."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    line = f"{len(results)} files: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    line += f"; {sum(r.faces for r in results)} faces restored"
    refused = sum(r.refused_faces for r in results)
    if refused:
        line += f", {refused} left as they are (see faces.jsonl)"
    if faces_jsonl is not None and Path(faces_jsonl).is_file():
        by: dict[str, int] = {}
        for text in Path(faces_jsonl).read_text().splitlines():
            face = json.loads(text)
            if not face.get("restored", True):
                continue
            key = f"{face['detector']}/{face['alignment']}"
            by[key] = by.get(key, 0) + 1
        if by:
            line += " (" + ", ".join(f"{n} {k}" for k, n in sorted(by.items())) + ")"
    return line

"""`m2u-unmask`: restore every masked face in arbitrary photos.

For each photo: read it (`m2u.masking.read_image`), detect every face (`m2u.masking.FaceDetector`), align each
with the dataset's transform (`m2u.datasets.align.align_face`), predict the mask with M-Seg, restore with the
generator, composite (generator pixels only under the predicted mask), and paste the restored mask region back
into the photo with a feathered edge. Every input file gets one row in `report.csv`: status `ok`, `no_face`,
`unreadable`, `missing` or `error`, with the reason.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from m2u.datasets.layout import DEFAULT_IMAGE_SIZE, check_image_size
from m2u.training.device import resolve_device
from m2u.training.imagespace import to_uint8_images
from m2u.training.inference.restore import load_two_stage, model_usage, restore_batch
from m2u.training.models import CARU2Net, MSeg

__all__ = [
    "UnmaskConfig",
    "FaceRestoration",
    "FileResult",
    "Unmasker",
    "expand_inputs",
    "feather_weight",
    "unmask_files",
]


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
    detector_model: str = "hog"
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.crop_size is not None:
            check_image_size(self.crop_size, "--size")
        if self.mask_threshold is not None and not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")
        if self.dilate < 0 or self.feather < 0:
            raise ValueError("dilate and feather must be >= 0")


@dataclass
class FaceRestoration:
    """One face: the aligned crop, M-Seg's mask (uint8 0/255), the composite, and the crop transform."""

    crop: np.ndarray
    mask: np.ndarray
    restored: np.ndarray
    matrix: np.ndarray
    mask_fraction: float


@dataclass
class FileResult:
    """One row of report.csv."""

    input: str
    status: str  # ok | no_face | unreadable | missing | error
    reason: str = ""
    output: str = ""
    faces: int = 0
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


def paste_feathered(
    photo: np.ndarray, crop: np.ndarray, matrix: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """Blend `crop` back into `photo` through the inverse of the alignment `matrix`, by `weight`."""
    height, width = photo.shape[:2]
    inverse = cv2.invertAffineTransform(np.asarray(matrix, np.float64))
    warped = cv2.warpAffine(
        crop, inverse, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    alpha = cv2.warpAffine(weight, inverse, (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0)
    alpha = np.clip(alpha, 0.0, 1.0)[..., None]
    blended = photo.astype(np.float32) * (1.0 - alpha) + warped.astype(np.float32) * alpha
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


class Unmasker:
    """The detection → alignment → M-Seg → generator → paste-back pipeline for one photo at a time."""

    def __init__(self, mseg: MSeg, generator: CARU2Net, config: UnmaskConfig | None = None):
        from m2u.masking import DetectorConfig, FaceDetector

        self.config = config or UnmaskConfig()
        self.device = next(generator.parameters()).device
        self.mseg = mseg.eval()
        self.generator = generator.eval()
        # Crop size and threshold from the model files unless the config names them (then with a warning).
        self.usage = model_usage(
            mseg, generator, self.config.crop_size, self.config.mask_threshold, DEFAULT_IMAGE_SIZE
        )
        self.detector = FaceDetector(DetectorConfig(model=self.config.detector_model))  # type: ignore[arg-type]

    @classmethod
    def from_files(
        cls,
        mseg_path: str | Path | None,
        generator_path: str | Path | None,
        config: UnmaskConfig | None = None,
    ) -> Unmasker:
        """The pair of model files, or (both None) the model shipped with m2u."""
        config = config or UnmaskConfig()
        mseg, generator = load_two_stage(mseg_path, generator_path, resolve_device(config.device))
        return cls(mseg, generator, config)

    @torch.no_grad()
    def restore_crops(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Aligned uint8 crops -> (masks uint8 0/255 (N, S, S), composites uint8 (N, S, S, 3))."""
        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255.0).to(self.device)
        mask, _, comp = restore_batch(self.mseg, self.generator, batch, self.usage.threshold)
        masks = (mask[:, 0].cpu().numpy() > 0.5).astype(np.uint8) * 255
        return masks, to_uint8_images(comp.cpu())

    def unmask_image(self, image: np.ndarray) -> tuple[np.ndarray, list[FaceRestoration]]:
        """Every face of `image` (uint8 RGB) restored and pasted back; the faces in detection order."""
        from m2u.datasets.align import align_face

        faces = self.detector.detect(image)
        if not faces:
            return image.copy(), []
        size = self.usage.crop_size
        aligned = [align_face(image, face.landmarks, size) for face in faces]
        masks, restored = self.restore_crops([a.image for a in aligned])
        dilate_px = round(self.config.dilate * size)
        feather_px = max(1, round(self.config.feather * size)) if self.config.feather > 0 else 0
        result = image.copy()
        out: list[FaceRestoration] = []
        for a, mask, comp in zip(aligned, masks, restored, strict=True):
            weight = feather_weight(mask, dilate_px, feather_px)
            # Only the masked region is pasted back: elsewhere the crop is a resampled copy of the photo.
            result = paste_feathered(result, comp, a.matrix, weight)
            out.append(FaceRestoration(a.image, mask, comp, a.matrix, float((mask > 0).mean())))
        return result, out


def expand_inputs(inputs: list[str] | tuple[str, ...], out_dir: str | Path | None = None) -> list[Path]:
    """The input files (m2u.masking.inputs.discover: folders recursive, globs, list files, hidden files passed
    over); nothing inside `out_dir` is taken, so a rerun never reads its own outputs back."""
    from m2u.masking.inputs import discover

    return [e.path for e in discover(inputs, exclude=[] if out_dir is None else [out_dir]).entries]


def _unique_name(stem: str, used: set[str]) -> str:
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}-{k}"
    used.add(name)
    return name


def _write_rgb(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def unmask_files(
    inputs: list[str] | tuple[str, ...],
    mseg_path: str | Path | None,
    generator_path: str | Path | None,
    out_dir: str | Path,
    config: UnmaskConfig | None = None,
    *,
    unmasker: Unmasker | None = None,
) -> list[FileResult]:
    """Unmask every input photo into `out_dir` (PNG, same name stem) and write `out_dir/report.csv`."""
    from m2u.masking.inputs import check_output_folder, discover, output_lock

    config = config or UnmaskConfig()
    out = Path(out_dir)
    # Checked before the models load or anything is written: OUT is not an input folder and no output replaces
    # an input (m2u.masking.inputs); OUT itself is never read as input.
    found = discover(inputs, exclude=[out])
    paths = [e.path for e in found.entries]
    # Each input's output name is fixed before any work (equal stems get -2, -3... in input order), so the check
    # below sees every file the run can write.
    planned: set[str] = set()
    names = [_unique_name(p.stem, planned) for p in paths]
    check_output_folder(out, found, [*(out / f"{name}.png" for name in names), out / "report.csv"])
    if not paths:
        raise ValueError("no input images found")
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
    for path, name in tqdm(paths, unit="file", desc="unmask", disable=not config.progress):
        start = time.perf_counter()
        row = FileResult(input=str(path), status="ok")
        try:
            if not path.exists() and not path.is_symlink():
                row.status, row.reason = "missing", "no such file"
            else:
                image = read_image(path)
                row.height, row.width = image.shape[:2]
                result, faces = unmasker.unmask_image(image)
                row.faces = len(faces)
                if not faces:
                    row.status, row.reason = "no_face", "no face found by the detector"
                else:
                    target = out / f"{name}.png"
                    _write_rgb(target, result)
                    row.output = str(target)
                    row.mask_fractions = " ".join(f"{f.mask_fraction:.3f}" for f in faces)
                    if config.keep_crops:
                        for k, face in enumerate(faces):
                            stem = out / "crops" / f"{name}_face{k}"
                            _write_rgb(Path(f"{stem}_input.png"), face.crop)
                            cv2.imwrite(f"{stem}_mask.png", face.mask)
                            _write_rgb(Path(f"{stem}_restored.png"), face.restored)
        except ImageReadError as exc:
            row.status, row.reason = "unreadable", exc.reason
        except Exception as exc:  # noqa: BLE001 - degenerate landmarks, a bug or an exotic file: report, keep going
            row.status, row.reason = "error", f"{type(exc).__name__}: {exc}"
        row.seconds = round(time.perf_counter() - start, 4)
        results.append(row)
    with open(out / "report.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(FileResult)])
        writer.writeheader()
        for row in results:
            writer.writerow(row.__dict__)
    return results

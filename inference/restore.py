"""The two-stage restorer: M-Seg predicts the mask, CARU2-Net fills it, the composite keeps every visible pixel.

How a pair of model files is used comes from the files (`checkpoint.ModelInfo`, returned beside each module in
a `TwoStageModel`): `model_usage` gives the crop size and M-Seg's mask threshold, honouring an explicit value
that contradicts the files with a warning. With no model files at all, `load_two_stage` loads the model that
ships with m2u (`m2u.inference.pretrained`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from m2u.inference.pretrained import DEFAULT_MODEL, pretrained_paths
from m2u.training.checkpoint import ModelInfo, ModelUsageWarning, load_model
from m2u.training.imagespace import checked_images01, composite, from_model_range, to_model_range
from m2u.training.models import CARU2Net, MSeg
from m2u.training.models.mseg import check_mask_threshold

__all__ = [
    "IMPLAUSIBLE_MASK_SHARE",
    "ModelUsage",
    "ModelUsageWarning",
    "TwoStageModel",
    "load_pretrained",
    "load_two_stage",
    "fill_mask_holes",
    "inpaint_batch",
    "model_usage",
    "predict_masks",
    "predict_masks_and_probabilities",
    "restore_batch",
]


# A face mask never covers this share of an aligned face crop (the shipped M-Seg marks about a third on real
# masks): an M-Seg that marks more is broken (trained for seconds, say), whatever a run reports. m2u-unmask warns
# of it, m2u-eval's coverage warning uses it as its upper bound.
IMPLAUSIBLE_MASK_SHARE = 0.9


@dataclass
class TwoStageModel:
    """The two networks and what their files record about using them (crop size, threshold, provenance)."""

    mseg: MSeg
    generator: CARU2Net
    mseg_info: ModelInfo = field(default_factory=ModelInfo)
    generator_info: ModelInfo = field(default_factory=ModelInfo)


def load_two_stage(
    mseg_path: str | Path | None, generator_path: str | Path | None, device: torch.device | str = "cpu"
) -> TwoStageModel:
    """Load and type-check the two model files (a swapped pair gets a clear error). Neither path given: the
    model shipped with m2u (`m2u.inference.pretrained.DEFAULT_MODEL`)."""
    from m2u.training.device import resolve_device

    # Every way in names devices alike: "auto", "cuda" without a GPU or "mps" get m2u's one sentence, not torch's.
    device = resolve_device(str(device))
    if mseg_path is None and generator_path is None:
        mseg_path, generator_path = pretrained_paths()
    elif mseg_path is None or generator_path is None:
        raise ValueError("give the M-Seg and the generator file together (or neither, for the shipped model)")
    mseg, mseg_info = load_model(mseg_path, map_location=device)
    generator, generator_info = load_model(generator_path, map_location=device)
    if not isinstance(mseg, MSeg):
        raise ValueError(f"the M-Seg file {mseg_path} holds a {type(mseg).__name__}, not an M-Seg model")
    if not isinstance(generator, CARU2Net):
        raise ValueError(
            f"the generator file {generator_path} holds a {type(generator).__name__}, not a CARU2-Net generator"
        )
    return TwoStageModel(mseg.eval(), generator.eval(), mseg_info, generator_info)


def load_pretrained(name: str = DEFAULT_MODEL, device: str | torch.device = "cpu") -> TwoStageModel:
    """The shipped two-stage model, ready to use (eval mode, on `device`: a name as every m2u command takes it,
    "auto" included, or a torch.device), with what its files record."""
    mseg_path, generator_path = pretrained_paths(name)
    return load_two_stage(mseg_path, generator_path, device)


@dataclass
class ModelUsage:
    crop_size: int | None  # the aligned crop side to run the models at (None: the caller's data decides)
    mask_threshold: float  # M-Seg's mask threshold
    trained_size: int | None  # what the files record (None: files from before m2u recorded it)

    def require_crop_size(self) -> int:
        """The crop size, where one must be known (the caller gave model_usage a fallback size)."""
        if self.crop_size is None:
            raise ValueError("the model files record no crop size and none was given")
        return self.crop_size


def _crop_size(
    models: TwoStageModel, crop_size: int | None, fallback_size: int | None
) -> tuple[int | None, int | None]:
    """(the crop size to use, the size the files record)."""
    sizes = {"M-Seg": models.mseg_info.crop_size, "generator": models.generator_info.crop_size}
    if len({s for s in sizes.values() if s}) > 1:
        warnings.warn(
            f"the model files were trained at different sizes (M-Seg {sizes['M-Seg']}, generator "
            f"{sizes['generator']}): using the generator's",
            ModelUsageWarning,
            stacklevel=3,
        )
    trained = sizes["generator"] or sizes["M-Seg"]
    if crop_size is None:
        if trained is None and fallback_size is not None:
            warnings.warn(
                f"the model files do not record their training size: using {fallback_size} (a crop size given "
                "explicitly chooses another)",
                ModelUsageWarning,
                stacklevel=3,
            )
            return fallback_size, trained
        return trained, trained
    if trained is not None and crop_size != trained:
        warnings.warn(
            f"crop size {crop_size} differs from the {trained}x{trained} the models were trained at: honoured, "
            "but expect worse restorations",
            ModelUsageWarning,
            stacklevel=3,
        )
    return crop_size, trained


def _mask_threshold(models: TwoStageModel, mask_threshold: float | None) -> float:
    file_threshold = models.mseg_info.mask_threshold_or_default()
    if mask_threshold is None:
        return file_threshold
    check_mask_threshold(mask_threshold)
    if models.mseg_info.mask_threshold is not None and mask_threshold != file_threshold:
        warnings.warn(
            f"mask threshold {mask_threshold} differs from the {file_threshold} M-Seg was trained with: honoured",
            ModelUsageWarning,
            stacklevel=3,
        )
    return mask_threshold


def model_usage(
    models: TwoStageModel,
    crop_size: int | None = None,
    mask_threshold: float | None = None,
    fallback_size: int | None = None,
) -> ModelUsage:
    """The crop size and mask threshold to use the pair with: the files' unless given. A given value that
    differs from the files' is honoured with a ModelUsageWarning; files that record no size use
    `fallback_size` (the dataset's default), also with a warning, or, without a fallback, leave the size to
    the caller's data (crop_size None)."""
    from m2u.datasets.align import ALIGNMENT_VERSION

    size, trained = _crop_size(models, crop_size, fallback_size)
    threshold = _mask_threshold(models, mask_threshold)
    for name, info in (("M-Seg", models.mseg_info), ("generator", models.generator_info)):
        if info.alignment and info.alignment.get("version") != ALIGNMENT_VERSION:
            warnings.warn(
                f"the {name} file was trained on crops of alignment version {info.alignment.get('version')}, "
                f"this m2u aligns with version {ALIGNMENT_VERSION}: expect worse restorations",
                ModelUsageWarning,
                stacklevel=2,
            )
    return ModelUsage(
        crop_size=None if size is None else int(size),
        mask_threshold=float(threshold),
        trained_size=trained,
    )


# M-Seg's mask at inference is the mean of the face's and its mirror image's probabilities (MSeg.predict_mask), for
# twice M-Seg's cost. With the M-Seg shipped on 2026-12-04 it measured Dice 0.9799 -> 0.9812 on the template-mask
# test split, 0.9774 -> 0.9792 on the realistic one, and 0.889 / 0.871 -> 0.893 / 0.876 on real-mask-seg.
MIRROR_MASKS = True
# A mask has no holes: the background M-Seg leaves enclosed by its mask (bright folds of white masks in real photos)
# is marked too. With the M-Seg shipped on 2026-12-04: template-mask test split unchanged (Dice 0.9812, composite
# 28.30 dB), realistic-mask split unchanged (0.9792), real-mask-seg with every found face restored Dice
# 0.8925 / 0.875 -> 0.8943 / 0.8768, through the decision rule 0.9186 / 0.8735 -> 0.9204 / 0.8753.
FILL_MASK_HOLES = True


def fill_mask_holes(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) {0, 1} masks with the regions they enclose (background not reaching the crop's edge) filled."""
    from scipy.ndimage import binary_fill_holes

    planes = (mask[:, 0] > 0.5).cpu().numpy()
    filled = np.stack([binary_fill_holes(plane) for plane in planes])[:, None]
    return torch.from_numpy(filled).to(device=mask.device, dtype=mask.dtype)


def predict_masks(
    mseg: MSeg,
    x: torch.Tensor,
    mask_threshold: float,
    mirror: bool = MIRROR_MASKS,
    fill_holes: bool = FILL_MASK_HOLES,
) -> torch.Tensor:
    """M-Seg's binary masks (B, 1, H, W) for images `x` in the model range, as m2u-unmask and m2u-eval use them:
    `mirror` averaged (MSeg.predict_mask), their enclosed holes filled (`fill_holes`)."""
    return predict_masks_and_probabilities(mseg, x, mask_threshold, mirror, fill_holes)[0]


def predict_masks_and_probabilities(
    mseg: MSeg,
    x: torch.Tensor,
    mask_threshold: float,
    mirror: bool = MIRROR_MASKS,
    fill_holes: bool = FILL_MASK_HOLES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`predict_masks` and the per-pixel probabilities they were thresholded from (B, 1, H, W), from one pass."""
    probability = mseg.mask_probability(x, mirror)
    mask = (probability >= mask_threshold).to(x.dtype)
    return (fill_mask_holes(mask) if fill_holes else mask), probability


@torch.no_grad()
def restore_batch(
    mseg: MSeg,
    generator: CARU2Net,
    masked01: torch.Tensor,
    mask_threshold: float,
    mirror: bool = MIRROR_MASKS,
    fill_holes: bool = FILL_MASK_HOLES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two-stage model on (B, 3, H, W) images in [0, 1]: (predicted mask, raw output, composite), the
    images in [0, 1]. `mask_threshold`: `model_usage(...).mask_threshold` (the M-Seg file's unless chosen);
    `mirror`, `fill_holes`: as `predict_masks`."""
    masked01 = checked_images01(masked01, next(mseg.parameters()).dtype)
    mask = predict_masks(mseg, to_model_range(masked01), mask_threshold, mirror, fill_holes)
    raw, restored = inpaint_batch(generator, masked01, mask)
    return mask, raw, restored


def inpaint_batch(
    generator: CARU2Net, masked01: torch.Tensor, region: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The generator alone on (B, 3, H, W) images in [0, 1], filling `region` ((B, 1, H, W) {0, 1}: M-Seg's mask,
    or the region a caller decided from it): (raw output, composite), in [0, 1]."""
    raw = from_model_range(generator(to_model_range(masked01), region))
    return raw, composite(raw, masked01, region)

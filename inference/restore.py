"""The two-stage restorer: M-Seg predicts the mask, CARU2-Net fills it, the composite keeps every visible pixel.

How a pair of model files is used comes from the files (`checkpoint.ModelInfo`): `model_usage` gives the crop
size and M-Seg's threshold, honouring an explicit value that contradicts the files with a warning. With no
model files at all, `load_two_stage` loads the model that ships with m2u (`m2u.inference.pretrained`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from m2u.inference.pretrained import DEFAULT_MODEL, pretrained_paths
from m2u.training.checkpoint import ModelInfo, ModelUsageWarning, load_model
from m2u.training.imagespace import composite, from_model_range, to_model_range
from m2u.training.models import CARU2Net, MSeg

__all__ = [
    "ModelUsageWarning",
    "ModelUsage",
    "load_pretrained",
    "load_two_stage",
    "model_usage",
    "restore_batch",
]


def load_two_stage(
    mseg_path: str | Path | None, generator_path: str | Path | None, device: torch.device | str = "cpu"
) -> tuple[MSeg, CARU2Net]:
    """Load and type-check the two checkpoints (a swapped pair gets a clear error). Neither path given: the
    model shipped with m2u (`m2u.inference.pretrained.DEFAULT_MODEL`)."""
    if mseg_path is None and generator_path is None:
        mseg_path, generator_path = pretrained_paths()
    elif mseg_path is None or generator_path is None:
        raise ValueError("give --mseg and --generator together (or neither, for the model shipped with m2u)")
    mseg = load_model(mseg_path, map_location=device)
    generator = load_model(generator_path, map_location=device)
    if not isinstance(mseg, MSeg):
        raise ValueError(f"--mseg {mseg_path} holds a {type(mseg).__name__}, not an M-Seg model")
    if not isinstance(generator, CARU2Net):
        raise ValueError(
            f"--generator {generator_path} holds a {type(generator).__name__}, not a CARU2-Net generator"
        )
    return mseg.eval(), generator.eval()


def load_pretrained(name: str = DEFAULT_MODEL, device: str | torch.device = "cpu") -> tuple[MSeg, CARU2Net]:
    """The shipped two-stage model, ready to use: (MSeg, CARU2Net) in eval mode on `device`, each carrying
    its file's ModelInfo as `.info` (crop size, threshold, alignment, provenance)."""
    mseg_path, generator_path = pretrained_paths(name)
    return load_two_stage(mseg_path, generator_path, device)


@dataclass
class ModelUsage:
    crop_size: int | None  # the aligned crop side to run the models at (None: the caller's data decides)
    threshold: float  # M-Seg's mask threshold
    trained_size: int | None  # what the files record (None: files from before m2u recorded it)


def _info(model: torch.nn.Module) -> ModelInfo:
    return getattr(model, "info", None) or ModelInfo()


def model_usage(
    mseg: MSeg,
    generator: CARU2Net,
    crop_size: int | None = None,
    threshold: float | None = None,
    fallback_size: int | None = None,
) -> ModelUsage:
    """The crop size and threshold to use the pair with: the files' unless given. A given value that differs
    from the files' is honoured with a ModelUsageWarning; files that record no size use `fallback_size`
    (the dataset's default), also with a warning, or, without a fallback, leave the size to the caller's data
    (crop_size None)."""
    from m2u.datasets.align import ALIGNMENT_VERSION

    sizes = {name: _info(m).crop_size for name, m in (("M-Seg", mseg), ("generator", generator))}
    known = {s for s in sizes.values() if s}
    if len(known) > 1:
        warnings.warn(
            f"the model files were trained at different sizes (M-Seg {sizes['M-Seg']}, generator "
            f"{sizes['generator']}): using the generator's",
            ModelUsageWarning,
            stacklevel=2,
        )
    trained = sizes["generator"] or sizes["M-Seg"]
    if crop_size is None:
        if trained is None and fallback_size is not None:
            crop_size = fallback_size
            warnings.warn(
                f"the model files do not record their training size: using {crop_size} (pass --size to choose)",
                ModelUsageWarning,
                stacklevel=2,
            )
        else:
            crop_size = trained
    elif trained is not None and crop_size != trained:
        warnings.warn(
            f"--size {crop_size} differs from the {trained}x{trained} the models were trained at: honoured, "
            "but expect worse restorations",
            ModelUsageWarning,
            stacklevel=2,
        )
    file_threshold = mseg.threshold
    if threshold is None:
        threshold = file_threshold
    elif _info(mseg).mask_threshold is not None and threshold != file_threshold:
        warnings.warn(
            f"--threshold {threshold} differs from the {file_threshold} M-Seg was trained with: honoured",
            ModelUsageWarning,
            stacklevel=2,
        )
    for name, model in (("M-Seg", mseg), ("generator", generator)):
        alignment = _info(model).alignment
        if alignment and alignment.get("version") != ALIGNMENT_VERSION:
            warnings.warn(
                f"the {name} file was trained on crops of alignment version {alignment.get('version')}, this "
                f"m2u aligns with version {ALIGNMENT_VERSION}: expect worse restorations",
                ModelUsageWarning,
                stacklevel=2,
            )
    return ModelUsage(
        crop_size=None if crop_size is None else int(crop_size),
        threshold=float(threshold),
        trained_size=trained,
    )


@torch.no_grad()
def restore_batch(
    mseg: MSeg, generator: CARU2Net, masked01: torch.Tensor, threshold: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two-stage model on (B, 3, H, W) images in [0, 1]: (predicted mask, raw output, composite), the
    images in [0, 1]. threshold None: M-Seg's own (its file's)."""
    x = to_model_range(masked01)
    mask = mseg.predict_mask(x, threshold=threshold)
    raw = from_model_range(generator(x, mask))
    return mask, raw, composite(raw, masked01, mask)

"""Checks every model file meets before its weights are used (m2u.training.checkpoint.load_model calls them), so
m2u-unmask, m2u-export, m2u-eval, m2u-train --mseg and the shipped model refuse a damaged or foreign file in one
sentence instead of restoring nothing (output = input), a black mouth or a blurry square.

In order: a training checkpoint (RUN/checkpoints/last.pt, torch's zip) given as a model file; the recorded ModelInfo (crop
size within the dataset's limits before anything is allocated from it, threshold in (0, 1)); the stored dtypes
(a floating-point weight stored as integers was cast and lost its values); then, once read, non-finite weights
and weights no training produces (a flipped exponent bit makes a value like 1e30). Bytes flipped without any of
these symptoms are caught only by a checksum: the shipped model carries one (its checksums.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

# torch.save writes a zip archive: what m2u-train's RUN/checkpoints/last.pt (the training state) is.
_ZIP_MAGIC = b"PK\x03\x04"
# No m2u network trained with the paper's recipe holds a weight or statistic near this (the shipped model's
# largest magnitude is far below it: tests/reliability/test_model_files.py); corrupted exponents land far above.
MAX_ABS_WEIGHT = 1e4
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def refuse_training_state(path: Path, error: type[Exception]) -> None:
    """Raise `error` when `path` is a training checkpoint (torch.save) rather than a model file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return  # the caller's own "not found / unreadable" message is better
    if head == b"":
        raise error(f"{path} is empty (0 bytes), not a model file")
    if head != _ZIP_MAGIC:
        return
    if not _is_torch_save(path):  # a zip of photos, say: only torch.save's zip holds a data.pkl
        raise error(f"{path} is a zip archive, not a model file (m2u's model files are .safetensors)")
    raise error(
        f"{path} is a PyTorch file saved with torch.save, such as a training checkpoint (m2u-train's "
        "RUN/checkpoints/last.pt: optimiser state and all), not a model file: give the run's mseg.safetensors or "
        "generator.safetensors instead"
    )


def _is_torch_save(path: Path) -> bool:
    """Whether the zip at `path` is one torch.save wrote (a `<name>/data.pkl` entry); only its directory is read."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def check_info(path: Path, info: Any, error: type[Exception]) -> None:
    """The ModelInfo fields a user of the file allocates or thresholds with, checked before they are used."""
    from m2u.datasets.layout import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

    size = info.crop_size
    if size is not None and (
        isinstance(size, bool) or not isinstance(size, int) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE
    ):
        raise error(
            f"{path} records crop_size {size!r}: a model file's crop size must be an integer from "
            f"{MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}; the file is damaged or was not written by m2u"
        )
    threshold = info.mask_threshold
    if threshold is not None and (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0.0 < float(threshold) < 1.0  # NaN fails too
    ):
        raise error(
            f"{path} records the mask threshold {threshold!r}: it must be a number in (0, 1); the file is damaged "
            "or was written from a bad configuration"
        )


def check_dtypes(path: Path, model: nn.Module, handle: Any, error: type[Exception]) -> None:
    """Every floating-point weight of `model` must be stored as floating point (read from the header)."""
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point() or name not in handle.keys():  # noqa: SIM118 - safe_open has no __contains__
            continue
        stored = handle.get_slice(name).get_dtype()
        if stored not in _FLOAT_DTYPES:
            raise error(
                f"{path}: the weight {name} is stored as {stored}, not floating point: the file was cast to "
                "integers and its weights are lost"
            )


def check_weights(path: Path, tensors: dict[str, torch.Tensor], error: type[Exception]) -> None:
    """Refuse non-finite weights and magnitudes no training produces, naming how many tensors are affected."""
    non_finite, huge = [], []
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        values = tensor.float()
        if not bool(torch.isfinite(values).all()):
            non_finite.append(name)
        elif values.numel() and float(values.abs().max()) > MAX_ABS_WEIGHT:
            huge.append(name)
    if non_finite:
        raise error(
            f"{path}: {len(non_finite)} of {len(tensors)} tensors hold NaN or infinite values (e.g. "
            f"{non_finite[0]}): the model diverged in training or the file is damaged; it cannot be used"
        )
    if huge:
        raise error(
            f"{path}: {len(huge)} of {len(tensors)} tensors hold values above {MAX_ABS_WEIGHT:g} in magnitude "
            f"(e.g. {huge[0]}), which no training produces: the file is damaged"
        )


__all__ = ["MAX_ABS_WEIGHT", "check_dtypes", "check_info", "check_weights", "refuse_training_state"]

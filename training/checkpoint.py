"""Model files and training-state files; nothing here unpickles arbitrary objects.

- Model files (`save_model` / `load_model`): safetensors weights; the model's class name and its config (JSON)
  live in the safetensors metadata, so `load_model` rebuilds the right class without pickle.
- Training state (`save_training_state` / `load_training_state`): a dict of tensors, numbers, strings, lists and
  dicts written with `torch.save` and read back with `torch.load(weights_only=True)`.
Both are written to a temporary file in the same folder and renamed into place, so a crash never leaves a
truncated file under the real name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from m2u.masking.fileio import atomic_write, remove_temp_files
from m2u.training.models import (
    CARU2Net,
    DiscriminatorConfig,
    GeneratorConfig,
    MSeg,
    MSegConfig,
    PatchDiscriminator,
)

MODEL_CLASSES: dict[str, tuple[type[nn.Module], type]] = {
    "CARU2Net": (CARU2Net, GeneratorConfig),
    "PatchDiscriminator": (PatchDiscriminator, DiscriminatorConfig),
    "MSeg": (MSeg, MSegConfig),
}
METADATA_CLASS_KEY = "m2u_model_class"
METADATA_CONFIG_KEY = "m2u_model_config"
METADATA_FORMAT_KEY = "m2u_format"
FORMAT_VERSION = "1"


class CheckpointError(RuntimeError):
    """A model or training-state file that cannot be used (missing, wrong kind, or corrupt)."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


# A write in progress is a hidden ".<name>.XXXX.tmp" beside its target (m2u.masking.fileio.atomic_write);
# remove_stale_temp_files clears leftovers.


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files that killed atomic_write calls left in `folder`; returns what was removed."""
    return remove_temp_files(folder, hidden_only=True)


def save_model(path: str | os.PathLike, model: nn.Module) -> Path:
    """Save weights (safetensors) with the class name and config JSON in the file's metadata."""
    model = unwrap_model(model)
    class_name = type(model).__name__
    if class_name not in MODEL_CLASSES:
        raise TypeError(f"save_model knows {sorted(MODEL_CLASSES)}, not {class_name}")
    config = model.config.to_dict()  # type: ignore[attr-defined]
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in model.state_dict().items()}
    metadata = {
        METADATA_CLASS_KEY: class_name,
        METADATA_CONFIG_KEY: json.dumps(config, sort_keys=True),
        METADATA_FORMAT_KEY: FORMAT_VERSION,
    }
    return atomic_write(path, lambda temp: save_file(tensors, temp, metadata=metadata))


def read_model_metadata(path: str | os.PathLike) -> tuple[str, dict]:
    """(class name, config dict) stored in a model file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path} is not a readable safetensors model file: {error}") from error
    if METADATA_CLASS_KEY not in metadata or METADATA_CONFIG_KEY not in metadata:
        raise CheckpointError(f"{path} has no m2u model metadata (was it written by m2u's save_model?)")
    return metadata[METADATA_CLASS_KEY], json.loads(metadata[METADATA_CONFIG_KEY])


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model class named in the file from its stored config and load the weights (eval mode)."""
    class_name, config_dict = read_model_metadata(path)
    if class_name not in MODEL_CLASSES:
        raise CheckpointError(f"{path} holds an unknown model class {class_name!r}")
    model_class, config_class = MODEL_CLASSES[class_name]
    try:
        model = model_class(config_class(**config_dict))
    except (TypeError, ValueError) as error:  # not a mapping, unknown or invalid fields
        raise CheckpointError(f"{path} holds an invalid {class_name} config: {error}") from error
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
            tensors[key] = handle.get_tensor(key)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit {class_name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(map_location).eval()


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a training-state dict (tensors and plain Python values only) atomically."""
    return atomic_write(path, lambda temp: torch.save(state, temp))


def load_training_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training state not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read training state {path}: {error}") from error

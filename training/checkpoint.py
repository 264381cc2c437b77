"""Model files and training-state files; nothing here unpickles arbitrary objects.

- Model files (`save_model` / `load_model`): safetensors weights; the model's class name and its config (JSON)
  live in the safetensors metadata, so `load_model` rebuilds the right class without pickle. The metadata also
  holds a `ModelInfo` (JSON): how the model must be used (training crop size, input normalisation, M-Seg's
  threshold, the dataset's alignment) and where it came from (m2u version, data, steps, recipe). `load_model`
  returns it beside the module (`LoadedModel(module, info)`); `read_model_info` reads it without any weight.
- Before any weight is allocated, `load_model` builds the model on the meta device and compares every tensor
  shape with the file's: a config that does not match its weights (or one asking for a model far larger than
  its file) is one CheckpointError sentence, not a RuntimeError or gigabytes allocated.
- Training state (`save_training_state` / `load_training_state`): a dict of tensors, numbers, strings, lists and
  dicts written with `torch.save` and read back with `torch.load(weights_only=True)`.
Both are written to a temporary file in the same folder and renamed into place, so a crash never leaves a
truncated file under the real name.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from m2u.core.fileio import atomic_write, remove_temp_files
from m2u.core.guard import UserError

# Every model file is checked before use (see there).
from m2u.training.modelcheck import check_dtypes, check_info, check_weights, refuse_training_state
from m2u.training.models import (
    CARU2Net,
    DiscriminatorConfig,
    GeneratorConfig,
    MSeg,
    MSegConfig,
    PatchDiscriminator,
)
from m2u.training.models.mseg import DEFAULT_MASK_THRESHOLD

MODEL_CLASSES: dict[str, tuple[type[nn.Module], type]] = {
    "CARU2Net": (CARU2Net, GeneratorConfig),
    "PatchDiscriminator": (PatchDiscriminator, DiscriminatorConfig),
    "MSeg": (MSeg, MSegConfig),
}
METADATA_CLASS_KEY = "m2u_model_class"
METADATA_CONFIG_KEY = "m2u_model_config"
METADATA_FORMAT_KEY = "m2u_format"
METADATA_INFO_KEY = "m2u_model_info"
FORMAT_VERSION = "1"
WEIGHT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class ModelUsageWarning(UserWarning):
    """An explicit option contradicts what a model file records (honoured), or a file records nothing."""


class CheckpointError(UserError, RuntimeError):
    """A model or training-state file that cannot be used (missing, wrong kind, or corrupt)."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        inner = (
            getattr(model, "module", None) if isinstance(model, nn.parallel.DistributedDataParallel) else None
        )
        inner = inner if inner is not None else getattr(model, "_orig_mod", None)  # torch.compile's wrapper
        if not isinstance(inner, nn.Module):
            return model
        model = inner


# A write in progress is a hidden ".<name>.XXXX.tmp" beside its target (m2u.core.fileio.atomic_write);
# remove_stale_temp_files clears leftovers.


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files that killed atomic_write calls left in `folder`; returns what was removed."""
    return remove_temp_files(folder, hidden_only=True)


def m2u_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("m2u")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class ModelInfo:
    """How a model file is to be used, and where it came from (stored in its metadata as JSON).

    Files written before this record existed read back with every field None/empty: the users of a model
    then fall back to their own defaults (and say so where it matters)."""

    crop_size: int | None = None  # the aligned crop side the model was trained on (the dataset's --size)
    normalisation: str | None = None  # the input range the model takes (m2u.training.imagespace)
    mask_threshold: float | None = None  # M-Seg only: mask = sigmoid(logits) >= mask_threshold
    alignment: dict | None = None  # m2u.datasets.align.alignment() of the code that built the dataset
    m2u_version: str | None = None
    provenance: dict = field(default_factory=dict)  # data, steps, recipe, ...

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> ModelInfo:
        if not text:
            return cls()
        values = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def mask_threshold_or_default(self) -> float:
        """M-Seg's mask threshold: the file's, else the one default (m2u.training.models.mseg)."""
        return DEFAULT_MASK_THRESHOLD if self.mask_threshold is None else float(self.mask_threshold)


def current_model_info(
    crop_size: int | None, mask_threshold: float | None = None, provenance: dict | None = None
) -> ModelInfo:
    """A ModelInfo for a model trained now, by this code, on crops of `crop_size`."""
    from m2u.datasets.align import alignment
    from m2u.training.imagespace import INPUT_NORMALISATION

    return ModelInfo(
        crop_size=crop_size,
        normalisation=INPUT_NORMALISATION,
        mask_threshold=mask_threshold,
        alignment=alignment(),
        m2u_version=m2u_version(),
        provenance=dict(provenance or {}),
    )


def read_run_config_dict(run: str | os.PathLike) -> dict:
    """A run folder's saved config (RUN/config.json) as a plain dict ({} when there is none)."""
    path = Path(run) / "config.json"
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} (the run's saved config) cannot be read: {error}") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} (the run's saved config) does not hold a mapping of options")
    return values


def save_model(
    path: str | os.PathLike, model: nn.Module, info: ModelInfo | None = None, dtype: str = "fp32"
) -> Path:
    """Save weights (safetensors) with the class name, config JSON and ModelInfo in the file's metadata.

    dtype "fp16" halves the file (floating-point tensors only; load_model reads them back into fp32)."""
    model = unwrap_model(model)
    class_name = type(model).__name__
    if not isinstance(model, CARU2Net | PatchDiscriminator | MSeg):
        raise TypeError(f"save_model knows {sorted(MODEL_CLASSES)}, not {class_name}")
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(WEIGHT_DTYPES)}, got {dtype!r}")
    info = info if info is not None else ModelInfo()
    config = model.config.to_dict()

    def stored(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(WEIGHT_DTYPES[dtype])
        return t.contiguous().clone()

    tensors = {name: stored(t) for name, t in model.state_dict().items()}
    metadata = {
        METADATA_CLASS_KEY: class_name,
        METADATA_CONFIG_KEY: json.dumps(config, sort_keys=True),
        METADATA_FORMAT_KEY: FORMAT_VERSION,
        METADATA_INFO_KEY: info.to_json(),
    }
    payload = _with_sorted_header(save(tensors, metadata=metadata))
    return atomic_write(path, lambda temp: Path(temp).write_bytes(payload))


def _with_sorted_header(payload: bytes) -> bytes:
    """`payload` (a safetensors file) with its JSON header's keys sorted, so that saving the same weights twice
    gives the same bytes: safetensors serialises the metadata from a hash map whose order changes per process.
    The tensor data is untouched (its offsets count from the end of the header); the header is space-padded to
    8 bytes as safetensors writes it."""
    length = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + payload[8 + length :]


_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def check_model_path(path: Path) -> None:
    """One sentence for a path that cannot be a model file: missing, or not a regular file. Checked before any
    byte is read: /dev/zero was reported as "not found", and a named pipe would block the reader."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CheckpointError(f"model file not found: {path}") from None
    except OSError as error:
        raise CheckpointError(f"model file {path} cannot be read: {error.strerror or error}") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
        raise CheckpointError(f"{path} is not a regular file ({kind}), so not an m2u model file")


def _read_metadata(path: Path) -> dict[str, str]:
    check_model_path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise CheckpointError(
            f"{path} is not an m2u model file (not a readable safetensors model file: {first}): damaged, cut "
            "short or of another format; give a whole copy of a model file m2u-train wrote (a run's "
            "mseg.safetensors or generator.safetensors)"
        ) from error
    if METADATA_CLASS_KEY not in metadata or METADATA_CONFIG_KEY not in metadata:
        raise CheckpointError(
            f"{path} is not an m2u model file: a safetensors file without m2u's model metadata (not written by "
            "m2u's save_model)"
        )
    return metadata


def read_model_metadata(path: str | os.PathLike) -> tuple[str, dict]:
    """(class name, config dict) stored in a model file."""
    path = Path(path)
    metadata = _read_metadata(path)
    try:
        config = json.loads(metadata[METADATA_CONFIG_KEY])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} holds an unreadable model config: {error}") from error
    return metadata[METADATA_CLASS_KEY], config


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """The ModelInfo a model file records (an empty one for files written before it existed)."""
    path = Path(path)
    try:
        return ModelInfo.from_json(_read_metadata(path).get(METADATA_INFO_KEY))
    except (json.JSONDecodeError, TypeError) as error:
        raise CheckpointError(f"{path} holds an unreadable model info record: {error}") from error


def build_model(class_name: str, config: Any, source: str = "the config") -> nn.Module:
    """The model of `class_name` for `config` (a dict or the config dataclass), on the meta device: no
    memory is allocated; `materialise` or load weights into it next."""
    if class_name not in MODEL_CLASSES:
        raise CheckpointError(f"{source} holds an unknown model class {class_name!r}")
    model_class, config_class = MODEL_CLASSES[class_name]
    try:
        if isinstance(config, dict):
            config = config_class(**config)
        elif not isinstance(config, config_class):
            raise TypeError(f"a {class_name} config must be a mapping, not {type(config).__name__}")
        with torch.device("meta"):
            return model_class(config)
    except (TypeError, ValueError) as error:  # not a mapping, unknown or invalid fields
        raise CheckpointError(f"{source} holds an invalid {class_name} config: {error}") from error


def parameter_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters and buffers take in fp32 (works on the meta device)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * 4 for t in tensors if t.is_floating_point())


def shape_differences(
    expected: dict[str, tuple[int, ...]], stored: dict[str, tuple[int, ...]], other: str = "config"
) -> str | None:
    """How the tensors a file stores (`stored`, name -> shape) differ from those a model has (`expected`), as
    one phrase naming the counts and the first one or two of each kind ("2 tensors of another shape (e.g. a:
    file (8, 3), config (4, 3); b: ...)"); `other` names the model's side. None when they fit."""
    missing = [k for k in expected if k not in stored]  # in the model's order: its first layers first
    unexpected = [k for k in stored if k not in expected]
    wrong = [k for k in expected if k in stored and expected[k] != stored[k]]
    if not (missing or unexpected or wrong):
        return None
    detail = []
    if wrong:
        shown = "; ".join(f"{k}: file {stored[k]}, {other} {expected[k]}" for k in wrong[:2])
        detail.append(f"{len(wrong)} tensors of another shape (e.g. {shown})")
    if missing:
        detail.append(f"{len(missing)} missing (e.g. {', '.join(missing[:2])})")
    if unexpected:
        detail.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2])})")
    return ", ".join(detail)


def tensor_shapes(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """name -> shape of a state dict (meta tensors included)."""
    return {name: tuple(t.shape) for name, t in tensors.items()}


def _check_shapes(path: Path, class_name: str, model: nn.Module, handle: Any) -> None:
    """One sentence when the file's tensors do not fit the model its config describes."""
    stored = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    detail = shape_differences(tensor_shapes(model.state_dict()), stored)
    if detail:
        raise CheckpointError(
            f"{path}: the {class_name} config in its metadata does not match its weights: {detail}"
        )


class LoadedModel(NamedTuple):
    """A model file, loaded: the module (eval mode) and how it is to be used (crop size, M-Seg's mask
    threshold, input normalisation, alignment, provenance)."""

    module: nn.Module
    info: ModelInfo


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model class named in the file from its stored config and load the weights (eval mode);
    `module, info = load_model(path)`."""
    path = Path(path)
    check_model_path(path)  # before refuse_training_state opens it (a named pipe would block there)
    refuse_training_state(path, CheckpointError)
    class_name, config_dict = read_model_metadata(path)
    info = read_model_info(path)
    check_info(path, info, CheckpointError)
    model = build_model(class_name, config_dict, str(path))
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        _check_shapes(path, class_name, model, handle)  # before a single weight is allocated
        check_dtypes(path, model, handle, CheckpointError)
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    check_weights(path, tensors, CheckpointError)
    model = model.to_empty(device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.load_state_dict(tensors, strict=True)  # copies (and casts fp16 files) into the fp32 model
    return LoadedModel(model.to(map_location).eval(), info)


def average_models(paths: list[str | os.PathLike]) -> LoadedModel:
    """The uniform weight average of model files of one architecture fine-tuned from a common start (a "model
    soup", Wortsman et al. 2022): floating-point tensors, BatchNorm statistics included, are averaged; integer
    buffers (batch counts) come from the first file, as do its ModelInfo."""
    if not paths:
        raise ValueError("average_models needs at least one model file")
    first = load_model(paths[0])
    reference = read_model_metadata(Path(paths[0]))
    total = {key: value.detach().clone() for key, value in first.module.state_dict().items()}
    for path in paths[1:]:
        if read_model_metadata(Path(path)) != reference:
            raise CheckpointError(f"{path}: not the architecture of {paths[0]}; only like models average")
        for key, value in load_model(path).module.state_dict().items():
            if value.is_floating_point():
                total[key] += value
    averaged = {
        key: value / len(paths) if value.is_floating_point() else value for key, value in total.items()
    }
    first.module.load_state_dict(averaged, strict=True)
    return first


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a training-state dict (tensors and plain Python values only) atomically."""
    return atomic_write(path, lambda temp: _torch_save(state, temp))


class _WriteErrorKept:
    """A file's writes, keeping the OSError one of them raised."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return int(self.handle.write(data))
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def _torch_save(state: dict[str, Any], path: str) -> None:
    """torch.save to `path`. Its zip writer reports a failed write (a full disk) as a RuntimeError ("unexpected pos
    704 vs 598"), which m2u's commands cannot tell from a bug: the OSError behind it is raised instead, so the run
    ends in the one line every disk error gets (m2u.core.guard)."""
    with open(path, "wb") as handle:
        writes = _WriteErrorKept(handle)
        try:
            torch.save(state, writes)  # type: ignore[arg-type]  # a file object: write and flush are what it uses
        except RuntimeError as error:
            if writes.error is None:
                raise
            raise writes.error from error


def load_training_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        # A folder or device at the name is said as such, not as "not found".
        problem = "is not a regular file" if os.path.lexists(path) else "not found"
        raise CheckpointError(f"training state {problem}: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        # torch's own words run to paragraphs of advice (weights_only=False) that do not apply here: its first
        # line, with what it means for the run.
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        if isinstance(error, pickle.UnpicklingError):
            first = "not a torch checkpoint"  # torch's text is advice about weights_only, not what is wrong
        raise CheckpointError(
            f"cannot read training state {path}: damaged or not a checkpoint m2u-train wrote "
            f"({type(error).__name__}{': ' + first if first else ''})"
        ) from error

"""ONNX export of M-Seg and the CARU2-Net generator, checked against PyTorch with onnxruntime.

The exported graphs keep the models' conventions: inputs in [-1, 1] (see `m2u.training.imagespace`);
M-Seg: `image` (B, 3, H, W) -> `mask_logits` (B, 1, H, W); generator: `masked` (B, 3, H, W) and `mask`
(B, 1, H, W) -> `output` (B, 3, H, W) in [-1, 1]. Batch, height and width are dynamic axes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from m2u.core.checks import check_types
from m2u.core.errors import SettingError
from m2u.core.fileio import (
    OutputRefusedError,
    atomic_write,
    check_writable,
    content_digest,
    replace_problem,
    staged_files,
)
from m2u.core.inputs import EXPORT_RECORD, output_location_problem, output_lock, whole_folder_problem
from m2u.datasets.layout import DEFAULT_IMAGE_SIZE, check_image_size
from m2u.training.checkpoint import ModelInfo, ModelUsageWarning
from m2u.training.models import CARU2Net, MSeg

__all__ = [
    "ExportConfig",
    "ExportResult",
    "EXPORT_NAMES",
    "EXPORT_SUMMARY",
    "check_export_folder",
    "export_models",
    "source_digests",
    "model_io_names",
    "example_inputs",
    "export_onnx",
    "export_size",
    "onnx_parity",
]


@dataclass
class ExportConfig:
    """ONNX export settings."""

    # The example inputs' size that traces the graph; None: the size the model file records (else the
    # dataset default, DEFAULT_IMAGE_SIZE).
    image_size: int | None = None
    opset: int = 17
    dynamic_axes: bool = True
    atol: float = 1e-4  # max |onnxruntime - torch| accepted by the parity check

    def __post_init__(self) -> None:
        check_types(self)  # a NaN atol is refused here
        if self.image_size is not None:
            # The sizes every m2u network takes (below, ONNX's shape check fails inside onnxruntime; above, the
            # tracing input alone took 120 GB at 99999).
            check_image_size(self.image_size, "image_size")
        if not MIN_OPSET <= self.opset <= max_opset():
            raise SettingError(
                "opset",
                f"must be from {MIN_OPSET} to {max_opset()} (this torch's exporter), got {self.opset}",
            )
        if self.atol < 0:
            raise SettingError("atol", f"must be >= 0, got {self.atol}")


# The oldest opset m2u's graphs export to (the CLI's lower bound).
MIN_OPSET = 11


def max_opset() -> int:
    """The newest opset the TorchScript exporter (dynamo=False, as export_onnx uses) of this torch writes: above
    it torch printed its whole graph before failing (m2u-export --opset 99)."""
    from torch.onnx import _constants

    return int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)


def export_size(info: ModelInfo | None, image_size: int | None, static_shape: bool = False) -> int:
    """The tracing size: the model file's training size (`info`, from `load_model`) unless given. A given size
    that differs is honoured with a warning (a static-shape graph at another size only runs at that size)."""

    trained = info.crop_size if info is not None else None
    if image_size is None:
        if trained is None:
            warnings.warn(
                f"the model file does not record its training size: tracing at {DEFAULT_IMAGE_SIZE}",
                ModelUsageWarning,
                stacklevel=2,
            )
            return DEFAULT_IMAGE_SIZE
        return int(trained)
    if trained is not None and image_size != trained:
        shape = "a static graph for" if static_shape else "traced at"
        warnings.warn(
            f"image size {image_size} ({shape} that size) differs from the {trained}x{trained} the model was "
            "trained at: honoured",
            ModelUsageWarning,
            stacklevel=2,
        )
    return int(image_size)


@dataclass
class ExportResult:
    path: Path
    input_names: list[str]
    output_names: list[str]
    max_abs_diff: float


def model_io_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """ONNX input and output names: M-Seg takes the image; the generator the masked image and, when it is
    segmentation-guided, the mask."""
    if isinstance(model, MSeg):
        return ["image"], ["mask_logits"]
    if isinstance(model, CARU2Net):
        inputs = ["masked", "mask"] if model.config.segmentation_guidance else ["masked"]
        return inputs, ["output"]
    raise ValueError(f"cannot export {type(model).__name__}: expected an M-Seg or CARU2-Net model")


# What each ONNX tensor holds (export.json states it beside the names and shapes).
TENSOR_RANGES = {
    "image": "float32 RGB in [-1, 1] (pixel / 127.5 - 1)",
    "masked": "float32 RGB in [-1, 1] (pixel / 127.5 - 1), the masked face",
    "mask": "float32 in {0, 1}, 1 where the mask is",
    "mask_logits": (
        "float32 logits. m2u's mask: p = mean of sigmoid(logits) of the crop and of its mirror image (the latter "
        "mirrored back); mask = p >= the M-Seg threshold, then the background regions it encloses (not reaching "
        "the crop's edge) filled (m2u.inference.restore.predict_masks)"
    ),
    "output": "float32 RGB in [-1, 1] (tanh); pixel = (x + 1) * 127.5",
}


def tensor_descriptions(model: nn.Module, image_size: int, dynamic: bool) -> dict[str, list[dict]]:
    """{"inputs": [...], "outputs": [...]}: each ONNX tensor's name, shape (NCHW; "batch", "height" and "width"
    where the axes are dynamic) and value range."""
    input_names, output_names = model_io_names(model)

    def describe(name: str) -> dict:
        channels = 3 if name in ("image", "masked", "output") else 1
        side: int | str = image_size
        shape = ["batch", channels, "height", "width"] if dynamic else [1, channels, side, side]
        return {"name": name, "shape": shape, "range": TENSOR_RANGES[name]}

    return {"inputs": [describe(n) for n in input_names], "outputs": [describe(n) for n in output_names]}


def example_inputs(
    model: nn.Module, image_size: int, batch: int = 1, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random inputs of the right shapes: images in [-1, 1], masks in {0, 1}."""
    names, _ = model_io_names(model)
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, image_size, image_size, generator=gen) * 2 - 1
    if len(names) == 1:
        return (image,)
    mask = (torch.rand(batch, 1, image_size, image_size, generator=gen) > 0.5).float()
    return (image, mask)


def onnx_parity(model: nn.Module, onnx_path: str | Path, inputs: tuple[torch.Tensor, ...]) -> float:
    """Max absolute difference between onnxruntime's and PyTorch's outputs on `inputs`."""
    import onnxruntime as ort

    # Its errors come back as exceptions, said in one line by the caller: not also as a coloured log line.
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    (ort_out,) = session.run(None, feed)
    with torch.no_grad():
        torch_out = model(*inputs)
    return float(np.max(np.abs(ort_out - torch_out.numpy())))


def export_onnx(
    model: nn.Module, path: str | Path, config: ExportConfig | None = None, info: ModelInfo | None = None
) -> ExportResult:
    """Export `model` (M-Seg or generator) to ONNX at `path` and check it with onnxruntime; raises
    RuntimeError when the outputs differ by more than `config.atol`. Without `config.image_size`, the size
    `info` (the model file's record) gives."""
    config = config or ExportConfig()
    path = Path(path)
    check_writable(path)  # before the export: never through a link, never over a file m2u did not write
    written: list[ExportResult] = []
    # A file that fails the parity check, or a full disk, never appears under `path` (m2u.core.fileio).
    atomic_write(path, lambda temp: written.append(_export_checked(model, temp, config, info)))
    return dataclasses.replace(written[0], path=path)


def check_sizes(size: int, dynamic: bool, trained: int | None = None) -> list[int]:
    """The sizes an export traced at `size` is checked at: that size for a static graph; for a dynamic one half
    of it, one above it, and the model's training size: a branch on the input's shape (CARU's resize of an odd
    skip) is traced as whichever way it went at the tracing size, and only a size past it shows a wrong one."""
    if not dynamic:
        return [size]
    return sorted({max(32, size // 2), size + 32, *([trained] if trained else [])})


def _export_checked(
    model: nn.Module, temp: str | Path, config: ExportConfig, info: ModelInfo | None
) -> ExportResult:
    """`model` exported into the file `temp` and checked there against PyTorch (see export_onnx). A copy is
    exported: the caller's model keeps its device and its train or eval mode."""
    model = copy.deepcopy(model).cpu().eval()
    input_names, output_names = model_io_names(model)
    size = (
        config.image_size
        if config.image_size is not None
        else export_size(info, None, not config.dynamic_axes)
    )
    inputs = example_inputs(model, size)
    dynamic = None
    if config.dynamic_axes:
        dynamic = {name: {0: "batch", 2: "height", 3: "width"} for name in input_names + output_names}
    with warnings.catch_warnings():
        # The TorchScript-based exporter is used on purpose: the dynamo exporter needs onnxscript. Its tracer
        # warnings (a branch on a shape) are answered by the checks below, at sizes on both sides of the tracing one.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            inputs,
            str(temp),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic,
            opset_version=config.opset,
            dynamo=False,
        )
    # A static graph takes exactly the tracing shape (batch 1); a dynamic one is checked on another batch and
    # other sizes than the tracing inputs, so the dynamic axes are exercised too.
    trained = info.crop_size if info is not None else None
    diff = 0.0
    for check_size in check_sizes(size, config.dynamic_axes, trained):
        batch = 2 if config.dynamic_axes else 1
        try:
            diff = max(diff, onnx_parity(model, temp, example_inputs(model, check_size, batch=batch, seed=1)))
        except Exception as error:  # onnxruntime refuses the graph at this size: a shape fixed by the tracing
            if isinstance(error, (KeyboardInterrupt, MemoryError)):
                raise
            raise RuntimeError(
                f"ONNX export of {type(model).__name__} traced at {size} px does not run at {check_size} px "
                f"({' '.join(str(error).split())[:200]}); export a static graph at the size you need (`static_shape`)"
            ) from None
        if not diff <= config.atol:
            raise RuntimeError(
                f"ONNX export of {type(model).__name__} differs from PyTorch by {diff:.3g} > {config.atol} "
                f"(at {check_size} px); nothing was written: export with another `opset`, or with an `atol` of "
                f"at least {diff:.3g} if that difference is acceptable"
            )
    return ExportResult(
        path=Path(temp), input_names=input_names, output_names=output_names, max_abs_diff=diff
    )


# What an export folder holds (m2u-export onnx, `export_models`): `<name>.onnx` for each of these models, and
# EXPORT_SUMMARY describing the ones this export wrote.
EXPORT_NAMES = ("mseg", "generator")
EXPORT_SUMMARY = (
    EXPORT_RECORD  # m2u-train refuses a folder holding one (m2u.core.inputs.export_folder_problem)
)
EXPORT_LOCK_TOOL = "m2u-export"  # the export folder's lock: OUT/.m2u-export.lock


def check_export_folder(
    out_dir: str | Path,
    names: Sequence[str],
    overwrite: bool = False,
    sources: Mapping[str, str | Path] | None = None,
    digests: Mapping[str, str | None] | None = None,
) -> list[Path]:
    """Check, before anything is written, that an export of the models `names` may write into `out_dir`; returns
    the files of an earlier export there that it would not replace, for `export_models` to remove (with
    `overwrite`) once the new files are written. Without `overwrite` they are refused: a generator.onnx left from
    an earlier export beside a new mseg.onnx looks like part of the new export. An earlier export's file is one
    of m2u's export names that m2u wrote (its folder's record, m2u.core.fileio); a person's own file of that
    name is theirs, and is neither refused nor removed. `sources` (name -> the model file to export): an earlier
    export of other model files (`other_export`) is refused too without `overwrite`; the same files again are a
    rerun and replace it. `digests`: the sources' SHA-256 where the caller has them (`source_digests`), else read
    here."""
    out = Path(out_dir)
    # A file in its way, a read-only disk, an m2u-pipeline run folder: said before any export.
    problem = output_location_problem(out) or whole_folder_problem(out, EXPORT_LOCK_TOOL)
    if problem:
        raise OutputRefusedError(problem)
    unknown = sorted(set(names) - set(EXPORT_NAMES))
    if unknown or not names:
        raise ValueError(f"an export holds {' and/or '.join(EXPORT_NAMES)}, got {list(names)}")
    for path in (*(out / f"{name}.onnx" for name in names), out / EXPORT_SUMMARY):
        check_writable(path)
    stale = [
        path
        for path in (out / f"{name}.onnx" for name in EXPORT_NAMES if name not in names)
        if os.path.lexists(path) and not replace_problem(path)  # there, and written by m2u
    ]
    if stale and not overwrite:
        raise OutputRefusedError(
            f"{out} holds {' and '.join(path.name for path in stale)} of an earlier export, which this export "
            f"({', '.join(names)}) would not replace and would leave looking like part of it; choose another "
            "`out_dir`, or use `overwrite` to remove it"
        )
    other = None if overwrite or sources is None else other_export(out, sources, digests)
    if other:
        raise OutputRefusedError(
            f"{out} holds an earlier export of other model files ({other}), which this export would replace; "
            "choose another `out_dir`, or use `overwrite` to replace it"
        )
    return stale


def source_digest(source: str | Path) -> str | None:
    """The SHA-256 of the model file `source` (export.json's `source_sha256`); None where it is no readable file
    (a library caller's label for a model held in memory)."""
    try:
        # The file a link names: content_digest opens no link itself, and a linked model file is still one.
        return content_digest(os.path.realpath(source)) if os.path.isfile(source) else None
    except OSError:
        return None


def source_digests(
    sources: Mapping[str, str | Path], known: Mapping[str, str | None] | None = None
) -> dict[str, str | None]:
    """`source_digest` of each model file (name -> file), those in `known` as given: read once for both the check
    of an earlier export and export.json's record (a model file is hundreds of MB)."""
    known = known or {}
    return {name: known[name] if name in known else source_digest(source) for name, source in sources.items()}


def other_export(
    out: Path, sources: Mapping[str, str | Path], digests: Mapping[str, str | None] | None = None
) -> str | None:
    """What `out` holds of an earlier export of other model files than `sources` (name -> model file), which an
    export of them would replace: "mseg.onnx of /runs/a/mseg.safetensors"; None when there is none. A file of
    the earlier export (an `<name>.onnx` m2u wrote, that its export.json describes) is the same export when
    export.json records the SHA-256 of the same model file (a rerun); one its export.json does not identify (an
    m2u from before `source_sha256`) is another's. Files without an export.json are an export stopped before it
    finished (`export_models`), not finished work: its rerun completes it. `digests`: as `check_export_folder`'s."""
    summary_path = out / EXPORT_SUMMARY
    if not summary_path.is_file() or replace_problem(summary_path):
        return None
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = None
    others = []
    for name, source in sources.items():
        onnx = out / f"{name}.onnx"
        if not os.path.lexists(onnx) or replace_problem(onnx):
            continue
        entry = summary.get(name) if isinstance(summary, dict) else None
        recorded = entry.get("source_sha256") if isinstance(entry, dict) else None
        if recorded is None or recorded != source_digests({name: source}, digests)[name]:
            earlier = entry.get("source") if isinstance(entry, dict) else None
            others.append(f"{onnx.name} of {earlier or 'model files its export.json does not name'}")
    return "; ".join(others) or None


def _export_into(
    checked: list[ExportResult], model: nn.Module, temp: str, *, config: ExportConfig, info: ModelInfo | None
) -> None:
    """`_export_checked` of `model` into the staged file `temp`, its parity result appended to `checked`."""
    checked.append(_export_checked(model, temp, config, info))


def export_models(
    models: Mapping[str, tuple[str | Path, nn.Module, ModelInfo | None]],
    out_dir: str | Path,
    config: ExportConfig | None = None,
    overwrite: bool = False,
    digests: Mapping[str, str | None] | None = None,
) -> dict[str, dict]:
    """Export an export folder: `models` maps "mseg" and/or "generator" to (the model file it came from, the
    module, its ModelInfo); each is written to `out_dir/<name>.onnx` (checked against PyTorch, `export_onnx`),
    then `out_dir/export.json` describes them (returned as a dict). A model of the wrong kind for its name is a
    ValueError. An earlier export's file this one would not replace is refused, or removed with `overwrite`
    (`check_export_folder`); `config.image_size` None: each model's recorded size (`export_size`). `digests`: the
    model files' SHA-256 where the caller read them already (`source_digests`: m2u-export's pre-flight check).

    The folder is locked while it is written (a second export into it is refused), and it changes only once every
    file is exported and checked: the files and the new export.json are staged, then published together
    (m2u.core.fileio.StagedFiles, Ctrl-C and SIGTERM held off while they take their names). A failed or stopped
    export leaves the earlier export as it was, never an export.json describing other files."""
    config = config or ExportConfig()
    out = Path(out_dir)
    kinds = {"mseg": MSeg, "generator": CARU2Net}
    for name, (_, model, _) in models.items():
        if name in kinds and not isinstance(model, kinds[name]):
            raise ValueError(
                f"the {name} to export is a {type(model).__name__}, not a {kinds[name].__name__}"
            )
    sources = {name: source for name, (source, _, _) in models.items()}
    digests = source_digests(sources, digests)  # for the check of an earlier export and the record alike
    stale = check_export_folder(out, list(models), overwrite, sources, digests)
    static = not config.dynamic_axes
    sizes = {name: export_size(info, config.image_size, static) for name, (_, _, info) in models.items()}
    if len(set(sizes.values())) > 1:
        warnings.warn(
            f"the models are exported at different sizes (M-Seg {sizes['mseg']}, generator {sizes['generator']}): "
            "the generator takes the M-Seg's mask at its own size, so resize between them (or give one `image_size`)",
            ModelUsageWarning,
            stacklevel=2,
        )
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with output_lock(out, EXPORT_LOCK_TOOL), staged_files() as staged:
            summary: dict[str, dict] = {}
            for name, (source, model, info) in models.items():
                checked: list[ExportResult] = []
                settings = dataclasses.replace(config, image_size=sizes[name])
                staged.write(
                    out / f"{name}.onnx",
                    functools.partial(_export_into, checked, model, config=settings, info=info),
                )
                result = checked[0]
                summary[name] = {
                    # Absolute, as a run's config.json records its files: read from anywhere, not only from the
                    # folder the export was run in.
                    "source": os.path.abspath(source) if os.path.exists(source) else str(source),
                    "source_sha256": digests[name],  # what a rerun compares (other_export)
                    "onnx": os.path.abspath(out / f"{name}.onnx"),
                    **tensor_descriptions(model, sizes[name], not static),
                    "max_abs_diff_vs_torch": result.max_abs_diff,
                    "image_size": sizes[name],
                    "model_info": asdict(info) if info is not None else None,
                }
            if stale:
                staged.remove_at_publish(
                    out, [path.name for path in stale], ours=lambda path: path.name in {p.name for p in stale}
                )
            staged.write_text(out / EXPORT_SUMMARY, json.dumps(summary, indent=2) + "\n")  # last: the entry
            staged.publish()  # the files and export.json together, Ctrl-C held off while they take their names
    except BaseException:
        if (
            made
        ):  # a folder this export made and wrote nothing into goes, with its lock (rmdir: only when empty)
            with contextlib.suppress(OSError):
                (out / f".{EXPORT_LOCK_TOOL}.lock").unlink(missing_ok=True)
                out.rmdir()
        raise
    return summary

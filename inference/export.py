"""ONNX export of M-Seg and the CARU2-Net generator, checked against PyTorch with onnxruntime.

The exported graphs keep the models' conventions: inputs in [-1, 1] (see `m2u.training.imagespace`);
M-Seg: `image` (B, 3, H, W) -> `mask_logits` (B, 1, H, W); generator: `masked` (B, 3, H, W) and `mask`
(B, 1, H, W) -> `output` (B, 3, H, W) in [-1, 1]. Batch, height and width are dynamic axes.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from m2u.datasets.layout import DEFAULT_IMAGE_SIZE
from m2u.training.checkpoint import ModelInfo
from m2u.training.models import CARU2Net, MSeg

__all__ = [
    "ExportConfig",
    "ExportResult",
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


def export_size(info: ModelInfo | None, image_size: int | None, static_shape: bool = False) -> int:
    """The tracing size: the model file's training size (`info`, from `load_model`) unless given. A given size
    that differs is honoured with a warning (a static-shape graph at another size only runs at that size)."""
    from m2u.inference.restore import ModelUsageWarning

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
    "mask_logits": "float32 logits; mask = sigmoid(logits) >= the M-Seg threshold",
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

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
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
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    input_names, output_names = model_io_names(model)
    size = (
        config.image_size
        if config.image_size is not None
        else export_size(info, None, not config.dynamic_axes)
    )
    config = dataclasses.replace(config, image_size=size)
    inputs = example_inputs(model, size)
    dynamic = None
    if config.dynamic_axes:
        dynamic = {name: {0: "batch", 2: "height", 3: "width"} for name in input_names + output_names}
    with warnings.catch_warnings():
        # The TorchScript-based exporter is used on purpose: the dynamo exporter needs onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            inputs,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic,
            opset_version=config.opset,
            dynamo=False,
        )
    # Check on a different batch and size from the tracing inputs, so the dynamic axes are exercised too.
    check_size = size if not config.dynamic_axes else max(32, size // 2)
    # A static graph takes exactly the tracing shape (batch 1): it is checked at that shape.
    check_inputs = example_inputs(model, check_size, batch=2 if config.dynamic_axes else 1, seed=1)
    diff = onnx_parity(model, path, check_inputs)
    if not diff <= config.atol:
        raise RuntimeError(
            f"ONNX export of {type(model).__name__} differs from PyTorch by {diff:.3g} > {config.atol}"
        )
    return ExportResult(path=path, input_names=input_names, output_names=output_names, max_abs_diff=diff)

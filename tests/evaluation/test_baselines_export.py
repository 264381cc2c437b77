"""OpenCV baselines fill the hole and leave the rest; ONNX exports reproduce PyTorch under onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from m2u.evaluation.baselines import BASELINES, BaselineConfig, inpaint_opencv, run_baseline
from m2u.inference.export import ExportConfig, export_onnx, onnx_parity
from m2u.training.models import CARU2Net, GeneratorConfig, MSeg, MSegConfig


def _smooth_scene(size: int = 48) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A smooth gradient image, a black square hole in it, and the hole's mask."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    truth = torch.stack([xs, ys, 0.5 * (xs + ys)])[None]
    mask = torch.zeros(1, 1, size, size)
    mask[..., 18:30, 18:30] = 1
    masked = truth * (1 - mask)
    return truth, masked, mask


@pytest.mark.parametrize("name", ["telea", "navier_stokes"])
def test_opencv_inpainting_fills_the_hole_and_keeps_the_rest(name):
    truth, masked, mask = _smooth_scene()
    out = run_baseline(name, masked, mask)
    inside = mask.bool().expand_as(truth)
    err_out = (out - truth).abs()[inside].mean()
    err_masked = (masked - truth).abs()[inside].mean()
    assert err_out < 0.25 * err_masked  # a smooth gradient is easy to continue
    outside = ~inside
    assert (out - masked).abs()[outside].max() <= 1 / 255 + 1e-6  # only uint8 rounding outside


def test_masked_input_baseline_is_the_input_and_bad_input_is_refused():
    _, masked, mask = _smooth_scene()
    torch.testing.assert_close(run_baseline("masked_input", masked, mask), masked)
    assert set(BASELINES) == {"masked_input", "telea", "navier_stokes"}
    with pytest.raises(ValueError, match="unknown baseline"):
        run_baseline("photoshop", masked, mask)
    with pytest.raises(ValueError, match="mask must be"):
        run_baseline("telea", masked, mask[:, :, :10])
    with pytest.raises(ValueError, match="uint8"):
        inpaint_opencv(np.zeros((8, 8, 3), np.float32), np.zeros((8, 8)), "telea")


def test_dilation_grows_the_inpainted_region():
    truth, masked, mask = _smooth_scene()
    plain = run_baseline("telea", masked, mask)
    grown = run_baseline("telea", masked, mask, BaselineConfig(dilate_px=2))
    ring = torch.zeros_like(mask)
    ring[..., 16:32, 16:32] = 1
    ring = (ring - mask).bool().expand_as(truth)
    assert (grown - plain).abs()[ring].max() > 0  # pixels just outside the hole were re-synthesised


@pytest.mark.parametrize(
    "model",
    [
        MSeg(MSegConfig(base_channels=4, levels=3)),
        CARU2Net(GeneratorConfig(width_multiplier=0.125)),
        CARU2Net(GeneratorConfig(width_multiplier=0.125, stages=3, segmentation_guidance=False)),
    ],
    ids=["mseg", "generator", "generator-no-seg"],
)
def test_onnx_export_matches_pytorch(model, tmp_path):
    torch.manual_seed(0)
    result = export_onnx(model, tmp_path / "model.onnx", ExportConfig(image_size=32))
    assert result.max_abs_diff <= 1e-4
    graph = onnx.load(str(result.path)).graph
    assert [i.name for i in graph.input] == result.input_names
    # A third size and batch, different from both the traced and the checked ones.
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.rand(3, 3, 40, 40, generator=gen) * 2 - 1]
    if len(result.input_names) == 2:
        inputs.append((torch.rand(3, 1, 40, 40, generator=gen) > 0.5).float())
    assert model.training  # export_onnx exports a copy in eval mode; the caller's model is left as it was
    assert onnx_parity(model.eval(), result.path, tuple(inputs)) <= 1e-4


def test_export_refuses_other_models(tmp_path):
    with pytest.raises(ValueError, match="M-Seg or CARU2-Net"):
        export_onnx(torch.nn.Conv2d(3, 3, 1), tmp_path / "x.onnx")

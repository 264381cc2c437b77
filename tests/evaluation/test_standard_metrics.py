"""Our metrics against the libraries the literature uses, on weights the tests make themselves (nothing can be
downloaded here): the `lpips` package's network, torchmetrics' PSNR/SSIM, ptflops' MAC count."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

from m2u.evaluation.lpips import LPIPS, _lpips_package_heads, build_lpips_trunk
from m2u.evaluation.pixel import psnr_per_image, ssim_per_image
from m2u.evaluation.weights import load_state_dict_file
from m2u.training.flops import count_macs, ptflops_macs
from m2u.training.models import MSeg, MSegConfig


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(4, 3, 64, 64, generator=generator)
    # Very different errors per image: per-image and pooled PSNR then differ clearly.
    noise = torch.randn(4, 3, 64, 64, generator=generator) * torch.tensor([0.01, 0.03, 0.1, 0.3]).view(
        4, 1, 1, 1
    )
    return (target + noise).clamp(0, 1), target


def test_psnr_is_the_mean_of_per_image_psnr_not_torchmetrics_pooled_default():
    torchmetrics = pytest.importorskip("torchmetrics")
    pred, target = _batch()
    ours = psnr_per_image(pred, target)
    per_image = torch.stack(
        [
            torchmetrics.functional.peak_signal_noise_ratio(p[None], t[None], data_range=1.0)
            for p, t in zip(pred, target)
        ]
    )
    assert torch.allclose(ours, per_image, atol=1e-4)  # the same PSNR of each image
    pooled = torchmetrics.image.PeakSignalNoiseRatio(data_range=1.0)(
        pred, target
    )  # MSE pooled over the batch
    assert torch.isclose(pooled, 10 * torch.log10(1 / ((pred - target) ** 2).mean()), atol=1e-4)
    assert ours.mean() - pooled > 8.0  # the convention matters: 25.8 against 17.4 dB on this batch
    reduction_none = torchmetrics.image.PeakSignalNoiseRatio(data_range=1.0, reduction="none", dim=(1, 2, 3))
    assert torch.allclose(
        reduction_none(pred, target), ours, atol=1e-4
    )  # torchmetrics' per-image mode agrees


def test_ssim_is_scikit_images_and_close_to_torchmetrics():
    torchmetrics = pytest.importorskip("torchmetrics")
    from skimage.metrics import structural_similarity

    pred, target = _batch(1)
    ours = ssim_per_image(pred, target)
    skimage = torch.tensor(
        [
            structural_similarity(
                p.permute(1, 2, 0).numpy(),
                t.permute(1, 2, 0).numpy(),
                channel_axis=2,
                data_range=1.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
            for p, t in zip(pred, target)
        ]
    )
    assert torch.allclose(ours, skimage, atol=1e-5)  # the convention we state: scikit-image's
    theirs = torchmetrics.functional.structural_similarity_index_measure(
        pred, target, data_range=1.0, reduction="none"
    )
    # torchmetrics treats the borders differently: within a few thousandths (0.0033 at most on this batch).
    assert torch.allclose(ours, theirs, atol=5e-3) and not torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("lpips") is None, reason="the lpips package is not installed")
def test_our_lpips_equals_the_lpips_package_with_the_same_weights(monkeypatch):
    """The lpips package builds its AlexNet from torchvision, which cannot be imported beside torch 2.13 here and
    whose ImageNet weights cannot be downloaded: a stand-in torchvision hands it our AlexNet trunk with seeded
    weights. The package then loads its own published heads; ours loads the same head file."""
    torch.manual_seed(0)
    trunk = build_lpips_trunk("alex")
    for module in trunk.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.05)
    stand_in = types.ModuleType("torchvision")
    stand_in.models = types.SimpleNamespace(
        alexnet=lambda pretrained=False, **_: types.SimpleNamespace(features=trunk.features)
    )
    monkeypatch.setitem(sys.modules, "torchvision", stand_in)
    monkeypatch.setitem(sys.modules, "torchvision.models", stand_in.models)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    import lpips

    reference = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    ours = LPIPS(build_lpips_trunk("alex"))
    ours.trunk.load_state_dict(trunk.state_dict())
    heads = {
        k: v for k, v in load_state_dict_file(_lpips_package_heads("alex")).items() if k.startswith("lin")
    }
    ours.load_state_dict({**{f"trunk.{k}": v for k, v in trunk.state_dict().items()}, **heads})
    pred, target = _batch(2)
    with torch.no_grad():
        expected = reference(pred * 2 - 1, target * 2 - 1).flatten()  # the package takes [-1, 1]
        got = ours(pred, target)
    assert expected.min() > 0 and torch.allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_ptflops_counts_the_same_convolutions_as_ours():
    pytest.importorskip("ptflops")
    model = MSeg(MSegConfig(base_channels=8, levels=3))
    ours = count_macs(model, [(1, 3, 64, 64)])
    theirs = ptflops_macs(model, [(1, 3, 64, 64)])
    # ptflops also counts bias, batch-norm and activation operations: a little more, never less.
    assert ours <= theirs <= 1.1 * ours

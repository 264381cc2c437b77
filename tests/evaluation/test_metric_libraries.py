"""FID and LPIPS as the literature's libraries compute them, beside m2u's figures, with a real torchvision.

These need torch and torchvision as a matching pair, which the main environment (CPU torch 2.13, where PyPI's
torchvision cannot be imported) does not have: they skip there and run in the one `make test-eval` builds
(`.venv-eval`: torch 2.14.1 + torchvision 0.29.1 and the `eval` extra). Nothing can be downloaded here, so the
tests make the networks' weights themselves and pass them by path, as a user passes the standard files.
"""

from __future__ import annotations

import unittest.mock

import numpy as np
import pytest
import torch
from click.testing import CliRunner


def _require_torchvision():
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - not installed, or installed beside a torch it does not match
        pytest.skip(f"torchvision cannot be imported here ({type(exc).__name__}); run `make test-eval`")


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A seeded Inception state dict in torch-fidelity's own format, standing in for pt_inception-2015-12-05."""
    _require_torchvision()
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity_inception

    # The constructor downloads the standard weights; skip that and keep its seeded initial weights instead.
    with (
        unittest.mock.patch.object(fidelity_inception, "load_state_dict_from_url", return_value={}),
        unittest.mock.patch.object(
            fidelity_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None
        ),
    ):
        torch.manual_seed(0)
        network = fidelity_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    # Seeded convolutions alone shrink the activations layer after layer (the pool features end near zero):
    # set every batch norm's statistics from images, as training would, so that the deep features vary.
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batches
    network.train()
    with torch.no_grad():
        for seed in range(3):
            network(torch.cat(_image_sets(8, seed=100 + seed)))
    network.eval()
    path = tmp_path_factory.mktemp("fid") / "inception-test.pth"
    torch.save(network.state_dict(), path)
    return path


def _image_sets(n: int, size: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two uint8 image sets whose statistics differ: smooth random fields, the second brighter and noisier."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 8, size // 8, generator=generator)
    real = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    fake = real * 0.8 + 0.2 + 0.1 * torch.randn(real.shape, generator=generator)
    to_u8 = lambda x: (x.clamp(0, 1) * 255).round().to(torch.uint8)  # noqa: E731
    return to_u8(real), to_u8(fake)


def _m2u_fid(weights, feature_dim: int, real_u8: torch.Tensor, fake_u8: torch.Tensor) -> float:
    from m2u.evaluation.fid import FIDConfig
    from m2u.evaluation.suite import MetricsConfig, MetricSuite

    config = MetricsConfig(
        enable_lpips=False,
        enable_identity=False,
        fid=FIDConfig(weights_path=str(weights), feature_dim=feature_dim),
    )
    suite = MetricSuite(config)
    assert "fid" not in suite.unavailable, suite.unavailable
    ones = torch.ones(len(real_u8), 1, *real_u8.shape[2:])
    for start in range(0, len(real_u8), 16):
        batch = slice(start, start + 16)
        suite.update("method", fake_u8[batch] / 255.0, real_u8[batch] / 255.0, ones[batch])
    return suite.summary()["method"]["fid"]


@pytest.mark.parametrize(("feature_dim", "n", "rel_tol"), [(64, 96, 1e-6), (2048, 40, 1e-3)])
def test_m2u_fid_equals_torchmetrics_fid_with_the_same_inception_weights(
    inception_weights, feature_dim, n, rel_tol
):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _image_sets(n)
    metric = FrechetInceptionDistance(
        feature=feature_dim, feature_extractor_weights_path=str(inception_weights)
    )
    metric.update(real, real=True)
    metric.update(fake, real=False)
    theirs = float(metric.compute())
    ours = _m2u_fid(inception_weights, feature_dim, real, fake)
    assert theirs > 1e-3, theirs  # calibrated features: a real distance, not rounding noise
    # 2048-d with 40 images: both covariances are singular and the two square roots differ in method (scipy's
    # sqrtm against torchmetrics' eigenvalues), hence the looser tolerance there.
    assert ours == pytest.approx(theirs, rel=rel_tol)


def test_m2u_fid_of_a_set_against_itself_is_zero_and_grows_with_the_difference(inception_weights):
    real, fake = _image_sets(48)
    half = ((real.float() + fake.float()) / 2).round().to(torch.uint8)
    same, closer, farther = (_m2u_fid(inception_weights, 64, real, other) for other in (real, half, fake))
    assert abs(same) < 1e-6 * farther
    assert 0 < closer < farther


def test_m2u_lpips_equals_the_lpips_package_with_torchvisions_alexnet(tmp_path):
    _require_torchvision()
    import lpips
    import torchvision

    from m2u.evaluation.lpips import LPIPSConfig, load_lpips

    torch.manual_seed(0)
    alexnet = torchvision.models.alexnet(weights=None)  # torchvision's own trunk, seeded, not downloaded
    trunk_file = tmp_path / "alexnet-test.pth"
    torch.save(alexnet.state_dict(), trunk_file)
    # m2u's loading path: the trunk from an explicit torchvision-format file, the heads from the lpips package.
    ours = load_lpips(LPIPSConfig(net="alex", trunk_weights=str(trunk_file)), allow_download=False).eval()
    reference = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    # The package keeps torchvision's layer indices inside its slices: slice2.3.weight is features.3.weight.
    features = alexnet.features.state_dict()
    reference.net.load_state_dict(
        {f"slice{i}.{name}": features[name] for i in range(1, 6) for name in _slice_names(reference.net, i)}
    )
    generator = torch.Generator().manual_seed(3)
    target = torch.rand(4, 3, 64, 64, generator=generator)
    pred = (target + torch.randn(target.shape, generator=generator) * 0.1).clamp(0, 1)
    with torch.no_grad():
        expected = reference(pred * 2 - 1, target * 2 - 1).flatten()  # the package takes [-1, 1]
        got = ours(pred, target)
    assert expected.min() > 0
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7)


def _slice_names(network, index: int) -> list[str]:
    return [k.split(".", 1)[1] for k in network.state_dict() if k.startswith(f"slice{index}.")]


def test_m2u_eval_reports_fid_from_the_weights_path(
    tiny_dataset, tiny_checkpoints, inception_weights, tmp_path
):
    """End to end: with torchmetrics[image] importable and `--fid-weights`, FID is a number for every row, not
    "unavailable", and the README's provenance of it is what the report records."""
    import json

    from m2u.evaluation.cli import main as eval_main

    mseg_path, gen_path = tiny_checkpoints
    out = tmp_path / "report"
    result = CliRunner().invoke(
        eval_main,
        [
            "--data",
            str(tiny_dataset),
            "--mseg",
            str(mseg_path),
            "--generator",
            str(gen_path),
            "-o",
            str(out),
            "--split",
            "test",
            "--max-samples",
            "4",
            "--quiet",
            "--latency-repeats",
            "1",
            "--skip-paper-size-cost",
            "--no-lpips",
            "--no-identity",
            "--no-download",
            "--fid-weights",
            str(inception_weights),
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert "fid" not in metrics["unavailable"]
    fids = {name: row["fid"] for name, row in metrics["rows"].items()}
    assert all(isinstance(v, float) and np.isfinite(v) for v in fids.values()), fids

"""Metrics: parity with scikit-image, LPIPS / FID mechanics on small networks, the Fréchet formula by hand,
dlib identity similarity, and honest 'unavailable' reports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn

from m2u.evaluation.fid import FeatureStatistics, FIDConfig, frechet_distance, load_fid_inception
from m2u.evaluation.identity import IdentityConfig, IdentityEmbedder
from m2u.evaluation.lpips import LPIPS, LPIPSConfig, build_lpips_trunk, load_lpips
from m2u.evaluation.pixel import (
    l1_error,
    masked_l1,
    masked_psnr,
    masked_ssim,
    psnr_per_image,
    ssim_per_image,
)
from m2u.evaluation.suite import MetricsConfig, MetricSuite
from m2u.evaluation.weights import MetricUnavailable


def _pair(seed: int = 0, size: int = 48, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(batch, 3, size, size, generator=gen)
    noisy = (base + 0.1 * torch.randn(batch, 3, size, size, generator=gen)).clamp(0, 1)
    return noisy, base


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).numpy().astype(np.float64)


def test_psnr_and_ssim_match_scikit_image():
    x, y = _pair()
    psnr = psnr_per_image(x, y)
    ssim = ssim_per_image(x, y)
    for i in range(len(x)):
        ref_psnr = peak_signal_noise_ratio(_hwc(y[i]), _hwc(x[i]), data_range=1.0)
        ref_ssim = structural_similarity(
            _hwc(x[i]),
            _hwc(y[i]),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=2,
        )
        assert abs(float(psnr[i]) - ref_psnr) < 1e-3
        assert abs(float(ssim[i]) - ref_ssim) < 1e-3


def test_masked_variants_by_hand_and_full_mask_equals_whole_image():
    x, y = _pair(1)
    mask = torch.zeros(3, 1, 48, 48)
    mask[:, :, 10:30, 5:40] = 1
    region = mask.bool().expand_as(x)
    for i in range(3):
        diff = (x[i] - y[i])[region[i]]
        assert abs(float(masked_l1(x, y, mask)[i]) - float(diff.abs().mean())) < 1e-6
        assert abs(float(masked_psnr(x, y, mask)[i]) - float(10 * torch.log10(1 / diff.pow(2).mean()))) < 1e-4
    full = torch.ones(3, 1, 48, 48)
    torch.testing.assert_close(masked_l1(x, y, full), l1_error(x, y))
    torch.testing.assert_close(masked_psnr(x, y, full), psnr_per_image(x, y), atol=1e-3, rtol=0)
    torch.testing.assert_close(masked_ssim(x, y, full), ssim_per_image(x, y).float(), atol=1e-4, rtol=0)
    # Changing only the inside of the mask leaves the outside-region error at exactly zero.
    changed_inside = y * (1 - mask) + x * mask
    assert float(masked_l1(changed_inside, y, 1 - mask).max()) == 0.0
    assert float(masked_l1(changed_inside, y, mask).min()) > 0.0
    empty = torch.zeros(3, 1, 48, 48)
    assert torch.isnan(masked_l1(x, y, empty)).all()
    assert torch.isnan(masked_ssim(x, y, empty)).all()


def test_bad_shapes_raise_clear_errors():
    x, y = _pair()
    with pytest.raises(ValueError, match="same shape"):
        l1_error(x, y[:, :, :10])
    with pytest.raises(ValueError, match="mask must be"):
        masked_l1(x, y, torch.ones(3, 3, 48, 48))


def test_lpips_trunks_have_torchvision_state_dict_keys():
    alex = build_lpips_trunk("alex").state_dict()
    assert [k for k in alex if k.endswith("weight")] == [f"features.{i}.weight" for i in (0, 3, 6, 8, 10)]
    assert tuple(alex["features.0.weight"].shape) == (64, 3, 11, 11)
    assert tuple(alex["features.10.weight"].shape) == (256, 256, 3, 3)
    vgg = build_lpips_trunk("vgg16").state_dict()
    convs = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    assert [k for k in vgg if k.endswith("weight")] == [f"features.{i}.weight" for i in convs]
    assert tuple(vgg["features.28.weight"].shape) == (512, 512, 3, 3)
    heads = LPIPS(build_lpips_trunk("alex", width_divisor=16)).state_dict()
    assert [k for k in heads if k.startswith("lin")] == [f"lin{k}.model.1.weight" for k in range(5)]


def test_lpips_on_a_small_network_behaves_like_a_distance():
    torch.manual_seed(0)
    lp = LPIPS(build_lpips_trunk("alex", width_divisor=16))
    for head in lp.heads():  # LPIPS heads are non-negative weights
        head.model[1].weight.data.abs_()
    x, y = _pair(2, size=64)
    d_xy, d_yx, d_xx = lp(x, y), lp(y, x), lp(x, x)
    assert torch.all(d_xx.abs() < 1e-7)
    assert torch.all(d_xy > 0)
    torch.testing.assert_close(d_xy, d_yx)
    far = lp(x, torch.rand_like(x))
    assert torch.all(far > d_xy)  # heavier corruption -> larger distance
    dmap = lp(x, y, spatial=True)
    assert dmap.shape == (3, 1, 64, 64)
    torch.testing.assert_close(dmap.mean(dim=(1, 2, 3)), d_xy, rtol=0.05, atol=0)
    torch.testing.assert_close(lp.masked(x, y, torch.ones(3, 1, 64, 64)), dmap.mean(dim=(1, 2, 3)))


def test_lpips_loads_weights_from_explicit_paths(tmp_path):
    torch.manual_seed(1)
    trunk = build_lpips_trunk("alex")
    trunk_file = tmp_path / "alexnet.pth"
    # A torchvision-style file: features plus a classifier that the loader must ignore.
    torch.save({**trunk.state_dict(), "classifier.1.weight": torch.zeros(2, 2)}, trunk_file)
    head_file = tmp_path / "alex_heads.pth"
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(trunk.channels)}
    torch.save(heads, head_file)
    lp = load_lpips(LPIPSConfig(net="alex", trunk_weights=str(trunk_file), head_weights=str(head_file)))
    torch.testing.assert_close(lp.trunk.features[3].weight, trunk.features[3].weight)
    torch.testing.assert_close(lp.lin4.model[1].weight, heads["lin4.model.1.weight"])
    x, y = _pair(3, size=64, batch=1)
    assert float(lp(x, y)) > 0


def test_lpips_reports_unavailable_instead_of_faking(tmp_path, monkeypatch):
    with pytest.raises(MetricUnavailable, match="not found"):
        load_lpips(LPIPSConfig(trunk_weights=str(tmp_path / "missing.pth")))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MetricUnavailable, match="downloads are disabled"):
        load_lpips(LPIPSConfig(), allow_download=False)
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(MetricUnavailable, match="do not fit"):
        load_lpips(LPIPSConfig(trunk_weights=str(wrong), head_weights=str(wrong)))
    suite = MetricSuite(MetricsConfig(allow_download=False, enable_fid=False, enable_identity=False))
    assert "downloads are disabled" in suite.unavailable["lpips"]
    x, y = _pair()
    suite.update("m", x, y, torch.ones(3, 1, 48, 48))
    assert "lpips" not in suite.summary()["m"]


def test_frechet_distance_matches_hand_computation():
    # 1-D Gaussians: (m1 - m2)^2 + (sqrt(v1) - sqrt(v2))^2
    assert math.isclose(frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]), 4.0 + 1.0, rel_tol=1e-9)
    # Diagonal covariances: the sum over dimensions of the 1-D formula.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 1.0])
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum())
    assert math.isclose(frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)), expected, rel_tol=1e-9)
    # A general covariance against itself rotated: same spectrum, distance tr(S1)+tr(S2)-2tr((S1 S2)^1/2).
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    s1 = a @ a.T + np.eye(4)
    assert abs(frechet_distance(mu1[:1].repeat(4), s1, mu1[:1].repeat(4), s1)) < 1e-8
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(mu1, np.eye(3), mu2[:2], np.eye(2))


def test_feature_statistics_match_numpy():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(50, 6))
    stats = FeatureStatistics()
    stats.update(torch.from_numpy(feats[:20]))
    stats.update(feats[20:])
    mu, cov = stats.mean_cov()
    np.testing.assert_allclose(mu, feats.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(feats, rowvar=False), atol=1e-10)


class _TinyFeatures(nn.Module):
    """A small fixed feature network standing in for Inception in tests."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_suite_fid_on_a_small_feature_network():
    features = _TinyFeatures()
    suite = MetricSuite(MetricsConfig(enable_lpips=False, enable_identity=False), fid_features=features)
    gen = torch.Generator().manual_seed(5)
    real = torch.rand(40, 3, 32, 32, generator=gen)
    mask = torch.zeros(40, 1, 32, 32)
    mask[:, :, 16:] = 1
    suite.update("identical", real, real, mask)
    suite.update("darker", real * 0.5, real, mask)
    out = suite.summary()
    assert abs(out["identical"]["fid"]) < 1e-6
    assert out["darker"]["fid"] > 1e-3
    # Hand computation of the same number from the features.
    with torch.no_grad():
        f_fake, f_real = features(real * 0.5).double().numpy(), features(real).double().numpy()
    expected = frechet_distance(
        f_fake.mean(0), np.cov(f_fake, rowvar=False), f_real.mean(0), np.cov(f_real, rowvar=False)
    )
    assert math.isclose(out["darker"]["fid"], expected, rel_tol=1e-6, abs_tol=1e-9)
    assert out["darker"]["fid_masked"] > 0
    assert out["darker"]["n_images"] == 40


def test_fid_unavailable_without_library_or_weights(tmp_path):
    with pytest.raises(MetricUnavailable):
        load_fid_inception(FIDConfig(weights_path=str(tmp_path / "nope.pth")))


def test_identity_counts_images_without_a_face():
    try:
        embedder = IdentityEmbedder(IdentityConfig(box="detect"))
    except MetricUnavailable as exc:
        pytest.skip(exc.reason)
    noise = np.random.default_rng(0).integers(0, 256, size=(2, 80, 80, 3), dtype=np.uint8)
    result = embedder.compare(noise, noise)
    assert result.no_face == 2
    assert np.isnan(result.cosine).all()
    with pytest.raises(ValueError, match="box"):
        IdentityEmbedder(IdentityConfig(box="nose"))


@pytest.mark.shared
def test_identity_similarity_on_a_real_face(extras_dir):
    from m2u.masking import read_image

    try:
        embedder = IdentityEmbedder()
    except MetricUnavailable as exc:
        pytest.skip(exc.reason)
    a = read_image(sorted((extras_dir / "dlib-johns").glob("John_Salley*.jpg"))[0])
    same = embedder.compare(a[None], a[None])
    assert same.no_face == 0
    assert same.cosine[0] > 0.999 and same.distance[0] < 1e-6
    # Blanking the lower face (as a mask would) moves the embedding away from the ground truth.
    blanked = a.copy()
    blanked[a.shape[0] // 2 :] = 128
    degraded = embedder.compare(blanked[None], a[None])
    assert degraded.no_face == 0
    assert degraded.distance[0] > 0.05 and degraded.cosine[0] < same.cosine[0]


def test_fid_inception_is_loaded_through_torchmetrics_with_the_path_option(monkeypatch, tmp_path):
    """The real loading path is wired as torchmetrics expects: name, 2048 pool features, weights path, and
    uint8 input. A stand-in module records the call (the real weights cannot be fetched here)."""
    import sys
    import types

    calls = {}

    class RecordingInception(nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None):
            super().__init__()
            calls.update(name=name, features_list=features_list, path=feature_extractor_weights_path)

        def forward(self, x):
            calls["dtype"] = x.dtype
            return x.float().mean(dim=(2, 3))

    fake = types.ModuleType("torchmetrics.image.fid")
    fake.NoTrainInceptionV3 = RecordingInception
    for name in ("torchmetrics", "torchmetrics.image"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "torchmetrics.image.fid", fake)
    weights = tmp_path / "pt_inception-2015-12-05.pth"
    weights.write_bytes(b"x")
    net = load_fid_inception(FIDConfig(weights_path=str(weights)))
    feats = net(torch.full((2, 3, 8, 8), 0.5))
    assert calls == {
        "name": "inception-v3-compat",
        "features_list": ["2048"],
        "path": str(weights),
        "dtype": torch.uint8,
    }
    assert torch.allclose(feats, torch.full((2, 3), 128.0))  # 0.5 -> 128 on the uint8 scale


def test_lpips_weights_of_another_shape_are_one_short_sentence(tmp_path):
    """torch's refusal listed every tensor; the message names the count and the first ones."""
    trunk = build_lpips_trunk("alex")
    wrong = tmp_path / "wide.pth"
    torch.save({k: torch.zeros(*(2 * d for d in v.shape)) for k, v in trunk.state_dict().items()}, wrong)
    heads = tmp_path / "heads.pth"
    torch.save(
        {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(trunk.channels)}, heads
    )
    with pytest.raises(
        MetricUnavailable, match=r"do not fit the alex network: \d+ tensors of another shape"
    ) as info:
        load_lpips(LPIPSConfig(net="alex", trunk_weights=str(wrong), head_weights=str(heads)))
    assert len(str(info.value)) < 600 and "\n" not in str(info.value)


def test_an_identical_pair_is_counted_not_averaged_into_an_infinite_psnr():
    """One identical pair (a sample with an empty mask, for the masked input) made the row's mean PSNR inf, and
    metrics.json then held `Infinity` (not JSON)."""
    import json

    suite = MetricSuite(MetricsConfig(enable_lpips=False, enable_fid=False, enable_identity=False))
    gen = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 16, 16, generator=gen)
    output = target.clone()
    output[1] = (output[1] + 0.1).clamp(0, 1)
    suite.update("row", output, target, torch.ones(2, 1, 16, 16))
    row = suite.summary()["row"]
    # The second image alone: the expected mean.
    alone = MetricSuite(MetricsConfig(enable_lpips=False, enable_fid=False, enable_identity=False))
    alone.update("row", output[1:], target[1:], torch.ones(1, 1, 16, 16))
    assert row["psnr"] == pytest.approx(alone.summary()["row"]["psnr"]) and math.isfinite(row["psnr"])
    assert row["n_psnr_identical"] == 1
    json.loads(json.dumps(row), parse_constant=lambda name: pytest.fail(f"{name} in the row"))


def test_a_weights_file_the_user_named_that_cannot_be_used_is_refused_not_passed_over(tmp_path):
    """A bogus --lpips-trunk-weights file ran the whole evaluation and reported LPIPS "unavailable" in a six-line
    torch message; weights merely absent (none named) stay an unavailable metric."""
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"garbage")
    config = MetricsConfig(
        enable_fid=False, enable_identity=False, lpips=LPIPSConfig(trunk_weights=str(bogus))
    )
    with pytest.raises(
        ValueError, match=r"^`metrics\.lpips\.trunk_weights`: cannot read weights .*bogus\.pth"
    ) as info:
        MetricSuite(config)
    assert "\n" not in str(info.value) and "weights_only` set to `False" not in str(info.value)
    absent = LPIPSConfig(trunk_weights=None, head_weights=None)
    suite = MetricSuite(
        MetricsConfig(enable_fid=False, enable_identity=False, lpips=absent, allow_download=False)
    )  # no refusal
    if suite.lpips is None:  # no cached weights on this machine: said as unavailable, in one line
        assert "\n" not in suite.unavailable["lpips"]


def test_fid_without_downloads_reads_the_hub_cache_or_is_unavailable(monkeypatch, tmp_path):
    """`allow_download=False` (m2u-eval --no-download) reaches FID too: torch-fidelity would fetch its Inception
    when no file is given, so the loader looks in the torch.hub cache first and hands that file over."""
    import sys
    import types

    from m2u.evaluation.fid import FID_INCEPTION_URL

    made = []

    class RecordingInception(nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None):
            super().__init__()
            made.append(feature_extractor_weights_path)

    fake = types.ModuleType("torchmetrics.image.fid")
    fake.NoTrainInceptionV3 = RecordingInception
    for name in ("torchmetrics", "torchmetrics.image"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "torchmetrics.image.fid", fake)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MetricUnavailable, match="downloads are disabled"):
        load_fid_inception(FIDConfig(), allow_download=False)
    assert made == []  # the network that would download was never built
    suite = MetricSuite(MetricsConfig(allow_download=False, enable_lpips=False, enable_identity=False))
    assert "downloads are disabled" in suite.unavailable["fid"] and made == []
    cached = tmp_path / "hub" / "checkpoints" / FID_INCEPTION_URL.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    load_fid_inception(FIDConfig(), allow_download=False)
    assert made == [str(cached)]
    load_fid_inception(FIDConfig())  # downloads allowed: torch-fidelity's own way, as before
    assert made[-1] is None

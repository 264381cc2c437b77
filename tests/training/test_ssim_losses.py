"""SSIM/PSNR against scikit-image, and each loss against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from m2u.training.imagespace import composite, from_model_range, to_model_range
from m2u.training.losses import (
    VGG19_LAYER_INDICES,
    VGGPerceptualLoss,
    VGGWeightsUnavailable,
    build_vgg19_features,
    dice_loss,
    dice_score,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    pixel_accuracy,
    reconstruction_loss,
)
from m2u.training.ssim import psnr, ssim, ssim_map


def _pair(seed: int = 0, size=(2, 3, 32, 28)):
    rng = np.random.default_rng(seed)
    x = rng.random(size)
    y = np.clip(x + rng.normal(0, 0.1, size), 0, 1)
    return x, y


@pytest.mark.parametrize("data_range", [1.0, 2.0])
def test_ssim_equals_skimage(data_range):
    x, y = _pair()
    x, y = x * data_range, y * data_range
    ours = ssim(torch.from_numpy(x), torch.from_numpy(y), data_range=data_range, reduction="none")
    for index in range(x.shape[0]):
        reference = structural_similarity(
            x[index].transpose(1, 2, 0), y[index].transpose(1, 2, 0), channel_axis=2, gaussian_weights=True,
            sigma=1.5, use_sample_covariance=False, data_range=data_range,
        )  # fmt: skip
        assert ours[index].item() == pytest.approx(reference, abs=1e-6)


def test_ssim_float32_close_to_skimage_and_differentiable():
    x, y = _pair(1)
    xt = torch.from_numpy(x).float().requires_grad_()
    value = ssim(xt, torch.from_numpy(y).float())
    value.backward()
    assert xt.grad is not None and torch.isfinite(xt.grad).all()
    reference = np.mean(
        [
            structural_similarity(a.transpose(1, 2, 0), b.transpose(1, 2, 0), channel_axis=2, gaussian_weights=True,
                                  sigma=1.5, use_sample_covariance=False, data_range=1.0)
            for a, b in zip(x, y)
        ]
    )  # fmt: skip
    assert value.item() == pytest.approx(reference, abs=1e-5)
    assert ssim_map(xt, xt).shape == (2, 3, 22, 18)
    assert ssim(xt, xt).item() == pytest.approx(1.0, abs=1e-6)


def test_psnr_equals_skimage():
    x, y = _pair(2)
    ours = psnr(torch.from_numpy(x), torch.from_numpy(y), reduction="none")
    for index in range(x.shape[0]):
        assert ours[index].item() == pytest.approx(
            peak_signal_noise_ratio(y[index], x[index], data_range=1.0), abs=1e-4
        )


def test_image_range_round_trip_and_composite():
    x01 = torch.tensor([0.0, 0.25, 1.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    assert torch.allclose(to_model_range(x01)[0, 0, 0], torch.tensor([-1.0, -0.5, 1.0]))
    assert torch.allclose(from_model_range(to_model_range(x01)), x01)
    output, masked = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert torch.equal(composite(output, masked, mask), mask.expand(1, 3, 2, 2))
    with pytest.raises(ValueError):
        composite(output, masked, mask.expand(1, 3, 2, 2))


def test_lsgan_losses_hand_computed():
    real = torch.tensor([1.0, 0.5])
    fake = torch.tensor([0.0, 0.3])
    # D: 0.5 * (mean((1-.9)^2, (.5-.9)^2) + mean((0-.1)^2, (.3-.1)^2)) = 0.5 * (0.085 + 0.025) = 0.055
    assert lsgan_discriminator_loss(real, fake).item() == pytest.approx(0.055)
    # G: mean((0-.9)^2, (.3-.9)^2) = (0.81 + 0.36) / 2 = 0.585
    assert lsgan_generator_loss(fake).item() == pytest.approx(0.585)


def test_reconstruction_loss_hand_computed():
    target = torch.zeros(1, 3, 16, 16)
    output = torch.full((1, 3, 16, 16), 0.5)  # model range; differences 0.5 -> SmoothL1 = 0.5 * 0.5^2 = 0.125
    # In [0, 1] both images are constant (0.5 and 0.75): SSIM = (2 * .5 * .75 + c1) / (.25 + .5625 + c1).
    c1 = 0.01**2
    expected_ssim = (2 * 0.5 * 0.75 + c1) / (0.5**2 + 0.75**2 + c1)
    expected = 0.5 * 0.125 + 0.5 * (1 - expected_ssim)
    assert reconstruction_loss(output, target).item() == pytest.approx(expected, rel=1e-5)
    assert reconstruction_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_and_accuracy_hand_computed():
    predicted = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert dice_score(predicted, target).item() == pytest.approx(2 * 1 / 3)
    assert pixel_accuracy(predicted, target).item() == pytest.approx(0.75)
    assert dice_score(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).item() == 1.0
    # Soft Dice with logits 0 (p = 0.5 everywhere): 1 - (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5
    assert dice_loss(torch.zeros(1, 1, 2, 2), target).item() == pytest.approx(0.5)
    # An image with an empty target (a bare face) is left out of the Dice term: the mean is the other image's.
    pair = torch.cat([target, torch.zeros_like(target)])
    assert dice_loss(torch.zeros(2, 1, 2, 2), pair).item() == pytest.approx(0.5)
    assert dice_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).item() == 0.0


def test_vgg19_features_layout_matches_torchvision_keys():
    features = build_vgg19_features()
    keys = list(features.state_dict())
    convs = [k for k in keys if k.endswith(".weight")]
    assert len(convs) == 16 and convs[0] == "0.weight" and convs[-1] == "34.weight"
    assert isinstance(features[VGG19_LAYER_INDICES["relu5_1"]], torch.nn.ReLU)
    assert features[28].in_channels == 512


def test_perceptual_loss_hand_computed_on_one_layer(tmp_path):
    torch.manual_seed(0)
    # A weights file with torchvision's keys: features.0 only matters for relu1_1.
    state = {f"features.{k}": v for k, v in build_vgg19_features().state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(1)  # torchvision files also hold the classifier: ignored
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    loss_fn = VGGPerceptualLoss(str(path), layers=("relu1_1",))
    assert torch.equal(loss_fn.features[0].weight, state["features.0.weight"])
    a, b = torch.rand(1, 3, 8, 8) * 2 - 1, torch.rand(1, 3, 8, 8) * 2 - 1
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )

    def relu1_1(x):
        x = ((x + 1) / 2 - mean) / std
        return torch.relu(
            torch.nn.functional.conv2d(x, state["features.0.weight"], state["features.0.bias"], padding=1)
        )

    expected = torch.nn.functional.smooth_l1_loss(relu1_1(a), relu1_1(b))
    assert loss_fn(a, b).item() == pytest.approx(expected.item(), rel=1e-5)


def test_perceptual_loss_without_weights_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(VGGWeightsUnavailable, match="`vgg_weights`"):
        VGGPerceptualLoss("imagenet")
    with pytest.raises(VGGWeightsUnavailable, match="not found"):
        VGGPerceptualLoss(str(tmp_path / "missing.pth"))
    random_backbone = VGGPerceptualLoss("random", layers=("relu1_1", "relu2_1"))
    assert math.isfinite(random_backbone(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)).item())


def test_the_paper_loss_weights_live_in_one_config_the_losses_read():
    from m2u.training.config import GanTrainConfig, MSegTrainConfig
    from m2u.training.losses import (
        GanLossConfig,
        SegmentationLossConfig,
        generator_loss,
        segmentation_loss,
    )

    paper = GanLossConfig()
    assert (paper.adversarial_weight, paper.reconstruction_weight, paper.perceptual_weight) == (1, 100, 10)
    assert paper.ssim_share == 0.5
    assert isinstance(GanTrainConfig(mask_source="gt"), GanLossConfig)  # the trainer's config is that config
    assert isinstance(MSegTrainConfig(), SegmentationLossConfig)
    terms = {
        "adversarial": torch.tensor(2.0),
        "reconstruction": torch.tensor(3.0),
        "perceptual": torch.tensor(5.0),
    }
    assert generator_loss(terms, paper).item() == pytest.approx(2 + 300 + 50)
    custom = GanLossConfig(adversarial_weight=0.0, reconstruction_weight=1.0, perceptual_weight=2.0)
    assert generator_loss(terms, custom).item() == pytest.approx(3 + 10)
    with pytest.raises(ValueError, match="perceptual_weight"):
        GanLossConfig(perceptual_weight=-1)

    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    out = segmentation_loss(logits, target, SegmentationLossConfig(bce_weight=2.0, dice_weight=3.0))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert out["bce"].item() == pytest.approx(bce.item())
    assert out["loss"].item() == pytest.approx(2 * bce.item() + 3 * out["dice_loss"].item())


@pytest.mark.parametrize("content", [b"junk", b"\xff\xd8\xff\xe0 a JPEG's start", b""])
def test_vgg_weights_that_are_no_weights_file_are_one_clear_refusal(tmp_path, content):
    """`--vgg-weights notes.txt` gave KeyError: 101; a JPEG gave torch's UnpicklingError page."""
    from m2u.training.losses import VGGPerceptualLoss, VGGWeightsUnavailable

    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(VGGWeightsUnavailable, match="cannot be read .*not a torchvision vgg19") as refused:
        VGGPerceptualLoss(str(path))
    assert "weights_only" not in str(refused.value)


def test_vgg_weights_of_another_shape_are_one_short_sentence(tmp_path):
    """A file with every key of a vgg19 but other shapes: named in one phrase, not torch's list of every tensor."""
    from m2u.training.losses import VGGPerceptualLoss, VGGWeightsUnavailable

    own = build_vgg19_features(max(VGG19_LAYER_INDICES.values()) + 1).state_dict()
    wrong = tmp_path / "vgg.pth"
    torch.save({f"features.{k}": torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in own.items()}, wrong)
    with pytest.raises(
        VGGWeightsUnavailable, match=r"not a torchvision vgg19's: \d+ tensors of another shape"
    ) as info:
        VGGPerceptualLoss(str(wrong))
    assert len(str(info.value)) < 600

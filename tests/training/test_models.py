"""Shapes, parameter counts and ablation switches of the three networks."""

from __future__ import annotations

import pytest
import torch

from m2u.training.flops import count_flops, count_macs, count_params
from m2u.training.models import (
    CARU2Net,
    DiscriminatorConfig,
    GeneratorConfig,
    MSeg,
    MSegConfig,
    PatchDiscriminator,
)

PAPER_GENERATOR_PARAMS = 3.17e6


def test_generator_default_widths_match_paper_parameter_count():
    params = count_params(CARU2Net())
    assert abs(params - PAPER_GENERATOR_PARAMS) / PAPER_GENERATOR_PARAMS < 0.03, params


@pytest.mark.parametrize("stages", [3, 5])
@pytest.mark.parametrize("size", [(32, 32), (40, 24)])
def test_generator_output_shape_and_range(stages, size):
    torch.manual_seed(0)
    model = CARU2Net(GeneratorConfig(stages=stages, width_multiplier=0.125)).eval()
    masked = torch.rand(2, 3, *size) * 2 - 1
    mask = (torch.rand(2, 1, *size) > 0.5).float()
    with torch.no_grad():
        out = model(masked, mask)
    assert out.shape == (2, 3, *size)
    assert out.min() >= -1 and out.max() <= 1


def test_generator_uses_the_mask_only_with_segmentation_guidance():
    torch.manual_seed(0)
    masked = torch.rand(1, 3, 32, 32)
    mask_a, mask_b = torch.zeros(1, 1, 32, 32), torch.ones(1, 1, 32, 32)
    guided = CARU2Net(GeneratorConfig(width_multiplier=0.125)).eval()
    unguided = CARU2Net(GeneratorConfig(width_multiplier=0.125, segmentation_guidance=False)).eval()
    assert guided.encoder1.input_layer.conv.in_channels == 4
    assert unguided.encoder1.input_layer.conv.in_channels == 3
    with torch.no_grad():
        assert not torch.allclose(guided(masked, mask_a), guided(masked, mask_b))
        assert torch.equal(unguided(masked, mask_a), unguided(masked, mask_b))
    with pytest.raises(ValueError, match="mask"):
        guided(masked)


def test_ablations_change_the_network():
    full = count_params(CARU2Net())
    no_attention = count_params(CARU2Net(GeneratorConfig(channel_attention=False)))
    three_stages = count_params(CARU2Net(GeneratorConfig(stages=3)))
    assert no_attention < full and three_stages < full
    with pytest.raises(ValueError, match="stages"):
        GeneratorConfig(stages=4)


def test_generator_macs_are_half_the_flops_and_near_the_paper():
    model = CARU2Net()
    shapes = [(1, 3, 128, 128), (1, 1, 128, 128)]
    macs = count_macs(model, shapes)
    assert count_flops(model, shapes) == 2 * macs
    # Paper: 42.53 "GFLOPs" at 256x256, which are MACs. Every feature map halves exactly from 256 to 128, so
    # the cost at 256 is 4x this one (42.29 G; convolutions and matrix products only, as thop/fvcore count).
    assert 0.97 * 42.53e9 < 4 * macs < 1.03 * 42.53e9


def test_discriminator_shape_and_parameters():
    model = PatchDiscriminator()
    assert count_params(model) == 2_764_737  # 4x4 convs 3-64-128-256-512-1 with biases
    out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 1, 6, 6)  # 64 -> 32 -> 16 -> 8 -> 7 -> 6
    strides = [m.stride[0] for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert strides == [2, 2, 2, 1, 1]
    assert all(hasattr(m, "parametrizations") for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_discriminator_on_256_gives_30x30_patches():
    small = PatchDiscriminator(DiscriminatorConfig(channels=(3, 4, 4, 4, 4, 1)))
    assert small(torch.rand(1, 3, 256, 256)).shape == (1, 1, 30, 30)


def test_mseg_shapes_and_binary_prediction():
    torch.manual_seed(0)
    model = MSeg(MSegConfig(base_channels=4)).eval()
    x = torch.rand(2, 3, 48, 40) * 2 - 1
    logits = model(x)
    assert logits.shape == (2, 1, 48, 40)
    mask = model.predict_mask(x, 0.5)
    assert mask.shape == (2, 1, 48, 40)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(mask, (torch.sigmoid(logits) >= 0.5).float())
    with pytest.raises(ValueError, match="expects"):
        model(torch.rand(1, 4, 32, 32))


def test_mirror_averaged_mask_follows_the_image_when_it_is_mirrored():
    """A face and its mirror image wear the same mask: the mirror-averaged mask of the mirrored image is the mirrored
    mask, exactly (an untrained network alone does not do this), and the inference path uses it by default."""
    from m2u.inference.restore import restore_batch

    torch.manual_seed(0)
    model = MSeg(MSegConfig(base_channels=4)).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    threshold = float(torch.sigmoid(model(x)).median())  # half the pixels on each side: differences show
    plain, mirrored = model.predict_mask(x, threshold), model.predict_mask(x.flip(3), threshold)
    assert not torch.equal(mirrored, plain.flip(3))
    averaged = model.predict_mask(x, threshold, mirror=True)
    assert torch.equal(model.predict_mask(x.flip(3), threshold, mirror=True), averaged.flip(3))
    generator = CARU2Net(GeneratorConfig(width_multiplier=0.125)).eval()
    mask, _, _ = restore_batch(model, generator, (x + 1) / 2, threshold, fill_holes=False)
    assert torch.equal(mask, model.predict_mask(x, threshold, mirror=True))


def test_inference_masks_have_their_enclosed_holes_filled():
    """A mask has no holes: what M-Seg leaves enclosed is marked; background reaching the crop's edge is not."""
    from m2u.inference.restore import fill_mask_holes, restore_batch

    mask = torch.zeros(2, 1, 16, 16)
    mask[0, 0, 3:12, 3:12] = 1
    mask[0, 0, 5:9, 5:9] = 0  # a hole inside the mask
    mask[1, 0, 3:12, 3:12] = 1
    mask[1, 0, 5:9, 5:16] = 0  # a notch open to the right edge: not a hole
    filled = fill_mask_holes(mask)
    assert filled[0, 0, 3:12, 3:12].eq(1).all() and filled[0].sum() == 81
    assert torch.equal(filled[1], mask[1]) and filled.dtype == mask.dtype
    # The inference path fills by default.
    torch.manual_seed(0)
    model = MSeg(MSegConfig(base_channels=4)).eval()
    x = torch.rand(2, 3, 32, 32)
    threshold = float(torch.sigmoid(model(x * 2 - 1)).median())
    generator = CARU2Net(GeneratorConfig(width_multiplier=0.125)).eval()
    plain, _, _ = restore_batch(model, generator, x, threshold, fill_holes=False)
    default, _, _ = restore_batch(model, generator, x, threshold)
    assert not torch.equal(default, plain) and torch.equal(default, fill_mask_holes(plain))

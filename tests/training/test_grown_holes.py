"""GanTrainConfig.hole_grow_px: the generator trains on holes grown past the mask, as m2u-unmask fills them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import training_ddp_worker

from m2u.inference.paste import grow_region
from m2u.training.distributed import DistributedContext
from m2u.training.gan_task import GanTask, grow_holes


def _masks(count: int = 8, size: int = 24) -> torch.Tensor:
    mask = torch.zeros(count, 1, size, size)
    mask[:, :, 10:16, 8:14] = 1
    mask[:, :, 3, 3] = 1  # a lone pixel: grows into a square of its own
    return mask


def test_each_sample_grows_by_its_own_radius_as_the_inference_region_does():
    torch.manual_seed(0)
    masks = _masks()
    grown = grow_holes(masks, 3)
    radii = set()
    for before, after in zip(masks, grown, strict=True):
        assert bool((after >= before).all())  # a hole only grows
        # Which radius was drawn: the lone pixel's square side is 2r + 1.
        radius = (int(after[0, :7, :7].sum().sqrt()) - 1) // 2  # the square at (3, 3) grows to 7 x 7 at most
        radii.add(radius)
        expected = grow_region(before[0].numpy(), radius)
        np.testing.assert_array_equal(after[0].numpy(), expected)
    assert radii <= {0, 1, 2, 3} and len(radii) > 1  # 8 samples: more than one radius drawn
    torch.manual_seed(0)
    assert torch.equal(grow_holes(masks, 3), grown)  # seeded: the same draws


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_a_grow_that_is_no_whole_number_of_pixels_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="hole_grow_px"):
        training_ddp_worker.tiny_gan_config(tmp_path, hole_grow_px=bad)


@pytest.mark.parametrize("grow", [0, 2])
def test_the_generator_is_fed_the_grown_hole_and_nothing_is_drawn_without_it(tmp_path, grow):
    config = training_ddp_worker.tiny_gan_config(tmp_path, hole_grow_px=grow, max_steps=1)
    task = GanTask(config, torch.device("cpu"), DistributedContext())
    seen = []
    task.networks["generator"].register_forward_hook(lambda module, inputs, output: seen.append(inputs[1]))
    batch = training_ddp_worker.tensors(8)
    torch.manual_seed(1)
    task.train_step(batch, step=0)
    after_step = torch.rand(1)
    torch.manual_seed(1)
    untouched = torch.rand(1)
    fed = seen[0]
    if grow:
        assert bool((fed >= batch["mask"]).all()) and float(fed.sum()) > float(batch["mask"].sum())
        assert not torch.equal(after_step, untouched)  # the radii were drawn from the run's generator
    else:
        assert torch.equal(fed, batch["mask"])
        assert torch.equal(after_step, untouched)  # no draw: runs without it keep their random stream

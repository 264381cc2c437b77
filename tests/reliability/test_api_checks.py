"""The Python API refuses what no run can use where it is given, naming it: a configuration value (NaN, 2.5 for a
count, a rank without its world size), an image of the wrong kind or an empty one. Found by an adversarial pass
over the public surface: each of these was accepted and failed later (inside a DataLoader worker, after a run
folder was made) or quietly did something else (epochs=nan saved an untrained model; world_size without rank read
rank 0's share on every DDP process)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from m2u.datasets import LoaderConfig
from m2u.evaluation.evaluator import EvaluateConfig
from m2u.inference.mask_refine import MaskRefineConfig
from m2u.masking.geometry import PlacementConfig
from m2u.training.config import GanTrainConfig, MSegTrainConfig
from m2u.training.models import DiscriminatorConfig, GeneratorConfig, MSegConfig

NAN = float("nan")


@pytest.mark.parametrize(
    "make, field, value",
    [
        (LoaderConfig, "batch_size", 2.5),
        (LoaderConfig, "num_workers", NAN),
        (LoaderConfig, "seed", NAN),
        (LoaderConfig, "drop_last", "no"),
        (MSegTrainConfig, "epochs", NAN),
        (MSegTrainConfig, "bce_weight", NAN),
        (GanTrainConfig, "adversarial_weight", float("inf")),
        (EvaluateConfig, "batch_size", NAN),
        (MaskRefineConfig, "iterations", NAN),
        (GeneratorConfig, "width_multiplier", NAN),
        (DiscriminatorConfig, "negative_slope", NAN),
        (MSegConfig, "cbam_reduction", 1.5),
    ],
)
def test_a_value_of_the_wrong_kind_is_refused_naming_its_field(make, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must be"):
        make(**{field: value})


@pytest.mark.parametrize(
    "make, field, value, said",
    [
        (EvaluateConfig, "latency_repeats", 0, "must be >= 1, got 0"),  # failed after every sample was scored
        (EvaluateConfig, "latency_warmup", -1, "must be >= 0, got -1"),
        (EvaluateConfig, "grid_rows", -2, "must be >= 0, got -2"),
        (EvaluateConfig, "max_samples", 0, "must be >= 1, got 0"),
        (PlacementConfig, "cols", 0, "must be >= 3, got 0"),
        (PlacementConfig, "cols", 16, "must be odd"),
        (PlacementConfig, "rows", 1, "must be >= 2, got 1"),
        (PlacementConfig, "area_range", (1.1, 0.4), "must be (low, high) with 0 < low < high"),
    ],
)
def test_a_count_or_range_no_run_can_use_is_refused_naming_its_field(make, field, value, said):
    with pytest.raises(ValueError, match=f"^{field}: {re.escape(said)}"):
        make(**{field: value})


def test_the_loader_takes_rank_and_world_size_together_and_checks_them_when_built():
    with pytest.raises(ValueError, match="rank and world_size are given together"):
        LoaderConfig(world_size=4)
    with pytest.raises(ValueError, match=r"rank 0 is not in \[0, world_size=0\)"):
        LoaderConfig(rank=0, world_size=0)
    with pytest.raises(ValueError, match="prefetch_factor must be >= 1"):
        LoaderConfig(prefetch_factor=0)
    assert LoaderConfig(rank=1, world_size=2).rank == 1


def test_every_unmasking_entry_refuses_an_image_it_cannot_read(tiny_checkpoints):
    from m2u.inference.unmask import UnmaskConfig, Unmasker

    mseg, generator = tiny_checkpoints
    unmasker = Unmasker.from_files(mseg, generator, UnmaskConfig(device="cpu", progress=False))
    for image, said in (
        (np.zeros((0, 0, 3), np.uint8), "image is empty"),
        (np.zeros((0, 50, 3), np.uint8), "image is empty"),
        (np.zeros((32, 32), np.uint8), "uint8 RGB array"),
        (np.zeros((32, 32, 4), np.uint8), "uint8 RGB array"),
        (np.zeros((32, 32, 3), np.float32), "uint8 RGB array"),  # it came back unchanged as "not masked"
    ):
        for entry in (unmasker.unmask_image, unmasker.unmask_aligned):
            with pytest.raises(ValueError, match=said):
                entry(image)
    with pytest.raises(ValueError, match="each crop must be a uint8 RGB array"):
        unmasker.restore_crops([np.zeros((32, 32, 3), np.float32)])
    with pytest.raises(ValueError, match="at least one crop"):
        unmasker.restore_crops([])


def test_an_object_store_that_cannot_be_read_is_a_storage_error(monkeypatch, tmp_path):
    pytest.importorskip("s3fs")
    from m2u.datasets import make_loader
    from m2u.datasets.storage import StorageError

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup
    monkeypatch.setenv("M2U_CACHE", str(tmp_path / "cache"))
    with pytest.raises(
        StorageError, match="cannot be read: NoCredentialsError"
    ):  # botocore's own, no OSError
        make_loader("s3://no-such-bucket-m2u/ds", "train")


def test_restore_crops_refuses_crops_not_of_the_models_crop_size():
    from m2u.inference.restore import TwoStageModel
    from m2u.inference.unmask import UnmaskConfig, Unmasker
    from m2u.training.checkpoint import ModelInfo
    from m2u.training.models import CARU2Net, GeneratorConfig, MSeg, MSegConfig

    models = TwoStageModel(
        MSeg(MSegConfig(base_channels=4, levels=3)),
        CARU2Net(GeneratorConfig(width_multiplier=0.125)),
        ModelInfo(crop_size=32),
        ModelInfo(crop_size=32),
    )
    unmasker = Unmasker(models, UnmaskConfig(device="cpu", progress=False, aligned=True))
    crop = np.zeros((32, 32, 3), np.uint8)
    # 48 px crops ran at 48 px (a poorer restoration, without a word); mixed sizes failed in numpy's words
    for crops, said in (
        ([np.zeros((48, 48, 3), np.uint8)], "crop 0 is 48x48"),
        ([crop, crop[:16, :16]], "crop 1 is 16x16"),
    ):
        with pytest.raises(
            ValueError, match=rf"^each crop must be 32x32, the models' crop size \(`crop_size`\), but {said}"
        ):
            unmasker.restore_crops(crops)
        with pytest.raises(ValueError, match=said):
            unmasker.predict_masks_with_probabilities(crops)
    masks, composites = unmasker.restore_crops([crop, crop])
    assert masks.shape == (2, 32, 32) and composites.shape == (2, 32, 32, 3)

"""Face packs and on-the-fly pairs (issue 27): the pack keeps what it was cut from, renders are a function of
(seed, split, epoch, index) alone, every epoch sees new masks, and the pair obeys the dataset's mask rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from m2u.datasets.facepack import FacePack, PackConfig, write_face_pack
from m2u.training.onthefly import OnTheFlyDataSource, RenderedPairs, sample_seed


@pytest.fixture(scope="module")
def source_dataset(tmp_path_factory, celeba_dir) -> Path:
    out = tmp_path_factory.mktemp("source") / "data"
    command = [str(Path(sys.executable).parent / "m2u-make-dataset"), str(celeba_dir), "-o", str(out),
               "--size", "64", "--limit", "40", "--split-by", "identity", "--identity-pattern",
               "{identity}_{id}.jpg", "--shard-size", "6", "--workers", "1", "--quiet"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def pack(source_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "pack"
    write_face_pack(
        source_dataset, out, PackConfig(store_size=48, max_bytes=2**20, test_shards=1), log=lambda _: None
    )
    return out


def test_pack_holds_the_training_faces_and_a_readable_test_split(pack, source_dataset):
    from m2u.datasets.loader import LoaderConfig, count_samples, make_loader

    faces = FacePack(pack)
    assert faces.size == 64 and faces.store_size == 48
    train = faces.info["splits"]["train"]
    assert train["faces"] == faces.count("train") > 10 and train["bytes_per_face"] > 0
    image, landmarks = faces.face("train", 0)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and landmarks.shape == (68, 2)
    assert landmarks.min() > 0 and landmarks.max() < 64  # scaled back to the training size
    # The test split is an ordinary dataset folder: the evaluator's loader reads every pair its manifest lists.
    test_count = count_samples(faces.test_dataset, "test")
    assert test_count == faces.info["test"]["samples"] > 0
    loader = make_loader(faces.test_dataset, "test", LoaderConfig.for_evaluation(batch_size=4, num_workers=0))
    assert sum(len(batch["key"]) for batch in loader) == test_count
    with pytest.raises(FileExistsError):
        write_face_pack(source_dataset, pack, PackConfig(), log=lambda _: None)


def test_a_pack_whose_test_pairs_another_mask_engine_drew_is_refused_for_training(pack, tmp_path):
    """The pack records the engine of its test pairs (from the dataset's stats.json); training draws its pairs with
    this m2u's, so a pack of another engine (or from before engines were recorded: 1) is refused, not mixed."""
    import json
    import shutil

    from m2u.masking.render import RENDER_VERSION

    assert FacePack(pack).render_version == RENDER_VERSION
    RenderedPairs(pack, "train")
    older = tmp_path / "older"
    shutil.copytree(pack, older)
    info = json.loads((older / "pack.json").read_text())
    before_versions = {k: v for k, v in info.items() if k != "render_version"}
    for stale, version in (
        ({**info, "render_version": RENDER_VERSION - 1}, RENDER_VERSION - 1),
        (before_versions, 1),
    ):
        (older / "pack.json").write_text(json.dumps(stale))
        message = rf"drawn by mask engine version {version}, and this m2u draws version {RENDER_VERSION}"
        with pytest.raises(ValueError, match=message):
            RenderedPairs(older, "train")


def test_pack_respects_its_byte_budget(source_dataset, tmp_path):
    info = write_face_pack(source_dataset, tmp_path / "p", PackConfig(max_bytes=40_000, test_shards=0),
                           log=lambda _: None)  # fmt: skip
    assert info["bytes"] <= 40_000 + 4096  # the faces fit the budget; the small index files come on top
    assert 0 < info["splits"]["train"]["faces"] < FacePack(tmp_path / "p").count("train") + 1


def test_renders_are_reproducible_per_epoch_and_index_and_change_between_epochs(pack):
    first = RenderedPairs(pack, "train", seed=3, epoch=0).render(2)
    again = RenderedPairs(pack, "train", seed=3, epoch=0).render(2)
    for name in ("masked", "unmasked", "mask"):
        assert np.array_equal(first[name], again[name]), name
    changed = 0
    for index in range(6):
        a = RenderedPairs(pack, "train", seed=3, epoch=0).render(index)
        b = RenderedPairs(pack, "train", seed=3, epoch=1).render(index)
        changed += not np.array_equal(a["masked"], b["masked"])
    assert changed >= 5  # a new mask (or flip) on (nearly) every face each epoch
    # The dataset's rule: outside the mask the pair is the same pixels.
    outside = first["mask"] == 0
    assert first["mask"].any() and np.array_equal(first["masked"][outside], first["unmasked"][outside])
    assert sample_seed(3, "train", 0, 2).entropy != sample_seed(3, "val", 0, 2).entropy


def test_data_source_batches_do_not_depend_on_the_worker_count(pack):
    def first_batch(workers: int) -> dict:
        source = OnTheFlyDataSource(str(pack), batch_size=4, seed=1, num_workers=workers)
        return next(iter(source.batches("train", 2)))

    a, b = first_batch(0), first_batch(1)
    assert a["key"] == b["key"]
    assert torch.equal(a["masked"], b["masked"]) and torch.equal(a["mask"], b["mask"])
    assert (
        a["masked"].dtype == torch.uint8
        and a["mask"].shape == (4, 1, 64, 64)
        and set(a["mask"].unique().tolist()) <= {0, 1}
    )
    source = OnTheFlyDataSource(str(pack), batch_size=4, seed=1, num_workers=0)
    batches = list(source.batches("train", 0))
    assert source.train_batches == len(batches) == FacePack(pack).count("train") // 4
    assert source.wait_seconds > 0
    val = [batch["key"] for batch in source.batches("val", 5)]
    assert val == [batch["key"] for batch in source.batches("val", 0)]  # a fixed validation set
    test = list(source.batches("test", 0))
    assert (
        test and test[0]["masked"].dtype == torch.float32
    )  # the pre-rendered pairs, through the shard loader


def test_training_runs_on_the_data_source(pack, tmp_path):
    from m2u.training.config import MSegTrainConfig
    from m2u.training.models import MSegConfig
    from m2u.training.trainer import train_mseg

    source = OnTheFlyDataSource(str(pack), batch_size=2, seed=0, num_workers=0)
    config = MSegTrainConfig(model=MSegConfig(base_channels=4, levels=3), data=str(pack), out=str(tmp_path / "run"),
                             batch_size=2, max_steps=2, val_every=0, val_batches=1, log_every=1, num_workers=0,
                             progress=False, evaluate_test=False, device="cpu")  # fmt: skip
    results = train_mseg(config, source)
    assert results["steps"] == 2 and source.train_batches == 2 and "dice" in results["val"]
    # The run records the pack by content (a resume mid-epoch on another pack is refused).
    assert results["datasets"] == [
        {"data": str(pack), "manifest_sha256": FacePack(pack).digest(), "from_step": 0}
    ]


def test_the_device_runs_m_seg_alone_from_a_package_and_brings_its_file_back(pack, tmp_path):
    """`device_run.sh --networks mseg --init-from PACKAGE --augment` (the real-mask candidate a lent GPU trains):
    M-Seg alone, started from the package's M-Seg in its shapes, its test Dice next to the starting model's on the
    pack's pairs, and its file in OUT; no generator is trained. Here for 3 steps on the CPU."""
    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import device_kit

    from m2u.inference.pretrained import MSEG_FILE, pretrained_dir
    from m2u.training.checkpoint import read_model_metadata

    shipped = pretrained_dir()
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "pack").symlink_to(pack)
    out = tmp_path / "out"
    argv = ["run", "--kit", str(kit), "--out", str(out), "--work", str(tmp_path / "work"), "--rehearsal",
            "--networks", "mseg", "--init-from", str(shipped), "--augment", "--max-steps", "3", "--budget", "120",
            "--check-seconds", "0", "--eval-seconds", "10", "--package-seconds", "0", "--workers", "0",
            "--batch-size", "2", "--max-test-samples", "4"]  # fmt: skip
    assert device_kit.main(argv) == 0
    report = json.loads((out / "device_run.json").read_text())
    assert report["training"]["mseg"]["steps"] == 3 and "gan" not in report["training"]
    assert set(report["evaluation"]) == {"trained", "init_from"}
    assert all(0 <= row["dice_mean"] <= 1 and row["samples"] == 4 for row in report["evaluation"].values())
    assert sorted(p.name for p in out.iterdir()) == ["device_run.json", "mseg.safetensors"]
    # Fine-tuned from the shipped M-Seg: its shapes, its weights moved by the 3 steps.
    assert read_model_metadata(out / "mseg.safetensors")[1] == read_model_metadata(shipped / MSEG_FILE)[1]
    trained, start = load_file(out / "mseg.safetensors"), load_file(shipped / MSEG_FILE)
    assert trained.keys() == start.keys()
    assert any(not torch.equal(trained[k].float(), start[k].float()) for k in trained)
    config = json.loads((tmp_path / "work" / "mseg" / "config.json").read_text())
    assert config["augment"]["enabled"] and config["init_weights"] == {"mseg": str(shipped / MSEG_FILE)}

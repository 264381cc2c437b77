from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from m2u.datasets.layout import read_manifest
from m2u.datasets.loader import LoaderConfig, count_samples, make_loader, resolve_shards


def _train_keys(dataset_dir):
    manifest = read_manifest(dataset_dir)
    return sorted(manifest.loc[manifest["split"] == "train", "key"])


def _epoch_keys(loader):
    keys = []
    for batch in loader:
        keys.extend(batch["key"])
    return keys


def test_batches_have_the_documented_types(synthetic_dataset):
    loader = make_loader(synthetic_dataset, "val", LoaderConfig(batch_size=3, num_workers=0))
    batch = next(iter(loader))
    assert batch["masked"].shape == (3, 3, 32, 32) and batch["unmasked"].shape == (3, 3, 32, 32)
    assert batch["mask"].shape == (3, 1, 32, 32)
    assert batch["masked"].dtype == batch["mask"].dtype == torch.float32
    assert batch["masked"].min() >= 0 and batch["masked"].max() <= 1
    assert set(batch["mask"].unique().tolist()) == {0.0, 1.0}
    assert isinstance(batch["key"], list) and len(batch["key"]) == 3
    outside = batch["mask"].expand_as(batch["masked"]) == 0
    assert torch.equal(batch["masked"][outside], batch["unmasked"][outside])


@pytest.mark.parametrize("split_by", ["shard", "sample"])
def test_every_sample_exactly_once_per_epoch_with_workers(synthetic_dataset, split_by):
    config = LoaderConfig(batch_size=4, num_workers=2, shuffle_buffer=5, split_by=split_by)
    loader = make_loader(synthetic_dataset, "train", config)
    first, second = _epoch_keys(loader), _epoch_keys(loader)
    assert sorted(first) == sorted(second) == _train_keys(synthetic_dataset)
    assert first != second  # a new epoch reshuffles
    assert count_samples(synthetic_dataset, "train") == len(first)


def test_evaluation_mode_is_exact_and_repeatable(synthetic_dataset):
    loader = make_loader(synthetic_dataset, "train", LoaderConfig.for_evaluation(batch_size=5, num_workers=0))
    first = _epoch_keys(loader)
    assert first == _epoch_keys(loader)
    assert sorted(first) == _train_keys(synthetic_dataset)


def test_flip_is_the_same_for_the_three_members(synthetic_dataset):
    plain = make_loader(synthetic_dataset, "test", LoaderConfig.for_evaluation(batch_size=64, num_workers=0))
    flipped = make_loader(
        synthetic_dataset, "test", LoaderConfig.for_evaluation(batch_size=64, num_workers=0, hflip_prob=1.0)
    )
    a, b = next(iter(plain)), next(iter(flipped))
    assert a["key"] == b["key"]
    for name in ("masked", "unmasked", "mask"):
        assert torch.equal(a[name].flip(-1), b[name])
    assert not torch.equal(a["masked"], b["masked"])


def test_sources_globs_lists_and_errors(synthetic_dataset):
    from_folder = resolve_shards(synthetic_dataset, "train")
    assert resolve_shards(str(synthetic_dataset / "train" / "*.tar")) == from_folder
    assert resolve_shards([str(p) for p in from_folder]) == from_folder
    braces = str(synthetic_dataset / "train" / "train-{000000..000001}.tar")
    assert resolve_shards(braces) == from_folder[:2]
    with pytest.raises(FileNotFoundError, match="no shards"):
        resolve_shards(synthetic_dataset / "nothing-here" / "*.tar")
    with pytest.raises(ValueError, match="unknown split"):
        make_loader(synthetic_dataset, "dev")


_DDP_SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist
from m2u.datasets.loader import LoaderConfig, make_loader

rank, world, init_file, dataset_dir, out_dir = int(sys.argv[1]), 2, sys.argv[2], sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
try:
    loader = make_loader(dataset_dir, "train", LoaderConfig(batch_size=2, num_workers=2, shuffle_buffer=4))
    keys = [key for batch in loader for key in batch["key"]]
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(keys, f)
    dist.barrier()
finally:
    dist.destroy_process_group()
"""


def test_two_ranks_two_workers_every_training_sample_once(synthetic_dataset, tmp_path):
    # One fresh interpreter per rank, as torchrun starts them (mp.spawn children would also spawn, not fork,
    # their DataLoader workers: correct but many seconds slower).
    script = tmp_path / "ddp_epoch.py"
    script.write_text(_DDP_SCRIPT)
    ranks = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(rank),
                str(tmp_path / "init"),
                str(synthetic_dataset),
                str(tmp_path),
            ],
            cwd=tmp_path,
        )
        for rank in range(2)
    ]
    assert [process.wait(timeout=120) for process in ranks] == [0, 0]
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(per_rank)
    assert sorted(per_rank[0] + per_rank[1]) == _train_keys(synthetic_dataset)


@pytest.mark.parametrize("world", [1, 2])
def test_the_batches_do_not_depend_on_the_number_of_workers(synthetic_dataset, world):
    """Shuffled shards, a shuffle buffer and flips: 0, 1, 2 or 3 workers give the same batches in the same order
    on every rank (the trained weights depended on --workers: each worker shuffled its own share)."""
    epochs = {}
    for workers in (0, 1, 2, 3):
        for rank in range(world):
            config = LoaderConfig(
                batch_size=3, num_workers=workers, shuffle_buffer=7, seed=4, rank=rank, world_size=world
            )
            loader = make_loader(synthetic_dataset, "train", config)
            epochs[(workers, rank)] = [
                [(batch["key"], batch["masked"].sum().item()) for batch in loader] for _ in range(2)
            ]
    for rank in range(world):
        assert all(epochs[(w, rank)] == epochs[(0, rank)] for w in (1, 2, 3)), rank
        first, second = epochs[(0, rank)]
        assert first != second  # a new epoch reshuffles
    keys = [k for rank in range(world) for batch in epochs[(0, rank)][0] for k in batch[0]]
    assert sorted(keys) == _train_keys(synthetic_dataset)


@pytest.mark.parametrize(("world", "workers"), [(2, 0), (3, 2)])
def test_the_shard_split_gives_ranks_even_shares_reading_only_their_own_shards(
    synthetic_dataset, world, workers, monkeypatch
):
    """Shards of 4 samples: every N-th shard gave one rank 16 samples and the other 12 (DDP training left the
    longer rank's extra samples unseen each epoch). With the manifest's counts the ranks' shares differ by at
    most one, together every sample once, and a rank reads only the shards its run touches."""
    from m2u.datasets.loader import PairedShardDataset

    read: list[str] = []
    original = PairedShardDataset._read_shard

    def recording(self, url, report):
        read.append(url)
        return original(self, url, report)

    monkeypatch.setattr(PairedShardDataset, "_read_shard", recording)
    shards = resolve_shards(synthetic_dataset, "train")
    shares, reads = [], []
    for rank in range(world):
        read.clear()
        config = LoaderConfig(
            batch_size=1, num_workers=0, shuffle_buffer=3, split_by="shard", rank=rank, world_size=world
        )
        shares.append(_epoch_keys(make_loader(synthetic_dataset, "train", config)))
        reads.append(len(set(read)))
    assert sorted(key for share in shares for key in share) == _train_keys(synthetic_dataset)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1, [len(s) for s in shares]
    assert sum(reads) <= len(shards) + world - 1, reads  # only the cut shards are read twice
    # With DataLoader workers the ranks keep the same shares.
    if workers:
        for rank in range(world):
            config = LoaderConfig(
                batch_size=2,
                num_workers=workers,
                shuffle_buffer=3,
                split_by="shard",
                rank=rank,
                world_size=world,
            )
            assert sorted(_epoch_keys(make_loader(synthetic_dataset, "train", config))) == sorted(
                shares[rank]
            )


@pytest.mark.parametrize("device", ["gpu", "mps", *([] if torch.cuda.is_available() else ["cuda"])])
def test_a_loader_device_it_cannot_use_is_refused_with_its_config(device):
    """Found at the first batch, in torch's words (an assertion, a list of every device type torch knows)."""
    with pytest.raises(ValueError, match=f"device '{device}'"):
        LoaderConfig(device=device)

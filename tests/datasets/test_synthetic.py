from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from m2u.datasets.codecs import decode_image, decode_mask
from m2u.datasets.layout import MANIFEST_COLUMNS, SPLITS, read_manifest, split_shards
from m2u.datasets.synthetic import make_synthetic_sample, write_synthetic_dataset


def test_layout_manifest_and_stats(synthetic_dataset):
    manifest = read_manifest(synthetic_dataset)
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 40 and manifest["key"].is_unique
    assert set(manifest["status"]) == {"ok"}
    stats = json.loads((synthetic_dataset / "stats.json").read_text())
    for split in SPLITS:
        shards = split_shards(synthetic_dataset, split)
        assert shards, split
        in_manifest = manifest[manifest["split"] == split]
        assert stats["counts"]["samples"][split] == len(in_manifest)
        assert {f"{split}/{p.name}" for p in shards} == set(in_manifest["shard"])


def test_shards_read_by_plain_webdataset_with_pixel_identical_outside_mask(synthetic_dataset):
    shards = [str(p) for s in SPLITS for p in split_shards(synthetic_dataset, s)]
    dataset = wds.WebDataset(shards, shardshuffle=False, empty_check=False)
    keys = []
    for sample in dataset:
        keys.append(sample["__key__"])
        masked = decode_image(sample["masked.png"])
        unmasked = decode_image(sample["unmasked.png"])
        mask = decode_mask(sample["mask.png"])
        meta = json.loads(sample["json"])
        assert masked.shape == (32, 32, 3) and mask.shape == (32, 32)
        assert set(np.unique(mask)) <= {0, 255} and mask.any()
        outside = mask == 0
        assert np.array_equal(masked[outside], unmasked[outside])
        assert not np.array_equal(masked[~outside], unmasked[~outside])
        assert meta["key"] == sample["__key__"] and len(meta["landmarks"]) == 68
    assert sorted(keys) == sorted(read_manifest(synthetic_dataset)["key"])


def test_same_arguments_give_identical_bytes(tmp_path, dataset_snapshot):
    a = write_synthetic_dataset(tmp_path / "a", 12, size=24, seed=5, shard_size=3, image_format="webp")
    b = write_synthetic_dataset(tmp_path / "b", 12, size=24, seed=5, shard_size=3, image_format="webp")
    snapshot = dataset_snapshot(a.out_dir)
    assert snapshot == dataset_snapshot(b.out_dir) and len(snapshot) > 3
    assert {"manifest.parquet", "train.parquet", "val.parquet", "test.parquet"} <= set(snapshot)
    other = make_synthetic_sample(24, 1)
    assert not np.array_equal(other.unmasked, make_synthetic_sample(24, 2).unmasked)


def test_refuses_non_empty_folder_without_overwrite(tmp_path):
    write_synthetic_dataset(tmp_path, 3, size=16)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_synthetic_dataset(tmp_path, 3, size=16)
    info = write_synthetic_dataset(tmp_path, 5, size=16, overwrite=True)
    assert sum(info.counts.values()) == 5
    assert pq.read_table(tmp_path / "manifest.parquet").num_rows == 5
    (tmp_path / "train" / "mine.tar").write_text("a person's own file in a split folder")
    with pytest.raises(ValueError, match=r"mine\.tar was not written by m2u"):
        write_synthetic_dataset(tmp_path, 4, size=16, overwrite=True)
    assert pq.read_table(tmp_path / "manifest.parquet").num_rows == 5


@pytest.mark.parametrize(
    "bad, error",
    [
        (dict(size=15), ValueError),
        (dict(size=32.0), TypeError),
        (dict(n_samples=8.5), TypeError),
        (dict(quality=0, image_format="jpg"), ValueError),
        (dict(shard_size=0), ValueError),
    ],
)
def test_a_refused_call_makes_no_folder_that_a_corrected_retry_would_meet(tmp_path, bad, error):
    """A refused call left `train/` behind; the corrected call then refused the folder as not empty."""
    from m2u.datasets import write_synthetic_dataset

    with pytest.raises(error):
        write_synthetic_dataset(tmp_path / "ds", **{"n_samples": 4, "size": 32, **bad})
    assert not (tmp_path / "ds").exists()
    write_synthetic_dataset(tmp_path / "ds", 4, size=32)

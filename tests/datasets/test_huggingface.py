"""The shards open with HuggingFace `datasets` as documented in m2u.datasets.loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from m2u.datasets.layout import read_manifest

hf_datasets = pytest.importorskip("datasets")


def test_load_dataset_webdataset_reads_the_pairs(synthetic_dataset, tmp_path):
    train = hf_datasets.load_dataset(
        "webdataset",
        data_files={"train": str(synthetic_dataset / "train" / "*.tar")},
        split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    manifest = read_manifest(synthetic_dataset)
    expected = sorted(manifest.loc[manifest["split"] == "train", "key"])
    assert sorted(train["__key__"]) == expected
    example = train[0]
    masked, unmasked = np.asarray(example["masked.png"]), np.asarray(example["unmasked.png"])
    mask = np.asarray(example["mask.png"])
    assert masked.shape == unmasked.shape == (32, 32, 3)
    assert mask.shape == (32, 32)  # single channel survives
    assert np.array_equal(masked[mask == 0], unmasked[mask == 0])
    meta = example["json"] if isinstance(example["json"], dict) else json.loads(example["json"])
    assert meta["key"] == example["__key__"] and len(meta["landmarks"]) == 68

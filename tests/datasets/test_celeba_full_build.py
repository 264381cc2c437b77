"""The paper's dataset: all 12,000 CelebA photos through the real masking engine (slow: minutes on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import webdataset as wds

from m2u.datasets.build import BuildConfig, build_dataset
from m2u.datasets.layout import DEFAULT_SPLIT_FRACTIONS, SPLITS, read_manifest, split_shards
from m2u.datasets.loader import LoaderConfig, count_samples, make_loader

pytestmark = [pytest.mark.shared, pytest.mark.slow]


@pytest.fixture(scope="module")
def celeba_dataset(celeba_dir, tmp_path_factory):
    # M2U_CELEBA_DATASET: a folder already built with the default arguments (e.g. by
    # `benchmarks/make_dataset.py --full --keep DIR`): the build then only resumes, i.e. re-checks and merges.
    out = Path(os.environ.get("M2U_CELEBA_DATASET") or tmp_path_factory.mktemp("celeba") / "ds")
    result = build_dataset([celeba_dir], out, BuildConfig(workers=2, progress=False))
    return out, result.stats


def test_every_photo_in_the_manifest_and_splits_near_70_15_15(celeba_dataset, celeba_dir):
    out, stats = celeba_dataset
    manifest = read_manifest(out)
    photos = sorted(str(p) for p in celeba_dir.iterdir() if p.suffix.lower() == ".jpg")
    assert sorted(manifest["source"]) == photos and manifest["key"].is_unique
    for split, expected in zip(SPLITS, DEFAULT_SPLIT_FRACTIONS):
        assert abs((manifest["split"] == split).mean() - expected) <= 0.01
    assert manifest.groupby("source")["split"].nunique().max() == 1
    ok = manifest[manifest["status"] == "ok"]
    assert len(ok) >= 0.9 * len(manifest), stats["counts"]
    assert set(manifest["status"]) <= {"ok", "no_face", "refused", "error"}
    assert (manifest.loc[manifest["status"] != "ok", "reason"] != "").all()


def test_shards_readable_by_webdataset_and_the_loader(celeba_dataset):
    out, _ = celeba_dataset
    manifest = read_manifest(out)
    for split in SPLITS:
        shards = [str(p) for p in split_shards(out, split)]
        keys = [s["__key__"] for s in wds.WebDataset(shards, shardshuffle=False, empty_check=False)]
        expected = sorted(manifest.loc[(manifest["split"] == split) & (manifest["status"] == "ok"), "key"])
        assert sorted(keys) == expected and len(keys) == count_samples(out, split)
    loader = make_loader(out, "val", LoaderConfig.for_evaluation(batch_size=64, num_workers=2))
    seen = []
    for batch in loader:
        assert batch["masked"].shape[1:] == (3, 256, 256) and batch["mask"].shape[1:] == (1, 256, 256)
        seen.extend(batch["key"])
    assert sorted(seen) == sorted(
        manifest.loc[(manifest["split"] == "val") & (manifest["status"] == "ok"), "key"]
    )

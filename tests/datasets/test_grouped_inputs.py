"""A shard's inputs are read a group at a time and the group's faces found together (m2u.datasets.work.iter_inputs,
issue 28): the bytes do not depend on the grouping, and a detection failure stays with its photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m2u.datasets import work
from m2u.datasets.build import BuildConfig, build_dataset
from m2u.datasets.layout import read_manifest
from m2u.masking import FaceDetector

CONFIG = BuildConfig(size=64, shard_size=8, image_format="png", workers=1, progress=False)


@pytest.fixture(scope="module")
def faces(demo_faces):
    return demo_faces(12)


def test_the_bytes_do_not_depend_on_the_grouping(
    faces, tmp_path, monkeypatch, dataset_snapshot, detect_many_groups
):
    sizes = detect_many_groups
    build_dataset([faces], tmp_path / "grouped", CONFIG)
    assert max(sizes) > 1  # a shard's inputs were found together
    grouped = dataset_snapshot(tmp_path / "grouped")
    sizes.clear()
    monkeypatch.setattr(work, "GROUP_INPUTS", 1)
    build_dataset([faces], tmp_path / "single", CONFIG)
    assert set(sizes) == {1}
    assert dataset_snapshot(tmp_path / "single") == grouped


def test_a_group_breaks_at_the_pixel_budget(faces, tmp_path, monkeypatch, detect_many_groups):
    monkeypatch.setattr(work, "GROUP_PIXELS", 1)  # every decoded photo fills a group
    build_dataset([faces], tmp_path / "out", CONFIG)
    assert set(detect_many_groups) == {1}


def test_a_failed_detection_is_its_photos_row_alone(faces, tmp_path, monkeypatch):
    from m2u.core.imageio import read_image

    broken = sorted(faces.read_text().split())[3]
    poisoned = read_image(broken)
    detect_many = FaceDetector.detect_many

    def failing(self, images, *args, **kwargs):
        # The group holding the photo fails; each of its photos is then found on its own.
        if any(np.array_equal(image, poisoned) for image in images):
            raise RuntimeError("a bug of ours")
        return detect_many(self, images, *args, **kwargs)

    monkeypatch.setattr(FaceDetector, "detect_many", failing)
    out = tmp_path / "out"
    build_dataset([faces], out, CONFIG)
    manifest = read_manifest(out)
    failed = manifest[manifest["reason"].fillna("").str.startswith("detection failed")]
    assert [Path(s).name for s in failed["source"]] == [Path(broken).name]
    assert failed["reason"].iloc[0] == "detection failed: a bug of ours"
    assert (manifest["status"] == "ok").sum() == len(manifest) - 1

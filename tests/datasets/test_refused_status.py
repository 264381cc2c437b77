"""A face the masking engine refuses (fold-over...) is `refused` in the manifest and stats, not `error`."""

from __future__ import annotations

import shutil

from m2u.datasets import synthetic
from m2u.datasets.build import BuildConfig, build_dataset
from m2u.datasets.layout import Status, read_manifest
from m2u.masking.geometry import MaskingError


def test_masking_refusals_are_counted_as_refused(celeba_first, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in celeba_first(2):
        shutil.copy(path, photos / path.name)
    real = synthetic.synthetic_masker
    calls = []

    def refuse_first(
        image, face, seed, photo=None
    ):  # the build's masker signature (m2u.datasets.work.Masker)
        calls.append(seed)
        if len(calls) == 1:
            raise MaskingError("fold-over: 4 mesh triangles flipped")
        return real(image, face, seed, photo=photo)

    monkeypatch.setattr(synthetic, "synthetic_masker", refuse_first)
    config = BuildConfig(mask_engine="synthetic", workers=1, progress=False, size=64, shard_size=4)
    result = build_dataset([photos], tmp_path / "out", config)
    manifest = read_manifest(tmp_path / "out")
    assert sorted(manifest["status"]) == [Status.OK.value, Status.REFUSED.value]
    refused = manifest[manifest["status"] == "refused"].iloc[0]
    assert "fold-over" in refused["reason"] and refused["n_faces"] == 1
    assert result.stats["counts"]["by_status"] == {"ok": 1, "no_face": 0, "refused": 1, "error": 0}

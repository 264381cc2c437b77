"""A dataset is what its manifest says: a rerun verifies the shards it keeps and rebuilds missing or damaged ones;
the loader's exact mode (and so m2u-eval) refuses a split whose shards do not hold what the manifest says; skip mode
covers samples of another size. Long keys with variant suffixes and per-sample write failures are rows, not aborts."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from m2u.datasets.build import BuildConfig, build_dataset
from m2u.datasets.layout import MAX_KEY_LENGTH, SPLITS, read_manifest, split_shards, stats_path_of
from m2u.datasets.loader import LoaderConfig, ShardError, make_loader
from m2u.datasets.shards import file_digest
from m2u.datasets.synthetic import write_synthetic_dataset

from .conftest import synthetic_members

CONFIG = BuildConfig(
    mask_engine="synthetic", size=64, shard_size=2, image_format="png", workers=1, progress=False
)


def _faces(tmp_path: Path, count: int, names: list[str] | None = None) -> Path:
    from m2u.pipelines.demo_faces import write_demo_faces

    files = write_demo_faces(tmp_path / "faces", count=count)
    if names:
        files = [f.rename(f.with_name(name)) for f, name in zip(files, names, strict=False)] + files[
            len(names) :
        ]
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{f}\n" for f in files))
    return listing


@pytest.fixture(scope="module")
def built(tmp_path_factory, dataset_snapshot) -> tuple[Path, Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("truth")
    listing = _faces(root, 10)
    out = root / "reference"
    build_dataset([listing], out, CONFIG)
    return listing, out, dataset_snapshot(out)


def test_a_rerun_rebuilds_missing_and_damaged_shards(built, tmp_path, dataset_snapshot, capfd):
    listing, reference, snapshot = built
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    shards = split_shards(out, "train")
    assert len(shards) >= 3
    shards[0].unlink()  # deleted
    data = bytearray(shards[1].read_bytes())
    data[700] ^= 0xFF  # one byte flipped: same size, another checksum
    shards[1].write_bytes(bytes(data))
    shards[2].write_bytes(shards[2].read_bytes()[:1024])  # cut short
    # Its stats JSON damaged (the record the loader checks the shard against): rebuilt too, or the loader's
    # "rerun m2u-make-dataset" would find nothing to redo.
    other = next(shard for split in SPLITS if split != "train" for shard in split_shards(out, split))
    stats_path_of(other).write_text("{}")
    stats = build_dataset([listing], out, CONFIG).stats
    assert stats["shards_rebuilt_damaged"] == 4 and stats["shards_built"] == 4
    assert "rebuilding 4 shard(s) damaged or with changed inputs" in capfd.readouterr().err
    assert dataset_snapshot(out) == snapshot
    # an intact dataset is verified and kept as it is
    assert build_dataset([listing], out, CONFIG).stats["shards_built"] == 0


def test_a_rerun_rebuilds_the_shard_of_an_input_that_changed(tmp_path, capfd):
    listing, out = _faces(tmp_path, 4), tmp_path / "out"
    build_dataset([listing], out, CONFIG)
    photo = Path(listing.read_text().split()[0])
    good = photo.read_bytes()
    key = read_manifest(out).set_index("source").loc[str(photo), "key"]

    photo.write_bytes(good[:300])  # cut short after the build: its pair is stale now
    stats = build_dataset([listing], out, CONFIG).stats
    assert stats["shards_built"] == 1 and stats["shards_rebuilt_damaged"] == 1
    assert f"its input {photo} changed since the shard was built" in capfd.readouterr().err
    row = read_manifest(out).set_index("key").loc[key]
    assert row["status"] == "error" and row["source_sha256"] == hashlib.sha256(good[:300]).hexdigest()

    photo.write_bytes(good)  # repaired: built again
    assert build_dataset([listing], out, CONFIG).stats["shards_built"] == 1
    assert read_manifest(out).set_index("key").loc[key, "status"] == "ok"
    assert build_dataset([listing], out, CONFIG).stats["shards_built"] == 0  # unchanged: kept


def _loader_keys(dataset: Path, split: str = "train", **overrides) -> tuple[list[str], list[str]]:
    loader = make_loader(dataset, split, LoaderConfig.for_evaluation(**{"num_workers": 0, **overrides}))
    return [k for batch in loader for k in batch["key"]], loader.skipped


@pytest.fixture
def synthetic(tmp_path) -> Path:
    out = tmp_path / "ds"
    write_synthetic_dataset(out, 40, size=32, seed=0, shard_size=4)
    return out


def test_the_exact_mode_refuses_a_split_with_a_deleted_shard(synthetic):
    clean, _ = _loader_keys(synthetic)
    gone = split_shards(synthetic, "train")[1]
    gone.unlink()
    with pytest.raises(ShardError, match=f"{gone}.*listed in the manifest but missing"):
        _loader_keys(synthetic)
    # training's loader (no verification) meets it too: never a silently short epoch
    with pytest.raises(ShardError, match=str(gone)):
        list(make_loader(synthetic, "train", LoaderConfig(num_workers=0, batch_size=4)))
    with pytest.warns(RuntimeWarning, match="skipped"):
        keys, skipped = _loader_keys(synthetic, on_error="skip")
    assert len(skipped) == 1 and str(gone) in skipped[0]
    assert len(keys) == len(clean) - 4 and set(keys) < set(clean)


def test_the_exact_mode_refuses_a_shard_whose_bytes_changed(synthetic):
    shard = split_shards(synthetic, "val")[0]
    data = bytearray(shard.read_bytes())
    data[600] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="SHA-256 differs"):
        _loader_keys(synthetic, "val")


def _replace_sample_size(shard: Path, size: int) -> str:
    """Rewrite the shard with its second sample's images at another size; returns that sample's key."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    key = members[4][0].name.split(".", 1)[0]
    small = synthetic_members(size, 1)
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for member, data in members:
            field = member.name.split(".", 1)[1]
            if member.name.startswith(key + ".") and field in small:
                data = small[field]
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    # As a writer bug would leave it: the stats record matches the bytes (only the sample's size is wrong).
    stats_file = stats_path_of(shard)
    stats = json.loads(stats_file.read_text())
    stats["bytes"], stats["sha256"] = file_digest(shard)
    stats_file.write_text(json.dumps(stats))
    return key


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_mode_covers_a_sample_of_another_size(synthetic, workers):
    clean, _ = _loader_keys(synthetic)
    key = _replace_sample_size(split_shards(synthetic, "train")[0], 16)
    with pytest.raises(ShardError, match=rf"sample '{key}' is 16x16, the dataset's samples are 32x32"):
        _loader_keys(synthetic, verify=False)
    # (warnings raised in worker processes do not reach pytest.warns)
    with pytest.warns(RuntimeWarning, match="skipped") if workers == 0 else contextlib.nullcontext():
        keys, skipped = _loader_keys(synthetic, verify=False, on_error="skip", num_workers=workers)
    assert sorted(keys) == sorted(k for k in clean if k != key)
    assert len(skipped) == 1 and key in skipped[0]


def test_m2u_eval_refuses_a_split_with_a_deleted_shard(synthetic, tiny_models, tmp_path):
    mseg, generator = tiny_models
    split_shards(synthetic, "test")[0].unlink()
    m2u_eval = Path(sys.executable).with_name("m2u-eval")
    result = subprocess.run(
        [str(m2u_eval), "--data", str(synthetic), "--mseg", str(mseg), "--generator", str(generator)]
        + [
            "-o",
            str(tmp_path / "report"),
            "--no-lpips",
            "--no-fid",
            "--no-identity",
            "--skip-paper-size-cost",
        ]
        + ["--latency-repeats", "1", "--device", "cpu", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "listed in the manifest but missing" in result.stderr
    assert not (tmp_path / "report" / "metrics.json").exists()


def test_long_names_with_variant_suffixes_stay_within_the_key_limit(tmp_path):
    names = ["a" * 90 + "1.jpg", "a" * 90 + "2.jpg", "b" * 94 + ".jpg"]  # 94-character names
    listing = _faces(tmp_path, 4, names)
    out = tmp_path / "out"
    build_dataset([listing], out, BuildConfig(**{**CONFIG.__dict__, "variants": 2}))
    manifest = read_manifest(out)
    assert len(manifest) == 8 and manifest["key"].is_unique
    assert manifest["key"].str.len().max() <= MAX_KEY_LENGTH
    assert (manifest["status"] == "ok").all(), manifest[["key", "reason"]]
    assert all(sorted(v) == [0, 1] for v in manifest.groupby("source")["variant"].apply(list))


def test_a_sample_the_tar_refuses_becomes_its_row(tmp_path, monkeypatch):
    import m2u.datasets.shards as shards_module

    listing = _faces(tmp_path, 4)
    real_write = shards_module.ShardWriter.write
    refused = []

    def write(self, key, fields):
        if not refused:
            refused.append(key)
            raise ValueError(f"simulated refusal of {key}")
        return real_write(self, key, fields)

    monkeypatch.setattr(shards_module.ShardWriter, "write", write)
    out = tmp_path / "out"
    stats = build_dataset([listing], out, CONFIG).stats
    rows = read_manifest(out).set_index("key")
    assert rows.loc[refused[0], "status"] == "error" and "simulated refusal" in rows.loc[refused[0], "reason"]
    assert rows["shard"].isna()[refused[0]] and rows["shard"].drop(refused[0]).notna().all()
    assert stats["counts"]["by_status"] == {"ok": 3, "no_face": 0, "refused": 0, "error": 1}
    written = []
    for split in SPLITS:
        for path in split_shards(out, split):
            with tarfile.open(path) as tar:
                written += tar.getnames()
    assert not any(name.startswith(refused[0] + ".") for name in written)
    assert json.loads((out / "stats.json").read_text())["counts"]["by_status"]["ok"] == 3


def test_noise_inputs_are_unaffected(tmp_path):
    folder = tmp_path / "noise"
    folder.mkdir()
    cv2.imwrite(str(folder / "n.png"), np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    out = tmp_path / "out"
    build_dataset([folder], out, CONFIG)
    row = read_manifest(out).iloc[0]
    assert row["status"] == "no_face" and row["n_faces"] == 0 and row["width"] == 40

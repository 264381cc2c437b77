"""The loader meets damaged shards: by default a ShardError naming the shard (and sample); with
on_error="skip" the damage is left out, warned about and counted; never a silently short epoch."""

from __future__ import annotations

import contextlib
import io
import shutil
import tarfile
import warnings
from pathlib import Path

import pytest

from m2u.datasets.layout import split_shards
from m2u.datasets.loader import LoaderConfig, ShardError, make_loader
from m2u.datasets.synthetic import write_synthetic_dataset

SAMPLES_PER_SHARD = 4


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("loader-faults") / "ds"
    write_synthetic_dataset(out, 40, size=32, seed=0, shard_size=SAMPLES_PER_SHARD)
    return out


@pytest.fixture
def dataset(pristine, tmp_path) -> Path:
    copy = tmp_path / "ds"
    shutil.copytree(pristine, copy)
    return copy


def _keys(dataset: Path, workers: int = 0, **overrides) -> tuple[list[str], list[str]]:
    loader = make_loader(dataset, "train", LoaderConfig.for_evaluation(num_workers=workers, **overrides))
    keys = [key for batch in loader for key in batch["key"]]
    return keys, loader.skipped


def _member_offsets(data: bytes) -> list[tuple[str, int]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, m.offset) for m in tar.getmembers()]


def _damage(shard: Path, how: str) -> None:
    data = shard.read_bytes()
    members = _member_offsets(data)
    if how == "cut-between-samples":  # every remaining member reads fine: only the missing end marker tells
        shard.write_bytes(data[: members[4][1]])
    elif how == "cut-inside-a-member":
        shard.write_bytes(data[: members[5][1] + 700])
    elif how == "garbage-image":  # a valid tar whose second sample's image bytes are garbage
        name, offset = next((n, o) for n, o in members[4:] if ".masked." in n)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            size = tar.getmember(name).size
        start = offset + 512 + 16
        shard.write_bytes(data[:start] + b"\x5a" * (size - 32) + data[start + size - 32 :])
    elif how == "empty-file":
        shard.write_bytes(b"")
    else:
        raise AssertionError(how)


DAMAGES = ["cut-between-samples", "cut-inside-a-member", "garbage-image", "empty-file"]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_shard_is_an_error_naming_it(dataset, how):
    clean, _ = _keys(dataset)
    shard = split_shards(dataset, "train")[1]
    _damage(shard, how)
    with pytest.raises(ShardError, match=str(shard)):
        _keys(dataset)
    assert clean, "the undamaged dataset reads"


def test_a_damaged_shard_read_in_a_worker_is_said_in_its_own_words(dataset):
    """torch re-raises a worker's error with the worker's traceback in its message: the command printed that
    as the error's "one line"."""
    shard = split_shards(dataset, "train")[1]
    _damage(shard, "garbage-image")
    with pytest.raises(ShardError, match=str(shard)) as raised:
        _keys(dataset, workers=2, verify=False)
    assert "\n" not in str(raised.value) and "Traceback" not in str(raised.value)


def test_a_batch_wholly_skipped_as_damaged_keeps_the_other_batches_in_order(dataset):
    """A worker whose whole batch was damaged yielded nothing, so DataLoader's turns put every later batch out
    of order: the batches differed between 0 and 2 workers from there on."""
    shard = split_shards(dataset, "train")[1]
    _damage(shard, "garbage-image")
    epochs = {}
    for workers in (0, 2):
        config = LoaderConfig(batch_size=1, num_workers=workers, shuffle_buffer=6, on_error="skip")
        with pytest.warns(RuntimeWarning) if workers == 0 else contextlib.nullcontext():
            loader = make_loader(dataset, "train", config)
            epochs[workers] = ([b["key"] for b in loader], len(loader.skipped))
    assert epochs[0] == epochs[2] and epochs[0][1] == 1


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize(("workers", "split_by"), [(0, "auto"), (2, "shard"), (2, "sample")])
def test_skip_mode_leaves_out_and_counts_the_damage(pristine, dataset, how, workers, split_by):
    clean, skipped = _keys(pristine)
    assert skipped == []
    shard = split_shards(dataset, "train")[1]
    _damage(shard, how)
    # (warnings raised in worker processes do not reach pytest.warns; with split_by="sample" every worker reads
    # every shard, and the damage must still be counted once)
    with pytest.warns(RuntimeWarning, match="skipped") if workers == 0 else contextlib.nullcontext():
        # (verify=False: the damage is met while reading; verification would leave out the whole shard up front)
        keys, skipped = _keys(dataset, workers=workers, on_error="skip", split_by=split_by, verify=False)
    assert len(skipped) == 1 and str(shard) in skipped[0], skipped
    assert set(keys) < set(clean) and len(keys) == len(set(keys))
    lost = len(clean) - len(keys)
    if how == "garbage-image":
        assert lost == 1 and "sample" in skipped[0]  # just the one sample
    else:
        assert 1 <= lost <= SAMPLES_PER_SHARD  # the rest of that shard, nothing else


def test_a_shard_with_fewer_samples_than_the_manifest_is_not_a_short_epoch(dataset):
    """A well-formed tar that lost a sample (rewritten without it): only the manifest can tell."""
    shard = split_shards(dataset, "train")[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    first_key = members[0][0].name.split(".", 1)[0]
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for member, data in members:
            if not member.name.startswith(first_key + "."):
                tar.addfile(member, io.BytesIO(data))
    # Its size already disagrees with the stats record committed with it (checked by every loader of a folder).
    with pytest.raises(ShardError, match=r"holds 3 samples, the manifest lists 4|bytes, \d+ were committed"):
        _keys(dataset, verify=False)
    with pytest.raises(ShardError, match="does not hold what its manifest says") as refused:
        _keys(dataset)  # the exact mode refuses the split before reading it
    # m2u's commands have no skip option: the message says the skip is a Python setting, not a missed option
    assert "rerun m2u-make-dataset" in str(refused.value)
    assert "from Python, LoaderConfig(on_error='skip')" in str(refused.value)
    # a glob has no manifest to compare with: the well-formed shard is read as it is
    keys, _ = _keys_from_glob(dataset)
    assert first_key not in keys


def _keys_from_glob(dataset: Path) -> tuple[list[str], list[str]]:
    loader = make_loader(str(dataset / "train" / "*.tar"), None, LoaderConfig.for_evaluation(num_workers=0))
    return [k for batch in loader for k in batch["key"]], loader.skipped


def test_on_error_is_validated():
    with pytest.raises(ValueError, match="on_error"):
        LoaderConfig(on_error="ignore")


def _mixed_size_shards(folder: Path) -> str:
    """Two shards (no manifest) of samples at 32 and 16 px, so a worker or rank that starts later in the stream
    meets a 16 px sample first; the glob of them."""
    from m2u.datasets.shards import ShardWriter

    from .conftest import synthetic_members

    for name, sizes in {"a": (32, 32, 16, 16), "b": (16, 16, 32, 32)}.items():
        with ShardWriter(folder / f"shard-{name}.tar") as writer:
            for index, size in enumerate(sizes):
                writer.write(f"{name}{index}-{size}", synthetic_members(size, index))
    return str(folder / "*.tar")


def test_skip_mode_keeps_the_same_samples_of_mixed_sizes_for_any_worker_count_and_rank(tmp_path):
    """Each worker took the size of the first sample it decoded itself: with 2 workers the second kept the
    16 px samples and the first the 32 px ones (and a rank reading shard b alone kept its 16 px samples)."""
    shards = _mixed_size_shards(tmp_path)
    kept = {}
    for workers, split in ((0, "batch"), (1, "batch"), (2, "batch"), (2, "shard")):
        config = LoaderConfig.for_evaluation(
            batch_size=2, num_workers=workers, worker_split=split, on_error="skip"
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the skipped samples (counted below)
            loader = make_loader(shards, None, config)
            kept[workers, split] = (
                tuple(sorted(k for batch in loader for k in batch["key"])),
                len(loader.skipped),
            )
    # the first sample of the first shard decides: 32 px
    assert set(kept.values()) == {(("a0-32", "a1-32", "b2-32", "b3-32"), 4)}, kept
    by_rank = []
    for rank in (0, 1):
        config = LoaderConfig.for_evaluation(
            batch_size=2, num_workers=0, on_error="skip", split_by="shard", rank=rank, world_size=2
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            by_rank += [k for batch in make_loader(shards, None, config) for k in batch["key"]]
    assert sorted(by_rank) == ["a0-32", "a1-32", "b2-32", "b3-32"]

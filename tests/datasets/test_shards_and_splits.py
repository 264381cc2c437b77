from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from m2u.datasets.layout import shard_name, validate_key
from m2u.datasets.plan import InputItem, plan_samples
from m2u.datasets.shards import ShardWriter, remove_stray_temp_files, temp_path
from m2u.datasets.splits import assign_split, parse_fractions


def _write(path, samples):
    with ShardWriter(path) as writer:
        for key, fields in samples:
            writer.write(key, fields)
    return path.read_bytes()


def test_shard_writer_is_byte_deterministic_and_readable(tmp_path):
    samples = [("a-1", {"json": b"{}", "mask.png": b"xyz"}), ("b_2", {"json": b"[1]"})]
    first = _write(tmp_path / "one.tar", samples)
    second = _write(tmp_path / "two.tar", samples)
    assert first == second
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["a-1.json", "a-1.mask.png", "b_2.json"]
        assert {m.mtime for m in members} == {0} and {m.uid for m in members} == {0}
        assert tar.extractfile("b_2.json").read() == b"[1]"


def test_shard_writer_leaves_nothing_on_error(tmp_path):
    final = tmp_path / "train-000000.tar"
    with pytest.raises(RuntimeError), ShardWriter(final) as writer:
        writer.write("k", {"json": b"{}"})
        assert [p.name for p in tmp_path.iterdir()] == [writer._tmp.name] and not final.exists()
        raise RuntimeError("boom")
    assert not list(tmp_path.iterdir())


def test_temporary_names_are_unique_per_writer(tmp_path):
    final = tmp_path / "train-000000.tar"
    assert temp_path(final) != temp_path(final) and temp_path(final).name.startswith(final.name + ".")
    with ShardWriter(final) as one, ShardWriter(final) as two:  # two attempts at one shard at once
        one.write("a", {"json": b"1"})
        two.write("a", {"json": b"1"})
    assert final.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == [final.name]
    assert one.sha256 == two.sha256 and one.size == two.size == final.stat().st_size


def test_a_refused_sample_leaves_nothing_in_the_tar(tmp_path):
    with ShardWriter(tmp_path / "a.tar") as writer:
        writer.write("a", {"json": b"1"})
        with pytest.raises(ValueError, match="invalid field name"):
            writer.write("b", {"json": b"2", "Bad": b"3"})
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert tar.getnames() == ["a.json"]


def test_stray_temp_files_are_removed(tmp_path):
    (tmp_path / "train").mkdir()
    stray = tmp_path / "train" / "train-000001.tar.tmp"
    stray.write_bytes(b"partial")
    other = tmp_path / "train" / "train-000002.tar.123-0a1b2c3d.tmp"
    other.write_bytes(b"partial")
    kept = tmp_path / "train" / "train-000000.tar"
    kept.write_bytes(b"done")
    # only the named shards' temporary files (a partition's own), then all of them
    assert remove_stray_temp_files(tmp_path, {"train-000002.tar"}) == [other]
    assert remove_stray_temp_files(tmp_path) == [stray]
    assert kept.exists() and not stray.exists()


@pytest.mark.parametrize("key", ["a.b", "A", "x/y", "_meta", "", "k" * 81])
def test_bad_keys_are_refused(key, tmp_path):
    with pytest.raises(ValueError, match="invalid sample key"):
        validate_key(key)
    with pytest.raises(ValueError), ShardWriter(tmp_path / "s.tar") as writer:
        writer.write(key, {"json": b"{}"})


def test_shard_names():
    assert shard_name("val", 3) == "val-000003.tar"
    with pytest.raises(ValueError, match="unknown split"):
        shard_name("dev", 0)


def test_parse_fractions():
    assert parse_fractions("0.7,0.15,0.15") == (0.7, 0.15, 0.15)
    for bad in ("0.7,0.3", "0.5,0.5,0.5", "a,b,c", "-0.1,0.6,0.5"):
        with pytest.raises(ValueError):
            parse_fractions(bad)


def test_split_is_hash_based_and_close_to_fractions():
    keys = [f"img-{i}" for i in range(20000)]
    splits = [assign_split(k, seed=0) for k in keys]
    for name, expected in zip(("train", "val", "test"), (0.7, 0.15, 0.15)):
        assert abs(splits.count(name) / len(keys) - expected) < 0.015
    # another seed moves samples between splits
    assert splits != [assign_split(k, seed=1) for k in keys]


def test_plan_does_not_depend_on_order_or_on_other_files():
    items = [InputItem(f"f{i:03d}", f"/d/f{i:03d}.jpg", f"id{i % 7}") for i in range(60)]
    full = {s.key: s.split for s in plan_samples(items, seed=3)}
    reversed_subset = {s.key: s.split for s in plan_samples(items[::-2], seed=3)}
    assert all(full[k] == split for k, split in reversed_subset.items())
    by_identity = plan_samples(items, seed=3, split_by="identity", variants=2, shard_size=5)
    per_identity = {}
    for s in by_identity:
        per_identity.setdefault(s.identity, set()).add(s.split)
    assert all(len(v) == 1 for v in per_identity.values())
    assert len(by_identity) == 120 and len({s.key for s in by_identity}) == 120
    assert (
        max(sum(1 for s in by_identity if s.shard_id == sid) for sid in {s.shard_id for s in by_identity})
        == 5
    )
    digest = hashlib.sha256(repr(by_identity).encode()).hexdigest()
    assert (
        digest
        == hashlib.sha256(
            repr(plan_samples(items[::-1], seed=3, split_by="identity", variants=2, shard_size=5)).encode()
        ).hexdigest()
    )


def test_plan_refuses_key_collisions_and_missing_identities():
    with pytest.raises(ValueError, match="same sample key"):
        plan_samples([InputItem("a", "/x/a.jpg"), InputItem("a", "/y/a.jpg")])
    with pytest.raises(ValueError, match="no identity"):
        plan_samples([InputItem("a", "/x/a.jpg", "")], split_by="identity")

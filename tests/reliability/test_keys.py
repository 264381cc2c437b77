"""Sample keys derived from hostile file names: never path-like, never colliding, always read back intact."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import webdataset as wds

from m2u.datasets.layout import KEY_PATTERN, MAX_KEY_LENGTH, validate_key
from m2u.datasets.shards import ShardWriter
from m2u.datasets.sources import discover_inputs, make_key
from m2u.datasets.synthetic import make_synthetic_sample
from m2u.datasets.writer import sample_members

HOSTILE = [
    "../../etc/passwd.jpg",
    "a/../b.jpg",
    "/absolute/path.jpg",
    "C:\\windows\\photo.jpg",
    "__key__.jpg",
    "__url__.png",
    ".hidden.jpg",
    "...jpg",
    "..",
    "-",
    "--help.jpg",
    "-rf .png",
    "a.b.c.d.jpg",
    "photo.tar.jpg",
    "UPPER.JPG",
    "with space.jpg",
    "tab\tand\nnewline.jpg",
    "写真.jpg",
    "ünïcødé.png",
    "emoji 😀.png",
    "%2e%2e%2fescape.jpg",
    "x" * 500 + ".jpg",
    "nested/" * 30 + "deep.jpg",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_every_name_gives_a_plain_key(name):
    key = make_key(name)
    assert KEY_PATTERN.match(key) and len(key) <= MAX_KEY_LENGTH, key
    assert validate_key(key) == key
    assert "." not in key and "/" not in key and not key.startswith("_")


def _folder(tmp_path, names):
    folder = tmp_path / "in"
    for number, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # distinct photos: the same bytes under two names would share a split (test_the_same_photo_...)
        pixels = np.random.default_rng(number).integers(0, 256, (4, 4, 3), dtype=np.uint8)
        cv2.imwrite(str(path.with_suffix(".png")), pixels)
        path.with_suffix(".png").rename(path)
    return folder


COLLIDING = [
    "a b.jpg",
    "a-b.jpg",
    "a_b.jpg",
    "A-B.jpg",  # differs only in case
    "sub/x.jpg",
    "sub__x.jpg",  # a sub-folder and a file name that flatten alike
    "写真.jpg",
    "名字.jpg",
    "😀.jpg",  # names the sanitising empties
    "photo.jpg",
    "photo.png",  # same stem, different format
    "x" * 200 + "1.jpg",
    "x" * 200 + "2.jpg",  # cut to the same length-limited prefix
]


def test_colliding_names_keep_distinct_keys(tmp_path):
    folder = _folder(tmp_path, COLLIDING)
    items = discover_inputs([folder])
    keys = [item.base_key for item in items]
    assert len(items) == len(COLLIDING)
    assert len(set(keys)) == len(keys), keys
    assert all(KEY_PATTERN.match(k) and len(k) <= MAX_KEY_LENGTH for k in keys)
    # deterministic, and unaffected by how the inputs were given
    again = discover_inputs([str(folder / "*"), str(folder / "**" / "*.jpg")])
    assert {i.source: i.base_key for i in again} == {i.source: i.base_key for i in items}
    # a name without a collision keeps its plain key
    assert "a_b" in keys


def test_a_colliding_file_added_changes_only_the_recorded_key(tmp_path):
    """Splits and seeds come from the key a file's own name gives: adding "-x.jpg" (or "x.png") beside "x.jpg"
    appends a hash to x's recorded key but moves neither its split nor its seed (so not its mask either)."""
    from m2u.datasets.plan import plan_samples

    alone = _folder(tmp_path / "alone", ["x.jpg", "other.jpg"])
    crowded = _folder(tmp_path / "crowded", ["x.jpg", "other.jpg", "-x.jpg", "x.png"])

    def planned(folder):
        samples = plan_samples(discover_inputs([folder]), seed=3, fractions=(0.34, 0.33, 0.33), variants=2)
        return {(Path(s.source).name, s.variant): s for s in samples}

    before, after = planned(alone), planned(crowded)
    for variant in (0, 1):
        x_before, x_after = before[("x.jpg", variant)], after[("x.jpg", variant)]
        assert x_before.key != x_after.key  # the collision is told apart in the recorded key
        assert (x_before.split, x_before.seed) == (x_after.split, x_after.seed)
    assert len({s.key for s in after.values()}) == len(after)


def test_hostile_keys_read_back_intact_through_webdataset(tmp_path):
    """Keys from hostile names in a real shard: webdataset groups the members back into the same samples."""
    keys = sorted({make_key(name) for name in HOSTILE})
    shard = tmp_path / "train-000000.tar"
    sample = make_synthetic_sample(16, seed=0)
    members = sample_members(
        masked=sample.masked,
        unmasked=sample.unmasked,
        mask=sample.mask,
        meta={"k": 1},
        image_format="png",
        quality=95,
    )
    with ShardWriter(shard) as writer:
        for key in keys:
            writer.write(key, members)
    read = list(wds.WebDataset(str(shard), shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in read] == keys
    assert all(set(s) - {"__key__", "__url__", "__local_path__"} == set(members) for s in read)


@pytest.mark.parametrize("variants", [2, 3, 12, 150])
def test_variant_keys_stay_within_the_limit_and_distinct(variants):
    from m2u.datasets.plan import InputItem, plan_samples

    names = ["x" * 94 + ".jpg", "x" * 93 + "y.jpg", "y" * 78 + ".jpg", "short.jpg", *HOSTILE]
    keys = sorted({make_key(name) for name in names})
    plan = plan_samples([InputItem(key, f"/in/{key}") for key in keys], variants=variants)
    planned = [s.key for s in plan]
    assert len(planned) == len(set(planned)) == len(keys) * variants
    for key in planned:
        assert validate_key(key) and len(key) <= MAX_KEY_LENGTH


def test_a_long_name_with_variants_builds(tmp_path):
    """A 94-character file name with --variants 2 used to abort the whole build at planning."""
    from click.testing import CliRunner

    from m2u.datasets.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a" * 94 + ".png", "b.png"):
        cv2.imwrite(str(folder / name), np.full((40, 40, 3), 99, np.uint8))
    out = tmp_path / "ds"
    args = [str(folder), "-o", str(out), "--mask-engine", "synthetic", "--size", "64", "--variants", "2"]
    result = CliRunner().invoke(main, [*args, "--quiet", "--workers", "1"])
    assert result.exit_code == 1 and "no pair was written" in result.output, (
        result.output
    )  # no faces: rows only
    from m2u.datasets.layout import read_manifest

    rows = read_manifest(out / "manifest.parquet")
    assert len(rows) == 4 and rows["key"].str.len().max() <= MAX_KEY_LENGTH


def test_names_outside_ascii_get_their_own_split_and_mask_seed(tmp_path):
    """Names of only non-ASCII letters all key as "x" (and `josé`/`josè` alike): their split and seed are drawn
    with a hash of the name too, so a folder of Cyrillic or Chinese names is split 70/15/15 with a mask each,
    not all put in one split with one mask; ASCII names keep the split and seed they had."""
    from collections import Counter

    from m2u.datasets.plan import plan_samples

    names = [f"фото_{chr(0x430 + k)}.jpg" for k in range(24)] + [
        "日本語.jpg",
        "中文.jpg",
        "josé.jpg",
        "josè.jpg",
    ]
    folder = _folder(tmp_path / "unicode", names)
    samples = plan_samples(discover_inputs([folder]), seed=0, fractions=(0.7, 0.15, 0.15), variants=1)
    assert len(samples) == len(names)
    assert len({s.key for s in samples}) == len(samples)
    assert len({s.seed for s in samples}) == len(samples)  # one seed (so one mask draw) each
    splits = Counter(s.split for s in samples)
    assert splits["train"] >= 12 and len(splits) >= 2, splits
    # ASCII names: the split key is the plain key, as before
    ascii_items = discover_inputs([_folder(tmp_path / "ascii", ["a b.jpg", "10009_082483.jpg"])])
    assert sorted(i.name_key for i in ascii_items) == ["10009_082483", "a-b"]


def test_a_name_spelled_in_nfd_splits_as_in_nfc():
    """macOS spells `é` as e + a combining accent, Linux as one letter: one photo, one split and seed."""
    import unicodedata

    from m2u.datasets.sources import split_key

    name = "josé/photo.jpg"
    assert split_key(unicodedata.normalize("NFD", name)) == split_key(unicodedata.normalize("NFC", name))
    assert split_key("josé.jpg") != split_key("josè.jpg")


def test_the_same_photo_under_two_names_goes_to_one_split(tmp_path):
    """A photo copied under another name would otherwise sit in train and in test (its name draws the split):
    every copy joins the split of the first by source path, each keeping its own seed; files that only share a
    size stay apart."""
    from m2u.datasets.plan import plan_samples

    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(40):
        photo = bytes([k]) * 64
        (folder / f"a{k:02d}.jpg").write_bytes(photo)
        (folder / f"copy_{k:02d}.jpg").write_bytes(photo)
        (folder / f"other_{k:02d}.jpg").write_bytes(bytes([k]) * 63 + b"\xff")  # same size, other bytes
    items = discover_inputs([folder])
    samples = {Path(s.source).name: s for s in plan_samples(items, seed=0, fractions=(0.5, 0.25, 0.25))}
    assert len(samples) == 120
    for k in range(40):
        original, copy = samples[f"a{k:02d}.jpg"], samples[f"copy_{k:02d}.jpg"]
        assert copy.split == original.split and copy.seed != original.seed
    # the copies would have been split by their own names: some would have left their original's split
    plain = [i for i in items if not i.same_as]
    assert len(plain) == 80
    apart = plan_samples(
        [dataclasses.replace(i, same_as="") for i in items], seed=0, fractions=(0.5, 0.25, 0.25)
    )
    moved = {Path(s.source).name: s.split for s in apart}
    assert any(moved[f"copy_{k:02d}.jpg"] != samples[f"a{k:02d}.jpg"].split for k in range(40))
    assert all(moved[f"other_{k:02d}.jpg"] == samples[f"other_{k:02d}.jpg"].split for k in range(40))


def test_a_copy_goes_with_its_original_under_an_identity_split_too(tmp_path):
    """An identity list that gives a photo's byte-copy another identity would put the same photo in two splits:
    the copy follows its original's identity group (its recorded identity stays the list's)."""
    from m2u.datasets.plan import plan_samples

    folder = tmp_path / "in"
    folder.mkdir()
    lines = []
    for k in range(30):
        (folder / f"p{k:02d}.jpg").write_bytes(bytes([k]) * 32)
        (folder / f"q{k:02d}.jpg").write_bytes(bytes([k]) * 32)  # the same photo, given identity 100 + k
        lines += [f"p{k:02d}.jpg {k}", f"q{k:02d}.jpg {100 + k}"]
    (tmp_path / "ids.txt").write_text("\n".join(lines) + "\n")
    items = discover_inputs([folder], identity_file=tmp_path / "ids.txt")
    samples = {
        Path(s.source).name: s
        for s in plan_samples(items, seed=0, fractions=(0.5, 0.25, 0.25), split_by="identity")
    }
    for k in range(30):
        original, copy = samples[f"p{k:02d}.jpg"], samples[f"q{k:02d}.jpg"]
        assert copy.split == original.split and copy.identity == str(100 + k)


def test_identities_that_share_a_photo_go_to_one_split_whole(tmp_path):
    """Identity 99 holds its own photos and a byte-copy of a photo of identity k: a copy that only followed its
    original's split left identity 99 in two splits. Identities joined by a shared photo are one group now, so no
    identity and no photo is in two splits."""
    from m2u.datasets.plan import plan_samples

    folder = tmp_path / "in"
    folder.mkdir()
    lines = []
    for k in range(12):
        for j in range(3):
            (folder / f"p{k:02d}_{j}.jpg").write_bytes(bytes([k, j]) * 32)
            lines.append(f"p{k:02d}_{j}.jpg {k}")
        (folder / f"z{k:02d}.jpg").write_bytes(bytes([k, 0]) * 32)  # a copy of p{k}_0, listed as identity 99
        lines.append(f"z{k:02d}.jpg 99")
        (folder / f"own{k:02d}.jpg").write_bytes(bytes([200, k]) * 32)  # identity 99's own photos
        lines.append(f"own{k:02d}.jpg 99")
    (tmp_path / "ids.txt").write_text("\n".join(lines) + "\n")
    items = discover_inputs([folder], identity_file=tmp_path / "ids.txt")
    samples = plan_samples(items, seed=0, fractions=(0.5, 0.25, 0.25), split_by="identity")
    splits_of: dict[str, set[str]] = {}
    for sample in samples:
        splits_of.setdefault(sample.identity, set()).add(sample.split)
    assert all(len(splits) == 1 for splits in splits_of.values()), splits_of
    assert len({split for splits in splits_of.values() for split in splits}) == 1  # all joined through 99


def test_an_identity_file_finds_a_name_spelled_the_other_unicode_way(tmp_path):
    """A macOS file name (e + a combining accent) is found in an identity file written on Linux (one letter)."""
    import unicodedata

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / unicodedata.normalize("NFD", "josé.jpg")).write_bytes(b"a" * 10)
    (tmp_path / "ids.txt").write_text(unicodedata.normalize("NFC", "josé.jpg 200\n"))
    (item,) = discover_inputs([folder], identity_file=tmp_path / "ids.txt")
    assert item.identity == "200"

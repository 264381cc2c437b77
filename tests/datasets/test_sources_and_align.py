from __future__ import annotations

import unicodedata
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from m2u.datasets.align import ALIGN_TEMPLATE, align_face, anchor_points, paste_face, transform_points
from m2u.datasets.sources import discover_inputs, identity_pattern_regex, make_key
from m2u.datasets.synthetic import make_synthetic_sample


def _touch_images(folder, names):
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))


def test_keys_are_webdataset_safe():
    assert make_key("10009_082483.jpg") == "10009_082483"
    assert make_key("Person A/img.01.PNG") == "person-a__img-01"
    long = make_key("x" * 300 + ".jpg")
    assert len(long) <= 80 and long != make_key("x" * 301 + ".jpg")
    for name in ("José/foto.jpg", "é" * 100 + "x" * 200 + ".jpg"):  # short, and long enough for the digest
        assert make_key(unicodedata.normalize("NFD", name)) == make_key(unicodedata.normalize("NFC", name))


def test_identity_pattern():
    regex = identity_pattern_regex("{identity}_{id}.jpg")
    assert regex.fullmatch("10009_082483.jpg").group("identity") == "10009"
    assert regex.fullmatch("nounderscore.jpg") is None
    with pytest.raises(ValueError, match="identity"):
        identity_pattern_regex("{id}.jpg")


def test_folders_globs_and_lists(tmp_path):
    _touch_images(tmp_path / "a", ["p1_1.jpg", "p1_2.png", "sub/p2_1.jpg", ".hidden/x.jpg"])
    (tmp_path / "a" / "readme.txt").write_text("x")
    items = discover_inputs([tmp_path / "a"], identity_pattern="{identity}_{n}.{ext}")
    assert [i.base_key for i in items] == ["p1_1", "p1_2", "sub__p2_1"]
    assert [i.identity for i in items] == ["p1", "p1", "p2"]
    # a glob and the same folder again: deduplicated
    both = discover_inputs([str(tmp_path / "a" / "*.jpg"), tmp_path / "a"])
    assert len(both) == 3
    assert [i.base_key for i in discover_inputs([tmp_path / "a"], limit=2)] == ["p1_1", "p1_2"]

    (tmp_path / "ids.txt").write_text("p1_1.jpg 7\np1_2.png 7\n")
    by_file = discover_inputs([tmp_path / "a"], identity_file=tmp_path / "ids.txt")
    assert [i.identity for i in by_file] == ["7", "7", ""]
    # One file given two identities cannot be told right (the wrong one can put a person in two splits).
    (tmp_path / "ids.txt").write_text("p1_1.jpg 7\np1_2.png 7\np1_1.jpg 7\np1_1.jpg 9\n")
    with pytest.raises(ValueError, match=r"ids.txt:4: p1_1.jpg has identity 9, but 7 on line 1"):
        discover_inputs([tmp_path / "a"], identity_file=tmp_path / "ids.txt")
    # The identity is the last field: a file name may hold spaces.
    _touch_images(tmp_path / "sp", ["with space.jpg", "plain.jpg"])
    (tmp_path / "ids2.txt").write_text("with space.jpg 7\nplain.jpg 8\n")
    spaced = discover_inputs([tmp_path / "sp"], identity_file=tmp_path / "ids2.txt")
    assert sorted((Path(i.source).name, i.identity) for i in spaced) == [
        ("plain.jpg", "8"),
        ("with space.jpg", "7"),
    ]

    (tmp_path / "list.csv").write_text("path,identity\na/p1_1.jpg,x\na/missing.jpg,y\n")
    listed = discover_inputs([tmp_path / "list.csv"])
    assert [(i.base_key, i.identity) for i in listed] == [("a__missing", "y"), ("a__p1_1", "x")]
    pq.write_table(pa.table({"file": [str(tmp_path / "a" / "sub" / "p2_1.jpg")]}), tmp_path / "list.parquet")
    assert [i.base_key for i in discover_inputs([tmp_path / "list.parquet"])] == ["a__sub__p2_1"]
    (tmp_path / "plain.txt").write_text("# comment\na/p1_2.png\n")
    assert [i.base_key for i in discover_inputs([tmp_path / "plain.txt"])] == ["a__p1_2"]


def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_inputs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files found in the inputs"):
        discover_inputs([tmp_path / "empty"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="holds no images"):
        discover_inputs([tmp_path / "full", tmp_path / "empty"])
    # a list file naming only photos an earlier input gave is no empty input: each photo is read once
    (tmp_path / "again.txt").write_text("full/a.png\n")
    assert len(discover_inputs([tmp_path / "full", tmp_path / "again.txt"])) == 1
    (tmp_path / "bad.csv").write_text("name,other\nx,y\n")
    with pytest.raises(ValueError, match="no path column"):
        discover_inputs([tmp_path / "bad.csv"])


def test_alignment_maps_the_anchors_onto_the_template():
    sample = make_synthetic_sample(96, seed=3)
    angle, scale, shift = np.deg2rad(20), 1.7, np.array([31.0, -12.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = sample.landmarks.astype(np.float64) @ rotation.T + shift + 80
    canvas = cv2.warpAffine(sample.unmasked, np.hstack([rotation, (shift + 80)[:, None]]), (320, 320))
    aligned = align_face(canvas, moved, 128)
    assert aligned.image.shape == (128, 128, 3) and aligned.matrix.shape == (2, 3)
    # a pure similarity: the template points are hit (up to the face's own proportions) ...
    assert np.abs(anchor_points(aligned.landmarks) - ALIGN_TEMPLATE * 128).max() < 12
    # ... and the same transform applied twice gives the same pixels for both members of a pair
    again = align_face(canvas, moved, 128)
    assert np.array_equal(aligned.image, again.image)
    assert np.allclose(transform_points(aligned.matrix, moved), aligned.landmarks, atol=1e-3)
    # pasting the crop back restores the original where the crop came from
    restored = paste_face(canvas, aligned.image, aligned.matrix)
    region = (
        cv2.warpAffine(np.ones((128, 128), np.uint8), cv2.invertAffineTransform(aligned.matrix), (320, 320))
        > 0
    )
    inner = cv2.erode(region.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert np.abs(restored.astype(int) - canvas.astype(int))[inner].mean() < 6
    assert np.array_equal(restored[~region], canvas[~region])
    with pytest.raises(ValueError, match="68"):
        align_face(canvas, moved[:10], 128)

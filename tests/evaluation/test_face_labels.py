"""By-eye labels of the faces a run left (m2u.evaluation.face_labels): reading them, and a run's faces against them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from m2u.evaluation.face_labels import FaceLabel, FaceLabelError, check_left_faces, read_face_labels

REPO = Path(__file__).resolve().parents[2]


def _row(photo: str, box: list[float], restored: bool) -> dict:
    return {"photo": f"/somewhere/{photo}", "box": box, "restored": restored}


def test_a_masked_face_left_is_skipped_and_one_restored_through_another_box_is_not():
    labels = [
        FaceLabel("a.jpg", (10, 10, 50, 50), "masked", "black mask"),
        FaceLabel("b.jpg", (0, 0, 20, 20), "masked"),  # an eye box; the whole face is restored below
        FaceLabel("c.jpg", (5, 5, 40, 40), "masked"),  # not reported at all by this run
        FaceLabel("a.jpg", (100, 100, 140, 140), "bare"),
    ]
    rows = [
        _row("a.jpg", [12, 11, 51, 49], False),  # the masked face, its box moved a few pixels: matched
        _row("a.jpg", [101, 100, 140, 141], False),
        _row("b.jpg", [0, 0, 20, 20], False),
        _row("b.jpg", [0, 0, 60, 60], True),
        _row("d.jpg", [0, 0, 30, 30], False),  # nobody labelled this one
    ]
    result = check_left_faces(rows, labels)
    assert result["masked_faces_skipped"] == 1
    assert result["skipped"] == ["a.jpg [10, 10, 50, 50]: black mask"]
    assert result["masked_faces_restored"] == 1 and result["restored_since_labelled"][0].startswith("b.jpg")
    assert result["masked_faces_not_found"] == 1 and result["not_found"][0].startswith("c.jpg")
    assert result["left_by_label"]["bare"] == 1 and result["left_by_label"]["masked"] == 2
    assert result["unlabelled_left_faces"] == ["d.jpg [0, 0, 30, 30]"]
    assert result["boxes_left"] == 4


def test_a_neighbouring_face_is_not_matched_to_a_label():
    labels = [FaceLabel("a.jpg", (0, 0, 40, 40), "masked")]
    # The neighbour overlaps the labelled box by a quarter of its width: IoU about 0.14, under MATCH_IOU.
    result = check_left_faces([_row("a.jpg", [30, 0, 70, 40], False)], labels)
    assert result["left_unlabelled"] == 1
    assert result["masked_faces_skipped"] == 0 and result["masked_faces_not_found"] == 1


def test_two_boxes_left_on_one_labelled_face_count_once():
    """Boxes and labels pair one to one: a second box on a labelled face is unlabelled, not a second masked face."""
    labels = [FaceLabel("a.jpg", (0, 0, 40, 40), "masked")]
    rows = [_row("a.jpg", [0, 0, 40, 40], False), _row("a.jpg", [2, 2, 42, 42], False)]
    result = check_left_faces(rows, labels)
    assert result["left_by_label"]["masked"] == 1 and result["left_unlabelled"] == 1
    assert result["unlabelled_left_faces"] == ["a.jpg [2, 2, 42, 42]"]
    assert result["masked_faces_skipped"] == 1


def test_a_small_restored_neighbour_inside_a_large_labelled_face_restores_nothing():
    labels = [FaceLabel("a.jpg", (0, 0, 100, 100), "masked")]
    rows = [_row("a.jpg", [0, 0, 100, 100], False), _row("a.jpg", [80, 80, 95, 95], True)]
    assert check_left_faces(rows, labels)["masked_faces_skipped"] == 1


def test_labels_are_matched_by_file_name_and_m2u_unmask_rows_are_read_too():
    labels = [FaceLabel("x.png", (0, 0, 10, 10), "no face")]
    rows = [{"input": "photos/x.png", "box": [0, 0, 10, 10], "restored": False}]
    assert check_left_faces(rows, labels)["left_by_label"]["no face"] == 1


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"photo": "a.jpg", "box": [0, 0, 10, 10], "label": "masks"}, "label 'masks' is not one of"),
        ({"photo": "a.jpg", "box": [10, 0, 0, 10], "label": "bare"}, "is not [left, top, right, bottom]"),
        ({"photo": "a.jpg", "box": [0, 0, 10], "label": "bare"}, "is not [left, top, right, bottom]"),
        ({"photo": "a.jpg", "label": "bare"}, 'needs "photo", "box" and "label"'),
        ({"photo": "a.jpg", "box": "0159", "label": "bare"}, "is not [left, top, right, bottom]"),
        (
            {"photo": "a.jpg", "box": [0, 0, float("inf"), 10], "label": "bare"},
            "is not [left, top, right, bottom]",
        ),
        ({"photo": "photos/a.jpg", "box": [0, 0, 10, 10], "label": "bare"}, "is not a file name"),
    ],
)
def test_a_malformed_entry_is_refused_in_one_line_naming_it(tmp_path, entry, words):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"faces": [entry]}))
    with pytest.raises(FaceLabelError) as refused:
        read_face_labels(path)
    assert words in str(refused.value) and str(path) in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("text", ["[1, 2]", '{"faces": null}', '{"faces": 3}', "{"])
def test_a_file_that_is_no_labels_file_is_refused(tmp_path, text):
    path = tmp_path / "labels.json"
    path.write_text(text)
    with pytest.raises(FaceLabelError, match="not a face labels file"):
        read_face_labels(path)


def test_a_box_labelled_twice_is_refused(tmp_path):
    entry = {"photo": "a.jpg", "box": [0, 0, 10, 10], "label": "bare"}
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"faces": [entry, {**entry, "label": "masked"}]}))
    with pytest.raises(FaceLabelError, match="entry 1: a.jpg .* is labelled twice"):
        read_face_labels(path)


def test_the_committed_real_masked_labels_read_and_say_what_each_masked_face_shows():
    labels = read_face_labels(REPO / "benchmarks" / "labels" / "real_masked_left_faces.json")
    masked = [label for label in labels if label.label == "masked"]
    assert masked and all(label.note for label in masked)

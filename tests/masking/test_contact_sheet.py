"""The contact sheet (m2u-mask --contact-sheet): which face it shows, and that it says so when the face is one only
the low-threshold retry found (a false positive as often as not)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from m2u.masking import Face
from m2u.masking.sheet import SHEET_VARIANTS, face_caution, render_contact_sheet, sheet_face

TILE, COLUMNS = 256, 5
ROWS = -(-len(SHEET_VARIANTS) // COLUMNS)
AMBER = np.array((255, 191, 0))


def _face(landmarks, score: float = 1.2, retry: bool = False, problem: str = "") -> Face:
    box = Face.from_landmarks(landmarks).box
    return Face(box, np.asarray(landmarks, np.float32), score, "hog", retry, problem)


def test_a_confident_face_gets_the_plain_sheet(synthetic_landmarks, skin_image):
    face = _face(synthetic_landmarks())
    assert face_caution(face) == ""
    sheet = render_contact_sheet(skin_image, face)
    assert sheet.shape == (ROWS * TILE, COLUMNS * TILE, 3)


def test_a_retry_face_gets_a_banner_saying_so(synthetic_landmarks, skin_image):
    landmarks = synthetic_landmarks()
    plain = render_contact_sheet(skin_image, _face(landmarks))
    retry = _face(landmarks, score=-0.31, retry=True)
    assert "low-threshold retry (score -0.310)" in face_caution(retry)
    sheet = render_contact_sheet(skin_image, retry)
    banner = sheet.shape[0] - ROWS * TILE
    assert banner > 0 and sheet.shape[1] == COLUMNS * TILE
    strip = sheet[:banner]
    assert np.all(strip == AMBER, axis=-1).mean() > 0.5 and (strip.sum(-1) < 100).any()  # amber, black text
    assert np.array_equal(sheet[banner:], plain)  # the tiles themselves are the same


def test_the_sheet_shows_a_usable_face_before_a_refused_one(synthetic_landmarks):
    small = _face(synthetic_landmarks(eye_distance=30.0))
    upside_down = _face(synthetic_landmarks(eye_distance=60.0), problem="the face looks upside down")
    assert sheet_face([upside_down, small]) is small
    assert sheet_face([upside_down]) is upside_down  # its tiles then say why
    assert sheet_face([]) is None


@pytest.mark.parametrize("retry", [False, True])
def test_the_cli_says_when_the_sheet_face_came_from_the_retry(
    retry, tmp_path, monkeypatch, synthetic_landmarks, skin_image
):
    from m2u.masking import cli

    face = _face(synthetic_landmarks(), score=-0.25 if retry else 1.3, retry=retry)

    class Detector:
        def __init__(self, config):
            pass

        def detect(self, image):
            return [face]

    monkeypatch.setattr(cli, "FaceDetector", Detector)
    photo, target = tmp_path / "a.png", tmp_path / "sheet.png"
    Image.fromarray(skin_image).save(photo)
    result = CliRunner().invoke(cli.main, [str(photo), "--contact-sheet", str(target)])
    assert result.exit_code == 0, result.output
    height = Image.open(target).height
    said = "low-threshold retry (score -0.250)" in result.output
    assert said == retry and (height > ROWS * TILE) == retry
    if retry:
        assert "--min-score 0" in result.output


def test_a_sheet_named_like_an_input_is_refused_as_one(tmp_path):
    """It was refused naming m2u's record of written files (which did not exist), not the input it would replace."""
    from m2u.masking import cli

    photo = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (120, 90, 80)).save(photo)
    before = photo.read_bytes()
    result = CliRunner().invoke(cli.main, [str(tmp_path), "--contact-sheet", str(photo)])
    assert result.exit_code == 2 and "is one of the inputs" in result.output
    assert photo.read_bytes() == before

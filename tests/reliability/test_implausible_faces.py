"""Faces the masking cannot place right are refused with a reason, never kept as an "ok" pair: landmark sets whose
proportions do not fit a template (features in the wrong order, mirrored labelling), and faces the detector found
upside down (their landmarks, fitted as if upright, sit on the wrong features)."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from m2u.masking import DetectorConfig, FaceDetector, MaskingError
from m2u.masking.cli import main as mask_main
from m2u.masking.geometry import build_mesh

from .conftest import CELEBA_DIR


@pytest.fixture(scope="module")
def portrait():
    """scikit-image's astronaut (public domain, shipped with the package): a real face without ../shared."""
    import skimage.data

    image = skimage.data.astronaut()
    (face,) = FaceDetector(DetectorConfig()).detect(image)
    return image, face


def _mirror_vertically(points: np.ndarray, height: int) -> np.ndarray:
    return np.stack([points[:, 0], height - 1 - points[:, 1]], axis=-1)


def _rotate_180(points: np.ndarray, shape) -> np.ndarray:
    return np.stack([shape[1] - 1 - points[:, 0], shape[0] - 1 - points[:, 1]], axis=-1)


def test_the_upright_face_is_placed(portrait):
    _, face = portrait
    assert face.problem == ""
    build_mesh(face.landmarks)


def test_a_face_turned_with_its_landmarks_is_still_placed(portrait):
    """Rolled 180° with landmarks that follow the features: the mesh is built in the face's own frame, so the
    mask follows the face; nothing implausible about it."""
    image, face = portrait
    mesh = build_mesh(_rotate_180(face.landmarks, image.shape))
    assert abs(abs(mesh.roll_degrees) - 180) < 30


@pytest.mark.parametrize(
    "damage",
    [
        "mirrored vertically",  # the chin above the eyes: what upside-down labelling looks like
        "mirrored horizontally",  # left and right labels swapped
        "nose tip on the chin",
        "mouth above the nose",
        "brows under the eyes",
    ],
)
def test_implausible_landmark_geometry_is_refused_with_a_reason(portrait, damage):
    image, face = portrait
    points = face.landmarks.astype(np.float64).copy()
    if damage == "mirrored vertically":
        points = _mirror_vertically(points, image.shape[0])
    elif damage == "mirrored horizontally":
        points[:, 0] = image.shape[1] - 1 - points[:, 0]
    elif damage == "nose tip on the chin":
        points[30] = points[8]
    elif damage == "mouth above the nose":
        points[48:68, 1] -= 1.2 * (points[48:68, 1].mean() - points[36:48, 1].mean())
    else:
        points[17:27, 1] += 1.5 * (points[36:48, 1].mean() - points[17:27, 1].mean())
    with pytest.raises(MaskingError, match="implausible landmark geometry") as error:
        build_mesh(points)
    assert "expected" in error.value.reason


def test_a_face_found_upside_down_is_marked(portrait):
    image, face = portrait
    detector = FaceDetector(DetectorConfig())
    turned = np.ascontiguousarray(image[::-1, ::-1])
    left, top, right, bottom = face.box
    height, width = image.shape[:2]
    turned_box = (width - 1 - right, height - 1 - bottom, width - 1 - left, height - 1 - top)
    as_found, flipped = detector.orientation_scores(turned, turned_box)
    assert flipped - as_found >= DetectorConfig().upside_down_margin
    assert "upside down" in detector._orientation_problem(turned, turned_box)
    assert detector._orientation_problem(image, face.box) == ""


def _upside_down_celeba(folder, count: int) -> list[str]:
    """CelebA photos turned 180° that the detector still finds (its low-threshold retry does, for most)."""
    detector = FaceDetector(DetectorConfig(orientation_check=False))
    names = []
    for path in sorted(CELEBA_DIR.glob("*.jpg"))[:40]:
        turned = np.asarray(Image.open(path).convert("RGB"))[::-1, ::-1].copy()
        if detector.detect(turned):
            Image.fromarray(turned).save(folder / f"turned-{path.name}", quality=95)
            shutil.copy(path, folder / path.name)
            names.append(path.name)
        if len(names) == count:
            break
    return names


@pytest.mark.shared
@pytest.mark.skipif(not CELEBA_DIR.is_dir(), reason="needs ../shared (CelebA)")
def test_m2u_mask_never_keeps_an_upside_down_face_as_ok(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    names = _upside_down_celeba(folder, 4)
    assert names, "no upside-down face found by the detector: nothing to test"
    result = CliRunner().invoke(mask_main, [str(folder), "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    with (out / "report.csv").open(newline="") as handle:
        rows = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(handle)}
    for name in names:
        assert rows[name]["status"] == "ok", rows[name]  # the upright photo still gets its mask
        turned = rows[f"turned-{name}"]
        assert turned["status"] == "refused" and "upside down" in turned["reason"], turned
        assert not (out / f"turned-{name[:-4]}_surgical.jpg").exists()
